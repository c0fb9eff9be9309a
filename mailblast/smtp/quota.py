"""Quotas that hold across runs: a --rate over more than a minute (500/d, 100/h), per SMTP account.

A Gmail account sends about 500 a day whichever campaign sends them, so the times of the
messages sent through each account (host and user) are kept in a small SQLite database in
the user's state folder, shared by every campaign on the machine. A message counts from
the moment its slot is taken, just before its MAIL FROM.

``used`` and ``next_free`` are the pure rule; ``QuotaBook`` is the database; ``QuotaLimiter``
is the run's rate limiter with the quota in front of it.
"""

from __future__ import annotations

import asyncio
import bisect
import contextlib
import math
import os
import sqlite3
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import platformdirs

from mailblast.errors import ConfigError, StoppedError
from mailblast.smtp.ratelimit import SlidingWindowLimiter, Slot
from mailblast.smtp.urls import QUOTA_FROM, Pace, Rate, SmtpTarget

WAIT_AT_MOST = 300.0  # seconds: a free slot further away stops the run, unless --wait
KEEP_FOR = 31 * 86400.0  # seconds of history kept
STATE_DIR_ENV = "MAILBLAST_STATE_DIR"
WAIT_STEP = 1.0  # seconds: a wait for the quota looks this often whether the run was stopped


LOCK_TIMEOUT = 30.0  # seconds another process may hold the database before it is a fault


class QuotaStateError(StoppedError):
    """The quota database cannot be written (a full disk, locked too long): the run stops."""

    def __init__(self, path: Path, error: sqlite3.Error) -> None:
        locked = "locked" in str(error)
        cause = (
            f"locked by another process for over {LOCK_TIMEOUT:.0f} s"
            if locked
            else f"cannot be written: {error}"
        )
        super().__init__(
            f"{path}: the quota database {cause}",
            "end the other mailblast run that holds it"
            if locked
            else f"free some disk space, or set {STATE_DIR_ENV} to a writable folder",
        )


def is_quota(rate: Rate | None) -> bool:
    return rate is not None and rate.period > QUOTA_FROM


def account_of(target: SmtpTarget) -> str:
    """The account a quota belongs to: the login at the host (the port does not make another).

    Lower-cased: providers take News@Example.com and news@example.com as one login."""
    host = target.host.lower()
    return f"{target.username.lower()} at {host}" if target.username else host


# -- the rule, free of I/O ------------------------------------------------------------------


def used(sent_at: Sequence[float], period: float, now: float) -> int:
    """How many of the sorted times ``sent_at`` are in the window ``(now - period, now]``.

    A time after ``now`` counts too: it was recorded before the clock was set back, and the
    provider counted that message all the same."""
    return len(sent_at) - bisect.bisect_right(sent_at, now - period)


def next_free(sent_at: Sequence[float], limit: int, period: float, now: float) -> float:
    """When the next message may go under ``limit`` per ``period``: ``now``, or when enough expire."""
    start = bisect.bisect_right(sent_at, now - period)
    in_window = sent_at[start:]  # with any "in the future" (see used)
    if len(in_window) < limit:
        return now
    # the window must lose len - limit + 1 of them; the last of those leaves at its time + period
    return in_window[len(in_window) - limit] + period


# -- the database ---------------------------------------------------------------------------


def state_dir() -> Path:
    override = os.environ.get(STATE_DIR_ENV)
    return Path(override) if override else platformdirs.user_state_path("mailblast")


class QuotaBook:
    """The sending times of every account, in ``quota.sqlite`` in the state folder."""

    def __init__(self, folder: Path | None = None, *, clock: Callable[[], float] = time.time) -> None:
        self.path = (folder or state_dir()) / "quota.sqlite"
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self._db = sqlite3.connect(self.path, timeout=LOCK_TIMEOUT, isolation_level=None)
            self._db.execute("PRAGMA journal_mode=WAL")
            self._db.execute("CREATE TABLE IF NOT EXISTS sent (account TEXT NOT NULL, at REAL NOT NULL)")
            self._db.execute("CREATE INDEX IF NOT EXISTS sent_by_account ON sent (account, at)")
            self._db.execute("DELETE FROM sent WHERE at < ?", (clock() - KEEP_FOR,))
            # accounts recorded before they were compared without case
            self._db.execute("UPDATE sent SET account = lower(account) WHERE account != lower(account)")
        except (OSError, sqlite3.Error) as e:
            raise ConfigError(
                f"{self.path}: cannot open the quota database: {e}",
                f"set {STATE_DIR_ENV} to a writable folder",
            ) from None

    def times(self, account: str, period: float, now: float) -> list[float]:
        """The account's sending times in the window ending ``now``, oldest first."""
        try:
            rows = self._db.execute(  # those "in the future" too (see used)
                "SELECT at FROM sent WHERE account = ? AND at > ? ORDER BY at",
                (account.lower(), now - period),
            )
            return [at for (at,) in rows]
        except sqlite3.Error as e:
            raise QuotaStateError(self.path, e) from None

    def take(self, account: str, limit: int, period: float, now: float) -> float | None:
        """Take a slot now if one is free (None), else say when the next one is; atomic across processes."""
        db = self._db
        try:
            db.execute("BEGIN IMMEDIATE")  # waits LOCK_TIMEOUT for another process's write
            try:
                free_at = next_free(self.times(account, period, now), limit, period, now)
                if free_at <= now:
                    db.execute("INSERT INTO sent VALUES (?, ?)", (account.lower(), now))
                db.execute("COMMIT")
            except BaseException:
                # A COMMIT that failed on a full disk has rolled back already: a ROLLBACK then
                # fails too ("no transaction is active") and would hide why.
                if db.in_transaction:
                    with contextlib.suppress(sqlite3.Error):
                        db.execute("ROLLBACK")
                raise
        except sqlite3.Error as e:
            raise QuotaStateError(self.path, e) from None
        return None if free_at <= now else free_at

    def give_back(self, account: str, at: float) -> None:
        """Forget one message taken at ``at``: the server refused it, so it used none of the quota."""
        try:
            self._db.execute(
                "DELETE FROM sent WHERE rowid IN "
                "(SELECT rowid FROM sent WHERE account = ? AND at = ? LIMIT 1)",
                (account.lower(), at),
            )
        except sqlite3.Error as e:
            raise QuotaStateError(self.path, e) from None

    def close(self) -> None:
        self._db.close()


@dataclass(frozen=True)
class QuotaUse:
    """An account's use of its quota at one moment, for status and the start of a send."""

    account: str
    rate: Rate
    used: int
    next_free: float  # wall-clock time; <= now when one is free now
    now: float

    @property
    def left(self) -> int:
        return max(0, self.rate.count - self.used)

    def describe(self) -> str:
        text = f"quota {self.rate} for {self.account}: {self.used:,} used, {self.left:,} left"
        if self.next_free > self.now:
            text += f"; the next may go at {when(self.next_free)}"
        return text


def quota_use(book: QuotaBook, account: str, rate: Rate, now: float) -> QuotaUse:
    times = book.times(account, rate.period, now)
    return QuotaUse(
        account, rate, used(times, rate.period, now), next_free(times, rate.count, rate.period, now), now
    )


def stop_message(account: str, rate: Rate | Pace, sent: int, left: int, free_at: float) -> str:
    return (
        f"the quota of {rate} for {account} is used: {sent:,} sent in this run, {left:,} left; "
        f"the next may go at {when(free_at)}"
    )


def when(timestamp: float) -> str:
    """A wall-clock time in the local zone, to the minute."""
    return time.strftime("%Y-%m-%d %H:%M %Z", time.localtime(math.ceil(timestamp)))


# -- the run's limiter -------------------------------------------------------------------


class QuotaLimiter(SlidingWindowLimiter):
    """The run's limiter (its ``pacing`` limit, else it learns the server's), behind the account's quotas.

    A quota counts the messages the server accepted: a refused one is given back (a provider
    counts what it took, and 43 of 500 slots went on refusals when attempts counted).

    When the next free slot is at most WAIT_AT_MOST away (or always, with ``wait``), a slot
    waits for it, unless ``give_way(seconds)`` says another relay sends meanwhile; further
    away, ``on_exhausted(free_at)`` is called once (it drops the relay, or stops the sender).
    Either way the slot comes back ``refused``: nothing is sent with it.
    """

    def __init__(
        self,
        book: QuotaBook,
        account: str,
        rates: Sequence[Rate],
        *,
        pacing: Rate | None = None,
        wait: bool,
        stopping: Callable[[], bool],
        on_exhausted: Callable[[float], None],
        on_wait: Callable[[float], None],
        give_way: Callable[[float], bool] = lambda _: False,
        on_fault: Callable[[QuotaStateError], None] | None = None,
        wall_clock: Callable[[], float] = time.time,
        clock: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
    ) -> None:
        super().__init__(
            pacing.count if pacing else None, pacing.period if pacing else 1.0, clock=clock, sleep=sleep
        )
        self.book = book
        self.account = account
        self.rates = tuple(sorted(rates, key=lambda r: r.period))
        self._wait = wait
        self._stopping = stopping
        self._on_exhausted = on_exhausted
        self._on_wait = on_wait
        self._give_way = give_way
        self._on_fault = on_fault
        self.fault: QuotaStateError | None = None  # the database failed: no slot is ever free
        self._wall = wall_clock
        self.exhausted_until: float | None = None  # set when the quota stopped the run
        self._waiting_for: float | None = None

    def try_acquire(self) -> Slot | None:
        """A slot now only if the quota has one now too (pipelining asks this way)."""
        slot = super().try_acquire()
        if slot is None:
            return None
        now = self._wall()
        if self._take(now) is not None:
            super().release(slot, accepted=False)  # the quota is used: acquire() waits or stops
            return None
        slot.quota_at = now
        return slot

    def release(self, slot: Slot, *, accepted: bool = True) -> None:
        """A message the server refused (not one whose reply was lost) gives its quota back."""
        if slot.quota_at is not None and not accepted and not slot.maybe_delivered and self.fault is None:
            try:
                self.book.give_back(self.account, slot.quota_at)
            except QuotaStateError as e:
                self._failed(e)
            slot.quota_at = None
        super().release(slot, accepted=accepted)

    def _take(self, now: float) -> float | None:
        """Take a slot of every quota now (None), or say when the next is free; when the database
        fails, ``on_fault`` stops the run and no slot is free."""
        if self.fault is not None:
            return math.inf
        try:
            return self._take_every(now)
        except QuotaStateError as e:
            self._failed(e)
            return math.inf

    def _failed(self, error: QuotaStateError) -> None:
        if self._on_fault is None:
            raise error
        self.fault = error
        self._on_fault(error)

    def _take_every(self, now: float) -> float | None:
        """The longest quota's slot is taken atomically across processes; the shorter ones are
        only read first (another run may slip one in between: the longest still holds)."""
        *shorter, longest = self.rates
        later = max(
            (
                next_free(self.book.times(self.account, r.period, now), r.count, r.period, now)
                for r in shorter
            ),
            default=now,
        )
        if later > now:
            return later
        return self.book.take(self.account, longest.count, longest.period, now)

    async def acquire(self) -> Slot:
        slot = await super().acquire()
        while not self._stopping():
            now = self._wall()
            free_at = self._take(now)
            if free_at is None:
                slot.quota_at = now
                return slot
            if self.fault is not None:
                break
            if free_at - now > WAIT_AT_MOST and not self._wait:
                if self.exhausted_until is None:
                    self.exhausted_until = free_at
                    self._on_exhausted(free_at)
                break
            if self._give_way(free_at - now):
                break
            if self._waiting_for is None or free_at > self._waiting_for:
                self._waiting_for = free_at
                self._on_wait(free_at)
            await self._sleep(min(free_at - now, WAIT_STEP))
        slot.refused = True  # not taken from the quota: the sender gives it back unused
        return slot

"""Keep a whole run inside the server's rate limit, and back off when told to.

A message holds a slot from just before its MAIL FROM until ``window`` seconds after
its final reply. Granting a slot only while fewer than ``limit`` slots are still held
that way means the server can never count more than ``limit`` messages in any window
of ``window`` seconds, whichever moment between MAIL FROM and reply it counts.

Servers count coarsely: Postfix counts in whole seconds and opens a new window only
more than its period after the first event, so 30 per 10 s there means 30 per 11 s of
real time. The window is therefore the period plus a margin of 10% (at most 1 s).

A --rate is paced evenly: one message every window / limit, never a window's worth at once
and then a wait. Bursts suit no server: Exim's ratelimit is a moving average that refuses
them (--rate 30/10s sent 30 at once and drew 8 refusals), and a sliding window takes them
no faster than an even pace.

When the server still says "too fast" with a --rate given, the limit drops just below
what the window held, and climbs back to the user's rate within a few quiet windows.
Without --rate, bursts go out unlimited; when the server refuses, one probe at a time
finds when it accepts again, each a doubled gap after the last (every refused probe costs:
Postfix counts it, a strict Exim average rises with it). The second burst begins as the
server's window opens, so what it got through, per the time until the window opened again,
is the limit: a window that opens again whole (Postfix's fixed windows, a sliding window)
is then used whole as it opens. A probe is due a gap after the last went out, however late
its refusal came: a server that answers late (Postfix, once a session made 10 errors) would
otherwise stretch the period learned. A later refusal of a full window widens it (servers
count whole seconds); of a window not full, lowers the limit below what it held; above the
limit learned it probes one more at most once a minute.

A second burst much smaller than the first is a moving average (Exim), which lets one burst
through and then only its average rate: the limiter then paces evenly at what the server
took between the two openings, climbing 25% a second until refused; a refusal cuts the pace
to 70% of what was refused, from where it climbs back to 93% of it and holds there. After a
minute held it probes above, 1% of the pace a second: at most one refusal a minute once
settled, and back to the pace that held when refused.
"""

from __future__ import annotations

import asyncio
import math
import random
import time
from collections import deque
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass


@dataclass(eq=False)
class Slot:
    """Permission to send one message, granted at ``acquired_at``."""

    acquired_at: float
    released_at: float | None = None
    throttled: bool = False  # the server said "too fast" to this message
    probe: bool = False  # sent alone, to find whether the server accepts again
    refused: bool = False  # handed back without permission (a quota's: quota.py): send nothing with it
    quota_at: float | None = None  # when a quota (quota.py) counted it, until the server refuses it
    maybe_delivered: bool = False  # its reply was lost: the server may have taken it


MARGIN = 0.1  # of the period, added to the window: servers count in whole seconds
MARGIN_CAP = 1.0  # seconds
RECOVERY_WINDOWS = 3  # a throttled --rate is back to the user's within this many quiet windows
PROBE_PERIODS = 10  # above a learned limit, it rises by one every this many quiet windows
MAX_PAUSE = 600.0  # no "try again in ..." holds the run longer than this
PROBE_GAP = (0.25, 4.0)  # between probes: the first, doubling after each refusal up to the last
PROBE_FINE = (0.01, 0.05)  # the gap near a window's expected opening: this part of it, at least
LEARN_HISTORY = 100_000  # release times kept while no limit is known
# Learning an even pace (a moving average: see _learned): additive increase, multiplicative decrease.
PACE_CUT = 0.7  # a refusal at pace r: the pace drops to r * PACE_CUT
PACE_HOLD = 0.93  # ... and climbs back to PACE_HOLD of the pace refused, where it holds
PACE_CLIMB = 0.1  # of the refused pace per second, while below the hold
PACE_START_CLIMB = 0.25  # per second, multiplied, until the first refusal while paced
PACE_SETTLE = 60.0  # seconds held before probing above: at most one refusal a minute, settled
PACE_PROBE = 0.01  # of the refused pace per second, above the hold


class SlidingWindowLimiter:
    """At most ``limit`` messages in any sliding window of ``period`` seconds (plus a margin).

    ``limit=None`` means no known limit: every grant is immediate until the first
    :meth:`throttled`, which starts learning it. One limiter is shared by all connections.
    """

    def __init__(
        self,
        limit: int | None,
        period: float = 1.0,
        *,
        clock: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
    ) -> None:
        if limit is not None and limit < 1:
            raise ValueError(f"limit must be at least 1, not {limit}")
        if not period > 0:
            raise ValueError(f"period must be positive, not {period}")
        self._configured = limit
        self._limit = limit
        self._period = float(period)
        self._window = _with_margin(self._period)
        self._clock = clock
        self._sleep = sleep
        self._held: set[Slot] = set()
        self._released: deque[float] = deque()  # release times, oldest first
        self._paused_until = -math.inf
        self._reacted_at = -math.inf  # the last throttle this limiter reacted to
        self._recover_from: float | None = None  # start of the current quiet window
        self._step_size = 1
        self._ceiling = limit  # the highest limit believed safe (None: none yet)
        # learning (no --rate): the burst since the start or the last successful probe
        self._burst_start: float | None = None
        self._burst_ok = 0  # messages of this burst the server accepted
        self._probing = False
        self._probe: Slot | None = None
        self._accepted: deque[float] = deque()  # release times of the accepted, while learning
        self._opened_at: float | None = None  # when a probe first found the server's window open
        self._shortest = 0.0  # the least the server's window can last, from the first burst
        self._late = 0.0  # how much later than due the last refused probe's reply came
        self._probe_gap = PROBE_GAP[0]
        self._first_burst = 0  # what the server took before its first refusal
        # A configured rate is paced evenly: one message every window / limit (see _gap), not a
        # window's worth at once and then a wait (an Exim moving average refuses such bursts).
        self._last_grant = -math.inf
        # the even pace learned (messages per second), once a moving average was recognised
        self._pace: float | None = None
        self._pace_refused: float | None = None  # the pace of the last refusal while paced
        self._pace_at = 0.0  # when the pace last changed
        self._held_since: float | None = None  # when the pace reached the hold
        self._lock = asyncio.Lock()  # asyncio.Lock wakes waiters in FIFO order
        self._release_event = asyncio.Event()

    @property
    def configured_limit(self) -> int | None:
        """The limit given to the constructor (None: unknown)."""
        return self._configured

    @property
    def current_limit(self) -> int | None:
        """The limit in force now, after any throttling and recovery (None: none known)."""
        self._refresh(self._clock())
        return self._limit

    @property
    def period(self) -> float:
        """The period the limit applies to: the user's, or the one learned from the server."""
        return self._period

    @property
    def window(self) -> float:
        """The sliding window slots are counted in: the period plus the margin."""
        return self._window

    @property
    def paused_until(self) -> float:
        """Clock time before which nothing is granted (``-inf`` if never paused)."""
        return self._paused_until

    @property
    def learning(self) -> bool:
        """Whether a probe is finding when the server accepts again."""
        return self._probing

    @property
    def pace(self) -> float | None:
        """The even pace learned from a moving average (messages per second); None if none."""
        return self._pace

    @property
    def learned(self) -> tuple[int, float] | None:
        """What was learned of the server's limit without --rate: (count, seconds), or None."""
        if self._configured is not None:
            return None
        if self._pace is not None:
            refused = self._pace_refused or self._pace / PACE_HOLD
            return max(1, round(refused * 10)), 10.0
        if self._limit is not None:
            return self._limit, self._period
        return None

    def suggested(self) -> tuple[int, float] | None:
        """A --rate to pass next time, just inside what was learned: (count, seconds), or None."""
        learned = self.learned
        if learned is None:
            return None
        count, seconds = learned
        return max(1, math.floor(count * PACE_HOLD)), seconds

    def delay(self) -> float:
        """Seconds until a slot could be granted: 0 if now, ``inf`` until a release."""
        now = self._clock()
        self._refresh(now)
        start = max(now, self._paused_until, self._last_grant + self._gap(now))
        if self._probing:
            return math.inf if self._probe is not None else start - now
        if self._limit is None:
            return start - now
        expiries = [t + self._window for t in self._released if t + self._window > start]
        excess = len(self._held) + len(expiries) - self._limit + 1
        if excess <= 0:
            return start - now
        ready = expiries[excess - 1] if excess <= len(expiries) else math.inf
        if self._recover_from is not None:
            # The next recovery step raises the limit, which may free a slot sooner.
            ready = min(ready, self._recover_from + self._step())
        return max(start, ready) - now

    def try_acquire(self) -> Slot | None:
        """Take a slot if one is free now, else return None."""
        if self._lock.locked():
            return None  # tasks are queued in acquire(); do not jump the queue
        return self._grant()

    async def acquire(self) -> Slot:
        """Wait for a slot; concurrent callers are served first come, first served."""
        async with self._lock:
            while (slot := self._grant()) is None:
                wait = self.delay()
                self._release_event.clear()
                if math.isinf(wait):
                    # Only a release can end this wait, and it sets the event.
                    await self._release_event.wait()
                elif self._held:
                    # A release may free a slot before ``wait`` is up (a limit of 1 with a message
                    # in flight: ``wait`` is then only the next step up, a minute away when settled).
                    await self._sleep_or_release(wait)
                else:
                    await self._sleep(wait)
            return slot

    async def _sleep_or_release(self, wait: float) -> None:
        """Sleep ``wait`` seconds, or until the next release if that comes first."""
        sleeping = asyncio.ensure_future(self._sleep(wait))
        released = asyncio.ensure_future(self._release_event.wait())
        try:
            await asyncio.wait((sleeping, released), return_when=asyncio.FIRST_COMPLETED)
        finally:
            sleeping.cancel()
            released.cancel()

    def release(self, slot: Slot, *, accepted: bool = True) -> None:
        """Record the message's final reply; ``accepted``: the server took it. Twice is harmless."""
        if slot not in self._held:
            return
        self._held.remove(slot)
        now = slot.released_at = self._clock()
        self._released.append(now)
        self._release_event.set()
        if slot.throttled:
            return
        if slot is self._probe and not accepted:
            self._probe = None  # no answer either way: probe again
            return
        if accepted and self._burst_start is not None and slot.acquired_at >= self._burst_start:
            self._burst_ok += 1
            self._accepted.append(now)
        if slot is self._probe:
            self._learned(slot)

    @asynccontextmanager
    async def hold(self) -> AsyncIterator[Slot]:
        """``async with limiter.hold():`` acquire a slot and release it on exit."""
        slot = await self.acquire()
        try:
            yield slot
        finally:
            self.release(slot)

    def throttled(self, pause: float | None = None, slot: Slot | None = None) -> None:
        """The server said ``slot``'s message came too fast: slow down, or learn the limit."""
        now = self._clock()
        self._refresh(now)
        asked = min(pause or 0.0, MAX_PAUSE)
        if slot is not None:
            slot.throttled = True
            if slot is self._probe:  # still closed: probe again a little later
                self._probe = None
                # Due a gap after this probe went out, not after its reply: a server that is
                # slow to answer (Postfix, after many refusals) must not space probes apart.
                # Each refused probe doubles the gap: every refusal costs (Postfix counts them,
                # a strict Exim average rises with them), and a window opens when it opens.
                due = slot.acquired_at + self._probe_gap
                self._probe_gap = min(PROBE_GAP[1], self._probe_gap * 2)
                self._late = max(0.0, now - due)
                self._paused_until = max(now + asked, due)
                return
            if slot.acquired_at < self._reacted_at:
                return  # sent before the last reaction: the same overload, reported again
        elif now < self._paused_until:
            return
        self._reacted_at = now
        if self._pace is not None:
            pace = self._paced(now)
            if self._probing_above(now):
                # Refused while probing above a pace that held for a minute: back to that pace
                # (a moving average answers late, so the pace refused overstates the limit).
                assert self._pace_refused is not None
                self._pace = PACE_HOLD * self._pace_refused
                self._held_since = now
            else:
                self._pace_refused = pace
                self._pace = max(pace * PACE_CUT, 1e-3)
                self._held_since = None
            self._pace_at = now
            self._paused_until = max(self._paused_until, now + max(asked, 1 / self._pace))
            return
        if self._limit is None:
            # No limit known: from now on one probe at a time, until the server accepts again.
            self._probing = True
            if self._burst_start is None:
                self._burst_start = now
            self._probe_gap = PROBE_GAP[0]
            self._paused_until = now + max(asked, self._probe_gap)
            self._late = 0.0
            if self._opened_at is not None:
                # The window's next opening is near the first's period on: probe finely from then.
                self._probe_gap = max(PROBE_FINE[0], PROBE_FINE[1] * self._shortest)
                self._paused_until = max(self._paused_until, self._opened_at + self._shortest)
            return
        counted = self._counted(now)
        if self._configured is not None:
            self._limit = max(1, min(self._limit, counted) - 1)
            self._step_size = max(1, math.ceil((self._configured - self._limit) / RECOVERY_WINDOWS))
        elif self._ceiling is not None and self._limit > self._ceiling:
            self._limit = self._ceiling  # the probe above the learned limit was refused
        elif counted >= self._limit:
            # A full learned window was refused: the server's window is longer (whole seconds).
            self._window += min(MARGIN_CAP, self._period / 2)
        else:
            self._limit = self._ceiling = max(1, counted - 1)
        self._paused_until = max(self._paused_until, now + max(asked, self._window / self._limit))
        self._recover_from = self._paused_until

    def _gap(self, now: float) -> float:
        """The least time between two grants: a configured rate's spacing, or the learned pace's."""
        if self._pace is not None:
            return 1 / self._paced(now)
        if self._configured is not None and self._limit is not None:
            return self._window / self._limit  # evenly, at the limit in force (lower after a throttle)
        return 0.0

    def _paced(self, now: float) -> float:
        """The learned pace at ``now``: climbing back after a refusal, held, then probing above."""
        assert self._pace is not None
        elapsed, self._pace_at = max(0.0, now - self._pace_at), now
        refused = self._pace_refused
        if refused is None:  # no refusal while paced yet: climb faster and faster
            self._pace *= (1 + PACE_START_CLIMB) ** elapsed
        elif self._pace < PACE_HOLD * refused:
            self._pace = min(PACE_HOLD * refused, self._pace + PACE_CLIMB * refused * elapsed)
            if self._pace >= PACE_HOLD * refused:
                self._held_since = now
        elif self._probing_above(now):
            self._pace += PACE_PROBE * refused * elapsed
            if self._pace > refused / PACE_HOLD:  # well above the old refusal: it takes more now
                self._pace_refused = self._pace * PACE_HOLD
        return self._pace

    def _probing_above(self, now: float) -> bool:
        return self._held_since is not None and now - self._held_since >= PACE_SETTLE

    def _learned(self, probe: Slot) -> None:
        """The probe got through: the server's window opened again.

        The first burst may have begun in the middle of a window (an earlier run, another
        client), so it says little; the second begins as a window opens. What it got through,
        per the time until the next opening, is the limit.
        """
        assert self._burst_start is not None
        self._probing = False
        self._probe = None
        # The window had opened when this probe went out, or as much earlier as the last
        # refusal came late: it would have gone out then.
        opened = probe.acquired_at - self._late
        if self._opened_at is None:
            self._first_burst = self._burst_ok
            # At least this long, less a probe's gap, the window lasted: no probing before then.
            self._shortest = (opened - self._burst_start) * (1 - MARGIN)
            self._opened_at = self._burst_start = probe.acquired_at
            self._burst_ok = 1  # the probe, the first message of the new window
            self._accepted.clear()
            self._accepted.append(self._clock())
            return
        second = self._burst_ok - 1  # not counting this probe
        if 2 * second < self._first_burst:
            # The first burst was large, the second one small: not a window that opens again
            # whole (Postfix's fixed windows, a sliding window), but a moving average (Exim's
            # ratelimit), which lets a burst through once and then only its average rate.
            # Pace evenly at what it took between the two openings, and learn from there.
            self._pace = max(self._burst_ok / max(opened - self._opened_at, 1e-3), 1e-3)
            self._pace_at = self._clock()
            self._accepted.clear()
            self._burst_start = None
            return
        self._limit = self._ceiling = max(1, second)
        self._period = max(opened - self._opened_at, 1e-3)
        # Measured from the server's own openings, it already holds Postfix's whole seconds.
        self._window = self._period * (1 + MARGIN / 2)
        # Only what the server accepted counts on: refused probes were not messages it kept.
        self._released = self._accepted
        self._accepted = deque()
        self._burst_start = None
        self._recover_from = self._clock()
        self._step_size = 1

    def _grant(self) -> Slot | None:
        now = self._clock()
        self._refresh(now)
        if now < self._paused_until or now < self._last_grant + self._gap(now):
            return None
        if self._probing:
            if self._probe is not None:
                return None
            self._probe = Slot(acquired_at=now, probe=True)
            self._held.add(self._probe)
            self._last_grant = now
            return self._probe
        if self._limit is not None and self._counted(now) >= self._limit:
            return None
        self._last_grant = now
        slot = Slot(acquired_at=now)
        if self._limit is None and self._burst_start is None:
            self._burst_start = now
        self._held.add(slot)
        return slot

    def _counted(self, now: float) -> int:
        return len(self._held) + sum(1 for t in self._released if t + self._window > now)

    def _step(self) -> float:
        """Quiet time before the limit rises: a window below the ceiling, a probe above it."""
        below = self._ceiling is None or self._limit is None or self._limit < self._ceiling
        # Above a learned limit, one step a minute at most: each may cost a refusal.
        return self._window if below else max(self._window * PROBE_PERIODS, PACE_SETTLE)

    def _refresh(self, now: float) -> None:
        if self._limit is None:
            # Learning: the burst's history counts against the window that is yet to be learned.
            while len(self._accepted) > LEARN_HISTORY:
                self._accepted.popleft()
            self._released.clear()
        while self._limit is not None and self._released and self._released[0] + self._window <= now:
            self._released.popleft()
        if self._recover_from is None or self._limit is None:
            return
        while now >= self._recover_from + (step := self._step()):
            below = self._ceiling is None or self._limit < self._ceiling
            # Probing above the ceiling: the remaining steps all have this length.
            steps = 1 if below else max(1, math.floor((now - self._recover_from) / step))
            self._limit += steps * (self._step_size if self._configured is not None else 1)
            self._recover_from += steps * step
            if self._configured is not None and self._limit >= self._configured:
                self._limit = self._configured
                self._recover_from = None
                return


def _with_margin(period: float) -> float:
    return period + min(MARGIN_CAP, MARGIN * period)


def backoff_delay(
    attempt: int, *, base: float = 1.0, cap: float = 60.0, rng: random.Random | None = None
) -> float:
    """Seconds to wait before retry ``attempt`` (1, 2, ...): full-jitter exponential backoff."""
    if attempt < 1:
        raise ValueError(f"attempt starts at 1, not {attempt}")
    # Clamp the exponent so that a huge attempt number cannot overflow a float.
    ceiling = min(cap, base * 2.0 ** min(attempt - 1, 1000))
    uniform = rng.uniform if rng is not None else random.uniform
    return uniform(0.0, ceiling)

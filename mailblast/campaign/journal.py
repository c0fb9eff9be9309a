"""The journal: every recipient's state in SQLite, so that re-running a send is always safe.

A campaign has an identity of its own (a random uid, and the name given with ``--campaign`` or
``campaign =``; unnamed by default), not the paths of its files: moving or copying the folder with
its journal, or renaming or editing the template, continues it. A report file names its campaign,
and sending it (a "joined" run) sends only its rows, without taking the rest out of the campaign.
Each delivery records the server that took it, and whether that was only a rehearsal (a mailblast
capture server): a send to a real server sends those recipients again. Each recipient moves
pending -> sending -> sent | failed | uncertain. "sending" is committed before the
message's MAIL FROM, and every outcome is committed before it is counted, so a
process killed at any instant leaves at most one "sending" row per connection:
those have an unknown outcome and are sent again on resume (or skipped with
--skip-uncertain).

WAL with synchronous=NORMAL: a commit survives the process being killed; after a
power loss the last commits may roll back, which can resend a recipient but never
lose one.

Faults are errors, never a fresh start: an empty or damaged file is refused (``--restart``
sets it aside), a write that fails (a full disk) stops the send, and status and report
open the file read-only. One send at a time holds the lock of the real file.
"""

from __future__ import annotations

import contextlib
import functools
import inspect
import json
import os
import sqlite3
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO, TypeVar

import filelock

from mailblast.errors import InputError, MailblastError, StoppedError

try:
    import fcntl
except ImportError:  # Windows: filelock's lock (msvcrt) instead, see _portable_lock
    fcntl = None  # type: ignore[assignment]
from mailblast.message.recipients import Recipient
from mailblast.smtp.outcomes import Outcome, Status
from mailblast.smtp.replies import classify

CAMPAIGNS = """(
    id INTEGER PRIMARY KEY,
    uid TEXT NOT NULL UNIQUE,
    name TEXT NOT NULL,
    recipients TEXT NOT NULL,
    template TEXT NOT NULL,
    template_sha TEXT NOT NULL,
    header TEXT NOT NULL,
    allow_duplicates INTEGER NOT NULL,
    created_at REAL NOT NULL
)"""
SCHEMA = f"""
CREATE TABLE IF NOT EXISTS campaigns {CAMPAIGNS};
CREATE TABLE IF NOT EXISTS runs (
    id INTEGER PRIMARY KEY,
    campaign INTEGER NOT NULL REFERENCES campaigns (id),
    started_at REAL NOT NULL,
    last_at REAL NOT NULL,
    sending_from REAL,
    rate_window REAL NOT NULL DEFAULT 0
);
CREATE TABLE IF NOT EXISTS recipients (
    campaign INTEGER NOT NULL,
    key TEXT NOT NULL,
    row INTEGER NOT NULL,
    line INTEGER NOT NULL,
    address TEXT NOT NULL,
    smtputf8 INTEGER NOT NULL,
    fields TEXT NOT NULL,
    state TEXT NOT NULL DEFAULT 'pending',
    seen_run INTEGER NOT NULL,
    message_id TEXT,
    attempts INTEGER NOT NULL DEFAULT 0,
    smtp_code TEXT,
    enhanced_code TEXT,
    error TEXT,
    updated_at REAL,
    PRIMARY KEY (campaign, key)
) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS recipients_by_row ON recipients (campaign, seen_run, row);
"""
PENDING, SENDING = "pending", "sending"
SUPPRESSED = "suppressed"  # on a suppression list: never sent, not a failure, not in the report
BATCH = 5000
ELSEWHERE = "pass --journal PATH to keep it somewhere writable"
DAMAGED = ("SQLITE_CORRUPT", "SQLITE_NOTADB")  # sqlite3.Error.sqlite_errorname of a broken file
F = TypeVar("F", bound=Callable[..., Any])


def _sql_errors(method: F) -> F:
    """SQLite's errors become the user's: a damaged journal, or one that cannot be written."""
    if inspect.isgeneratorfunction(method):

        @functools.wraps(method)
        def pages(self: Journal, *args: Any, **kwargs: Any) -> Iterator[Any]:
            try:
                yield from method(self, *args, **kwargs)
            except sqlite3.Error as e:
                raise self._error(e) from None

        return pages  # type: ignore[return-value]

    @functools.wraps(method)
    def guarded(self: Journal, *args: Any, **kwargs: Any) -> Any:
        try:
            return method(self, *args, **kwargs)
        except sqlite3.Error as e:
            raise self._error(e) from None

    return guarded  # type: ignore[return-value]


def default_path(recipients: Path) -> Path:
    return recipients.with_name(recipients.name + ".mailblast.sqlite")


def rehearsal_path(outbox: Path) -> Path:
    """Where a rehearsal (a send with no server, into the outbox) keeps its journal."""
    return outbox / "journal.mailblast.sqlite"


def recipient_key(recipient: Recipient, allow_duplicates: bool) -> str:
    """Who a row is across edits of the file: its address, or with duplicates allowed its row."""
    address = recipient.address.casefold()
    return f"{address}#{recipient.row}" if allow_duplicates else address


@dataclass
class RunChanges:
    """How the recipients file changed since the journal's last run."""

    added: int  # rows new to the journal
    removed: int  # recipients of earlier runs no longer in the file
    removed_sample: list[str]  # the first few of those addresses


@dataclass
class CampaignInfo:
    id: int
    recipients: str  # the files of its latest run, as they were named then
    template: str
    created_at: float
    header: tuple[str, ...]
    uid: str = ""  # its identity, whatever its files are called
    name: str = ""  # --campaign NAME; "" for the unnamed campaign

    def describe(self) -> str:
        return f"campaign {self.name!r}" if self.name else "the campaign"


@dataclass(frozen=True)
class Destination:
    """Where a run delivers: the server of each relay ("" names the one server), and whether
    it is a mailblast capture server, whose deliveries are rehearsals and never count as sent."""

    servers: dict[str, str]
    rehearsal: bool = False

    def server_of(self, relay: str) -> str:
        return self.servers.get(relay) or next(iter(self.servers.values()), "")


@dataclass
class RunStart:
    """What begin_run() found."""

    is_new: bool  # the campaign starts now
    edited: bool  # its template changed since the last run


@dataclass
class Delivering:
    """What deliver_to() found."""

    ignored_rehearsals: int  # deliveries to a capture server, to be sent again now for real
    earlier: list[tuple[str, int]]  # (server, deliveries) before this run, when one differs


class ServerChanged(InputError):
    """Earlier deliveries of the campaign went to another real server than this run's."""


class DamagedJournal(InputError):
    """The file is not a journal mailblast can read: empty, or damaged."""


class Journal:
    """One SQLite file; it may hold several campaigns (one per template).

    ``Journal.for_send()`` opens it for a send, locked; ``Journal(path, read_only=True)`` for
    status and report, which never write.
    """

    def __init__(self, path: Path, *, read_only: bool = False) -> None:
        self.path = path
        if path.is_file() and path.stat().st_size == 0 and not _wal_of(path).exists():
            # SQLite would take it for a new, empty journal, and a send would send everything again
            raise DamagedJournal(f"{path}: the journal is empty (0 bytes)", _way_out(path))
        try:
            self._db = _connect_read_only(path) if read_only else _connect(path)
        except sqlite3.Error as e:
            if getattr(e, "sqlite_errorname", "") in DAMAGED:
                raise self._error(e) from None
            raise InputError(
                f"{path}: cannot open the journal: {e}",
                ELSEWHERE,
            ) from None
        self._campaign: CampaignInfo | None = None
        self._run: int | None = None
        self._joined = False
        self._destination: Destination | None = None
        self._allow_duplicates = False
        self._run_marked = 0.0
        self._locks: list[BinaryIO | _PortableLock] = []  # held while sending; see for_send()

    @classmethod
    def for_send(cls, path: Path, *, restart: bool = False) -> tuple[Journal, Path | None]:
        """The journal, locked for this process and checked whole.

        A damaged or empty journal is an error; with ``restart`` it is set aside under a new
        name (returned) and a new journal takes its place.
        """
        locks = [_lock(path)]
        set_aside = None
        try:
            _lock_the_file(path, locks)  # before SQLite opens it
            try:
                journal = cls(path)
                journal.check()
            except DamagedJournal:
                if not restart:
                    raise
                journal = None
            if journal is None:
                set_aside = _set_aside(path)
                journal = cls(path)
            _lock_the_file(path, locks)  # a new file: created just now
        except BaseException:
            for lock in locks:
                lock.close()
            raise
        journal._locks = locks
        return journal, set_aside

    def check(self) -> None:
        """Read every page once, so that damage shows now rather than halfway through a send."""
        try:
            (verdict,) = self._db.execute("PRAGMA quick_check(1)").fetchone()
        except sqlite3.Error as e:
            self.close()
            raise self._error(e) from None
        if verdict != "ok":
            self.close()
            raise DamagedJournal(f"{self.path}: the journal is damaged ({verdict})", _way_out(self.path))

    def close(self) -> None:
        with contextlib.suppress(sqlite3.Error):  # nothing is uncommitted: every write commits
            self._db.close()
        for lock in self._locks:
            lock.close()
        self._locks.clear()

    def _error(self, e: sqlite3.Error) -> MailblastError:
        if getattr(e, "sqlite_errorname", "") in DAMAGED:
            return DamagedJournal(f"{self.path}: the journal is damaged ({e})", _way_out(self.path))
        return StoppedError(
            f"{self.path}: the journal cannot be written: {e}",
            "free some disk space (or fix the cause), then run the same command again to resume",
        )

    @_sql_errors
    def campaigns(self) -> list[CampaignInfo]:
        """Every campaign of the journal, the most recently active first."""
        identity = "uid, name" if "uid" in _columns(self._db, "campaigns") else "'', ''"  # before uids
        sql = (
            f"SELECT id, recipients, template, created_at, header, {identity} FROM campaigns c "
            "ORDER BY (SELECT MAX(id) FROM runs WHERE campaign = c.id) DESC, id DESC"
        )
        return [
            CampaignInfo(i, r, t, c, tuple(json.loads(h)), u, n)
            for i, r, t, c, h, u, n in self._db.execute(sql)
        ]

    @_sql_errors
    def find(self, name: str, template: Path | None = None) -> CampaignInfo:
        """The campaign called ``name`` ("" the unnamed one).

        A journal from before campaigns had names may hold several unnamed ones (one per template
        then): the template's, else the most recently active.
        """
        every = self.campaigns()
        found = [c for c in every if c.name == name]
        if not found:
            names = ", ".join(repr(c.name) if c.name else "an unnamed one" for c in every)
            raise InputError(
                f"{self.path} has no campaign {name!r}" if name else f"{self.path} has no unnamed campaign",
                (f"it has {names}: pass --campaign NAME" if every else "run mailblast send first")
                + ", or pass --journal with the journal the send used",
            )
        if template is not None:
            return next((c for c in found if c.template == str(template.resolve())), found[0])
        return found[0]

    @_sql_errors
    def find_uid(self, uid: str) -> CampaignInfo | None:
        return next((c for c in self.campaigns() if c.uid == uid), None)

    @property
    def campaign(self) -> CampaignInfo:
        """The campaign of the run begun."""
        assert self._campaign is not None, "begin_run() first"
        return self._campaign

    @_sql_errors
    def holds_all(self, campaign: int, keys: Iterator[str]) -> bool:
        """Whether every one of ``keys`` (and at least one) is a recipient of the campaign already."""
        any_key = False
        for key in keys:
            found = self._db.execute(
                "SELECT 1 FROM recipients WHERE campaign = ? AND key = ?", (campaign, key)
            ).fetchone()
            if found is None:
                return False
            any_key = True
        return any_key

    # -- a run of `send` -----------------------------------------------------------------

    @_sql_errors
    def begin_run(
        self,
        recipients: Path,
        template: Path,
        template_sha: str,
        header: tuple[str, ...],
        *,
        name: str = "",
        uid: str | None = None,
        restart: bool = False,
        allow_duplicates: bool = False,
    ) -> RunStart:
        """Open (or create) the campaign and a new run, in a transaction that end_run() commits.

        The campaign is the one called ``name``; with ``uid`` (a report's), that one, and the run
        is a joined one: it sends the file's rows and takes no other row out of the campaign.
        Rows are given with add(); abandon_run() forgets the run (the file had bad rows).
        """
        now = time.time()
        paths = (str(recipients.resolve()), str(template.resolve()))
        joined = uid is not None and not restart
        db = self._db
        db.execute("BEGIN IMMEDIATE")
        try:
            found = self.find_uid(uid) if joined else self._named(name, paths[1])
            if found is not None and not restart:
                (stored_duplicates,) = db.execute(
                    "SELECT allow_duplicates FROM campaigns WHERE id = ?", (found.id,)
                ).fetchone()
                if bool(stored_duplicates) != allow_duplicates:
                    # Recipients are told apart differently with and without duplicates: mixing would resend.
                    raise InputError(
                        f"this campaign was started {'with' if stored_duplicates else 'without'} "
                        "--allow-duplicates",
                        "run it the same way, or pass --restart to start it over",
                    )
            if found is not None and restart:
                db.execute("DELETE FROM recipients WHERE campaign = ?", (found.id,))
                db.execute("DELETE FROM runs WHERE campaign = ?", (found.id,))
                db.execute("DELETE FROM campaigns WHERE id = ?", (found.id,))
                found = None
            if found is None:
                cursor = db.execute(
                    "INSERT INTO campaigns (uid, name, recipients, template, template_sha, header, "
                    "allow_duplicates, created_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                    (uuid.uuid4().hex, name, *paths, template_sha, json.dumps(header), allow_duplicates, now),
                )
                assert cursor.lastrowid is not None
                start = RunStart(is_new=True, edited=False)
                info = self._info(cursor.lastrowid)
            else:
                (sha,) = db.execute("SELECT template_sha FROM campaigns WHERE id = ?", (found.id,)).fetchone()
                start = RunStart(is_new=False, edited=sha != template_sha)
                if joined:  # the campaign's own file and columns stay what they were
                    db.execute(
                        "UPDATE campaigns SET template = ?, template_sha = ? WHERE id = ?",
                        (paths[1], template_sha, found.id),
                    )
                else:
                    db.execute(
                        "UPDATE campaigns SET recipients = ?, template = ?, template_sha = ?, header = ? "
                        "WHERE id = ?",
                        (*paths, template_sha, json.dumps(header), found.id),
                    )
                info = self._info(found.id)
            self._run = db.execute(
                "INSERT INTO runs (campaign, started_at, last_at, joined) VALUES (?, ?, ?, ?)",
                (info.id, now, now, joined),
            ).lastrowid
        except BaseException:
            db.execute("ROLLBACK")
            raise
        self._campaign = info
        self._joined = joined
        self._allow_duplicates = allow_duplicates
        self._known_before = self._count("seen_run < ?", self._run)
        self._changes_before = db.total_changes
        self._batch: list[tuple] = []
        return start

    def _named(self, name: str, template: str) -> CampaignInfo | None:
        try:
            return self.find(name, Path(template))
        except InputError:
            return None

    def _info(self, campaign: int) -> CampaignInfo:
        return next(c for c in self.campaigns() if c.id == campaign)

    @_sql_errors
    def earlier_deliveries_matter(self, destination: Destination) -> bool:
        """Whether the campaign has rehearsal deliveries, or real ones to another server: then
        whether ``destination`` is a rehearsal must be known before sending."""
        ours = list(set(destination.servers.values()))
        marks = ",".join("?" * len(ours))
        found = self._db.execute(
            "SELECT 1 FROM recipients WHERE campaign = ? AND state IN ('sent', 'uncertain', 'failed') "
            f"AND (rehearsal = 1 OR (server IS NOT NULL AND server NOT IN ({marks}))) LIMIT 1",
            (self._ids()[0], *ours),
        ).fetchone()
        return found is not None

    @property
    def destination(self) -> Destination | None:
        """Where the run's deliveries go, as they are recorded (deliver_to(), rehearsing())."""
        return self._destination

    def rehearsing(self, name: str) -> None:
        """The run's server turned out to be a mailblast capture server: its deliveries are rehearsals."""
        if self._destination is not None:
            self._destination = Destination(dict.fromkeys(self._destination.servers, name), rehearsal=True)

    @_sql_errors
    def deliver_to(self, destination: Destination, *, server_changed: bool = False) -> Delivering:
        """This run delivers to ``destination``, as its outcomes will record.

        Before a real server, the rehearsal deliveries are set pending again. Deliveries to
        another real server stop the run (ServerChanged), unless ``server_changed`` counts them.
        """
        campaign = self._ids()[0]
        self._destination = destination
        if destination.rehearsal:
            return Delivering(0, [])
        self._db.execute("BEGIN IMMEDIATE")
        try:
            found = Delivering(*self._forget_rehearsals(campaign, destination))
            if found.earlier and not server_changed:
                raise _server_changed(self.campaign, found.earlier, destination)
        except BaseException:
            self._db.execute("ROLLBACK")
            raise
        self._db.execute("COMMIT")
        return found

    def _forget_rehearsals(
        self, campaign: int, destination: Destination
    ) -> tuple[int, list[tuple[str, int]]]:
        """Rehearsal deliveries become pending; returns how many, and the earlier real deliveries
        (server, count) when one of them went to a server this run does not use."""
        (rehearsed,) = self._db.execute(
            "SELECT COUNT(*) FROM recipients WHERE campaign = ? AND rehearsal = 1 "
            "AND state IN ('sent', 'uncertain')",
            (campaign,),
        ).fetchone()
        self._db.execute(
            "UPDATE recipients SET state = ?, server = NULL, rehearsal = 0, message_id = NULL, "
            f"smtp_code = NULL, enhanced_code = NULL, error = NULL WHERE campaign = ? AND rehearsal = 1 "
            f"AND state != '{SUPPRESSED}'",
            (PENDING, campaign),
        )
        earlier = self._db.execute(
            "SELECT server, COUNT(*) FROM recipients WHERE campaign = ? AND server IS NOT NULL "
            "AND state IN ('sent', 'uncertain') GROUP BY server ORDER BY 2 DESC",
            (campaign,),
        ).fetchall()
        ours = set(destination.servers.values())
        return rehearsed, earlier if any(server not in ours for server, _ in earlier) else []

    def campaign_identity(self) -> str:
        """What tells this campaign from any other: its uid, the same wherever its files move, and
        another after --restart."""
        return self.campaign.uid

    @_sql_errors
    def add(self, r: Recipient, *, suppressed: bool = False) -> None:
        """A good row of the file, as it is now (new, moved or edited)."""
        campaign, run = self._ids()
        key = recipient_key(r, self._allow_duplicates)
        state = SUPPRESSED if suppressed else PENDING
        self._batch.append(
            (campaign, key, r.row, r.line, r.address, r.needs_smtputf8, json.dumps(r.fields), run, state)
        )
        if len(self._batch) >= BATCH:
            self._flush()

    def _flush(self) -> None:
        self._db.executemany(
            "INSERT INTO recipients (campaign, key, row, line, address, smtputf8, fields, seen_run, state) "
            "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?) ON CONFLICT (campaign, key) DO UPDATE SET "
            "row = excluded.row, line = excluded.line, fields = excluded.fields, "
            "seen_run = excluded.seen_run, "
            # suppressed since the last run: never sent now (unless it already was); off the list: pending
            f"state = CASE WHEN state = 'sent' THEN state WHEN excluded.state = '{SUPPRESSED}' "
            f"THEN excluded.state WHEN state = '{SUPPRESSED}' THEN '{PENDING}' ELSE state END",
            self._batch,
        )
        self._batch.clear()

    @_sql_errors
    def end_run(self) -> RunChanges:
        """Commit the run, and say how the file changed since the last one."""
        campaign, run = self._ids()
        self._flush()
        still_old = self._count("seen_run < ?", run)
        if self._joined:  # the file is a part of the campaign: the rows it lacks stay in it
            self._db.execute("COMMIT")
            added = self._db.total_changes - self._changes_before - (self._known_before - still_old)
            return RunChanges(added, 0, [])
        # every add() was one change: an insert, or an update of a row known before
        added = self._db.total_changes - self._changes_before - (self._known_before - still_old)
        sample = [
            a
            for (a,) in self._db.execute(
                "SELECT address FROM recipients WHERE campaign = ? AND seen_run < ? ORDER BY row LIMIT 10",
                (campaign, run),
            )
        ]
        self._db.execute("COMMIT")
        return RunChanges(added, still_old, sample)

    def abandon_run(self) -> None:
        if self._db.in_transaction:  # a failed COMMIT (a full disk) may have rolled back already
            self._db.execute("ROLLBACK")
        self._campaign = self._run = None

    @_sql_errors
    def todo(self, *, retry_failed: bool, skip_uncertain: bool) -> Iterator[Recipient]:
        """The recipients still to send, in file order, read in pages so memory stays flat."""
        campaign, run = self._ids()
        states = (
            [PENDING]
            + ([] if skip_uncertain else [SENDING])
            + ([Status.FAILED.value] if retry_failed else [])
        )
        marks = ",".join("?" * len(states))
        last = 0
        while True:
            page = self._db.execute(
                "SELECT row, line, fields, address, smtputf8 FROM recipients WHERE campaign = ? "
                f"AND seen_run = ? AND row > ? AND state IN ({marks}) ORDER BY row LIMIT 1000",
                (campaign, run, last, *states),
            ).fetchall()
            if not page:
                return
            for row, line, fields, address, smtputf8 in page:
                yield Recipient(row, line, json.loads(fields), address, bool(smtputf8))
            last = page[-1][0]

    @_sql_errors
    def in_flight(self) -> list[tuple[int, str]]:
        """(row, address) of the messages a killed run left with an unknown outcome."""
        campaign, run = self._ids()
        return self._db.execute(
            "SELECT row, address FROM recipients "
            "WHERE campaign = ? AND seen_run = ? AND state = ? ORDER BY row",
            (campaign, run, SENDING),
        ).fetchall()

    def mark_sending(self, recipient: Recipient, message_id: str) -> None:
        """Committed before MAIL FROM: a crash from here on leaves an unknown outcome."""
        self._update(recipient, "state = ?, message_id = ?, error = NULL", SENDING, message_id)

    def note_left(self, outcome: Outcome) -> None:
        """What a run that stopped made of a recipient it had no outcome for (tries, and why),
        for the report; its state (pending, or in flight) is right already."""
        self._update(outcome.recipient, "attempts = attempts + ?, error = ?", outcome.attempts, outcome.error)

    def mark_pending(self, recipient: Recipient) -> None:
        """A reply proved the message was not delivered: it is to be sent, not in flight."""
        self._update(recipient, "state = ?", PENDING)

    def record(self, outcome: Outcome, *, was_in_flight: bool = False) -> None:
        """Committed before the outcome is counted anywhere.

        "not attempted" is pending again (the next run sends it), unless ``was_in_flight``: an
        earlier run may have delivered it, and the next run must still say so. Likewise an outcome
        ``left_in_flight``: its reply was lost in this run, which stopped before sending it again.
        """
        if outcome.status is Status.NOT_ATTEMPTED:
            state = SENDING if was_in_flight else PENDING
        elif outcome.left_in_flight:
            state = SENDING
        else:
            state = outcome.status.value
        where = self._destination
        attempted = outcome.status is not Status.NOT_ATTEMPTED
        server = where.server_of(outcome.relay) if where is not None and attempted else ""
        self._update(
            outcome.recipient,
            "state = ?, message_id = COALESCE(NULLIF(?, ''), message_id), attempts = attempts + ?, "
            "smtp_code = ?, enhanced_code = ?, error = ?, relay = NULLIF(?, ''), "
            "server = COALESCE(NULLIF(?, ''), server), rehearsal = ?",
            state,
            outcome.message_id,
            outcome.attempts,
            outcome.smtp_code,
            outcome.enhanced_code,
            outcome.error,
            outcome.relay,
            server,
            bool(server) and where is not None and where.rehearsal,
        )

    def _update(self, recipient: Recipient, assignments: str, *values: object) -> None:
        campaign, run = self._ids()
        now = time.time()
        key = recipient_key(recipient, self._allow_duplicates)
        try:
            self._db.execute(
                f"UPDATE recipients SET {assignments}, updated_at = ? WHERE campaign = ? AND key = ?",
                (*values, now, campaign, key),
            )
            if now - self._run_marked >= 1.0:  # the run's end, for status: a second is precise enough
                self._db.execute("UPDATE runs SET last_at = ? WHERE id = ?", (now, run))
                self._run_marked = now
        except sqlite3.Error as e:  # a full disk, a deleted file: sending on unrecorded would be unsafe
            raise self._error(e) from None

    # -- reading, for status and report --------------------------------------------------

    @_sql_errors
    def relay_counts(self, campaign: int) -> list[tuple[str, int]]:
        """(relay, messages it took) of the campaign's recipients, when the runs had several relays."""
        if "relay" not in _columns(self._db, "recipients"):
            return []  # a journal from before relays, opened read-only
        return self._db.execute(
            "SELECT relay, COUNT(*) FROM recipients WHERE campaign = ? AND seen_run >= ? "
            "AND relay IS NOT NULL GROUP BY relay ORDER BY relay",
            (campaign, self._latest_run(campaign)),
        ).fetchall()

    @_sql_errors
    def server_counts(self, campaign: int) -> list[tuple[str, bool, int]]:
        """(server, whether a rehearsal, messages it took) of the campaign's recipients."""
        if "rehearsal" not in _columns(self._db, "recipients"):
            return []  # a journal from before servers were recorded, opened read-only
        return self._db.execute(
            "SELECT server, rehearsal, COUNT(*) FROM recipients WHERE campaign = ? AND seen_run >= ? "
            "AND server IS NOT NULL AND state IN ('sent', 'uncertain') GROUP BY 1, 2 ORDER BY 2, 3 DESC",
            (campaign, self._latest_run(campaign)),
        ).fetchall()

    @_sql_errors
    def counts(self, campaign: int | None = None) -> dict[str, int]:
        """Recipients by state: the campaign's, or without ``campaign`` those of the run begun."""
        if campaign is None:
            campaign, run = self._ids()
            where = "seen_run = ?"
        else:
            run, where = self._latest_run(campaign), "seen_run >= ?"
        rows = self._db.execute(
            f"SELECT state, COUNT(*) FROM recipients WHERE campaign = ? AND {where} GROUP BY state",
            (campaign, run),
        )
        counts = {
            PENDING: 0,
            SENDING: 0,
            SUPPRESSED: 0,
            **{s.value: 0 for s in Status if s is not Status.NOT_ATTEMPTED},
        }
        counts.update(dict(rows))
        return counts

    @_sql_errors
    def start_sending(self, rate_window: float) -> None:
        """This run starts sending now; ``rate_window`` is what outcomes.rate_seconds adds."""
        now = time.time()
        self._db.execute(
            "UPDATE runs SET sending_from = ?, last_at = ?, rate_window = ? WHERE id = ?",
            (now, now, rate_window, self._ids()[1]),
        )

    @_sql_errors
    def end_sending(self) -> None:
        self._db.execute("UPDATE runs SET last_at = ? WHERE id = ?", (time.time(), self._ids()[1]))

    @_sql_errors
    def active_seconds(self, campaign: int) -> float:
        """The time the average rate is taken over, every run's (see outcomes.rate_seconds)."""
        (total,) = self._db.execute(
            "SELECT COALESCE(SUM(last_at - sending_from + rate_window), 0) FROM runs "
            "WHERE campaign = ? AND sending_from IS NOT NULL",
            (campaign,),
        ).fetchone()
        return float(total)

    @_sql_errors
    def last_activity(self, campaign: int) -> float | None:
        (last,) = self._db.execute("SELECT MAX(last_at) FROM runs WHERE campaign = ?", (campaign,)).fetchone()
        return last

    @_sql_errors
    def failure_reasons(self, campaign: int) -> list[tuple[str, str, str, str, int]]:
        """(state, smtp_code, enhanced_code, first error, count) of the latest run's failures."""
        return self._db.execute(
            "SELECT state, COALESCE(smtp_code, ''), COALESCE(enhanced_code, ''), "
            "MIN(COALESCE(NULLIF(error, ''), 'no reason recorded')), COUNT(*) FROM recipients "
            "WHERE campaign = ? AND seen_run >= ? AND state IN ('failed', 'uncertain') "
            "GROUP BY 1, 2, 3, CASE WHEN COALESCE(smtp_code, '') = '' THEN error END",
            (campaign, self._latest_run(campaign)),
        ).fetchall()

    @_sql_errors
    def not_sent(self, campaign: int) -> Iterator[Outcome]:
        """Every recipient of the campaign not plainly sent, as outcomes, in file order."""
        run = self._latest_run(campaign)
        status_of = {PENDING: Status.NOT_ATTEMPTED, SENDING: Status.UNCERTAIN}
        cursor = self._db.execute(
            "SELECT row, line, fields, address, smtputf8, state, message_id, attempts, smtp_code, "
            "enhanced_code, error FROM recipients WHERE campaign = ? AND seen_run >= ? "
            "AND state NOT IN ('sent', ?) ORDER BY row",
            (campaign, run, SUPPRESSED),
        )
        for row, line, fields, address, utf8, state, message_id, attempts, code, enhanced, error in cursor:
            recipient = Recipient(row, line, json.loads(fields), address, bool(utf8))
            status = status_of.get(state) or Status(state)
            if state == SENDING:
                error = error or "in flight when the run was interrupted: may or may not have been delivered"
            reply = classify(int(code), f"{enhanced or ''} {error or ''}") if code else None
            yield Outcome(recipient, status, message_id or "", attempts, reply, error or "")

    @_sql_errors
    def by_message_id(self, message_ids: list[str]) -> dict[str, tuple[int, str]]:
        """message id -> (campaign, address) of the messages this journal sent with those ids."""
        found: dict[str, tuple[int, str]] = {}
        for start in range(0, len(message_ids), 500):
            chunk = message_ids[start : start + 500]
            rows = self._db.execute(
                f"SELECT message_id, campaign, address FROM recipients WHERE message_id IN "
                f"({', '.join('?' * len(chunk))})",
                chunk,
            )
            found.update((mid, (campaign, address)) for mid, campaign, address in rows)
        return found

    @_sql_errors
    def addresses(self, campaign: int) -> Iterator[str]:
        """Every address of the campaign, in any state."""
        rows = self._db.execute("SELECT address FROM recipients WHERE campaign = ?", (campaign,))
        yield from (address for (address,) in rows)

    @_sql_errors
    def suppressed(self, campaign: int) -> Iterator[tuple[int, str]]:
        """(row, address) of the latest run's suppressed recipients, in file order."""
        return iter(
            self._db.execute(
                "SELECT row, address FROM recipients WHERE campaign = ? AND seen_run >= ? AND state = ? "
                "ORDER BY row",
                (campaign, self._latest_run(campaign), SUPPRESSED),
            )
        )

    # -- helpers ------------------------------------------------------------------------

    def _ids(self) -> tuple[int, int]:
        assert self._campaign is not None and self._run is not None, "start() first"
        return self._campaign.id, self._run

    def _latest_run(self, campaign: int) -> int:
        """The campaign's recipients are those seen since its latest run of a whole file (a
        joined run, of a report, adds its rows and takes none out)."""
        if "joined" not in _columns(self._db, "runs"):  # an older journal, opened read-only
            sql = "SELECT MAX(seen_run) FROM recipients WHERE campaign = ?"
        else:
            sql = "SELECT MAX(id) FROM runs WHERE campaign = ? AND joined = 0"
        (run,) = self._db.execute(sql, (campaign,)).fetchone()
        return run or 0

    def _count(self, where: str, *args: object) -> int:
        campaign = self._ids()[0]
        (n,) = self._db.execute(
            f"SELECT COUNT(*) FROM recipients WHERE campaign = ? AND {where}", (campaign, *args)
        ).fetchone()
        return n


# -- the file ---------------------------------------------------------------------------


def _columns(db: sqlite3.Connection, table: str) -> set[str]:
    return {row[1] for row in db.execute(f"PRAGMA table_info({table})")}


def _server_changed(
    campaign: CampaignInfo, earlier: list[tuple[str, int]], destination: Destination
) -> ServerChanged:
    went = ", ".join(f"{n:,} to {server}" for server, n in earlier)
    ours = " and ".join(sorted(set(destination.servers.values())))
    return ServerChanged(
        f"{campaign.describe()} was delivered to another server before: {went}; this run sends to {ours}",
        "if you switched provider mid-campaign, pass --server-changed to count those deliveries and send "
        "only the rest; or pass --restart to send the whole campaign again",
    )


def _wal_of(path: Path) -> Path:
    return path.with_name(path.name + "-wal")


def _connect(path: Path) -> sqlite3.Connection:
    db = sqlite3.connect(path, isolation_level=None, timeout=10)
    db.execute("PRAGMA journal_mode=WAL")
    db.execute("PRAGMA synchronous=NORMAL")
    db.executescript(SCHEMA)
    if "relay" not in _columns(db, "recipients"):
        db.execute("ALTER TABLE recipients ADD COLUMN relay TEXT")  # which relay took it, if several
    if "rate_window" not in _columns(db, "runs"):
        db.executescript(  # a journal from before the average rate was measured this way
            "ALTER TABLE runs ADD COLUMN sending_from REAL;"
            "ALTER TABLE runs ADD COLUMN rate_window REAL NOT NULL DEFAULT 0;"
        )
    if "rehearsal" not in _columns(db, "recipients"):  # from before servers were recorded
        db.executescript(
            "ALTER TABLE recipients ADD COLUMN server TEXT;"
            "ALTER TABLE recipients ADD COLUMN rehearsal INTEGER NOT NULL DEFAULT 0;"
        )
    if "joined" not in _columns(db, "runs"):
        db.execute("ALTER TABLE runs ADD COLUMN joined INTEGER NOT NULL DEFAULT 0")
    if "uid" not in _columns(db, "campaigns"):
        _give_campaigns_uids(db)
    return db


def _give_campaigns_uids(db: sqlite3.Connection) -> None:
    """A journal from before campaigns had an identity: each keeps its rows and runs, gets a uid,
    and is unnamed. The table is rebuilt (SQLite cannot drop the old UNIQUE (recipients, template)),
    in one transaction: a kill leaves the old table or the new one."""
    db.execute("BEGIN IMMEDIATE")
    try:
        if "uid" not in _columns(db, "campaigns"):  # another process may have done it meanwhile
            db.execute(f"CREATE TABLE campaigns_with_uids {CAMPAIGNS}")
            old = db.execute(
                "SELECT id, recipients, template, template_sha, header, allow_duplicates, created_at "
                "FROM campaigns"
            ).fetchall()
            db.executemany(
                "INSERT INTO campaigns_with_uids (id, uid, name, recipients, template, template_sha, header, "
                "allow_duplicates, created_at) VALUES (?, ?, '', ?, ?, ?, ?, ?, ?)",
                [(row[0], uuid.uuid4().hex, *row[1:]) for row in old],
            )
            db.execute("DROP TABLE campaigns")
            db.execute("ALTER TABLE campaigns_with_uids RENAME TO campaigns")
        db.execute("COMMIT")
    except BaseException:
        db.execute("ROLLBACK")
        raise


def _connect_read_only(path: Path) -> sqlite3.Connection:
    """Open without writing a byte: a read-only file or folder, or another user's journal, works."""
    if not path.is_file():
        raise InputError(
            f"no journal at {path}", "run mailblast send first, or pass --journal with the journal it used"
        )
    uri = path.resolve().as_uri()
    db = sqlite3.connect(f"{uri}?mode=ro", uri=True, timeout=10)
    try:
        db.execute("SELECT COUNT(*) FROM sqlite_master").fetchone()
    except sqlite3.OperationalError:
        # WAL mode needs its -shm file, which a read-only folder cannot hold; with no -wal file
        # every commit is in the main file, so reading that alone is complete.
        db.close()
        if _wal_of(path).exists():
            raise
        db = sqlite3.connect(f"{uri}?immutable=1", uri=True)
    return db


def _lock(path: Path) -> BinaryIO | _PortableLock:
    """Hold the journal for this process: two sends of one campaign at once would both send.

    The lock belongs to the real file, whatever path (a symlink, another spelling) names it.
    """
    lock_path = path.resolve().with_name(path.resolve().name + ".lock")
    if fcntl is None:
        return _portable_lock(path, lock_path)
    try:
        lock = open(lock_path, "ab")  # noqa: SIM115 - held until Journal.close()
    except PermissionError:
        try:
            lock = open(lock_path, "rb")  # noqa: SIM115 - a lock needs no write access
        except OSError as e:
            raise _lock_error(lock_path, e) from None
    except OSError as e:
        raise _lock_error(lock_path, e) from None
    return _flock(lock, path)


def _lock_the_file(path: Path, locks: list[BinaryIO | _PortableLock]) -> None:
    """Lock the journal file itself, once: a hard link is a path that resolves elsewhere.

    The descriptor stays open until the journal closes: closing one would drop the POSIX locks
    SQLite holds on the same file.
    """
    if fcntl is None:  # Windows: the lock file only (a hard link there is rare)
        return
    try:
        stat = path.stat()
    except FileNotFoundError:
        return  # not created yet
    except OSError as e:
        raise _open_error(path, e) from None
    for lock in locks:
        assert not isinstance(lock, _PortableLock)
        held = os.fstat(lock.fileno())
        if (held.st_dev, held.st_ino) == (stat.st_dev, stat.st_ino):
            return  # locked already; opening it again would be harmful once SQLite has it open
    try:
        file = open(path, "rb")  # noqa: SIM115 - held until Journal.close()
    except OSError as e:
        raise _open_error(path, e) from None
    locks.append(_flock(file, path))


def _open_error(path: Path, e: OSError) -> InputError:
    return InputError(f"{path}: cannot open the journal: {e.strerror}", ELSEWHERE)


def _flock(file: BinaryIO, path: Path) -> BinaryIO:
    """``file``, locked for this process alone; an error if another send holds it."""
    try:
        fcntl.flock(file, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        file.close()
        raise _busy(path) from None
    return file


class _PortableLock:
    """filelock's lock where fcntl is missing (Windows: msvcrt, which the OS drops with the process)."""

    def __init__(self, lock: filelock.BaseFileLock) -> None:
        self._lock = lock

    def close(self) -> None:
        self._lock.release()


def _portable_lock(path: Path, lock_path: Path) -> _PortableLock:
    lock = filelock.FileLock(lock_path, timeout=0, thread_local=False)
    try:
        lock.acquire()
    except filelock.Timeout:
        raise _busy(path) from None
    except OSError as e:
        raise _lock_error(lock_path, e) from None
    return _PortableLock(lock)


def _busy(path: Path) -> InputError:
    return InputError(
        f"another mailblast send is using {path}",
        "wait for it to finish (mailblast status shows its progress), or pass another --journal",
    )


def _lock_error(lock_path: Path, e: OSError) -> InputError:
    return InputError(
        f"{lock_path}: cannot create the journal's lock file: {e.strerror}",
        ELSEWHERE,
    )


def _way_out(path: Path) -> str:
    return (
        "if you have a copy of it, pass --journal with the copy; or start the campaign over with "
        f"--restart (every recipient is sent again; this file is kept as {path.name}.damaged)"
    )


def _set_aside(path: Path) -> Path:
    """Rename a damaged journal (and its -wal and -shm files) out of the way, keeping it."""
    aside = path.with_name(path.name + ".damaged")
    n = 1
    while aside.exists():
        n += 1
        aside = path.with_name(f"{path.name}.damaged-{n}")
    for suffix in ("-wal", "-shm", ""):
        part = path.with_name(path.name + suffix)
        if part.exists():
            part.rename(aside.with_name(aside.name + suffix))
    return aside

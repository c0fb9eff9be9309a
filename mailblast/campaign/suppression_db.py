"""The one suppression list of this machine, shared by every campaign, and what feeds it.

``suppression.sqlite`` in the user's data folder (platformdirs; ``MAILBLAST_DATA_DIR`` moves
it) holds:

- ``suppressed``: each address never to be mailed again, with the reason, the source
  (bounce, complaint, unsubscribe, refused at send, manual), the campaign and the date;
- ``events``: every bounce, complaint and unsubscribe counted against a campaign (status's rates),
  and the soft bounces the policy counts;
- ``delivered``: when an address last had a message accepted (a delivery resets soft bounces);
- ``processed``: which mailbox messages ``bounces`` has read (Maildir names, IMAP
  UIDVALIDITY/UID), so that running it again changes nothing;
- ``campaigns``: each campaign's short tag (VERP, unsubscribe tokens), its journal and account.

SQLite in WAL mode with a 30 s busy timeout: a send, ``bounces`` and the unsubscribe endpoint may
write at the same time.
"""

from __future__ import annotations

import contextlib
import os
import sqlite3
import time
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

import platformdirs

from mailblast.errors import InputError, StoppedError

DATA_DIR_ENV = "MAILBLAST_DATA_DIR"
FILE_NAME = "suppression.sqlite"
SOURCES = ("bounce", "complaint", "unsubscribe", "refused at send", "manual")
# events counted in status's rates; "soft" only feeds the policy
EVENT_KINDS = ("hard", "soft", "complaint", "unsubscribe", "refused")

SCHEMA = """
CREATE TABLE IF NOT EXISTS suppressed (
    key TEXT PRIMARY KEY,
    address TEXT NOT NULL,
    reason TEXT NOT NULL,
    source TEXT NOT NULL,
    campaign TEXT,
    added_at REAL NOT NULL
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS events (
    key TEXT NOT NULL,
    kind TEXT NOT NULL,
    campaign TEXT,
    at REAL NOT NULL,
    detail TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS events_by_key ON events (key, kind, at);
CREATE INDEX IF NOT EXISTS events_by_campaign ON events (campaign, kind);
CREATE TABLE IF NOT EXISTS delivered (key TEXT PRIMARY KEY, at REAL NOT NULL) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS processed (
    mailbox TEXT NOT NULL,
    item TEXT NOT NULL,
    at REAL NOT NULL,
    PRIMARY KEY (mailbox, item)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS campaigns (
    tag TEXT PRIMARY KEY,
    journal TEXT NOT NULL,
    campaign INTEGER NOT NULL,
    name TEXT NOT NULL,
    account TEXT NOT NULL,
    started_at REAL NOT NULL,
    UNIQUE (journal, campaign)
) WITHOUT ROWID;
"""


def data_dir() -> Path:
    override = os.environ.get(DATA_DIR_ENV)
    return Path(override) if override else platformdirs.user_data_path("mailblast")


def default_path() -> Path:
    return data_dir() / FILE_NAME


@dataclass(frozen=True)
class Entry:
    """One suppressed address."""

    address: str
    reason: str
    source: str
    campaign: str | None
    added_at: float


@dataclass(frozen=True)
class CampaignTag:
    tag: str
    journal: str
    campaign: int
    name: str
    account: str
    started_at: float


class SuppressionStore:
    """The shared list on disk; ``key in store``. Keys are suppress.address_key()'s."""

    def __init__(self, path: Path | None = None, *, read_only: bool = False, durable: bool = True) -> None:
        """``durable=False`` for `bounces`: what a power cut loses it reads again next time. An
        unsubscribe answered 200, or a refusal at send, is never left to chance."""
        self.path = path or default_path()
        try:
            if read_only:
                self._db = sqlite3.connect(f"{self.path.as_uri()}?mode=ro", uri=True, timeout=30)
            else:
                self.path.parent.mkdir(parents=True, exist_ok=True)
                self._db = sqlite3.connect(self.path, timeout=30, isolation_level=None)
                self._db.execute("PRAGMA journal_mode=WAL")
                if not durable:  # a killed process loses nothing, a power cut the last few commits
                    self._db.execute("PRAGMA synchronous=NORMAL")
                self._db.executescript(SCHEMA)
        except (OSError, sqlite3.Error) as e:
            raise InputError(
                f"{self.path}: the suppression list cannot be opened: {_why(e)}",
                f"set {DATA_DIR_ENV} to a writable folder",
            ) from None

    @classmethod
    def existing(cls) -> SuppressionStore | None:
        """The shared list if it has been written to, else None (read-only: checks never create it)."""
        path = default_path()
        return cls(path, read_only=True) if path.is_file() else None

    def close(self) -> None:
        with contextlib.suppress(sqlite3.Error):
            self._db.close()

    def __enter__(self) -> SuppressionStore:
        return self

    def __exit__(self, *_: object) -> None:
        self.close()

    def __contains__(self, key: str) -> bool:
        return self._one("SELECT 1 FROM suppressed WHERE key = ?", key) is not None

    def __len__(self) -> int:
        return self._one("SELECT COUNT(*) FROM suppressed")[0]

    def keys(self) -> Iterator[str]:
        yield from (k for (k,) in self._read("SELECT key FROM suppressed"))

    # -- the list ------------------------------------------------------------------------

    def add(
        self,
        key: str,
        address: str,
        reason: str,
        source: str,
        campaign: str | None = None,
        at: float | None = None,
    ) -> bool:
        """Suppress ``address``; False when it already was (the first entry is kept)."""
        assert source in SOURCES, source
        return bool(
            self._write(
                "INSERT OR IGNORE INTO suppressed VALUES (?, ?, ?, ?, ?, ?)",
                key, address, _clean(reason), source, campaign, at if at is not None else time.time(),
            )
        )  # fmt: skip

    def remove(self, key: str) -> bool:
        return bool(self._write("DELETE FROM suppressed WHERE key = ?", key))

    def entry(self, key: str) -> Entry | None:
        row = self._one(
            "SELECT address, reason, source, campaign, added_at FROM suppressed WHERE key = ?", key
        )
        return Entry(*row) if row else None

    def entries(self) -> Iterator[Entry]:
        sql = "SELECT address, reason, source, campaign, added_at FROM suppressed ORDER BY added_at, key"
        yield from (Entry(*row) for row in self._read(sql))

    # -- events: rates and the soft-bounce policy ------------------------------------------

    def record_event(self, key: str, kind: str, campaign: str | None, at: float, detail: str) -> None:
        assert kind in EVENT_KINDS, kind
        self._write("INSERT INTO events VALUES (?, ?, ?, ?, ?)", key, kind, campaign, at, _clean(detail))

    def soft_bounces_since(self, key: str, since: float) -> list[float]:
        """When ``key`` soft-bounced after ``since`` and after its last delivery."""
        delivered = self._one("SELECT at FROM delivered WHERE key = ?", key)
        start = max(since, delivered[0] if delivered else 0.0)
        rows = self._read("SELECT at FROM events WHERE key = ? AND kind = 'soft' AND at > ?", key, start)
        return sorted(at for (at,) in rows)

    def soft_bounced(self) -> set[str]:
        """Every address with a soft bounce on record: a send resets those it delivers to."""
        return {k for (k,) in self._read("SELECT DISTINCT key FROM events WHERE kind = 'soft'")}

    def delivered(self, keys: Iterable[str], at: float) -> None:
        self._write_many("INSERT OR REPLACE INTO delivered VALUES (?, ?)", ((k, at) for k in keys))

    def event_counts(self, campaign: str) -> dict[str, int]:
        counts = dict.fromkeys(EVENT_KINDS, 0)
        rows = self._read(
            "SELECT kind, COUNT(DISTINCT key) FROM events WHERE campaign = ? GROUP BY kind", campaign
        )
        counts.update(dict(rows))
        return counts

    # -- what bounces has read -------------------------------------------------------------

    def is_processed(self, mailbox: str, item: str) -> bool:
        return self._one("SELECT 1 FROM processed WHERE mailbox = ? AND item = ?", mailbox, item) is not None

    def mark_processed(self, mailbox: str, item: str) -> None:
        self._write("INSERT OR IGNORE INTO processed VALUES (?, ?, ?)", mailbox, item, time.time())

    # -- campaigns -------------------------------------------------------------------------

    def tag_campaign(self, tag: str, journal: Path, campaign: int, name: str, account: str) -> None:
        """Register the campaign's tag (signing_key.campaign_tag) with its journal and account.

        A journal started over (--restart) has a new campaign id under the same tag: the latest wins.
        """
        journal_text = str(journal.resolve())
        row = self._one("SELECT started_at FROM campaigns WHERE tag = ?", tag)
        self._write("DELETE FROM campaigns WHERE journal = ? AND campaign = ?", journal_text, campaign)
        self._write(
            "INSERT OR REPLACE INTO campaigns VALUES (?, ?, ?, ?, ?, ?)",
            tag, journal_text, campaign, name, account, row[0] if row else time.time(),
        )  # fmt: skip

    def campaigns(self) -> list[CampaignTag]:
        sql = "SELECT tag, journal, campaign, name, account, started_at FROM campaigns ORDER BY started_at"
        return [CampaignTag(*row) for row in self._read(sql)]

    def campaign(self, tag: str) -> CampaignTag | None:
        row = self._one(
            "SELECT tag, journal, campaign, name, account, started_at FROM campaigns WHERE tag = ?", tag
        )
        return CampaignTag(*row) if row else None

    # -- SQLite ----------------------------------------------------------------------------

    def _one(self, sql: str, *args: object) -> tuple | None:
        try:
            return self._db.execute(sql, args).fetchone()
        except sqlite3.Error as e:
            raise self._error(e) from None

    def _read(self, sql: str, *args: object) -> list[tuple]:
        try:
            return self._db.execute(sql, args).fetchall()
        except sqlite3.Error as e:
            raise self._error(e) from None

    def _write(self, sql: str, *args: object) -> int:
        try:
            return self._db.execute(sql, args).rowcount
        except sqlite3.Error as e:
            raise self._error(e) from None

    def _write_many(self, sql: str, rows: Iterable[tuple]) -> None:
        try:
            self._db.execute("BEGIN IMMEDIATE")
            try:
                self._db.executemany(sql, rows)
            except BaseException:
                self._db.execute("ROLLBACK")
                raise
            self._db.execute("COMMIT")
        except sqlite3.Error as e:
            raise self._error(e) from None

    def _error(self, e: sqlite3.Error) -> StoppedError:
        return StoppedError(
            f"{self.path}: the suppression list cannot be written: {e}",
            f"free some disk space, or set {DATA_DIR_ENV} to a writable folder",
        )


def _why(e: OSError | sqlite3.Error) -> str:
    return (e.strerror or str(e)) if isinstance(e, OSError) else str(e)


def _clean(text: str) -> str:
    """One line of printable text: what a server wrote may hold anything."""
    return " ".join("".join(c if c.isprintable() else " " for c in text).split())[:500]

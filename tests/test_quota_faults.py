"""Quota state faults stop cleanly (issue 16): a full disk or a database locked too long stops the
run as Ctrl-C does (exit 3, the summary, every recipient sent or in the report); entries "in the
future" still count; an account's name is compared without case."""

from __future__ import annotations

import csv
import sqlite3
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from mailblast.smtp import quota
from tests.disk import mailblast_capped
from tests.servers import SmtpServer
from tests.test_send_cli import campaign, mailblast
from tests.test_untrusted import run

ROWS = 40


def report_and_sent(folder: Path, server: SmtpServer) -> tuple[list[str], list[str]]:
    with (folder / "left.csv").open() as f:
        left = [row["email"] for row in csv.DictReader(f)]
    return left, server.recipients()


def assert_stopped_cleanly(folder: Path, server: SmtpServer, out: str) -> None:
    assert "summary" in out and "Traceback" not in out, out
    left, sent = report_and_sent(folder, server)
    assert sent, out  # it was mid-run
    assert sorted(left + sent) == sorted(f"user{i}@example.com" for i in range(ROWS))  # each once
    with (folder / "left.csv").open() as f:
        assert {row["status"] for row in csv.DictReader(f)} == {"not attempted"}
    assert "no transaction is active" not in out


def test_a_full_disk_under_the_quota_state_stops_the_run(
    tmp_path: Path, smtp_server: Callable[..., SmtpServer]
) -> None:
    server = smtp_server()
    campaign(tmp_path, ROWS)
    started = time.monotonic()
    proc = mailblast_capped(
        tmp_path,
        48 * 1024,  # the quota database's write-ahead log grows past it some messages in
        *("send", "people.csv", "-t", "t.txt", "--smtp", server.url, "--rate", "400/d"),
        *("--no-journal", "--report", "left.csv"),
        env={"MAILBLAST_STATE_DIR": str(tmp_path / "state")},
        timeout=120,
    )
    assert time.monotonic() - started < 60  # it stops; it does not hang at 0/400
    assert proc.returncode == 3, proc.stderr
    assert "quota.sqlite: the quota database cannot be written" in proc.stderr
    assert_stopped_cleanly(tmp_path, server, proc.stderr)


def test_a_quota_database_locked_too_long_stops_the_run(
    tmp_path: Path, smtp_server: Callable[..., SmtpServer], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(quota, "LOCK_TIMEOUT", 1.0)  # 30 s in real life
    state = tmp_path / "state"
    holder: list[sqlite3.Connection] = []

    def lock_after_six(stage: str, envelope: object, accepted: int) -> None:
        if stage == "data" and accepted == 6 and not holder:  # another process takes the lock
            holder.append(
                sqlite3.connect(state / "quota.sqlite", isolation_level=None, check_same_thread=False)
            )
            holder[0].execute("BEGIN IMMEDIATE")

    server = smtp_server(reply_hook=lock_after_six)
    campaign(tmp_path, ROWS)
    env = {"MAILBLAST_STATE_DIR": str(state)}
    args = ("send", "people.csv", "-t", "t.txt", "--smtp", server.url, "--rate", "400/d")
    code, out = run(tmp_path, *args, "--report", "left.csv", "--connections", "1", env=env)
    for connection in holder:
        connection.close()
    assert code == 3, out
    assert "quota.sqlite: the quota database locked by another process for over 1 s" in out
    assert "end the other mailblast run that holds it" in out and "nothing was sent" not in out
    assert_stopped_cleanly(tmp_path, server, out)


def record(state: Path, account: str, times: list[float]) -> None:
    """Entries as an earlier mailblast wrote them (before account names were lower-cased)."""
    quota.QuotaBook(state).close()
    with sqlite3.connect(state / "quota.sqlite") as db:
        db.executemany("INSERT INTO sent VALUES (?, ?)", [(account, at) for at in times])


def test_entries_in_the_future_still_count(tmp_path: Path, smtp_server: Callable[..., SmtpServer]) -> None:
    server = smtp_server()
    state = tmp_path / "state"
    record(state, "127.0.0.1", [time.time() + 3600 + i for i in range(5)])  # the clock was set back
    campaign(tmp_path, 3)
    env = {"MAILBLAST_STATE_DIR": str(state)}
    proc = mailblast(
        tmp_path, "send", "people.csv", "-t", "t.txt", "--smtp", server.url, "--rate", "5/d", env=env
    )
    assert proc.returncode == 3, proc.stderr
    assert "quota 5/d for 127.0.0.1: 5 used, 0 left" in proc.stderr
    assert server.received == []


def test_an_account_name_is_compared_without_case(
    tmp_path: Path, smtp_server: Callable[..., SmtpServer]
) -> None:
    server = smtp_server(auth={"news@example.com": "secret"})
    state = tmp_path / "state"
    record(state, "News@Example.com at 127.0.0.1", [time.time() - 60 * i for i in range(4)])
    campaign(tmp_path, 3)
    url = server.url.replace("smtp://", "smtp://news%40example.com@")
    env = {"MAILBLAST_STATE_DIR": str(state), "MAILBLAST_SMTP_PASSWORD": "secret"}
    proc = mailblast(tmp_path, "send", "people.csv", "-t", "t.txt", "--smtp", url, "--rate", "5/d", env=env)
    assert proc.returncode == 3, proc.stderr
    assert "quota 5/d for news@example.com at 127.0.0.1: 4 used, 1 left" in proc.stderr
    assert len(server.received) == 1

"""Crash-safe campaigns: real `mailblast send` processes killed, interrupted and re-run."""

from __future__ import annotations

import os
import signal
import sqlite3
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Callable
from pathlib import Path

import pytest

from tests.servers import SmtpServer, child_environ, refuse_by_policy

TEMPLATE = "From: news@example.com\nSubject: Hi {{ name }}\n\nHello {{ name }}\n"


def write_campaign(folder: Path, rows: list[tuple[str, str]]) -> Path:
    (folder / "t.txt").write_text(TEMPLATE)
    path = folder / "people.csv"
    path.write_text("email,name\n" + "".join(f"{a},{n}\n" for a, n in rows))
    return path


def people(n: int, start: int = 0) -> list[tuple[str, str]]:
    return [(f"user{i}@example.com", f"User {i}") for i in range(start, start + n)]


def command(url: str, *extra: str) -> list[str]:
    return [sys.executable, "-m", "mailblast", "send", "people.csv", "-t", "t.txt", "--smtp", url, *extra]


def run(folder: Path, args: list[str]) -> subprocess.CompletedProcess[str]:
    env = child_environ()
    return subprocess.run(args, cwd=folder, capture_output=True, text=True, timeout=120, env=env)


def start(folder: Path, args: list[str]) -> subprocess.Popen[str]:
    env = child_environ()
    return subprocess.Popen(
        args, cwd=folder, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env
    )


def wait_until(condition: Callable[[], bool], timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.01)


def journal_states(folder: Path) -> Counter[str]:
    """Recipients per state, as the journal has them (empty while it is being created)."""
    path = folder / "people.csv.mailblast.sqlite"
    if not path.exists():  # connecting would create it, empty: a journal mailblast refuses
        return Counter()
    with sqlite3.connect(path) as db:
        try:
            rows = db.execute("SELECT state, COUNT(*) FROM recipients GROUP BY state").fetchall()
        except sqlite3.OperationalError:
            return Counter()
        return Counter(dict(rows))


@pytest.mark.parametrize("kill_after", [2, 9, 17])
def test_kill_9_then_rerun_loses_nobody(
    tmp_path: Path, smtp_server: Callable[..., SmtpServer], kill_after: int
) -> None:
    # a slow final reply keeps messages in flight, so the kill often lands mid-transaction
    server = smtp_server(data_latency=0.05)
    write_campaign(tmp_path, people(25))
    proc = start(tmp_path, command(server.url, "--connections", "3"))
    wait_until(lambda: len(server.received) >= kill_after)
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=30)
    before = len(server.received)
    assert before < 25, "the kill came too late to test anything"
    again = run(tmp_path, command(server.url, "--connections", "3"))
    assert again.returncode == 0, again.stderr
    assert "resuming: " in again.stderr
    received = Counter(server.recipients())
    assert set(received) == {a for a, _ in people(25)}  # nobody lost
    duplicates = sum(n - 1 for n in received.values())
    assert duplicates <= 3  # at most the messages in flight: one per connection
    states = journal_states(tmp_path)
    assert states["sent"] + states["uncertain"] == 25 and set(states) <= {"sent", "uncertain"}
    assert duplicates <= states["uncertain"] <= 3  # every resent in-flight message is flagged
    for address, n in received.items():
        if n > 1:  # a resent message keeps its Message-ID, so the recipient can tell
            ids = {r.message["Message-ID"] for r in server.received if r.rcpt_tos == [address]}
            assert len(ids) == 1
            assert address in again.stderr  # listed as a possible duplicate


def test_sigint_stops_gracefully_and_resumes(tmp_path: Path, smtp_server: Callable[..., SmtpServer]) -> None:
    server = smtp_server()
    write_campaign(tmp_path, people(30))
    proc = start(tmp_path, command(server.url, "--rate", "10/s"))
    wait_until(lambda: len(server.received) >= 5)
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 3, err
    assert "interrupted" in err and "run the same command again to resume: mailblast send people.csv" in err
    assert "Traceback" not in err
    first = len(server.received)
    assert first < 30
    states = journal_states(tmp_path)
    assert states["sent"] == first and states["sending"] == 0
    again = run(tmp_path, command(server.url, "--rate", "10/s"))
    assert again.returncode == 0, again.stderr
    assert f"resuming: {first} sent, {30 - first} to go" in again.stderr
    assert sorted(server.recipients()) == sorted(a for a, _ in people(30))  # no duplicates


def test_fatal_reply_then_rerun_against_a_healthy_server(
    tmp_path: Path, smtp_server: Callable[..., SmtpServer]
) -> None:
    revoked = smtp_server(auth={"mailer": "pw"}, fail_auth_after=4)
    write_campaign(tmp_path, people(12))
    env_args = ["--max-messages", "2", "--connections", "1"]
    url = revoked.url.replace("smtp://", "smtp://mailer@")
    first = subprocess.run(
        command(url, *env_args),
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=120,
        env={**os.environ, "MAILBLAST_SMTP_PASSWORD": "pw"},
    )
    assert first.returncode == 3 and "535" in first.stderr, first.stderr
    assert len(revoked.received) == 4
    healthy = smtp_server()
    second = run(tmp_path, command(healthy.url))
    assert second.returncode == 0, second.stderr
    assert "resuming: 4 sent, 8 to go" in second.stderr
    assert sorted(revoked.recipients() + healthy.recipients()) == sorted(a for a, _ in people(12))


def test_edited_recipients_file(tmp_path: Path, smtp_server: Callable[..., SmtpServer]) -> None:
    server = smtp_server()
    csv_path = write_campaign(tmp_path, people(6))
    assert run(tmp_path, command(server.url)).returncode == 0
    # drop user1 and user2, rename user0 (already sent), add user6..user8
    rows = [("user0@example.com", "Renamed"), *people(3, start=3), *people(3, start=6)]
    csv_path.write_text("email,name\n" + "".join(f"{a},{n}\n" for a, n in rows))
    again = run(tmp_path, command(server.url))
    assert again.returncode == 0, again.stderr
    assert "3 row(s) new since the last run" in again.stderr
    assert "no longer in the file" in again.stderr
    assert "user1@example.com" in again.stderr and "user2@example.com" in again.stderr
    received = Counter(server.recipients())
    assert received == Counter({f"user{i}@example.com": 1 for i in range(9)})


def test_edited_template_is_mentioned(tmp_path: Path, smtp_server: Callable[..., SmtpServer]) -> None:
    server = smtp_server(reply_hook=refuse_by_policy({"user1@example.com"}))
    write_campaign(tmp_path, people(3))
    assert run(tmp_path, command(server.url)).returncode == 1
    (tmp_path / "t.txt").write_text(TEMPLATE.replace("Hello", "Hi again"))
    again = run(tmp_path, command(server.url))
    changed = "template changed since the last run: the rows already sent keep the earlier version"
    assert changed in again.stderr  # the wording (was: "the template was edited since the last run")
    assert "nothing to send: 2 sent, 1 failed earlier (--retry-failed sends them again)" in again.stderr
    assert "nothing to send" in again.stderr and again.returncode == 0


def test_failed_recipients_are_retried_only_when_asked(
    tmp_path: Path, smtp_server: Callable[..., SmtpServer]
) -> None:
    picky = smtp_server(reply_hook=refuse_by_policy({"user2@example.com"}))
    write_campaign(tmp_path, people(4))
    assert run(tmp_path, command(picky.url)).returncode == 1
    fixed = smtp_server()
    assert run(tmp_path, command(fixed.url)).returncode == 0
    assert fixed.received == []
    retried = run(tmp_path, command(fixed.url, "--retry-failed"))
    assert retried.returncode == 0, retried.stderr
    assert fixed.recipients() == ["user2@example.com"]


def test_restart_sends_everything_again(tmp_path: Path, smtp_server: Callable[..., SmtpServer]) -> None:
    server = smtp_server()
    write_campaign(tmp_path, people(3))
    assert run(tmp_path, command(server.url)).returncode == 0
    assert run(tmp_path, command(server.url, "--restart")).returncode == 0
    assert Counter(server.recipients()) == Counter({a: 2 for a, _ in people(3)})


def test_in_flight_message_is_resent_or_skipped(
    tmp_path: Path, smtp_server: Callable[..., SmtpServer]
) -> None:
    slow = smtp_server(data_latency=30)  # the reply never comes before the kill
    write_campaign(tmp_path, people(3))
    proc = start(tmp_path, command(slow.url, "--connections", "1"))
    journal = tmp_path / "people.csv.mailblast.sqlite"
    wait_until(lambda: journal.exists() and journal_states(tmp_path)["sending"] == 1)
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=30)
    slow.stop()
    server = smtp_server()
    skipped = run(tmp_path, command(server.url, "--skip-uncertain"))
    assert skipped.returncode == 0, skipped.stderr
    assert "left out (--skip-uncertain)" in skipped.stderr and "row 1 user0@example.com" in skipped.stderr
    assert sorted(server.recipients()) == ["user1@example.com", "user2@example.com"]
    status = run(tmp_path, [sys.executable, "-m", "mailblast", "status", "people.csv"])
    assert "in flight when a run stopped" in status.stdout
    resent = run(tmp_path, command(server.url))
    assert resent.returncode == 0, resent.stderr  # delivered; the report flags a possible duplicate
    assert "sent again, possible duplicates: row 1 user0@example.com" in resent.stderr
    assert "user0@example.com" in server.recipients()
    assert "uncertain" in resent.stdout and "may be a duplicate" in resent.stdout


def test_status_and_report_from_the_journal_alone(
    tmp_path: Path, smtp_server: Callable[..., SmtpServer]
) -> None:
    server = smtp_server(reject_recipients={"user1@example.com", "user3@example.com"})
    csv_path = write_campaign(tmp_path, people(5))
    assert run(tmp_path, command(server.url)).returncode == 1
    csv_path.rename(tmp_path / "moved-away.csv")  # only the journal is left
    status = run(tmp_path, [sys.executable, "-m", "mailblast", "status", "people.csv"])
    assert status.returncode == 0, status.stderr
    for expected in ("sent", "3", "failed", "2", "pending", "started", "average rate", "failures by reason"):
        assert expected in status.stdout
    assert "550 5.1.1" in status.stdout or "Recipient address rejected" in status.stdout
    report = run(tmp_path, [sys.executable, "-m", "mailblast", "report", "people.csv", "--out", "failed.csv"])
    assert report.returncode == 0, report.stderr
    lines = (tmp_path / "failed.csv").read_text().splitlines()
    assert lines[0] == "email,name,status,smtp_code,enhanced_code,error,attempts,campaign"
    assert [line.split(",")[0] for line in lines[1:]] == ["user1@example.com", "user3@example.com"]
    assert all(",failed,550,5.1.1," in line for line in lines[1:])


def test_status_without_a_journal(tmp_path: Path) -> None:
    write_campaign(tmp_path, people(1))
    status = run(tmp_path, [sys.executable, "-m", "mailblast", "status", "people.csv"])
    assert status.returncode == 2 and "no journal at" in status.stderr and "Traceback" not in status.stderr


def test_second_sigint_stops_at_once_and_the_journal_stays_consistent(
    tmp_path: Path, smtp_server: Callable[..., SmtpServer]
) -> None:
    slow = smtp_server(data_latency=20)  # replies come far too late: messages stay in flight
    write_campaign(tmp_path, people(6))
    proc = start(tmp_path, command(slow.url, "--connections", "2"))
    journal = tmp_path / "people.csv.mailblast.sqlite"
    wait_until(lambda: journal.exists() and journal_states(tmp_path)["sending"] == 2)
    proc.send_signal(signal.SIGINT)
    time.sleep(0.3)
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=30)
    assert proc.returncode == 3, err
    assert "stopped at once" in err and "run the same command again to resume" in err
    assert "Traceback" not in err
    assert journal_states(tmp_path) == {"sending": 2, "pending": 4}
    slow.stop()
    healthy = smtp_server()
    again = run(tmp_path, command(healthy.url))
    assert again.returncode == 0, again.stderr
    assert sorted(healthy.recipients()) == sorted(a for a, _ in people(6))
    assert journal_states(tmp_path) == {"sent": 4, "uncertain": 2}


def test_report_to_standard_output(tmp_path: Path, smtp_server: Callable[..., SmtpServer]) -> None:
    server = smtp_server(reject_recipients={"user0@example.com"})
    write_campaign(tmp_path, people(2))
    assert run(tmp_path, command(server.url)).returncode == 1
    report = run(tmp_path, [sys.executable, "-m", "mailblast", "report", "people.csv"])
    assert report.returncode == 0
    assert report.stdout.splitlines()[1].startswith("user0@example.com,User 0,failed,550,5.1.1,")

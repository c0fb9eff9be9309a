"""One campaign, whatever happens around it: rehearsals, a moved folder, resent reports, kills.

Every scenario runs real `mailblast` processes against real SMTP servers started here (aiosmtpd,
and `mailblast serve`), and counts what each server received: nobody may get a second copy.
"""

from __future__ import annotations

import csv
import shutil
import signal
import socket
import sqlite3
import subprocess
import sys
from collections import Counter
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

from tests.servers import SmtpServer, refuse_by_policy
from tests.test_resume import command, people, run, start, wait_until, write_campaign

ADDRESSES = [a for a, _ in people(12)]


def mailblast(folder: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return run(folder, [sys.executable, "-m", "mailblast", *args])


def report_rows(path: Path) -> list[dict[str, str]]:
    with path.open(encoding="utf-8-sig", newline="") as f:
        return list(csv.DictReader(f))


@contextmanager
def serve(folder: Path) -> Iterator[str]:
    """`mailblast serve` in its own process; yields its URL."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    proc = start(folder, [sys.executable, "-m", "mailblast", "serve", "--port", str(port)])
    try:
        assert proc.stdout is not None
        assert "capturing mail on" in proc.stdout.readline()
        yield f"smtp://127.0.0.1:{port}"
    finally:
        proc.send_signal(signal.SIGINT)
        proc.communicate(timeout=30)


def test_a_rehearsal_through_serve_never_counts_as_sent(
    tmp_path: Path, smtp_server: Callable[..., SmtpServer]
) -> None:
    write_campaign(tmp_path, people(12))
    with serve(tmp_path) as url:
        rehearsal = run(tmp_path, command(url, "--json"))
        assert rehearsal.returncode == 0, rehearsal.stderr
        assert "is a mailblast capture server: this run is a rehearsal" in rehearsal.stderr
        assert (
            '"destination": {"servers": ["mailblast capture server"], "rehearsal": true}' in rehearsal.stdout
        )
    status = mailblast(tmp_path, "status", "people.csv")
    assert "mailblast capture server (rehearsal)" in status.stdout and "12" in status.stdout
    server = smtp_server()
    real = run(tmp_path, command(server.url))
    assert real.returncode == 0, real.stderr
    assert "ignoring 12 rehearsal deliveries" in real.stderr
    assert sorted(server.recipients()) == sorted(ADDRESSES)  # every row, once
    again = run(tmp_path, command(server.url))
    assert "nothing to send: 12 sent" in again.stderr and len(server.received) == 12
    status = mailblast(tmp_path, "status", "people.csv", "--json")
    assert '"delivered_to": [{"server": "127.0.0.1", "rehearsal": false, "count": 12}]' in status.stdout


def test_a_rehearsal_into_an_outbox_with_a_journal_set_never_counts_as_sent(
    tmp_path: Path, smtp_server: Callable[..., SmtpServer]
) -> None:
    write_campaign(tmp_path, people(12))
    (tmp_path / "mailblast.toml").write_text('template = "t.txt"\njournal = "campaign.sqlite"\n')
    args = [sys.executable, "-m", "mailblast", "send", "people.csv"]
    rehearsal = run(tmp_path, [*args, "--outbox", "outbox"])
    assert rehearsal.returncode == 0, rehearsal.stderr
    assert len(list((tmp_path / "outbox" / "new").iterdir())) == 12
    server = smtp_server()
    real = run(tmp_path, [*args, "--smtp", server.url])
    assert real.returncode == 0, real.stderr
    assert "ignoring 12 rehearsal deliveries" in real.stderr
    assert sorted(server.recipients()) == sorted(ADDRESSES)


def test_a_moved_folder_and_a_renamed_template_resume_the_campaign(
    tmp_path: Path, smtp_server: Callable[..., SmtpServer]
) -> None:
    server = smtp_server()
    before = tmp_path / "before"
    before.mkdir()
    write_campaign(before, people(12))
    first = run(before, command(server.url, "--limit", "5"))
    assert first.returncode == 0, first.stderr
    after = tmp_path / "elsewhere" / "after"
    after.parent.mkdir()
    shutil.move(before, after)
    (after / "t.txt").rename(after / "welcome.txt")
    (after / "welcome.txt").write_text((after / "welcome.txt").read_text().replace("Hello", "Hi"))
    second = run(after, [*command(server.url)[:-3], "welcome.txt", "--smtp", server.url])
    assert second.returncode == 0, second.stderr
    assert "(new campaign)" not in second.stderr and "resuming: 5 sent, 7 to go" in second.stderr
    changed = "template changed since the last run: the rows already sent keep the earlier version"
    assert changed in second.stderr
    assert sorted(server.recipients()) == sorted(ADDRESSES)
    # a copy of the folder, journal and all, is the same campaign too
    copy = tmp_path / "copy"
    shutil.copytree(after, copy)
    third = run(copy, [*command(server.url)[:-3], "welcome.txt", "--smtp", server.url])
    assert "nothing to send: 12 sent" in third.stderr and len(server.received) == 12


def test_only_restart_or_a_new_name_starts_another_campaign(
    tmp_path: Path, smtp_server: Callable[..., SmtpServer]
) -> None:
    server = smtp_server(reply_hook=refuse_by_policy({"user1@example.com"}))  # 5.1.1 would suppress
    write_campaign(tmp_path, people(3))
    assert run(tmp_path, command(server.url)).returncode == 1
    spring = run(tmp_path, command(server.url, "--campaign", "spring", "--report", "unused.csv"))
    assert "campaign 'spring' (new campaign)" in spring.stderr
    assert len(server.received) == 4  # 2 + 2: another campaign sends again
    named = subprocess.run(  # on a terminal, the default report is named after the campaign
        [*command(server.url, "--campaign", "spring", "--json")],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert '"report": "people.spring.not-sent.csv"' in named.stdout, named.stdout
    assert report_rows(tmp_path / "people.spring.not-sent.csv")[0]["email"] == "user1@example.com"
    assert not (tmp_path / "people.not-sent.csv").exists()


def test_report_then_resend_then_retry_failed_gives_nobody_a_second_copy(
    tmp_path: Path, smtp_server: Callable[..., SmtpServer]
) -> None:
    refusing = smtp_server(reply_hook=refuse_by_policy({f"user{i}@example.com" for i in (2, 5, 7, 9)}))
    write_campaign(tmp_path, people(12))
    assert run(tmp_path, command(refusing.url)).returncode == 1
    made = mailblast(tmp_path, "report", "people.csv", "-o", "report.csv")
    assert made.returncode == 0, made.stderr
    rows = report_rows(tmp_path / "report.csv")
    assert [r["email"] for r in rows] == [f"user{i}@example.com" for i in (2, 5, 7, 9)]
    assert len({r["campaign"] for r in rows}) == 1 and rows[0]["campaign"]
    # the report, sent: it joins the campaign; one of its rows still fails
    still = smtp_server(reply_hook=refuse_by_policy({"user9@example.com"}))
    resent = run(tmp_path, [*command(still.url)[:4], "report.csv", *command(still.url)[5:]])
    assert resent.returncode == 1, resent.stderr
    assert "report.csv joins the campaign" in resent.stderr
    assert sorted(still.recipients()) == [f"user{i}@example.com" for i in (2, 5, 7)]
    assert not (tmp_path / "report.csv.mailblast.sqlite").exists()
    # the whole file again, retrying the failed: only the one still failed is sent
    fixed = smtp_server()
    retry = run(tmp_path, command(fixed.url, "--retry-failed"))
    assert retry.returncode == 0, retry.stderr
    assert fixed.recipients() == ["user9@example.com"]
    got = Counter([*refusing.recipients(), *still.recipients(), *fixed.recipients()])
    assert sorted(got) == sorted(ADDRESSES) and set(got.values()) == {1}
    # a file whose rows the campaign holds joins it too, report or not
    (tmp_path / "again.csv").write_text("email,name\nuser3@example.com,User 3\nuser4@example.com,User 4\n")
    joined = run(tmp_path, [*command(fixed.url)[:4], "again.csv", *command(fixed.url)[5:]])
    assert "again.csv joins the campaign" in joined.stderr
    assert "2 row(s) of again.csv were delivered already in this campaign: skipped" in joined.stderr
    assert fixed.recipients() == ["user9@example.com"]


def test_a_kill_9_leaves_a_report_of_every_undelivered_recipient(
    tmp_path: Path, smtp_server: Callable[..., SmtpServer]
) -> None:
    server = smtp_server(data_latency=0.05)
    write_campaign(tmp_path, people(40))
    (tmp_path / "rem.csv").write_text("an earlier report, to be replaced whole\n")
    proc = start(tmp_path, command(server.url, "--connections", "2", "--report", "rem.csv"))
    wait_until(lambda: len(server.received) >= 5)
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=30)
    delivered = set(server.recipients())
    listed = {r["email"] for r in report_rows(tmp_path / "rem.csv")}
    assert set(a for a, _ in people(40)) - delivered <= listed  # nobody undelivered is missing
    assert not list(tmp_path.glob(".rem.csv.*"))  # no temporary file left behind but the kill's
    # the next run rewrites it: only those still undelivered, across both runs
    refusing = smtp_server(reject_recipients={"user39@example.com"})
    rest = run(tmp_path, command(refusing.url, "--report", "rem.csv"))
    assert rest.returncode == 1, rest.stderr
    rows = report_rows(tmp_path / "rem.csv")
    # those the kill left in flight were sent again, and stay listed as uncertain (maybe twice)
    assert [r["email"] for r in rows if r["status"] != "uncertain"] == ["user39@example.com"]


def test_limit_sends_that_many_and_the_next_run_the_rest(
    tmp_path: Path, smtp_server: Callable[..., SmtpServer]
) -> None:
    server = smtp_server()
    write_campaign(tmp_path, people(25))
    first = run(tmp_path, command(server.url, "--limit", "10", "--report", "rest.csv"))
    assert first.returncode == 0, first.stderr
    assert "--limit 10: sending 10 of the 25 to go; the other 15 stay pending" in first.stderr
    assert len(server.received) == 10
    assert len(report_rows(tmp_path / "rest.csv")) == 15  # pending: in the report until delivered
    second = run(tmp_path, command(server.url))
    assert second.returncode == 0, second.stderr
    assert sorted(server.recipients()) == sorted(a for a, _ in people(25))
    assert run(tmp_path, command(server.url, "--limit", "0")).returncode == 2
    no_journal = run(tmp_path, command(server.url, "--limit", "3", "--no-journal"))
    assert no_journal.returncode == 2 and "--limit needs the journal" in no_journal.stderr


def test_another_real_server_stops_before_sending(
    tmp_path: Path, smtp_server: Callable[..., SmtpServer]
) -> None:
    server = smtp_server()
    write_campaign(tmp_path, people(12))
    assert run(tmp_path, command(server.url, "--limit", "4")).returncode == 0
    other = server.url.replace("127.0.0.1", "localhost")  # another name: another provider
    stopped = run(tmp_path, command(other))
    assert stopped.returncode == 2
    said = "was delivered to another server before: 4 to 127.0.0.1; this run sends to localhost"
    assert said in stopped.stderr
    assert "--server-changed" in stopped.stderr and "--restart" in stopped.stderr
    assert len(server.received) == 4
    switched = run(tmp_path, command(other, "--server-changed"))
    assert switched.returncode == 0, switched.stderr
    assert "counted as delivered (--server-changed): 4 to 127.0.0.1" in switched.stderr
    assert sorted(server.recipients()) == sorted(ADDRESSES)
    status = mailblast(tmp_path, "status", "people.csv")
    assert "localhost" in status.stdout and "127.0.0.1" in status.stdout


def test_skip_invalid_sends_the_good_rows_and_reports_the_bad(
    tmp_path: Path, smtp_server: Callable[..., SmtpServer]
) -> None:
    server = smtp_server()
    write_campaign(tmp_path, people(3))
    with (tmp_path / "people.csv").open("a") as f:
        f.write("not-an-address,Nobody\n")
    refused = run(tmp_path, command(server.url))
    assert refused.returncode == 2 and server.received == []
    sent = run(tmp_path, command(server.url, "--skip-invalid", "--report", "r.csv"))
    assert sent.returncode == 1, sent.stderr
    assert sorted(server.recipients()) == [a for a, _ in people(3)]
    (bad,) = report_rows(tmp_path / "r.csv")
    assert bad["email"] == "not-an-address" and bad["status"] == "not attempted"
    assert "invalid row, not sent" in bad["error"]


def test_a_journal_from_before_campaign_identities_is_migrated(
    tmp_path: Path, smtp_server: Callable[..., SmtpServer]
) -> None:
    server = smtp_server()
    write_campaign(tmp_path, people(4))
    path = tmp_path / "people.csv.mailblast.sqlite"
    with sqlite3.connect(path) as db:  # the schema of the journals written so far
        db.executescript(
            """
            CREATE TABLE campaigns (id INTEGER PRIMARY KEY, recipients TEXT NOT NULL,
                template TEXT NOT NULL, template_sha TEXT NOT NULL, header TEXT NOT NULL,
                allow_duplicates INTEGER NOT NULL, created_at REAL NOT NULL, UNIQUE (recipients, template));
            CREATE TABLE runs (id INTEGER PRIMARY KEY, campaign INTEGER NOT NULL REFERENCES campaigns (id),
                started_at REAL NOT NULL, last_at REAL NOT NULL, sending_from REAL,
                rate_window REAL NOT NULL DEFAULT 0);
            CREATE TABLE recipients (campaign INTEGER NOT NULL, key TEXT NOT NULL, row INTEGER NOT NULL,
                line INTEGER NOT NULL, address TEXT NOT NULL, smtputf8 INTEGER NOT NULL, fields TEXT NOT NULL,
                state TEXT NOT NULL DEFAULT 'pending', seen_run INTEGER NOT NULL, message_id TEXT,
                attempts INTEGER NOT NULL DEFAULT 0, smtp_code TEXT, enhanced_code TEXT, error TEXT,
                updated_at REAL, relay TEXT, PRIMARY KEY (campaign, key)) WITHOUT ROWID;
            INSERT INTO campaigns VALUES (1, '/old/place/people.csv', '/old/place/t.txt', 'x',
                '["email", "name"]', 0, 0);
            INSERT INTO runs VALUES (1, 1, 0, 0, NULL, 0);
            """
        )
        for i, (address, name) in enumerate(people(4), 1):
            db.execute(
                "INSERT INTO recipients (campaign, key, row, line, address, smtputf8, fields, state, "
                "seen_run) VALUES (1, ?, ?, ?, ?, 0, ?, ?, 1)",
                (
                    address,
                    i,
                    i + 1,
                    address,
                    f'{{"email": "{address}", "name": "{name}"}}',
                    "sent" if i <= 2 else "pending",
                ),
            )
    db.close()
    status = mailblast(tmp_path, "status", "people.csv")  # read-only: the old schema as it is
    assert status.returncode == 0, status.stderr
    resumed = run(tmp_path, command(server.url))
    assert resumed.returncode == 0, resumed.stderr
    assert "resuming: 2 sent, 2 to go" in resumed.stderr
    assert server.recipients() == ["user2@example.com", "user3@example.com"]

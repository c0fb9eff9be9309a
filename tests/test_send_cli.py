"""`mailblast send` as a user runs it: a subprocess against real in-process servers."""

from __future__ import annotations

import csv
import io
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest

from tests.servers import SmtpServer, child_environ, refuse_by_policy

PASSWORD = "correct-horse-battery-staple"


def campaign(tmp_path: Path, n: int, extra: str = "") -> Path:
    (tmp_path / "t.txt").write_text("From: news@example.com\nSubject: Hi {{ name }}\n\nHello {{ name }}\n")
    path = tmp_path / "people.csv"
    rows = "".join(f"user{i}@example.com,User {i}\n" for i in range(n))
    path.write_text("email,name\n" + rows + extra)
    return path


def mailblast(
    tmp_path: Path, *args: str, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    full_env = child_environ()
    full_env.update(env or {})
    return subprocess.run(
        [sys.executable, "-m", "mailblast", *args],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=90,
        env=full_env,
        stdin=subprocess.DEVNULL,
    )


def test_send_delivers_and_summarises(tmp_path: Path, smtp_server: Callable[..., SmtpServer]) -> None:
    server = smtp_server()
    campaign(tmp_path, 20)
    proc = mailblast(
        tmp_path, "send", "people.csv", "-t", "t.txt", "--smtp", server.url, "--connections", "3"
    )
    assert proc.returncode == 0, proc.stderr
    assert sorted(server.recipients()) == sorted(f"user{i}@example.com" for i in range(20))
    assert proc.stdout == ""  # no report: nothing failed
    for word in ("sent", "failed", "uncertain", "skipped", "elapsed", "average rate"):
        assert word in proc.stderr
    assert "20 message(s)" in proc.stderr


def test_failures_make_a_resendable_report(tmp_path: Path, smtp_server: Callable[..., SmtpServer]) -> None:
    bad = {"user2@example.com", "user5@example.com"}
    server = smtp_server(reply_hook=refuse_by_policy(bad))  # a 5.1.1 would suppress them
    campaign(tmp_path, 8)
    proc = mailblast(
        tmp_path, "send", "people.csv", "-t", "t.txt", "--smtp", server.url, "--report", "failed.csv"
    )
    assert proc.returncode == 1, proc.stderr
    assert "550" in proc.stderr and "failed.csv" in proc.stderr
    rows = list(csv.DictReader((tmp_path / "failed.csv").open()))
    assert {r["email"] for r in rows} == bad
    assert list(rows[0]) == [
        *("email", "name", "status", "smtp_code", "enhanced_code", "error", "attempts"),
        "campaign",  # the report names its campaign (issue 15)
    ]
    assert {(r["status"], r["smtp_code"], r["enhanced_code"], r["attempts"]) for r in rows} == {
        ("failed", "550", "5.7.1", "1")
    }
    # the report is itself a recipients file: sending it again retries just those rows
    fixed = smtp_server()
    proc = mailblast(tmp_path, "send", "failed.csv", "-t", "t.txt", "--smtp", fixed.url)
    assert proc.returncode == 0, proc.stderr
    assert sorted(fixed.recipients()) == sorted(bad)


def test_report_goes_to_standard_output_by_default(
    tmp_path: Path, smtp_server: Callable[..., SmtpServer]
) -> None:
    server = smtp_server(reject_recipients={"user1@example.com"})
    campaign(tmp_path, 3)
    proc = mailblast(tmp_path, "send", "people.csv", "-t", "t.txt", "--smtp", server.url)
    assert proc.returncode == 1
    rows = list(csv.DictReader(io.StringIO(proc.stdout)))
    assert [(r["email"], r["status"]) for r in rows] == [("user1@example.com", "failed")]


def test_bad_rows_mean_nothing_is_sent(tmp_path: Path, smtp_server: Callable[..., SmtpServer]) -> None:
    server = smtp_server()
    campaign(tmp_path, 5, extra="not-an-address,Bad\n")
    proc = mailblast(tmp_path, "send", "people.csv", "-t", "t.txt", "--smtp", server.url)
    assert proc.returncode == 2
    assert "row 6 (line 7)" in proc.stderr and "nothing was sent" in proc.stderr
    assert server.received == [] and server.connections == 0


def test_starttls_auth_with_password_from_environment(
    tmp_path: Path, smtp_server: Callable[..., SmtpServer]
) -> None:
    server = smtp_server(require_starttls=True, auth={"mailer@example.com": PASSWORD})
    campaign(tmp_path, 4)
    url = server.url.replace("smtp://", "smtp+starttls://mailer%40example.com@")
    env = {"MAILBLAST_SMTP_PASSWORD": PASSWORD, "SSL_CERT_FILE": str(server.ca_pem_path)}
    proc = mailblast(tmp_path, "send", "people.csv", "-t", "t.txt", "--smtp", url, env=env)
    assert proc.returncode == 0, proc.stderr
    assert len(server.received) == 4 and all(
        r.tls and r.user == "mailer@example.com" for r in server.received
    )
    assert PASSWORD not in proc.stdout + proc.stderr


def test_wrong_password_exits_3_and_never_shows_it(
    tmp_path: Path, smtp_server: Callable[..., SmtpServer]
) -> None:
    server = smtp_server(require_starttls=True, auth={"mailer": PASSWORD})
    campaign(tmp_path, 4)
    wrong = "Tr0ub4dor&3-wrong"
    url = server.url.replace("smtp://", "smtp://mailer@")
    env = {"MAILBLAST_SMTP_PASSWORD": wrong, "SSL_CERT_FILE": str(server.ca_pem_path)}
    proc = mailblast(
        tmp_path, "send", "people.csv", "-t", "t.txt", "--smtp", url, "--report", "r.csv", env=env
    )
    assert proc.returncode == 3
    assert "error: stopped: 535" in proc.stderr
    assert "Traceback" not in proc.stderr
    assert server.received == []
    report = (tmp_path / "r.csv").read_text()
    assert report.count("not attempted") == 4
    for text in (proc.stdout, proc.stderr, report):
        assert wrong not in text and PASSWORD not in text


def test_untrusted_certificate_is_refused(tmp_path: Path, smtp_server: Callable[..., SmtpServer]) -> None:
    server = smtp_server(implicit_tls=True)
    campaign(tmp_path, 2)
    proc = mailblast(tmp_path, "send", "people.csv", "-t", "t.txt", "--smtp", server.url)
    assert proc.returncode == 3
    assert "TLS" in proc.stderr and "certificate verify failed" in proc.stderr
    assert server.received == []


def test_password_is_not_asked_without_a_terminal(
    tmp_path: Path, smtp_server: Callable[..., SmtpServer]
) -> None:
    server = smtp_server()
    campaign(tmp_path, 1)
    url = server.url.replace("smtp://", "smtp://mailer@")
    proc = mailblast(tmp_path, "send", "people.csv", "-t", "t.txt", "--smtp", url)
    assert proc.returncode == 2 and "MAILBLAST_SMTP_PASSWORD" in proc.stderr


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--smtp", "smtp://u:hunter2@localhost"], "password"),
        (["--smtp", "http://localhost"], "unknown scheme"),
        (["--smtp", "smtp://localhost", "--rate", "3 per second"], "invalid rate"),
        (["--smtp", "smtp://localhost", "--connections", "0"], "connections must be at least 1"),
    ],
)
def test_bad_send_options(tmp_path: Path, args: list[str], message: str) -> None:
    campaign(tmp_path, 1)
    proc = mailblast(tmp_path, "send", "people.csv", "-t", "t.txt", *args)
    assert proc.returncode == 2, proc.stderr
    assert message in proc.stderr and "Traceback" not in proc.stderr
    assert "hunter2" not in proc.stderr


def test_nothing_listening(tmp_path: Path) -> None:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    campaign(tmp_path, 2)
    proc = mailblast(tmp_path, "send", "people.csv", "-t", "t.txt", "--smtp", f"smtp://127.0.0.1:{port}")
    assert proc.returncode == 3
    assert "cannot connect to smtp://127.0.0.1" in proc.stderr and "Traceback" not in proc.stderr


def test_url_and_rate_from_config_and_environment(
    tmp_path: Path, smtp_server: Callable[..., SmtpServer]
) -> None:
    server = smtp_server(rate=(3, 1.0))
    campaign(tmp_path, 5)
    (tmp_path / "mailblast.toml").write_text(
        f'template = "t.txt"\n[smtp]\nurl = "{server.url}"\nrate = "3/s"\nconnections = 3\n'
    )
    proc = mailblast(tmp_path, "send", "people.csv")
    assert proc.returncode == 0, proc.stderr
    assert len(server.received) == 5 and server.rejected == []
    other = smtp_server()
    proc = mailblast(tmp_path, "send", "people.csv", "--no-journal", env={"MAILBLAST_SMTP_URL": other.url})
    assert proc.returncode == 0 and len(other.received) == 5


def test_brackets_in_messages_are_printed_as_they_are(tmp_path: Path) -> None:
    campaign(tmp_path, 1)
    proc = mailblast(tmp_path, "send", "people.csv", "-t", "t.txt")
    assert "[smtp] table of mailblast.toml" in proc.stderr

"""Issue 9's "output a person can read": each point checked in the output a user sees."""

from __future__ import annotations

import contextlib
import os
import pty
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest
from aiosmtpd.smtp import Envelope
from typer.testing import CliRunner

from mailblast.cli import app
from tests.servers import SmtpServer


def run(*args: str | Path, cwd: Path, env: dict[str, str] | None = None) -> tuple[int, str]:
    """mailblast in-process from ``cwd``; the exit code and stdout+stderr."""
    old = Path.cwd()
    os.chdir(cwd)
    try:
        result = CliRunner().invoke(app, [str(a) for a in args], catch_exceptions=False, env=env)
    finally:
        os.chdir(old)
    return result.exit_code, result.output


def rows_file(folder: Path, n: int, header: str = "email,name", sep: str = ",") -> Path:
    path = folder / "people.csv"
    lines = [header.replace(",", sep)] + [f"user{i}@example.com{sep}User {i}" for i in range(n)]
    path.write_text("\n".join(lines) + "\n")
    return path


# -- 1. an error in the template or the config is reported once -------------------------


@pytest.mark.parametrize(
    ("template", "expected"),
    [
        ("Subject: Hi\n\nHello\n", "t.txt: the message has no sender"),
        ("From: a@example.com\nSubject: {{ nmae }}\n\nHello\n", 't.txt: the template uses "nmae"'),
        ("From: a@example.com\nAttachment: gone.pdf\n\nHello\n", "t.txt: attachment 'gone.pdf' not found"),
        ("From: a@example.com\nDate: today\n\nHello\n", "t.txt: the template sets Date"),
        ("From: nobody\n\nHello\n", "t.txt: From: 'nobody' is not a valid address"),
    ],
)
def test_a_template_error_is_reported_once(tmp_path: Path, template: str, expected: str) -> None:
    rows_file(tmp_path, 500)
    (tmp_path / "t.txt").write_text(template)
    for command in ("check", "send"):
        extra = ["--smtp", "smtp://127.0.0.1:9"] if command == "send" else []
        code, out = run(command, "people.csv", "-t", "t.txt", *extra, cwd=tmp_path)
        assert code == 2, out
        errors = [line for line in out.splitlines() if line.startswith("error:")]
        assert errors == [errors[0]] and expected in errors[0], out
        assert "(all 500 rows)" in errors[0]
        assert "Hint: fix t.txt, then run the command again; nothing was sent" in out
        assert "rows above" not in out


def test_a_row_error_is_still_reported_per_row_and_both_are_named(tmp_path: Path) -> None:
    rows_file(tmp_path, 3)
    with (tmp_path / "people.csv").open("a") as f:
        f.write("not-an-address,Bad\n")
    (tmp_path / "t.txt").write_text("Subject: Hi\n\nHello\n")
    code, out = run("check", "people.csv", "-t", "t.txt", cwd=tmp_path)
    assert code == 2
    assert "people.csv, row 4 (line 5), column \"email\": 'not-an-address' is not a valid address" in out
    assert "t.txt: the message has no sender" in out and "(3 rows, the first is row 1)" in out
    assert "Hint: fix t.txt and the rows above" in out


def test_a_bad_from_in_the_config_is_one_error_naming_the_file(tmp_path: Path) -> None:
    rows_file(tmp_path, 200)
    (tmp_path / "t.txt").write_text("Subject: Hi\n\nHello\n")
    (tmp_path / "mailblast.toml").write_text('from = "news at example.com"\n')
    code, out = run("check", "people.csv", "-t", "t.txt", cwd=tmp_path)
    assert code == 2
    assert out.count("error:") == 1 and "the sender is not valid" in out
    assert "hint: fix from in mailblast.toml (or --from)" in out


# -- points sent through a real server: a subprocess, as a user runs it -------------------

TEMPLATE = "From: news@example.com\nSubject: Hi {{ name }}\n\nHello {{ name }}\n"


def campaign(folder: Path, n: int) -> Path:
    (folder / "t.txt").write_text(TEMPLATE)
    return rows_file(folder, n)


def mailblast(
    folder: Path, *args: str, env: dict[str, str] | None = None, tty_stdout: bool = False
) -> subprocess.CompletedProcess[str]:
    """A real subprocess; with ``tty_stdout`` its standard output is a terminal (a pty)."""
    full_env = {k: v for k, v in os.environ.items() if not k.startswith("MAILBLAST_")}
    full_env.update(env or {})
    command = [sys.executable, "-m", "mailblast", *args]
    if not tty_stdout:
        return subprocess.run(
            command, cwd=folder, capture_output=True, text=True, timeout=90, env=full_env,
            stdin=subprocess.DEVNULL,
        )  # fmt: skip
    master, slave = pty.openpty()
    try:
        proc = subprocess.run(
            command, cwd=folder, stdout=slave, stderr=subprocess.PIPE, text=True, timeout=90,
            env=full_env, stdin=subprocess.DEVNULL,
        )  # fmt: skip
        os.close(slave)
        out = b""
        with contextlib.suppress(OSError):  # EIO once the pty is drained
            while chunk := os.read(master, 65536):
                out += chunk
    finally:
        os.close(master)
    proc.stdout = out.decode()
    return proc


def wrong_password(server: SmtpServer) -> tuple[str, dict[str, str]]:
    return server.url.replace("smtp://", "smtp://mailer@"), {"MAILBLAST_SMTP_PASSWORD": "wrong"}


def test_a_fatal_stop_on_a_terminal_writes_the_report_beside_the_file(
    tmp_path: Path, smtp_server: Callable[..., SmtpServer]
) -> None:
    server = smtp_server(auth={"mailer": "right"})
    campaign(tmp_path, 300)
    url, env = wrong_password(server)
    proc = mailblast(tmp_path, "send", "people.csv", "-t", "t.txt", "--smtp", url, env=env, tty_stdout=True)
    assert proc.returncode == 3
    assert "not attempted" not in proc.stdout and len(proc.stdout.splitlines()) < 5
    assert "report of the 300 recipient(s) not sent: people.not-sent.csv" in proc.stderr
    report = (tmp_path / "people.not-sent.csv").read_text().splitlines()
    assert len(report) == 301 and report[1].startswith("user0@example.com,User 0,not attempted")
    assert len(proc.stderr.splitlines()) < 25


def test_without_a_journal_the_hint_names_the_report_that_exists(
    tmp_path: Path, smtp_server: Callable[..., SmtpServer]
) -> None:
    server = smtp_server(auth={"mailer": "right"})
    campaign(tmp_path, 5)
    url, env = wrong_password(server)
    args = ("send", "people.csv", "-t", "t.txt", "--smtp", url, "--no-journal")
    on_tty = mailblast(tmp_path, *args, env=env, tty_stdout=True)
    assert "mailblast send people.not-sent.csv" in on_tty.stderr
    assert (tmp_path / "people.not-sent.csv").is_file()
    piped = mailblast(tmp_path, *args, env=env)
    assert "REPORT.csv" not in piped.stderr and "the report printed above" in piped.stderr
    assert piped.stdout.count("not attempted") == 5  # not a terminal: the report is the output
    chosen = mailblast(tmp_path, *args, "--report", "out.csv", env=env)
    assert "mailblast send out.csv" in chosen.stderr


def summary_rate(output: str) -> float:
    line = next(line for line in output.splitlines() if "average rate" in line)
    return float(line.split()[-2])


@pytest.mark.parametrize(("rows", "rate", "limit"), [(1, "2/s", 2.0), (12, "6/s", 6.0)])
def test_average_rate_never_exceeds_the_limit_and_status_agrees(
    tmp_path: Path, smtp_server: Callable[..., SmtpServer], rows: int, rate: str, limit: float
) -> None:
    server = smtp_server()
    campaign(tmp_path, rows)
    proc = mailblast(tmp_path, "send", "people.csv", "-t", "t.txt", "--smtp", server.url, "--rate", rate)
    assert proc.returncode == 0, proc.stderr
    sent = summary_rate(proc.stderr)
    status = mailblast(tmp_path, "status", "people.csv", "-t", "t.txt")
    assert 0 < sent <= limit
    assert abs(summary_rate(status.stdout) - sent) <= 0.05 * limit  # measured the same way


def test_failures_are_grouped_by_code_with_and_n_more(
    tmp_path: Path, smtp_server: Callable[..., SmtpServer]
) -> None:
    unknown = {f"user{i}@example.com" for i in range(8)}

    def refuse(stage: str, envelope: Envelope, accepted: int) -> str | None:
        if stage != "data":
            return None
        number = int(envelope.rcpt_tos[0].removeprefix("user").split("@")[0])
        return f"550 5.7.{number - 7} policy {number}" if 8 <= number < 15 else None

    server = smtp_server(reject_recipients=unknown, reply_hook=refuse)
    campaign(tmp_path, 20)
    proc = mailblast(tmp_path, "send", "people.csv", "-t", "t.txt", "--smtp", server.url)
    assert proc.returncode == 1, proc.stderr
    status = mailblast(tmp_path, "status", "people.csv", "-t", "t.txt")
    for output in (proc.stderr, status.stdout):
        lines = [line.strip() for line in output.splitlines() if " × " in line]
        assert len(lines) == 5, output
        assert lines[0].startswith("8 × failed 550 5.1.1, for example: <user")
        assert "Recipient address rejected: User unknown" in lines[0]
        assert "and 3 more reason(s), 3 recipient(s): the report lists each" in output


def test_a_rerun_after_failures_says_what_failed(
    tmp_path: Path, smtp_server: Callable[..., SmtpServer]
) -> None:
    server = smtp_server(reject_recipients={"user1@example.com"})
    campaign(tmp_path, 3)
    args = ("send", "people.csv", "-t", "t.txt", "--smtp", server.url)
    assert mailblast(tmp_path, *args).returncode == 1
    again = mailblast(tmp_path, *args)
    assert again.returncode == 0
    assert "nothing to send: 2 sent, 1 failed earlier (--retry-failed sends them again)" in again.stderr
    assert "sent already" not in again.stderr


def test_wording_reads_as_plain_english(tmp_path: Path, smtp_server: Callable[..., SmtpServer]) -> None:
    server = smtp_server(reject_recipients={"user1@example.com"})
    campaign(tmp_path, 3)
    proc = mailblast(tmp_path, "send", "people.csv", "-t", "t.txt", "--smtp", server.url, "--report", "r.csv")
    assert "report of the 1 recipient(s) not sent: r.csv" in proc.stderr
    assert "plainly" not in proc.stderr
    (tmp_path / "mailblast.toml").write_text("[smtp]\nconnections = 'two'\n")
    code, out = run("check", "people.csv", "-t", "t.txt", cwd=tmp_path)
    assert code == 2 and "smtp.connections should be a whole number, not 'two'" in out
    assert " a int" not in out

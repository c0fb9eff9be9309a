"""Issue 9's "output a person can read": each point checked in the output a user sees."""

from __future__ import annotations

import contextlib
import email
import email.policy
import os
import pty
import re
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import pytest
from aiosmtpd.smtp import Envelope
from typer.testing import CliRunner

from mailblast.cli import app
from tests.servers import SmtpServer, child_environ, refuse_by_policy
from tests.test_cli import run  # mailblast in-process: (exit code, stdout+stderr)


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
    folder: Path,
    *args: str,
    env: dict[str, str] | None = None,
    tty_stdout: bool = False,
    tty_stderr: bool = False,
) -> subprocess.CompletedProcess[str]:
    """A real subprocess; ``tty_stdout`` / ``tty_stderr`` make that stream a terminal (a pty)."""
    full_env = child_environ()
    full_env.update(env or {}, COLUMNS="120")
    command = [sys.executable, "-m", "mailblast", *args]
    if not (tty_stdout or tty_stderr):
        return subprocess.run(
            command, cwd=folder, capture_output=True, text=True, timeout=90, env=full_env,
            stdin=subprocess.DEVNULL,
        )  # fmt: skip
    master, slave = pty.openpty()
    try:
        proc = subprocess.Popen(
            command, cwd=folder, env=full_env, stdin=subprocess.DEVNULL, text=True,
            stdout=slave if tty_stdout else subprocess.PIPE,
            stderr=slave if tty_stderr else subprocess.PIPE,
        )  # fmt: skip
        os.close(slave)
        seen = b""
        with contextlib.suppress(OSError):  # EIO once the pty is drained and closed
            while chunk := os.read(master, 65536):  # read while it runs: a full pty would block it
                seen += chunk
        piped = (proc.stdout or proc.stderr).read()  # type: ignore[union-attr]
        proc.wait(timeout=90)
    finally:
        os.close(master)
    text = seen.decode(errors="replace")
    out, err = (text, piped) if tty_stdout else (piped, text)
    return subprocess.CompletedProcess(command, proc.returncode, out, err)


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
    server = smtp_server(reply_hook=refuse_by_policy({"user1@example.com"}))  # 5.1.1 would suppress
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


# -- 13. quiet, the password prompt, the bars ----------------------------------------------


def test_quiet_hides_the_checking_bar_too(tmp_path: Path, smtp_server: Callable[..., SmtpServer]) -> None:
    server = smtp_server()
    campaign(tmp_path, 20)
    args = ("send", "people.csv", "-t", "t.txt", "--smtp", server.url, "--no-journal")
    loud = mailblast(tmp_path, *args, tty_stderr=True)
    assert loud.returncode == 0, loud.stderr
    assert "checking rows" in loud.stderr and "100%" in loud.stderr  # the checking bar ends full
    assert "20/20" in loud.stderr  # the sending bar shows the last message
    quiet = mailblast(tmp_path, *args, "-q", tty_stderr=True)
    assert quiet.returncode == 0
    assert "checking rows" not in quiet.stderr and "━" not in quiet.stderr


def test_the_password_is_asked_after_the_check_pass(tmp_path: Path) -> None:
    campaign(tmp_path, 2)
    with (tmp_path / "people.csv").open("a") as f:
        f.write("broken,Nobody\n")
    proc = mailblast(tmp_path, "send", "people.csv", "-t", "t.txt", "--smtp", "smtp://mailer@127.0.0.1:9")
    assert proc.returncode == 2
    assert "'broken' is not a valid address" in proc.stderr
    assert "password" not in proc.stderr.lower()  # the rows were found bad before any prompt


# -- 7. Markdown -----------------------------------------------------------------------------


def test_markdown_keeps_line_breaks_has_a_style_and_embeds_local_images(tmp_path: Path) -> None:
    rows_file(tmp_path, 1)
    (tmp_path / "t.md").write_text(
        "From: a@example.com\nSubject: Hi\n\nHello {{ name }}!\n\n![logo](images/logo.png)\n"
        "![ok](https://example.com/logo.png)\n\nSee you soon,\nThe team\n"
    )
    code, out = run("check", "people.csv", "-t", "t.md", cwd=tmp_path)
    assert code == 2  # the image is not there: every row would go out with a broken one
    assert "t.md: the image 'images/logo.png' not found" in out
    (tmp_path / "images").mkdir()
    (tmp_path / "images" / "logo.png").write_bytes(b"\x89PNG\r\n\x1a\nlogo")
    code, out = run("send", "people.csv", "-t", "t.md", "--dry-run", "--out", "eml", cwd=tmp_path)
    assert code == 0, out
    message = email.message_from_bytes(
        next((tmp_path / "eml").iterdir()).read_bytes(), policy=email.policy.default
    )
    html = message.get_body(("html",)).get_content().replace("\r\n", "\n")  # type: ignore[union-attr]
    assert "See you soon,<br>\nThe team" in html
    assert "max-width" in html and 'src="https://example.com/logo.png"' in html
    assert re.search(r'<body style="[^"]*max-width', html)  # the default style, inlined
    code, out = run("check", "people.csv", "-t", "t.md", cwd=tmp_path)
    assert code == 0 and "logo" not in out, out


# -- 8. did you mean -------------------------------------------------------------------------


def test_check_warns_of_a_missing_subject_and_a_misspelt_header(tmp_path: Path) -> None:
    rows_file(tmp_path, 2)
    (tmp_path / "t.txt").write_text("From: a@example.com\nSubjet: Hi\nX-Campaign: 7\n\nHello\n")
    code, out = run("check", "people.csv", "-t", "t.txt", cwd=tmp_path)
    assert code == 0, out
    assert "warning: t.txt: no Subject: header" in out
    assert "warning: t.txt, line 2: unknown header Subjet:, did you mean Subject:?" in out
    assert "X-Campaign" not in out


@pytest.mark.parametrize(
    ("toml", "message", "hint"),
    [
        ('smtp_url = "smtp://x"\n', "unknown setting smtp_url; did you mean smtp.url?", "under [smtp]"),
        ('[smtp]\npassword = "x"\n', "smtp.password: a password is never kept", "MAILBLAST_SMTP_PASSWORD"),
        ('tempalte = "t.txt"\n', "unknown setting tempalte; did you mean template?", "at the top"),
    ],
)
def test_unknown_config_keys_get_a_did_you_mean(tmp_path: Path, toml: str, message: str, hint: str) -> None:
    campaign(tmp_path, 1)
    (tmp_path / "mailblast.toml").write_text(toml)
    code, out = run("check", "people.csv", "-t", "t.txt", cwd=tmp_path)
    assert code == 2
    assert message in out and hint in out.splitlines()[-1]


def test_a_misspelt_column_gets_a_did_you_mean_in_the_users_terms(tmp_path: Path) -> None:
    rows_file(tmp_path, 2, header="email,First Name")
    (tmp_path / "t.txt").write_text('From: a@example.com\nSubject: Hi {{ row["Frist Name"] }}\n\nHello\n')
    code, out = run("check", "people.csv", "-t", "t.txt", cwd=tmp_path)
    assert code == 2
    assert 'the template uses "Frist Name", which is not a column' in out
    assert 'did you mean "First Name"?' in out
    assert "dict object" not in out and "has no attribute" not in out


# -- 9. reserved names -----------------------------------------------------------------------


def test_addresses_at_reserved_names_are_accepted_with_a_warning(tmp_path: Path) -> None:
    (tmp_path / "r.csv").write_text(
        "email\nann@host.test\nbob@relay.local\ncat@corp.internal\ndan@example.org\neve@example.org\n"
    )
    (tmp_path / "t.txt").write_text("From: a@company.com\nSubject: Hi\n\nHello\n")
    code, out = run("check", "r.csv", "-t", "t.txt", cwd=tmp_path)
    assert code == 0, out
    for domain in ("host.test", "relay.local", "corp.internal"):
        assert f"1 address(es) at {domain}" in out
    assert "2 address(es) at example.org (the first in row 4)" in out
    assert out.count("a name reserved for tests") == 4  # one warning per domain


# -- 10. the report opens where the recipients file did ------------------------------------


def test_the_report_keeps_the_separator_and_gets_a_bom_for_a_spreadsheet(
    tmp_path: Path, smtp_server: Callable[..., SmtpServer]
) -> None:
    server = smtp_server(reject_recipients={"rene@example.com"})
    (tmp_path / "t.txt").write_text(TEMPLATE)
    (tmp_path / "people.csv").write_bytes(
        "Email Address;name\nrene@example.com;René\nann@example.com;Ann\n".encode("cp1252")
    )
    args = ("send", "people.csv", "-t", "t.txt", "--smtp", server.url, "--email-column", "Email Address")
    proc = mailblast(tmp_path, *args, "--report", "r.csv")
    assert proc.returncode == 1, proc.stderr
    data = (tmp_path / "r.csv").read_bytes()
    assert data.startswith(b"\xef\xbb\xbf")
    lines = data.decode("utf-8-sig").splitlines()
    assert lines[0] == "Email Address;name;status;smtp_code;enhanced_code;error;attempts;campaign"
    assert lines[1].startswith("rene@example.com;René;failed;550;5.1.1;")
    assert mailblast(tmp_path, "report", "people.csv", "-t", "t.txt", "-o", "again.csv").returncode == 0
    assert (tmp_path / "again.csv").read_bytes().startswith(b"\xef\xbb\xbfEmail Address;name;")


def test_a_utf8_file_without_bom_gets_a_report_without_one(
    tmp_path: Path, smtp_server: Callable[..., SmtpServer]
) -> None:
    server = smtp_server(reject_recipients={"user0@example.com"})
    campaign(tmp_path, 2)
    proc = mailblast(tmp_path, "send", "people.csv", "-t", "t.txt", "--smtp", server.url, "--report", "r.csv")
    assert proc.returncode == 1
    assert (tmp_path / "r.csv").read_bytes().startswith(b"email,name,status")


# -- 11 and 14. check validates [smtp] and says what it detected ---------------------------


@pytest.mark.parametrize(
    ("smtp", "message"),
    [
        ('rate = "3 a second"', "invalid rate '3 a second'"),
        ('url = "smtp//mail.example.com"', "invalid SMTP URL"),
        ("connections = 0", "connections must be at least 1, not 0"),
        ("timeout = -1", "timeout must be more than 0 seconds"),
    ],
)
def test_check_validates_the_smtp_settings(tmp_path: Path, smtp: str, message: str) -> None:
    campaign(tmp_path, 1)
    (tmp_path / "mailblast.toml").write_text(f"[smtp]\n{smtp}\n")
    code, out = run("check", "people.csv", "-t", "t.txt", cwd=tmp_path)
    assert code == 2 and message in out, out


def test_check_says_what_it_detected(tmp_path: Path) -> None:
    (tmp_path / "t.txt").write_text(TEMPLATE)
    (tmp_path / "people.csv").write_bytes("Email Address;name\nrene@example.com;René\n".encode("cp1252"))
    (tmp_path / "mailblast.toml").write_text(
        '[smtp]\nurl = "smtp+starttls://mail.example.com"\nrate = "3/s"\n'
    )
    code, out = run("check", "people.csv", "-t", "t.txt", cwd=tmp_path)
    assert code == 0, out
    detected = out.splitlines()[0]  # which Windows code page is a guess on one short row
    assert re.fullmatch(
        r'people.csv: cp125\d, separated by semicolons, addresses in column "Email Address"', detected
    )
    assert "server: smtp+starttls://mail.example.com:587, at most 3/s" in out


# -- 6. TLS mistakes get their own hints --------------------------------------------------


@pytest.mark.parametrize(
    ("server_kind", "scheme", "error", "hint"),
    [
        (
            "tls",
            "smtps",
            "did not answer in TLS (WRONG_VERSION_NUMBER)",
            "port 587 usually wants smtp+starttls://",
        ),
        ("plain", "smtp+starttls", "does not offer STARTTLS", "port 465 wants smtps://"),
        ("implicit_tls", "smtps", "certificate verify failed", "set SSL_CERT_FILE to that CA's PEM file"),
    ],
)
def test_tls_mistakes_get_their_own_hints(
    tmp_path: Path,
    smtp_server: Callable[..., SmtpServer],
    server_kind: str,
    scheme: str,
    error: str,
    hint: str,
) -> None:
    server = smtp_server(**({} if server_kind == "plain" else {server_kind: True}))
    campaign(tmp_path, 2)
    url = server.url.replace("smtp://", f"{scheme}://")
    proc = mailblast(tmp_path, "send", "people.csv", "-t", "t.txt", "--smtp", url, "--report", "r.csv")
    assert proc.returncode == 3
    (error_line,) = [line for line in proc.stderr.splitlines() if line.startswith("error:")]
    (hint_line,) = [line for line in proc.stderr.splitlines() if line.startswith("hint:")]
    assert error in error_line and hint in hint_line
    assert server.received == []


def test_a_connection_error_does_not_repeat_itself(tmp_path: Path) -> None:
    campaign(tmp_path, 1)
    proc = mailblast(tmp_path, "send", "people.csv", "-t", "t.txt", "--smtp", "smtp://127.0.0.1:9")
    assert proc.returncode == 3
    assert "error: stopped: cannot connect to smtp://127.0.0.1:9: connection refused" in proc.stderr
    assert "Error connecting" not in proc.stderr and proc.stderr.count("127.0.0.1") <= 3


# -- 3. --help shows defaults and groups -------------------------------------------------------


def help_text(*command: str) -> str:
    result = CliRunner().invoke(app, [*command, "--help"], env={"COLUMNS": "160", "TERMINAL_WIDTH": "160"})
    assert result.exit_code == 0, result.output
    return result.output


def test_help_shows_defaults_groups_and_an_example() -> None:
    send = help_text("send")
    for shown in ("Connections at once. [default: 2]", "[default: 100]", "[default: 5]", "[default: 30]"):
        assert shown in send
    assert "at once ." not in send and "<bool>" not in send
    for panel in ("SMTP server", "Rate and connections", "Journal and re-runs", "Recipients file", "Message"):
        assert f"─ {panel} ─" in send
    for command in ("check", "preview", "send", "status", "report", "serve"):
        text = help_text(command)
        assert f"mailblast {command} " in text, command
        assert not re.search(r"\w \.\s", text), command  # "at once ." where markup ate a [bracket]
    root = help_text()
    assert "--install-completion" in root and "Example: mailblast check" in root


# -- 16. Windows, simulated: no loop.add_signal_handler, no fcntl -------------------------

AS_ON_WINDOWS = """
import asyncio, sys
sys.modules["fcntl"] = None  # as on Windows: importing it fails
def no_signal_handlers(self, *args, **kwargs):
    raise NotImplementedError  # as Windows' event loops do
asyncio.unix_events._UnixSelectorEventLoop.add_signal_handler = no_signal_handlers
from mailblast.cli import app
app(sys.argv[1:], prog_name="mailblast")
"""


def start_as_on_windows(folder: Path, *args: str) -> subprocess.Popen[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("MAILBLAST_")}
    return subprocess.Popen(
        [sys.executable, "-W", "ignore", "-c", AS_ON_WINDOWS, *args], cwd=folder, env=env, text=True,
        stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
    )  # fmt: skip


def wait_for(condition: Callable[[], bool], seconds: float = 30.0) -> None:
    deadline = time.monotonic() + seconds
    while not condition():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.05)


def test_without_loop_signal_handlers_ctrl_c_still_stops_gracefully(
    tmp_path: Path, smtp_server: Callable[..., SmtpServer]
) -> None:
    server = smtp_server()
    campaign(tmp_path, 3)
    proc = start_as_on_windows(
        tmp_path, "send", "people.csv", "-t", "t.txt", "--smtp", server.url, "--rate", "1/min"
    )
    wait_for(lambda: len(server.received) == 1)
    time.sleep(0.3)
    proc.send_signal(signal.SIGINT)
    out, err = proc.communicate(timeout=30)
    assert proc.returncode == 3, err
    assert "Traceback" not in err and "NotImplementedError" not in err
    assert "interrupted: 2 recipient(s) not attempted" in err
    assert out.count("not attempted") == 2  # the report, on standard output (not a terminal)


def test_without_fcntl_the_journal_lock_still_keeps_one_send_at_a_time(
    tmp_path: Path, smtp_server: Callable[..., SmtpServer]
) -> None:
    server = smtp_server(data_latency=0.3)
    campaign(tmp_path, 20)
    args = ("send", "people.csv", "-t", "t.txt", "--smtp", server.url, "--connections", "1")
    first = start_as_on_windows(tmp_path, *args)
    wait_for(lambda: len(server.received) >= 1)
    second = start_as_on_windows(tmp_path, *args)
    _, err = second.communicate(timeout=30)
    assert second.returncode == 2, err
    assert "another mailblast send is using people.csv.mailblast.sqlite" in err
    _, err = first.communicate(timeout=60)
    assert first.returncode == 0, err
    assert len(server.received) == 20  # the refused second run sent nothing
    again = start_as_on_windows(tmp_path, *args)  # released: a later run takes the lock again
    _, err = again.communicate(timeout=30)
    assert again.returncode == 0 and "nothing to send: 20 sent" in err, err

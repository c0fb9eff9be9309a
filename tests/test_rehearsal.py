"""`send` with no server configured: the whole path runs into a local Maildir, nothing leaves."""

from __future__ import annotations

import mailbox
import shutil
from collections.abc import Callable
from email.parser import BytesParser
from email.policy import default as default_policy
from pathlib import Path

from tests.servers import SmtpServer
from tests.test_capture import free_port
from tests.test_send_cli import campaign, mailblast

REPO = Path(__file__).resolve().parent.parent
EXAMPLE_ADDRESSES = ["ada@example.com", "grace@example.com", "jose@example.com", "linus@example.org"]


def stored(outbox: Path) -> list:
    box = mailbox.Maildir(outbox, factory=lambda f: BytesParser(policy=default_policy).parse(f))
    return list(box.values())


def copy_examples(tmp_path: Path) -> Path:
    """The examples and templates folders as a fresh checkout has them."""
    shutil.copytree(
        REPO / "examples", tmp_path / "examples", ignore=shutil.ignore_patterns("outbox", "*.sqlite*")
    )
    shutil.copytree(REPO / "templates", tmp_path / "templates")
    return tmp_path / "examples"


def test_the_quick_start_sends_the_examples_into_the_local_outbox(tmp_path: Path) -> None:
    examples = copy_examples(tmp_path)
    proc = mailblast(examples, "send", "recipients.csv")
    assert proc.returncode == 0, proc.stderr
    lines = proc.stderr.splitlines()
    assert lines[0] == (
        "no SMTP server configured: delivering into outbox/ through a local capture server; "
        "nothing leaves this machine"
    )
    assert lines[-2].startswith("nothing left this machine: 4 message(s) delivered into outbox/ (it holds 4;")
    assert lines[-1].startswith("to send for real: pass --smtp smtp://HOST:PORT, set MAILBLAST_SMTP_URL")
    messages = stored(examples / "outbox")
    assert sorted(str(m["Envelope-to"]) for m in messages) == EXAMPLE_ADDRESSES
    assert {str(m["From"]) for m in messages} == {"mailblast demo <demo@example.com>"}
    ada = next(m for m in messages if m["Envelope-to"] == "ada@example.com")
    assert ada["Subject"] == "Welcome to Analytical Engines, Ada Lovelace!"
    assert "Hello Ada Lovelace" in ada.get_body(("plain",)).get_content()
    # the rehearsal's journal lives in the outbox, not beside the recipients file
    assert (examples / "outbox" / "journal.mailblast.sqlite").is_file()
    assert not list(examples.glob("*.sqlite*"))
    assert proc.stdout == ""

    again = mailblast(examples, "send", "recipients.csv")
    assert again.returncode == 0, again.stderr
    assert "nothing to send" in again.stderr
    assert len(stored(examples / "outbox")) == 4  # nothing twice


def test_status_and_report_after_a_rehearsal_read_its_journal(tmp_path: Path) -> None:
    examples = copy_examples(tmp_path)
    sent = mailblast(examples, "send", "recipients.csv")
    assert sent.returncode == 0
    assert "message(s) to outbox/ (the capture server)" in sent.stderr  # not its loopback URL
    status = mailblast(examples, "status", "recipients.csv")
    assert status.returncode == 0, status.stderr
    said = " ".join((status.stdout + status.stderr).split())
    assert "the rehearsal's journal" in said and f"sent {len(EXAMPLE_ADDRESSES)}" in said
    report = mailblast(examples, "report", "recipients.csv")
    assert report.returncode == 0, report.stderr
    assert report.stdout.splitlines()[1:] == []  # the header only: every one was sent


def test_a_real_send_after_the_rehearsal_still_sends_to_everyone(
    tmp_path: Path, smtp_server: Callable[..., SmtpServer]
) -> None:
    examples = copy_examples(tmp_path)
    assert mailblast(examples, "send", "recipients.csv").returncode == 0
    server = smtp_server()
    proc = mailblast(examples, "send", "recipients.csv", env={"MAILBLAST_SMTP_URL": server.url})
    assert proc.returncode == 0, proc.stderr
    assert sorted(server.recipients()) == EXAMPLE_ADDRESSES
    assert "nothing leaves this machine" not in proc.stderr


def test_outbox_asks_for_the_rehearsal_even_with_a_server_configured(
    tmp_path: Path, smtp_server: Callable[..., SmtpServer]
) -> None:
    server = smtp_server()
    campaign(tmp_path, 3)
    proc = mailblast(
        tmp_path, "send", "people.csv", "-t", "t.txt", "--outbox", "rehearsal",
        env={"MAILBLAST_SMTP_URL": server.url},
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    assert proc.stderr.startswith("--outbox given: delivering into rehearsal/")
    assert server.received == []
    assert len(stored(tmp_path / "rehearsal")) == 3


def test_a_bad_row_sends_nothing_into_the_outbox_either(tmp_path: Path) -> None:
    campaign(tmp_path, 2, extra="not-an-address,Nobody\n")
    proc = mailblast(tmp_path, "send", "people.csv", "-t", "t.txt")
    assert proc.returncode == 2
    assert "nothing left this machine" not in proc.stderr
    assert stored(tmp_path / "outbox") == []


def test_outbox_sends_nothing_through_the_configured_relays(
    tmp_path: Path, smtp_server: Callable[..., SmtpServer]
) -> None:
    relay = smtp_server()
    campaign(tmp_path, 2)
    (tmp_path / "mailblast.toml").write_text(f'[[relay]]\nurl = "{relay.url}"\n')
    proc = mailblast(tmp_path, "send", "people.csv", "-t", "t.txt", "--outbox", "rehearsal")
    assert proc.returncode == 0, proc.stderr
    assert relay.received == [] and relay.connections == 0
    assert len(stored(tmp_path / "rehearsal")) == 2


def test_the_capture_server_is_recognised_before_a_run_and_a_real_server_is_not(
    tmp_path: Path, smtp_server: Callable[..., SmtpServer]
) -> None:
    from mailblast.campaign.rehearsal import is_capture_server
    from mailblast.server.capture import in_background
    from mailblast.smtp.urls import parse_smtp_url

    with in_background(tmp_path / "outbox") as capture:
        assert is_capture_server(parse_smtp_url(capture.url), timeout=10)
    assert not is_capture_server(parse_smtp_url(smtp_server().url), timeout=10)
    nobody = parse_smtp_url(f"smtp://127.0.0.1:{free_port()}")
    assert not is_capture_server(nobody, timeout=10)  # unreachable: taken as real, the send says why

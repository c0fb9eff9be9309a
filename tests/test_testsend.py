"""`send --test-to`: the real messages, to one address only, and the campaign left as it was."""

from __future__ import annotations

import re
from collections.abc import Callable
from pathlib import Path

import pytest

from tests.servers import SmtpServer
from tests.test_send_cli import mailblast

ME = "me@mydomain.org"


def campaign(tmp_path: Path, n: int = 5) -> None:
    (tmp_path / "t.txt").write_text(
        "From: news@mydomain.org\nSubject: Hi {{ name }}\n"
        "Cc: boss@mydomain.org\nBcc: archive@mydomain.org\n\nHello {{ name }}\n"
    )
    rows = "".join(f"user{i}@mydomain.org,User {i}\n" for i in range(n))
    (tmp_path / "people.csv").write_text("email,name\n" + rows)


def without_date(data: bytes) -> bytes:
    """The message but its Date, and its Message-ID, which is the campaign's (a test send is one)."""
    return re.sub(rb"^(Date|Message-ID): .*\r?\n", b"", data, flags=re.M).replace(b"\r\n", b"\n")


def test_test_to_sends_the_first_messages_to_one_address_only(
    tmp_path: Path, smtp_server: Callable[..., SmtpServer]
) -> None:
    server = smtp_server()
    campaign(tmp_path)
    proc = mailblast(tmp_path, "send", "people.csv", "-t", "t.txt", "--smtp", server.url, "--test-to", ME)
    assert proc.returncode == 0, proc.stderr
    received = server.received
    assert len(received) == 3
    assert all(m.rcpt_tos == [ME] for m in received)  # no Cc, no Bcc, not the row's address
    assert sorted(m.message["To"] for m in received) == [f"user{i}@mydomain.org" for i in range(3)]
    assert "test send: 3 message(s), each to me@mydomain.org only" in proc.stderr
    # exactly what the recipient would get: the dry run's message, Date and Message-ID aside
    assert (
        mailblast(tmp_path, "send", "people.csv", "-t", "t.txt", "--dry-run", "--out", "eml").returncode == 0
    )
    first = next(m for m in received if m.message["To"] == "user0@mydomain.org")
    assert without_date(first.data) == without_date(
        (tmp_path / "eml" / "000001-user0@mydomain.org.eml").read_bytes()
    )
    assert first.message["Cc"] == "boss@mydomain.org" and "Bcc" not in first.message


def test_test_to_leaves_the_journal_untouched(tmp_path: Path, smtp_server: Callable[..., SmtpServer]) -> None:
    server = smtp_server()
    campaign(tmp_path)
    args = ["send", "people.csv", "-t", "t.txt", "--smtp", server.url]
    assert mailblast(tmp_path, *args, "--test-to", ME, "--test-count", "2").returncode == 0
    assert not list(tmp_path.glob("*.sqlite*"))
    proc = mailblast(tmp_path, *args)
    assert proc.returncode == 0, proc.stderr
    to_rows = sorted(a for m in server.received[2:] for a in m.rcpt_tos if a.startswith("user"))
    assert to_rows == [f"user{i}@mydomain.org" for i in range(5)]
    # and once a campaign has a journal, a test send changes nothing in it
    journal = next(tmp_path.glob("*.sqlite"))
    before = journal.read_bytes()
    assert mailblast(tmp_path, *args, "--test-to", ME, "--row", "4").returncode == 0
    assert journal.read_bytes() == before
    assert server.received[-1].rcpt_tos == [ME] and server.received[-1].message["To"] == "user3@mydomain.org"


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["--test-to", ME, "--test-count", "2", "--row", "1"], "--test-count and --row exclude each other"),
        (["--row", "2"], "--row goes with --test-to"),
        (["--test-to", "not-an-address"], "--test-to 'not-an-address' is not a valid address"),
        (["--test-to", ME, "--row", "9"], "row 9 is not one that would be sent"),
        (["--test-to", ME, "--test-count", "0"], "--test-count must be at least 1"),
    ],
)
def test_bad_test_send_options(
    tmp_path: Path, smtp_server: Callable[..., SmtpServer], extra: list[str], message: str
) -> None:
    server = smtp_server()
    campaign(tmp_path)
    proc = mailblast(tmp_path, "send", "people.csv", "-t", "t.txt", "--smtp", server.url, *extra)
    assert proc.returncode == 2, proc.stderr
    assert f"error: {message}" in proc.stderr
    assert server.received == []


def test_a_test_copy_of_a_template_written_list_unsubscribe_cannot_unsubscribe_the_recipient(
    tmp_path: Path, smtp_server: Callable[..., SmtpServer]
) -> None:
    """The template writes List-Unsubscribe itself (no [unsubscribe] in mailblast.toml): the test
    copy's links are rendered with the test copy's values, as [unsubscribe]'s are, and the rest of
    the copy stays the recipient's."""
    server = smtp_server()
    (tmp_path / "t.txt").write_text(
        "From: news@mydomain.org\nSubject: Hi {{ name }}\n"
        "List-Unsubscribe: <https://mydomain.org/unsub?id={{ id }}&e={{ email }}>,\n"
        " <mailto:unsub+{{ id }}@mydomain.org>\n"
        "List-Unsubscribe-Post: List-Unsubscribe=One-Click\n"
        "\nHello {{ name }}\n"
    )
    (tmp_path / "people.csv").write_text("email,name,id\nuser0@mydomain.org,User 0,7007\n")
    args = ["send", "people.csv", "-t", "t.txt", "--smtp", server.url]
    proc = mailblast(tmp_path, *args, "--test-to", ME)
    assert proc.returncode == 0, proc.stderr
    (received,) = server.received
    assert received.rcpt_tos == [ME]
    message = received.message
    links = " ".join(str(message["List-Unsubscribe"]).split())
    assert "7007" not in links and "user0" not in links
    assert links == (
        f"<https://mydomain.org/unsub?id=mailblast-test-copy&e={ME}>, "
        "<mailto:unsub+mailblast-test-copy@mydomain.org>"
    )
    assert message["List-Unsubscribe-Post"] == "List-Unsubscribe=One-Click"
    assert message["Subject"] == "Hi User 0" and message["To"] == "user0@mydomain.org"
    # the real send still carries the recipient's own links
    assert mailblast(tmp_path, *args).returncode == 0
    real = server.received[-1].message
    assert "id=7007&e=user0@mydomain.org" in str(real["List-Unsubscribe"])

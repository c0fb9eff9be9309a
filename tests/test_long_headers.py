"""Header lines stay within 998 octets (issue 16): a long row value is folded (RFC 5322) or written
as encoded words (RFC 2047), and the rehearsal's own server, which refuses longer lines, takes it."""

from __future__ import annotations

import csv
import mailbox
from email.parser import BytesParser, Parser
from email.policy import default as default_policy
from pathlib import Path

import pytest

from tests.test_send_cli import mailblast

TEMPLATE = (
    "From: news@example.com\nTo: {{ mailbox(name, email) }}\nSubject: Hello {{ s }}\n"
    "X-Campaign-Note: {{ s }}\n\nHi\n"
)
VALUES = {
    "ascii": "x" * 1200,
    "words": "word " * 300,
    "unicode": "é" * 1200,
    "mixed": "y" * 1100 + " Zoë",
}


def letters(text: str) -> str:
    return "".join(text.split())  # Python's reader puts a space between adjacent encoded words


@pytest.mark.parametrize("address", ["ann@example.com", "zoë@example.org"], ids=["ascii", "smtputf8"])
@pytest.mark.parametrize("kind", list(VALUES))
def test_a_long_value_is_folded_and_the_rehearsal_takes_it(tmp_path: Path, kind: str, address: str) -> None:
    value = VALUES[kind]
    (tmp_path / "t.txt").write_text(TEMPLATE, encoding="utf-8")
    with (tmp_path / "people.csv").open("w", encoding="utf-8", newline="") as f:
        csv.writer(f).writerows([["email", "name", "s"], [address, value[:1100], value]])
    assert mailblast(tmp_path, "check", "people.csv", "-t", "t.txt").returncode == 0
    proc = mailblast(tmp_path, "send", "people.csv", "-t", "t.txt", "--outbox", "outbox")
    assert proc.returncode == 0, proc.stderr
    (key,) = mailbox.Maildir(tmp_path / "outbox").keys()
    data = (tmp_path / "outbox" / "new" / key).read_bytes()
    assert max(len(line) for line in data.splitlines()) <= 998
    if address.isascii():
        message = BytesParser(policy=default_policy).parsebytes(data)
    else:  # SMTPUTF8: raw UTF-8 in the headers
        message = Parser(policy=default_policy).parsestr(data.decode())
    assert message["Subject"] == f"Hello {value.strip()}"
    assert message["X-Campaign-Note"] == value.strip()
    (to,) = message["To"].addresses
    assert (letters(to.display_name), to.addr_spec) == (letters(value[:1100]), address)


def test_an_unsubscribe_link_too_long_for_a_line_is_a_clear_error(tmp_path: Path) -> None:
    (tmp_path / "t.txt").write_text("From: news@example.com\nSubject: Hi\n\nHi\n")
    (tmp_path / "people.csv").write_text(f"email,id\nann@example.com,{'7' * 1200}\n")
    (tmp_path / "mailblast.toml").write_text('[unsubscribe]\nurl = "https://example.com/u?id={{ id }}"\n')
    proc = mailblast(tmp_path, "check", "people.csv", "-t", "t.txt")
    assert proc.returncode == 2
    assert 'row 1 (line 2), column "id": [unsubscribe] url is 1,225 characters long' in proc.stdout

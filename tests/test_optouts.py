"""The shared suppression list: what a suppression file's lines mean, `suppress`, refused at send."""

from __future__ import annotations

import csv
import io
import os
import string
from collections.abc import Callable
from pathlib import Path
from typing import Any

from hypothesis import given
from hypothesis import strategies as st

from mailblast.campaign.suppress import SuppressionList, address_key, parse_line
from tests.servers import SmtpServer, refuse_by_policy
from tests.test_send_cli import campaign, mailblast

LINES = [
    "user1@example.com,2026-11-01",  # a CSV without a header
    "Bob <user2@example.com>",
    "user3@example.com   # asked by phone",
    "mailto:user4@example.com",
]


def test_every_way_of_writing_one_address_on_a_line_is_understood(
    tmp_path: Path, smtp_server: Callable[..., SmtpServer]
) -> None:
    server = smtp_server()
    campaign(tmp_path, 6)
    (tmp_path / "optouts.txt").write_text("\n".join(LINES) + "\n")
    args = ["send", "people.csv", "-t", "t.txt", "--smtp", server.url, "--suppress", "optouts.txt"]
    proc = mailblast(tmp_path, *args)
    assert proc.returncode == 0, proc.stderr
    assert sorted(server.recipients()) == ["user0@example.com", "user5@example.com"]
    assert "suppression list: 4 address(es)" in proc.stderr
    assert "not understood" not in proc.stderr


def test_a_line_not_understood_is_a_warning_naming_the_file_and_line(
    tmp_path: Path, smtp_server: Callable[..., SmtpServer]
) -> None:
    campaign(tmp_path, 3)
    (tmp_path / "optouts.txt").write_text(
        "user1@example.com\nuser2@example.com user9@example.com\n\nnobody\n"
    )
    proc = mailblast(tmp_path, "check", "people.csv", "-t", "t.txt", "--suppress", "optouts.txt")
    assert proc.returncode == 0, proc.stderr
    assert "optouts.txt, line 2: not understood, no address in it: 'user2@example.com user9@example.com'" in (
        proc.stdout
    )
    assert "optouts.txt, line 4: not understood, no address in it: 'nobody'" in proc.stdout


# -- hypothesis: any address, written any of the ways people write one ----------------------

_local = st.text(string.ascii_letters + string.digits + "._+-", min_size=1, max_size=20).filter(
    lambda s: not s.startswith(".") and not s.endswith(".") and ".." not in s
)
_domain = st.lists(
    st.text(string.ascii_lowercase + string.digits, min_size=1, max_size=10), min_size=2, max_size=3
)
addresses = st.builds(lambda local, labels: f"{local}@{'.'.join(labels)}", _local, _domain)
_ways = [
    lambda a: a,
    lambda a: f"  {a}  ",
    lambda a: f"<{a}>",
    lambda a: f"Some One <{a}>",
    lambda a: f'"One, Some" <{a}>',
    lambda a: f"{a},2026-11-01,550 5.1.1",
    lambda a: f"2026-11-01;{a};bounce",
    lambda a: f"{a}\t# unsubscribed by phone",
    lambda a: f"mailto:{a}",
    lambda a: f"MAILTO:{a}?subject=unsubscribe",
]


@given(addresses, st.sampled_from(_ways))
def test_a_line_holding_one_address_gives_that_address(address: str, way: Callable[[str], str]) -> None:
    assert address_key(parse_line(way(address)) or "") == address.casefold()


@given(st.text(max_size=80))
def test_any_line_gives_one_address_or_none_and_never_raises(line: str) -> None:
    found = parse_line(line)
    assert found is None or ("@" in found and found == found.strip())


_items = st.one_of(
    addresses.map(lambda a: ("addr", a)),
    st.text(string.ascii_letters + " ", min_size=1).map(lambda t: ("junk", t)),
)


@given(addresses, st.lists(_items, max_size=8))
def test_a_file_suppresses_each_address_and_warns_of_each_other_line(
    tmp_path_factory: Any, first: str, rest: list[tuple[str, str]]
) -> None:
    """A file of one address a line (its first line an address, so no header): every address is
    suppressed, and every other line that is not blank is a warning naming its line."""
    items = [("addr", first), *rest]
    path = tmp_path_factory.mktemp("list") / "list.txt"
    path.write_text("".join(f"{text}\n" for _, text in items))
    listed = SuppressionList([path])
    try:
        assert all(text in listed for kind, text in items if kind == "addr")
        junk = [n for n, (kind, text) in enumerate(items, 1) if kind == "junk" and text.strip()]
        named = [int(w.split(", line ")[1].split(":")[0]) for w in listed.warnings]
        assert named == junk
    finally:
        listed.close()


# -- the shared list: suppress add|remove|list|export -----------------------------------------


def test_suppress_commands_manage_one_list_every_send_uses(
    tmp_path: Path, smtp_server: Callable[..., SmtpServer]
) -> None:
    server = smtp_server()
    campaign(tmp_path, 4)
    added = mailblast(
        tmp_path, "suppress", "add", "User1@Example.com", "Two <user2@example.com>", "--reason", "asked"
    )
    assert added.returncode == 0, added.stderr
    listed = mailblast(tmp_path, "suppress", "list")
    assert "User1@Example.com  manual, " in listed.stdout and ": asked" in listed.stdout
    exported = mailblast(tmp_path, "suppress", "export")
    rows = list(csv.DictReader(io.StringIO(exported.stdout)))
    assert [(r["email"], r["source"], r["reason"]) for r in rows] == [
        ("User1@Example.com", "manual", "asked"),
        ("user2@example.com", "manual", "asked"),
    ] or sorted(r["email"] for r in rows) == ["User1@Example.com", "user2@example.com"]
    proc = mailblast(tmp_path, "send", "people.csv", "-t", "t.txt", "--smtp", server.url)
    assert proc.returncode == 0, proc.stderr
    assert sorted(server.recipients()) == ["user0@example.com", "user3@example.com"]
    removed = mailblast(tmp_path, "suppress", "remove", "user2@example.com")
    assert removed.returncode == 0, removed.stderr
    assert "user2@example.com" not in mailblast(tmp_path, "suppress", "list").stdout
    assert mailblast(tmp_path, "suppress", "add", "not an address").returncode == 2


# -- refused at send --------------------------------------------------------------------------


def test_an_address_refused_as_unknown_at_rcpt_is_left_out_of_the_next_campaign(
    tmp_path: Path, smtp_server: Callable[..., SmtpServer]
) -> None:
    server = smtp_server(reject_recipients={"user1@example.com"})
    campaign(tmp_path, 3)
    first = mailblast(tmp_path, "send", "people.csv", "-t", "t.txt", "--smtp", server.url)
    assert first.returncode == 1, first.stderr
    assert "are now on the shared suppression list" in first.stderr and "user1@example.com" in first.stderr
    listed = mailblast(tmp_path, "suppress", "list").stdout
    assert "user1@example.com  refused at send, " in listed and "550 5.1.1" in listed
    # the next campaign: another file, another template
    (tmp_path / "next.txt").write_text("From: news@example.com\nSubject: Next\n\nNext {{ name }}\n")
    healthy = smtp_server()
    second = mailblast(
        tmp_path, "send", "people.csv", "-t", "next.txt", "--smtp", healthy.url, "--campaign", "next"
    )
    assert second.returncode == 0, second.stderr
    assert sorted(healthy.recipients()) == ["user0@example.com", "user2@example.com"]


def test_a_refusal_of_the_content_does_not_suppress_the_address(
    tmp_path: Path, smtp_server: Callable[..., SmtpServer]
) -> None:
    server = smtp_server(reply_hook=refuse_by_policy({"user1@example.com"}))
    campaign(tmp_path, 2)
    proc = mailblast(tmp_path, "send", "people.csv", "-t", "t.txt", "--smtp", server.url)
    assert proc.returncode == 1, proc.stderr
    assert "user1@example.com" not in mailblast(tmp_path, "suppress", "list").stdout


# -- a suppressed address is not mailed as another row's Cc or Bcc -------------------------------


def test_a_suppressed_cc_or_bcc_is_dropped_from_that_message_and_the_row_says_so(
    tmp_path: Path, smtp_server: Callable[..., SmtpServer]
) -> None:
    server = smtp_server()
    (tmp_path / "t.txt").write_text(
        "From: news@example.com\nCc: {{ manager }}\nBcc: {{ audit }}\nSubject: Hi {{ name }}\n\nHello\n"
    )
    (tmp_path / "people.csv").write_text(
        "email,name,manager,audit\n"
        "ann@example.com,Ann,Boss <boss@example.com>,audit@example.com\n"
        "bob@example.com,Bob,lead@example.com,Audit <AUDIT@example.com>\n"
    )
    (tmp_path / "optouts.txt").write_text("boss@example.com\naudit@example.com\n")
    args = ["send", "people.csv", "-t", "t.txt", "--smtp", server.url, "--suppress", "optouts.txt"]
    proc = mailblast(tmp_path, *args)
    assert proc.returncode == 0, proc.stderr
    envelopes = {m.rcpt_tos[0]: m for m in server.received}
    assert envelopes["ann@example.com"].rcpt_tos == ["ann@example.com"]
    assert envelopes["bob@example.com"].rcpt_tos == ["bob@example.com", "lead@example.com"]
    assert "boss@example.com" not in envelopes["ann@example.com"].data.decode()  # not in its Cc either
    assert envelopes["ann@example.com"].message["Cc"] is None
    assert "row 1 (line 2): suppressed, so not mailed with this row: boss@example.com (Cc), " in proc.stderr
    assert "row 2 (line 3): suppressed, so not mailed with this row: AUDIT@example.com (Bcc)" in proc.stderr
    check = mailblast(tmp_path, "check", "people.csv", "-t", "t.txt", "--suppress", "optouts.txt")
    assert check.returncode == 0 and "row 1 (line 2): suppressed, so not mailed with this row" in check.stdout


def test_a_row_cannot_attach_the_signing_key_or_the_shared_list(tmp_path: Path) -> None:
    """Both live in the user's folders; with attachments_dir there, a row still cannot mail them."""
    campaign(tmp_path, 1)
    assert mailblast(tmp_path, "suppress", "add", "someone@example.com").returncode == 0
    data = Path(os.environ["XDG_DATA_HOME"]) / "mailblast"
    (tmp_path / "t.txt").write_text("From: news@example.com\nAttachment: {{ file }}\nSubject: Hi\n\nHello\n")
    (tmp_path / "mailblast.toml").write_text('return_path = "bounces+{token}@example.com"\n')  # makes the key
    config = Path(os.environ["XDG_CONFIG_HOME"]) / "mailblast"
    for folder, name, what in (
        (data, "suppression.sqlite", "the shared suppression list"),
        (config, "signing.key", "the key that signs unsubscribe links"),
    ):
        (tmp_path / "people.csv").write_text(f"email,file\nuser0@example.com,{name}\n")
        proc = mailblast(tmp_path, "check", "people.csv", "-t", "t.txt", "--attachments-dir", str(folder))
        assert proc.returncode == 2, proc.stdout
        assert what in proc.stdout + proc.stderr
        assert (folder / name).is_file()

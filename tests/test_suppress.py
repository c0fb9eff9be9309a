"""The suppression list: read from files, and honoured by check, send, status and report."""

from __future__ import annotations

import csv
import io
from collections.abc import Callable
from pathlib import Path

import pytest

from mailblast.campaign.suppress import SuppressionList
from mailblast.errors import InputError
from tests.servers import SmtpServer
from tests.test_send_cli import campaign, mailblast


def test_plain_list_and_csv_compare_case_insensitively(tmp_path: Path) -> None:
    plain = tmp_path / "unsubscribed.txt"
    plain.write_text("# exported 2026-11-30\n\nUser1@Example.COM\n  <user2@example.com>  \nnot an address\n")
    table = tmp_path / "bounces.csv"
    table.write_text("date;E-Mail;reason\n2026-11-01;USER3@EXAMPLE.COM;550\n2026-11-02;;\n")
    suppressed = SuppressionList([plain, table])
    try:
        for address in ("user1@example.com", "user2@EXAMPLE.com", "user3@example.com"):
            assert address in suppressed
        assert "user4@example.com" not in suppressed
        assert suppressed.entries == 3
        assert suppressed.warnings == [
            f"{plain}, line 5: not understood, no address in it: 'not an address'",
            f"{table}, line 3: not understood, no address in it: '2026-11-02;;'",
        ]
    finally:
        suppressed.close()


def test_an_internationalised_domain_matches_in_either_form(tmp_path: Path) -> None:
    path = tmp_path / "list.txt"
    path.write_text("anna@xn--bcher-kva.de\n")
    suppressed = SuppressionList([path])
    try:
        assert "anna@bücher.de" in suppressed
    finally:
        suppressed.close()


def test_a_large_list_is_kept_on_disk(tmp_path: Path) -> None:
    path = tmp_path / "big.txt"
    path.write_text("".join(f"u{i}@example.com\n" for i in range(20_000)) + "U5@EXAMPLE.COM\n")
    suppressed = SuppressionList([path])
    try:
        assert suppressed.entries == 20_000  # the repeat, in another case, is the same address
        assert "u19999@example.com" in suppressed and "u20000@example.com" not in suppressed
    finally:
        suppressed.close()


@pytest.mark.parametrize(
    ("content", "message"),
    [
        (None, "no such suppression file"),
        (
            "date,reason\n2026-11-01,550\n",
            'no address column: none of the columns (date, reason) is named "email"',
        ),
        (b"\xff\xfe\x00\xd8 \x00\x00", "cannot tell which text encoding"),
    ],
)
def test_a_file_that_cannot_be_read_is_one_clear_error(
    tmp_path: Path, content: str | bytes | None, message: str
) -> None:
    path = tmp_path / "list.csv"
    if isinstance(content, str):
        path.write_text(content)
    elif isinstance(content, bytes):
        path.write_bytes(content)
    with pytest.raises(InputError) as caught:
        SuppressionList([path])
    assert message in caught.value.message and str(path) in caught.value.message


def test_suppressed_addresses_receive_nothing(tmp_path: Path, smtp_server: Callable[..., SmtpServer]) -> None:
    server = smtp_server(reject_recipients={"user4@example.com"})
    campaign(tmp_path, 6)
    (tmp_path / "unsubscribed.txt").write_text("USER1@example.com\n")
    (tmp_path / "bounces.csv").write_text("email,when\nuser2@example.com,yesterday\n")
    (tmp_path / "mailblast.toml").write_text('suppress = ["bounces.csv"]\n')
    args = ["send", "people.csv", "-t", "t.txt", "--smtp", server.url, "--suppress", "unsubscribed.txt"]
    proc = mailblast(tmp_path, *args)
    assert proc.returncode == 1, proc.stderr  # user4 was refused
    assert sorted(server.recipients()) == ["user0@example.com", "user3@example.com", "user5@example.com"]
    assert "suppression list: 2 address(es) from bounces.csv, unsubscribed.txt" in proc.stderr
    summary = proc.stderr[proc.stderr.index("summary") :]
    assert "suppressed" in summary and "failed" in summary
    assert [line.split() for line in summary.splitlines() if "suppressed" in line] == [["suppressed", "2"]]
    # the report has the failure only: a suppressed row is not one to resend
    report = list(csv.DictReader(io.StringIO(proc.stdout)))
    assert [r["email"] for r in report] == ["user4@example.com"]

    status = mailblast(tmp_path, "status", "people.csv")
    assert status.returncode == 0, status.stderr
    assert ["suppressed", "2"] in [line.split() for line in status.stdout.splitlines()]
    listed = mailblast(tmp_path, "status", "people.csv", "--suppressed")
    assert listed.stdout.splitlines() == ["user1@example.com", "user2@example.com"]
    again = mailblast(tmp_path, "report", "people.csv")
    assert [r["email"] for r in csv.DictReader(io.StringIO(again.stdout))] == ["user4@example.com"]

    # user5 unsubscribes, user1 is taken off the list; --retry-failed may not reach a suppressed row
    (tmp_path / "unsubscribed.txt").write_text("user4@example.com\nuser5@example.com\n")
    before = len(server.received)
    proc = mailblast(tmp_path, *args, "--retry-failed")
    assert proc.returncode == 0, proc.stderr
    assert [m.rcpt_tos for m in server.received[before:]] == [["user1@example.com"]]
    listed = mailblast(tmp_path, "status", "people.csv", "--suppressed")
    # user5 was sent before it was listed: it stays sent
    assert listed.stdout.splitlines() == ["user2@example.com", "user4@example.com"]


def test_without_a_journal_suppressed_rows_are_left_out(
    tmp_path: Path, smtp_server: Callable[..., SmtpServer]
) -> None:
    server = smtp_server()
    campaign(tmp_path, 3)
    (tmp_path / "list.txt").write_text("user0@example.com\nuser2@example.com\n")
    args = ["send", "people.csv", "-t", "t.txt", "--smtp", server.url, "--suppress", "list.txt"]
    proc = mailblast(tmp_path, *args, "--no-journal")
    assert proc.returncode == 0, proc.stderr
    assert server.recipients() == ["user1@example.com"]


def test_check_counts_them_and_an_unreadable_list_stops_the_send(
    tmp_path: Path, smtp_server: Callable[..., SmtpServer]
) -> None:
    server = smtp_server()
    campaign(tmp_path, 4)
    (tmp_path / "list.txt").write_text("user3@example.com\n")
    check = mailblast(tmp_path, "check", "people.csv", "-t", "t.txt", "--suppress", "list.txt")
    assert check.returncode == 0, check.stderr
    names = ("rows", "valid", "invalid", "duplicates", "empty", "suppressed")
    counts = {w[0]: w[1] for w in map(str.split, check.stdout.splitlines()) if w and w[0] in names}
    assert counts == {
        "rows": "4",
        "valid": "3",
        "invalid": "0",
        "duplicates": "0",
        "empty": "0",
        "suppressed": "1",
    }

    args = ["send", "people.csv", "-t", "t.txt", "--smtp", server.url, "--suppress", "list.txt"]
    proc = mailblast(tmp_path, *args, "--suppress", "missing.txt")
    assert proc.returncode == 2
    assert proc.stderr.splitlines()[0] == "error: missing.txt: no such suppression file"
    assert server.connections == 0
    assert not (tmp_path / "people.csv.mailblast.sqlite").exists()

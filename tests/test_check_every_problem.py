"""`check` names every problem a row has in one run (issue 15): each attachment, each image, each
address header, each unsubscribe link, not only the first one rendering stopped at."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import pytest

from tests.servers import SmtpServer
from tests.test_cli import run
from tests.test_send_cli import mailblast

# Row 2 has two missing attachments and a bad Cc, each in its own column; rows 1 and 3 are fine.
PEOPLE = (
    "email,name,cc,report,invoice\n"
    "ann@example.com,Ann,,,\n"
    "bob@example.com,Bob,bob@@example.com,report-bob.pdf,invoice-bob.pdf\n"
    "cy@example.com,Cy,,,\n"
)
TEMPLATE = (
    "From: news@example.com\n"
    "Subject: Hi {{ name }}\n"
    "{% if cc %}Cc: {{ cc }}\n{% endif %}"
    "{% if report %}Attachment: {{ report }}\n{% endif %}"
    "{% if invoice %}Attachment: {{ invoice }}\n{% endif %}\n"
    "\n"
    "Hello {{ name }}\n"
)


def _campaign(tmp_path: Path) -> None:
    (tmp_path / "people.csv").write_text(PEOPLE)
    (tmp_path / "t.txt").write_text(TEMPLATE)


def _lines_of_row_2(out: str) -> list[str]:
    return [line for line in out.splitlines() if "people.csv, row 2 (line 3)" in line]


def test_check_names_both_missing_attachments_and_the_bad_cc_in_one_run(tmp_path: Path) -> None:
    _campaign(tmp_path)
    code, out = run("check", "people.csv", "-t", "t.txt", cwd=tmp_path)
    assert code == 2, out
    lines = _lines_of_row_2(out)
    assert len(lines) == 3, out  # each its own line: file, row, column, what is wrong
    assert any('column "report"' in line and "'report-bob.pdf' not found" in line for line in lines)
    assert any('column "invoice"' in line and "'invoice-bob.pdf' not found" in line for line in lines)
    assert any('column "cc"' in line and "Cc:" in line for line in lines)
    assert "1 invalid row(s)" in out and "nothing was sent" in out


def test_check_json_lists_all_three(tmp_path: Path) -> None:
    _campaign(tmp_path)
    proc = mailblast(tmp_path, "check", "people.csv", "-t", "t.txt", "--json")
    doc = json.loads(proc.stdout)
    assert proc.returncode == doc["exit_code"] == 2
    assert doc["rows"]["invalid"] == 1 and doc["rows"]["valid"] == 2
    found = {(p["row"], p["column"], p["severity"]) for p in doc["problems"]}
    assert found == {(2, "report", "error"), (2, "invoice", "error"), (2, "cc", "error")}
    messages = " | ".join(p["message"] for p in doc["problems"])
    assert "'report-bob.pdf' not found" in messages and "'invoice-bob.pdf' not found" in messages
    assert "Cc: 'bob@@example.com' is not a valid address" in messages


def test_rows_checked_in_worker_processes_keep_every_problem(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The check pass renders in worker processes for large files: the row's other problems
    travel back with its first."""
    from mailblast.campaign import check

    _campaign(tmp_path)
    outputs = []
    for threshold in (10**12, 0):  # in this process, then in workers
        monkeypatch.setattr(check, "CHECK_IN_WORKERS_FROM", threshold)
        code, out = run("check", "people.csv", "-t", "t.txt", cwd=tmp_path)
        assert code == 2
        outputs.append(out)
    assert outputs[0] == outputs[1]
    assert len(_lines_of_row_2(outputs[1])) == 3


def test_a_missing_image_and_a_bad_cc_are_both_named(tmp_path: Path) -> None:
    (tmp_path / "people.csv").write_text(
        "email,name,cc,photo\nann@example.com,Ann,,\nbob@example.com,Bob,bob@,face-bob.png\n"
    )
    (tmp_path / "t.html").write_text(
        "From: news@example.com\nSubject: Hi\n{% if cc %}Cc: {{ cc }}\n{% endif %}\n\n"
        '<p>Hello {{ name }}</p>{% if photo %}<img src="{{ photo }}">{% endif %}\n'
    )
    code, out = run("check", "people.csv", "-t", "t.html", cwd=tmp_path)
    assert code == 2, out
    lines = _lines_of_row_2(out)
    assert len(lines) == 2, out
    assert any('column "photo"' in line and "the image 'face-bob.png' not found" in line for line in lines)
    assert any('column "cc"' in line and "Cc: 'bob@' is not" in line for line in lines)


def test_one_attachment_missing_of_several_is_one_line(tmp_path: Path) -> None:
    """A row with only one problem still has exactly one line (no duplicates, no knock-on errors)."""
    _campaign(tmp_path)
    (tmp_path / "report-bob.pdf").write_bytes(b"%PDF-1.4\n")
    (tmp_path / "people.csv").write_text(PEOPLE.replace("bob@@example.com", ""))
    code, out = run("check", "people.csv", "-t", "t.txt", cwd=tmp_path)
    assert code == 2, out
    [line] = _lines_of_row_2(out)
    assert 'column "invoice"' in line and "'invoice-bob.pdf' not found" in line


def test_send_refuses_the_file_with_the_same_problems_and_sends_nothing(
    tmp_path: Path, smtp_server: Callable[..., SmtpServer]
) -> None:
    server = smtp_server()
    _campaign(tmp_path)
    proc = mailblast(tmp_path, "send", "people.csv", "-t", "t.txt", "--smtp", server.url)
    assert proc.returncode == 2, proc.stderr
    assert server.recipients() == []
    lines = _lines_of_row_2(proc.stderr)
    assert len(lines) == 3, proc.stderr
    for column in ("report", "invoice", "cc"):
        assert any(f'column "{column}"' in line for line in lines), proc.stderr

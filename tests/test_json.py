"""`--json` on check, send and status: standard output holds exactly one JSON document."""

from __future__ import annotations

import csv
import json
from collections.abc import Callable
from pathlib import Path

from tests.servers import SmtpServer
from tests.test_send_cli import campaign, mailblast


def test_check_json(tmp_path: Path) -> None:
    campaign(tmp_path, 3, extra="broken,Nobody\n")
    proc = mailblast(tmp_path, "check", "people.csv", "-t", "t.txt", "--json")
    doc = json.loads(proc.stdout)  # the whole of standard output is one document
    assert proc.returncode == doc["exit_code"] == 2
    assert doc["command"] == "check" and doc["recipients_file"] == "people.csv"
    assert doc["rows"]["rows"] == 4 and doc["rows"]["valid"] == 3 and doc["rows"]["invalid"] == 1
    assert (doc["encoding"], doc["delimiter"], doc["email_column"]) == ("utf-8", ",", "email")
    # exit 2 is an error in the document too (it was null before issue 15), with every problem listed
    assert doc["elapsed_seconds"] >= 0 and doc["error"]["message"] == "1 invalid row(s)"
    [problem] = doc["problems"]
    where = (problem["row"], problem["line"], problem["column"], problem["severity"])
    assert where == (4, 5, "email", "error")
    assert "'broken' is not a valid address" in problem["message"]
    assert "'broken' is not a valid address" in proc.stderr  # what a person reads stays on stderr


def test_send_json_names_the_report_beside_the_recipients(
    tmp_path: Path, smtp_server: Callable[..., SmtpServer]
) -> None:
    server = smtp_server(reject_recipients={"user1@example.com"})
    campaign(tmp_path, 4)
    proc = mailblast(tmp_path, "send", "people.csv", "-t", "t.txt", "--smtp", server.url, "--json")
    doc = json.loads(proc.stdout)
    assert proc.returncode == doc["exit_code"] == 1
    assert doc["counts"] == {
        "total": 4, "sent": 3, "failed": 1, "uncertain": 0, "skipped": 0, "suppressed": 0, "not_attempted": 0,
    }  # fmt: skip
    assert doc["journal"] == "people.csv.mailblast.sqlite" and (tmp_path / doc["journal"]).is_file()
    report = tmp_path / doc["report"]
    assert report.parent == tmp_path and doc["report_rows"] == 1
    assert [r["email"] for r in csv.DictReader(report.open(encoding="utf-8-sig"))] == ["user1@example.com"]
    assert doc["elapsed_seconds"] > 0 and doc["rate_per_second"] > 0
    assert "summary" in proc.stderr

    status = mailblast(tmp_path, "status", "people.csv", "-t", "t.txt", "--json")
    doc = json.loads(status.stdout)
    assert status.returncode == doc["exit_code"] == 0
    assert doc["counts"]["sent"] == 3 and doc["counts"]["failed"] == 1
    assert doc["journal"] == "people.csv.mailblast.sqlite" and doc["started"]
    [failure] = doc["failures"]
    assert (failure["status"], failure["smtp_code"], failure["enhanced_code"], failure["count"]) == (
        "failed", "550", "5.1.1", 1,
    )  # fmt: skip


def test_send_json_into_the_outbox_and_nothing_to_report(tmp_path: Path) -> None:
    campaign(tmp_path, 2)
    proc = mailblast(tmp_path, "send", "people.csv", "-t", "t.txt", "--json")
    doc = json.loads(proc.stdout)
    assert proc.returncode == doc["exit_code"] == 0
    assert doc["outbox"] == "outbox" and doc["counts"]["sent"] == 2
    assert doc["report"] is None and not list(tmp_path.glob("*.not-sent.csv"))


def test_an_error_is_in_the_document_too(tmp_path: Path) -> None:
    campaign(tmp_path, 1)
    proc = mailblast(tmp_path, "status", "people.csv", "--json")
    doc = json.loads(proc.stdout)
    assert proc.returncode == doc["exit_code"] == 2
    assert doc["error"]["message"] == "no journal at people.csv.mailblast.sqlite"
    assert proc.stderr.startswith("error: no journal")


def test_json_does_not_go_with_a_dry_run(tmp_path: Path) -> None:
    campaign(tmp_path, 1)
    proc = mailblast(tmp_path, "send", "people.csv", "-t", "t.txt", "--dry-run", "--json")
    assert proc.returncode == 2
    assert proc.stderr.splitlines()[0] == "error: --json does not go with --dry-run"


def test_each_command_has_one_schema_whatever_happened(
    tmp_path: Path, smtp_server: Callable[..., SmtpServer]
) -> None:
    server = smtp_server()
    campaign(tmp_path, 2)
    send = ["send", "people.csv", "-t", "t.txt", "--smtp", server.url, "--json"]
    first, again = (json.loads(mailblast(tmp_path, *send).stdout) for _ in range(2))
    assert first["counts"]["sent"] == 2 and again["to_send"] == 0  # the second had nothing to send
    assert list(first) == list(again)
    assert again["journal"] == "people.csv.mailblast.sqlite" and again["counts"]["sent"] == 0
    assert first["campaign"]["uid"] == again["campaign"]["uid"]
    assert first["destination"] == {"servers": ["127.0.0.1"], "rehearsal": False}
    (tmp_path / "people.csv").write_text("email,name\nbroken,Nobody\n")
    bad = json.loads(mailblast(tmp_path, *send).stdout)
    assert list(bad) == list(first) and bad["exit_code"] == 2
    assert bad["error"]["message"] == "1 invalid row(s)"
    good = json.loads(mailblast(tmp_path, "check", "people.csv", "-t", "t.txt", "--json").stdout)
    gone = json.loads(mailblast(tmp_path, "check", "missing.csv", "-t", "t.txt", "--json").stdout)
    assert list(good) == list(gone) and gone["exit_code"] == 2
    status = json.loads(mailblast(tmp_path, "status", "people.csv", "--json").stdout)
    no_journal = json.loads(mailblast(tmp_path, "status", "other.csv", "--json").stdout)
    assert list(status) == list(no_journal) and status["delivered_to"][0]["count"] == 2

"""Output contracts of issue 15: the dry run checks what send would, a test send speaks of the test
address only, blank lines are said, check names every unknown template name, lines never wrap."""

from __future__ import annotations

import asyncio
import io
import json
from collections.abc import Callable
from pathlib import Path

import pytest
from rich.console import Console

from mailblast.campaign.progress import SendProgress
from mailblast.smtp.outcomes import Counts
from tests.servers import SmtpServer
from tests.test_send_cli import campaign, mailblast

ME = "me@mydomain.org"


@pytest.mark.parametrize(
    ("option", "said"),
    [
        (["--rate", "banana"], "banana"),
        (["--smtp", "ftp://example.com"], "ftp"),
        (["--smtp", "smtp://example.com", "--auth", "sesame"], "--auth must be one of"),
        (["--smtp", "smtp://example.com", "--auth", "plain"], "names no user"),
        (["--test-to", "not an address"], "--test-to"),
        (["--limit", "0"], "--limit must be at least 1"),
    ],
)
def test_the_dry_run_checks_what_send_would(tmp_path: Path, option: list[str], said: str) -> None:
    campaign(tmp_path, 2)
    proc = mailblast(tmp_path, "send", "people.csv", "-t", "t.txt", "--dry-run", *option)
    assert proc.returncode == 2, proc.stderr
    assert said in proc.stderr


def test_a_test_send_speaks_only_of_the_test_address(
    tmp_path: Path, smtp_server: Callable[..., SmtpServer]
) -> None:
    server = smtp_server(reject_recipients={ME})
    campaign(tmp_path, 5)
    proc = mailblast(tmp_path, "send", "people.csv", "-t", "t.txt", "--smtp", server.url, "--test-to", ME)
    assert proc.returncode == 1, proc.stderr
    assert proc.stdout == ""  # no report of real members' rows: sent, it would mail them
    assert f"test send to {ME}" in proc.stderr
    assert "not attempted" not in proc.stderr and "report" not in proc.stderr
    assert "mailblast send" not in proc.stderr


def test_blank_lines_are_counted_and_said(tmp_path: Path) -> None:
    campaign(tmp_path, 2)
    text = (tmp_path / "people.csv").read_text().replace("\n", "\n\n", 2)
    (tmp_path / "people.csv").write_text(text + "\n")
    proc = mailblast(tmp_path, "check", "people.csv", "-t", "t.txt", "--json")
    assert proc.returncode == 0, proc.stderr
    assert "people.csv: 3 blank line(s) skipped (line 2, 4, 6)" in proc.stderr
    assert json.loads(proc.stdout)["rows"]["blank_lines"] == 3


def test_check_names_every_unknown_name_in_one_run(tmp_path: Path) -> None:
    campaign(tmp_path, 2)
    (tmp_path / "t.txt").write_text("From: a@example.com\nSubject: {{ nmae }}\n\nHi {{ frist }} {{ lsat }}\n")
    proc = mailblast(tmp_path, "check", "people.csv", "-t", "t.txt", "--json")
    assert proc.returncode == 2
    for name in ("nmae", "frist", "lsat"):
        assert f'error: t.txt: the template uses "{name}"' in proc.stderr
    assert len(json.loads(proc.stdout)["problems"]) == 3


def test_progress_lines_are_never_wrapped_off_a_terminal() -> None:
    out = io.StringIO()
    console = Console(file=out, width=30, soft_wrap=False)  # not a terminal, and narrow

    async def show() -> None:
        async with SendProgress(console, Counts(total=123_456), plain_every=0.01):
            await asyncio.sleep(0.05)

    asyncio.run(show())
    lines = [line for line in out.getvalue().splitlines() if line]
    assert lines and all(line.startswith("0/123,456 done:") for line in lines)


def test_command_line_output_is_never_wrapped_off_a_terminal(tmp_path: Path) -> None:
    campaign(tmp_path, 2)
    deep = tmp_path / ("a-folder-with-a-long-name-" * 4)
    deep.mkdir()
    (tmp_path / "people.csv").rename(deep / "people.csv")
    proc = mailblast(tmp_path, "send", str(deep / "people.csv"), "-t", "t.txt", "--journal", str(deep / "j"))
    assert proc.returncode == 0, proc.stderr
    assert f"journal: {deep / 'j'} (new campaign)" in proc.stderr.splitlines()


def test_check_names_every_fault_written_in_the_headers_in_one_run(tmp_path: Path) -> None:
    campaign(tmp_path, 2)
    (tmp_path / "t.txt").write_text("Subject: {{ nmae }}\nDate: today\nSubject: again\n\nHi\n")
    proc = mailblast(tmp_path, "check", "people.csv", "-t", "t.txt")
    assert proc.returncode == 2
    errors = [line for line in (proc.stdout + proc.stderr).splitlines() if line.startswith("error:")]
    assert len(errors) == 4, errors
    for said in ('uses "nmae"', "sets Date", "sets Subject twice", "has no sender"):
        assert any(said in line for line in errors), said

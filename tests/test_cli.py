"""The commands as a user runs them: output, exit codes, config files, and bad input."""

from __future__ import annotations

import email
import email.policy
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from typer.testing import CliRunner

from mailblast.cli import app

ROOT = Path(__file__).resolve().parent.parent
EXAMPLES = ROOT / "examples"
TEMPLATES = ROOT / "templates"


def run(*args: str | Path, cwd: Path | None = None) -> tuple[int, str]:
    """Run mailblast in-process; returns the exit code and stdout+stderr."""
    old = Path.cwd()
    os.chdir(cwd or old)
    try:
        result = CliRunner().invoke(app, [str(a) for a in args], catch_exceptions=False)
    finally:
        os.chdir(old)
    return result.exit_code, result.output


@pytest.fixture
def example(tmp_path: Path) -> Path:
    """A copy of examples/ and templates/ side by side, as in the repository."""
    shutil.copytree(EXAMPLES, tmp_path / "examples")
    shutil.copytree(TEMPLATES, tmp_path / "templates")
    return tmp_path / "examples"


def test_check_on_the_examples(example: Path) -> None:
    code, out = run("check", "recipients.csv", cwd=example)
    assert code == 0, out
    assert "rows" in out and "valid" in out and "invalid" in out and "duplicates" in out


@pytest.mark.parametrize("template", sorted(p.name for p in TEMPLATES.iterdir() if p.is_file()))
def test_every_starter_template_renders_the_examples(example: Path, template: str) -> None:
    code, out = run("check", "recipients.csv", "--template", f"../templates/{template}", cwd=example)
    assert code == 0, out


def test_check_reports_every_problem_and_exits_2(tmp_path: Path) -> None:
    csv_path = tmp_path / "people.csv"
    csv_path.write_text(
        "email,name\nok@example.com,Ok\nbroken,Bad\nok@example.com,Dup\n"
        'x@example.com,"Evil\nBcc: victim@example.com"\ny@example.com\n'
    )
    template = tmp_path / "t.txt"
    template.write_text("From: me@example.com\nSubject: Hi {{ name }}\n\nHello\n")
    code, out = run("check", csv_path, "--template", template)
    assert code == 2
    assert "row 2 (line 3), column \"email\": 'broken' is not a valid address" in out
    assert "row 3 (line 4)" in out and "duplicates row 1" in out
    assert "row 4 (line 5)" in out and "line break would reach a header" in out
    assert "row 5 (line 7)" in out and "too few fields" in out
    counts = dict(
        line.split()
        for line in out.splitlines()
        if line.strip().split(" ")[0] in ("rows", "valid", "invalid", "duplicates", "empty")
        and len(line.split()) == 2
    )
    assert counts == {"rows": "5", "valid": "1", "invalid": "3", "duplicates": "1", "empty": "0"}
    assert "nothing was sent" in out


def test_rows_checked_in_worker_processes_give_the_same_verdicts(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A large file's rows are rendered by worker processes, in batches; every problem comes back
    to its own row, in file order, with the same counts as checking in this process."""
    from mailblast.campaign import check

    monkeypatch.setattr(check, "CHECK_BATCH", 3)  # rows of one kind fall into several batches
    rows = []
    for i in range(40):
        kind = i % 8
        if kind == 1:
            rows.append(f"broken{i},Bad {i},x")  # read badly: never rendered
        elif kind == 3:
            rows.append(f'u{i}@example.com,Evil,"a\nBcc: victim@example.com"')  # refused at render
        elif kind == 5:
            rows.append(f"u{i}@example.com,Quiet {i},x")  # suppressed
        elif kind == 6:
            rows.append(f"u{i - 6}@example.com,Dup,x")  # a duplicate of an earlier row
        else:
            rows.append(f"u{i}@example.com,User {i},x")
    (tmp_path / "people.csv").write_text("email,name,note\n" + "\n".join(rows) + "\n")
    (tmp_path / "quiet.txt").write_text("".join(f"u{i}@example.com\n" for i in range(5, 40, 8)))
    (tmp_path / "t.txt").write_text("From: me@example.com\nSubject: Hi {{ name }} {{ note }}\n\nHello\n")
    outputs = []
    for threshold in (10**12, 0):  # in this process, then in workers
        monkeypatch.setattr(check, "CHECK_IN_WORKERS_FROM", threshold)
        code, out = run("check", "people.csv", "--template", "t.txt", "--suppress", "quiet.txt", cwd=tmp_path)
        assert code == 2
        outputs.append(out)
    assert outputs[0] == outputs[1]
    assert "row 4 (line 5)" in outputs[1] and "line break would reach a header" in outputs[1]
    assert "row 2 (line 3)" in outputs[1] and "'broken1' is not a valid address" in outputs[1]
    assert outputs[1].index("row 2 (line 3)") < outputs[1].index("row 4 (line 5)")


def test_a_dry_run_built_in_worker_processes_writes_the_same_messages(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from mailblast.campaign import check

    rows = "".join(f"u{i}@example.com,User {i}\n" for i in range(30)) + "bad,Bad\n"
    (tmp_path / "people.csv").write_text("email,name\n" + rows)
    (tmp_path / "t.md").write_text("From: me@example.com\nSubject: Hi {{ name }}\n\n# Hello {{ name }}\n")
    written = []
    for threshold, out in ((10**12, "here"), (0, "workers")):
        monkeypatch.setattr(check, "DRY_RUN_IN_WORKERS_FROM", threshold)
        code, output = run("send", "people.csv", "-t", "t.md", "--dry-run", "--out", out, cwd=tmp_path)
        assert code == 2 and "'bad' is not a valid address" in output
        files = sorted((tmp_path / out).iterdir())
        assert len(files) == 30
        # the same messages, but for the Date header (the time they were built)
        written.append({f.name: re.sub(rb"Date: [^\r\n]*", b"", f.read_bytes()) for f in files})
    assert written[0] == written[1]


def test_preview_shows_headers_bodies_and_attachments(example: Path) -> None:
    (example / "terms.pdf").write_bytes(b"%PDF" + b"x" * 2048)
    (example / "recipients.csv").write_text(
        "email,name,team,attachment\nann@example.com,Ann,Crew,terms.pdf\n"
    )
    template = "../templates/invitation.html.j2"
    code, out = run("preview", "recipients.csv", "-t", template, "--attachments-dir", ".", cwd=example)
    assert code == 0, out
    for expected in (
        "Subject:",
        "You're invited, Ann",
        "From:",
        "Message-ID:",
        "plain text",
        "HTML",
        "<h1>Hello Ann</h1>",
        "attachments",
        "terms.pdf",
        "application/pdf",
        "2.0 KiB",
    ):
        assert expected in out, expected


def test_preview_row_n_and_out_of_range(example: Path) -> None:
    code, out = run("preview", "recipients.csv", "--row", "2", cwd=example)
    assert code == 0 and "Grace Hopper" in out and "Ada" not in out
    code, out = run("preview", "recipients.csv", "--row", "99", cwd=example)
    assert code == 2 and "has no row 99" in out


def test_send_dry_run_writes_eml_files(example: Path, tmp_path: Path) -> None:
    outbox = tmp_path / "outbox"
    code, out = run("send", "recipients.csv", "--dry-run", "--out", outbox, cwd=example)
    assert code == 0, out
    assert "nothing sent" in out
    files = sorted(outbox.iterdir())
    assert [f.name for f in files][0] == "000001-ada@example.com.eml"
    assert len(files) == 4
    msg = email.message_from_bytes(files[3].read_bytes(), policy=email.policy.default)
    assert msg["Subject"] == "Welcome to Analytical Engines, José Müller!"
    assert msg["From"].addresses[0].addr_spec == "demo@example.com"  # from mailblast.toml
    assert msg.get_content_type() == "multipart/alternative"


def test_flags_override_the_config_file(example: Path) -> None:
    code, out = run(
        "preview",
        "recipients.csv",
        "--from",
        "Other <other@example.org>",
        "--template",
        "../templates/notice.txt.j2",
        cwd=example,
    )
    assert code == 0 and "other@example.org" in out and "Scheduled maintenance" in out


def test_config_given_explicitly_and_relative_paths(example: Path, tmp_path: Path) -> None:
    code, out = run("check", example / "recipients.csv", "--config", example / "mailblast.toml", cwd=tmp_path)
    assert code == 0, out


@pytest.mark.parametrize(
    ("toml", "message"),
    [
        ("templat = 'x'\n", "unknown setting templat"),
        ("[smtp]\nconections = 3\n", "unknown setting smtp.conections"),
        ("template = 3\n", "template should be text in quotes, not 3"),
        ("template = \n", "not valid TOML"),
        ("[smtp]\nconnections = 0\n", "connections must be at least 1"),
        ("[smtp]\ntimeout = 0\n", "timeout must be more than 0 seconds"),
        ("[smtp]\nretries = -1\n", "retries must be 0 or more"),
    ],
)
def test_bad_config_files(tmp_path: Path, toml: str, message: str) -> None:
    (tmp_path / "mailblast.toml").write_text(toml)
    (tmp_path / "r.csv").write_text("email\na@example.com\n")
    code, out = run("check", "r.csv", cwd=tmp_path)
    assert code == 2 and message in out


def test_no_template_is_a_clear_usage_error(tmp_path: Path) -> None:
    (tmp_path / "r.csv").write_text("email\na@example.com\n")
    code, out = run("check", "r.csv", cwd=tmp_path)
    assert code == 2 and "no template given" in out and "--template" in out


def test_header_only_file(tmp_path: Path) -> None:
    (tmp_path / "r.csv").write_text("email,name\n")
    (tmp_path / "t.txt").write_text("From: a@example.com\n\nx\n")
    code, out = run("check", "r.csv", "-t", "t.txt", cwd=tmp_path)
    assert code == 2 and "header but no rows" in out


BAD_INPUTS = {
    "missing csv": (["check", "nope.csv", "-t", "t.txt"], "no such file"),
    "empty csv": (["check", "empty.csv", "-t", "t.txt"], "the file is empty"),
    "undecodable": (["check", "binary.csv", "-t", "t.txt", "--encoding", "utf-8"], "not valid utf-8"),
    "missing template": (["check", "r.csv", "-t", "nope.txt"], "no such template"),
    "syntax error": (["check", "r.csv", "-t", "broken.txt"], "broken.txt, line 2"),
    "undefined": (["check", "r.csv", "-t", "undefined.txt"], 'uses "nmae", which is not a column'),
    "no column": (["check", "r.csv", "-t", "t.txt", "--email-column", "mail"], 'no column "mail"'),
    "missing attachment": (["check", "r.csv", "-t", "attach.txt"], "attachment 'gone.pdf' not found"),
    "bad row": (["preview", "r.csv", "-t", "t.txt", "--row", "0"], "--row must be 1 or more"),
    "out without dry run": (["send", "r.csv", "-t", "t.txt", "--out", "x"], "--out goes with --dry-run"),
}


@pytest.mark.parametrize("case", sorted(BAD_INPUTS))
def test_bad_input_gets_one_clear_line_no_traceback_exit_2(tmp_path: Path, case: str) -> None:
    """Run as a user does, in a subprocess, so nothing can hide a traceback."""
    (tmp_path / "r.csv").write_text("email,name\na@example.com,Ann\n")
    (tmp_path / "empty.csv").write_text("")
    (tmp_path / "binary.csv").write_bytes(b"email\n\xff\xfe\x00\x81\n")
    (tmp_path / "t.txt").write_text("From: a@example.com\nSubject: hi\n\nbody\n")
    (tmp_path / "broken.txt").write_text("From: a@example.com\nSubject: {{ name \n\nbody\n")
    (tmp_path / "undefined.txt").write_text("From: a@example.com\nSubject: {{ nmae }}\n\nbody\n")
    (tmp_path / "attach.txt").write_text("From: a@example.com\nAttachment: gone.pdf\n\nbody\n")
    args, message = BAD_INPUTS[case]
    proc = subprocess.run(
        [sys.executable, "-m", "mailblast", *args], cwd=tmp_path, capture_output=True, text=True, timeout=60
    )
    output = proc.stdout + proc.stderr
    assert proc.returncode == 2, output
    assert message in output
    assert "Traceback" not in output


def test_console_script_and_help() -> None:
    exe = Path(sys.executable).parent / "mailblast"
    proc = subprocess.run([exe, "--help"], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0
    for command in ("check", "preview", "send"):
        assert command in proc.stdout
    proc = subprocess.run(
        [sys.executable, "-m", "mailblast", "send", "--help"], capture_output=True, text=True, timeout=60
    )
    assert proc.returncode == 0 and "--dry-run" in proc.stdout

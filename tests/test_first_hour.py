"""Issue 9's "output a person can read": each point checked in the output a user sees."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from typer.testing import CliRunner

from mailblast.cli import app


def run(*args: str | Path, cwd: Path, env: dict[str, str] | None = None) -> tuple[int, str]:
    """mailblast in-process from ``cwd``; the exit code and stdout+stderr."""
    old = Path.cwd()
    os.chdir(cwd)
    try:
        result = CliRunner().invoke(app, [str(a) for a in args], catch_exceptions=False, env=env)
    finally:
        os.chdir(old)
    return result.exit_code, result.output


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

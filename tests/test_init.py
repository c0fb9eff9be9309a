"""`mailblast init`: a starter that works as written, from the package's own files."""

from __future__ import annotations

import mailbox
import re
import tomllib
from pathlib import Path

import pytest

from mailblast.config import BOUNCES_KEYS, SMTP_KEYS, TOP_KEYS, UNSUBSCRIBE_KEYS
from mailblast.init import FORMATS, starter_files, starter_text
from tests.disk import mailblast_capped
from tests.test_send_cli import mailblast

REPO = Path(__file__).resolve().parent.parent


@pytest.mark.parametrize("template_format", FORMATS)
def test_init_then_check_and_send_work_on_what_it_wrote(tmp_path: Path, template_format: str) -> None:
    proc = mailblast(tmp_path, "init", "campaign", "--format", template_format)
    assert proc.returncode == 0, proc.stderr
    folder = tmp_path / "campaign"
    template = f"message.{template_format}.j2"
    assert sorted(p.name for p in folder.iterdir()) == sorted(["mailblast.toml", "recipients.csv", template])
    assert f"wrote mailblast.toml, recipients.csv, {template} in campaign/" in proc.stdout
    assert "next: cd campaign && mailblast check recipients.csv" in proc.stdout

    check = mailblast(folder, "check", "recipients.csv")
    assert check.returncode == 0, check.stdout + check.stderr
    assert "error" not in check.stdout + check.stderr

    send = mailblast(folder, "send", "recipients.csv")
    assert send.returncode == 0, send.stderr
    assert "nothing leaves this machine" in send.stderr
    box = mailbox.Maildir(folder / "outbox")
    assert sorted(m["Envelope-to"] for m in box) == ["ada@example.com", "grace@example.com"]
    assert {m["Subject"] for m in box} == {
        "Hello Ada Lovelace, a note from us",
        "Hello Grace Hopper, a note from us",
    }


def test_the_starter_config_lists_every_setting_and_names_no_server() -> None:
    text = starter_files("md")["mailblast.toml"]
    for key in TOP_KEYS:
        assert re.search(rf"^(# )?{key} = ", text, re.M), key
    # every commented line is a valid setting once uncommented
    uncommented = re.sub(r"^# (\w+ = )", r"\1", text, flags=re.M)
    data = tomllib.loads(uncommented)
    assert set(data) - {"smtp", "unsubscribe", "bounces"} == set(TOP_KEYS)
    assert set(data["smtp"]) == set(SMTP_KEYS)
    assert set(data["unsubscribe"]) == set(UNSUBSCRIBE_KEYS)
    assert set(data["bounces"]) == set(BOUNCES_KEYS)
    written = tomllib.loads(text)
    assert written["smtp"] == {} and written["unsubscribe"] == {}  # no server: the outbox


def test_init_refuses_to_overwrite_anything(tmp_path: Path) -> None:
    (tmp_path / "recipients.csv").write_text("email\nmine@example.com\n")
    proc = mailblast(tmp_path, "init")
    assert proc.returncode == 2
    assert proc.stderr.splitlines()[0] == (
        f"error: recipients.csv exists already in {tmp_path.resolve()}; nothing was written"
    )
    assert sorted(p.name for p in tmp_path.iterdir()) == ["recipients.csv"]
    assert (tmp_path / "recipients.csv").read_text() == "email\nmine@example.com\n"


def test_an_unknown_format_is_refused(tmp_path: Path) -> None:
    proc = mailblast(tmp_path, "init", "--format", "docx")
    assert proc.returncode == 2
    assert "error: --format docx: not a template format" in proc.stderr
    assert list(tmp_path.iterdir()) == []


def test_the_starter_ships_as_package_data() -> None:
    # read through importlib.resources, as from an installed wheel
    assert starter_text("recipients.csv").startswith("email,")
    config = tomllib.loads((REPO / "pyproject.toml").read_text())
    assert "starter/*" in config["tool"]["setuptools"]["package-data"]["mailblast"]


def test_a_dangling_symlink_is_taken_and_nothing_is_written(tmp_path: Path) -> None:
    (tmp_path / "message.md.j2").symlink_to(tmp_path / "nowhere")
    proc = mailblast(tmp_path, "init")
    assert proc.returncode == 2, proc.stderr
    assert proc.stderr.splitlines()[0] == (
        f"error: message.md.j2 exists already in {tmp_path.resolve()}; nothing was written"
    )
    assert [p.name for p in tmp_path.iterdir()] == ["message.md.j2"]  # no partial starter


def test_a_starter_cut_short_is_removed(tmp_path: Path) -> None:
    proc = mailblast_capped(tmp_path, 1024, "init", "camp")  # mailblast.toml is longer than that
    assert proc.returncode == 2, proc.stderr
    assert "cannot write the starter: File too large; nothing was kept" in proc.stderr
    assert list((tmp_path / "camp").iterdir()) == []


def test_the_next_line_is_shell_quoted(tmp_path: Path) -> None:
    proc = mailblast(tmp_path, "init", "my campaign; rm -rf ~")
    assert proc.returncode == 0, proc.stderr
    assert "next: cd 'my campaign; rm -rf ~' && mailblast check recipients.csv" in proc.stdout


def test_the_starter_config_shows_true_defaults_and_the_dkim_and_relay_tables(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from mailblast.config import DKIM_KEYS, PIPELINING_ENV, RELAY_KEYS, Settings

    text = starter_files("md")["mailblast.toml"]
    monkeypatch.delenv(PIPELINING_ENV, raising=False)  # CI's second pass sets it: the default is without
    defaults = Settings()
    for line in text.splitlines():
        found = re.match(r"^# (\w+) = (.+?)\s+# (default|e\.g\.)", line)
        if found and found[3] == "default" and found[1] != "journal":
            key, value = found[1], tomllib.loads(f"v = {found[2]}")["v"]
            assert getattr(defaults, key) == value, line  # a value said to be the default is the default
    assert re.search(r'^# rate = "3/s" +# e\.g\.; default: no limit', text, re.M)
    # the [dkim] and [[relay]] tables, uncommented, are valid settings
    tables = re.sub(r"^# (\[{1,2}\w+\]{1,2})$|^#   ", lambda m: m[1] or "", text, flags=re.M)
    data = tomllib.loads(tables)
    assert set(data["dkim"]) == set(DKIM_KEYS) and set(data["relay"][0]) <= set(RELAY_KEYS)

"""A row never attaches what mailblast keeps for itself (issue 16), and where dkim-keygen puts keys."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.disk import mailblast_capped
from tests.test_send_cli import mailblast
from tests.test_untrusted import VICTIM, Server, assert_refused, campaign, run

TEMPLATE = "From: a@example.com\nSubject: s\nAttachment: {{ f }}\n\nbody\n"
KEY = "-----BEGIN PRIVATE KEY-----\nMC4CAQAwBQYDK2VwBCIEIAAAAAAAAAAAAAAAAAAAAAAA\n-----END PRIVATE KEY-----\n"


@pytest.fixture
def folder(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path / "config-home"))
    keygen = ("dkim-keygen", "example.com", "mb2026", "--type", "ed25519", "--out", "dkim.pem")
    code, out = run(tmp_path, *keygen)
    assert code == 0, out
    (tmp_path / "optout.txt").write_text("gone@example.com\n")
    (tmp_path / "mailblast.toml").write_text(
        'suppress = ["optout.txt"]\nreport = "failures.csv"\njournal = "camp.db"\n'
        '[dkim]\ndomain = "example.com"\nselector = "mb2026"\nprivate_key = "dkim.pem"\n'
    )
    (tmp_path / "failures.csv").write_text("email\n")
    (tmp_path / "camp.db").write_bytes(b"SQLite format 3\0")
    (tmp_path / "other.not-sent.csv").write_text("email\n")
    (tmp_path / "people.csv.mailblast.sqlite-wal").write_bytes(b"")
    (tmp_path / "id_ed25519").write_text("comment line\n" + KEY.replace("BEGIN ", "BEGIN OPENSSH "))
    (tmp_path / "bundle.txt").write_text("x" * 2_000_000 + KEY)  # far into the file
    return tmp_path


@pytest.mark.parametrize(
    ("value", "words"),
    [
        ("dkim.pem", "the DKIM private key"),
        ("mailblast.toml", "the settings file"),
        ("people.csv", "the recipients file"),
        ("optout.txt", "a suppression list"),
        ("failures.csv", "the report of recipients not sent"),
        ("camp.db", "the campaign journal"),
        ("other.not-sent.csv", "a report of recipients not sent"),
        ("people.csv.mailblast.sqlite-wal", "a campaign journal"),
        ("id_ed25519", "a file holding a PEM private key"),
        ("bundle.txt", "a file holding a PEM private key"),
        ("./sub/../dkim.pem", "'..' is refused"),
    ],
)
def test_a_row_cannot_attach_what_mailblast_keeps(
    folder: Path, smtp_server: Server, value: str, words: str
) -> None:
    campaign(folder, TEMPLATE, [{"email": VICTIM, "f": value}])
    line = assert_refused(folder, smtp_server(), words, 'column "f"')
    if "'..'" not in words:
        assert "mailblast never mails it" in line


def test_a_symlink_to_the_key_is_the_key(folder: Path, smtp_server: Server) -> None:
    (folder / "logo.png").symlink_to(folder / "dkim.pem")
    campaign(folder, TEMPLATE, [{"email": VICTIM, "f": "logo.png"}])
    assert_refused(folder, smtp_server(), "the DKIM private key")


def test_an_ordinary_file_is_still_attached(folder: Path, smtp_server: Server) -> None:
    (folder / "invoice.txt").write_text("PRIVATE KEY is only words here\n")
    campaign(folder, TEMPLATE, [{"email": VICTIM, "f": "invoice.txt"}])
    server = smtp_server()
    code, out = run(folder, "send", "people.csv", "-t", "t.txt", "--smtp", server.url, "--no-journal")
    assert code == 0, out
    (part,) = server.received[0].message.iter_attachments()
    assert part.get_filename() == "invoice.txt"


# -- dkim-keygen ---------------------------------------------------------------------------------


def test_keygen_writes_outside_the_campaign_folder_by_default(tmp_path: Path) -> None:
    home = tmp_path / "config-home"
    env = {"XDG_CONFIG_HOME": str(home)}
    proc = mailblast(tmp_path, "dkim-keygen", "example.com", "mb2026", "--type", "ed25519", env=env)
    assert proc.returncode == 0, proc.stderr
    key = home / "mailblast" / "dkim" / "example.com.mb2026.pem"
    assert f"wrote the private key to {key}" in proc.stdout
    assert f'private_key = "{key}"' in proc.stdout
    assert key.stat().st_mode & 0o777 == 0o600
    assert key.parent.stat().st_mode & 0o077 == 0
    assert not list(tmp_path.glob("*.pem"))
    again = mailblast(tmp_path, "dkim-keygen", "example.com", "mb2026", env=env)
    assert again.returncode == 2 and "exists already; nothing was written" in again.stderr


def test_a_key_others_can_read_is_warned_about(folder: Path) -> None:
    campaign(folder, "From: a@example.com\nSubject: s\n\nbody\n", [{"email": VICTIM, "f": ""}])
    code, out = run(folder, "check", "people.csv", "-t", "t.txt")
    assert code == 0 and "can be read by others" not in out, out
    (folder / "dkim.pem").chmod(0o644)
    code, out = run(folder, "check", "people.csv", "-t", "t.txt")
    assert code == 0, out
    assert "warning: [dkim] private_key" in out and "can be read by others than you (mode 644)" in out


def test_keygen_on_a_full_disk_leaves_no_key_behind(tmp_path: Path) -> None:
    args = ("dkim-keygen", "example.com", "mb2026", "--out", "dkim.pem")
    proc = mailblast_capped(tmp_path, 300, *args)  # an RSA key is some 1,700 bytes
    assert proc.returncode == 2, proc.stderr
    assert "Traceback" not in proc.stderr
    assert "dkim.pem: cannot write the key: File too large; nothing was kept" in proc.stderr
    assert not (tmp_path / "dkim.pem").exists()
    again = mailblast(tmp_path, *args)
    assert again.returncode == 0, again.stderr

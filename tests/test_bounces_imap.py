"""`mailblast bounces imaps://...` against a real IMAP server: a private Dovecot (tests/dovecot.py)."""

from __future__ import annotations

import os
import ssl
from collections.abc import Iterator
from pathlib import Path

import imapclient
import pytest

from tests import dovecot
from tests.test_bounces import DATA, exported
from tests.test_send_cli import mailblast

pytestmark = pytest.mark.skipif(
    dovecot.DOVECOT is None and os.environ.get("CI") != "true",
    reason="dovecot is not installed (apt-get install dovecot-imapd)",
)


@pytest.fixture
def imap() -> Iterator[dovecot.Dovecot]:
    yield from dovecot.start()


def client(server: dovecot.Dovecot) -> imapclient.IMAPClient:
    context = ssl.create_default_context(cafile=str(server.ca_pem))
    c = imapclient.IMAPClient("127.0.0.1", port=server.port, ssl=True, ssl_context=context, timeout=30)
    c.login(server.user, server.password)
    return c


def test_bounces_reads_an_imap_folder_without_changing_it_and_only_once(
    tmp_path: Path, imap: dovecot.Dovecot
) -> None:
    c = client(imap)
    c.create_folder("Bounces")
    for name in ("own/gmail_5.1.1.eml", "own/vacation.eml", "own/arf_complaint.eml", "own/unrelated.eml"):
        c.append("Bounces", (DATA / name).read_bytes())
    env = {"SSL_CERT_FILE": str(imap.ca_pem), "MAILBLAST_IMAP_PASSWORD": imap.password}
    url = imap.url("Bounces")

    first = mailblast(tmp_path, "bounces", url, env=env)
    assert first.returncode == 0, first.stderr
    assert exported(tmp_path) == {"nobody.here@gmail.com": "bounce", "heidi@yahoo.com": "complaint"}
    assert imap.password not in first.stdout + first.stderr
    c.select_folder("Bounces", readonly=True)
    flags = c.get_flags(c.search("ALL"))
    assert len(flags) == 4 and not any(b"\\Seen" in f or b"\\Deleted" in f for f in flags.values())

    again = mailblast(tmp_path, "bounces", url, env=env)
    assert again.returncode == 0, again.stderr
    assert "nothing new since the last run" in again.stdout

    # a new bounce; the password from a command this time; what was acted on is moved
    c.append("Bounces", (DATA / "own/postfix_hyphen_domain.eml").read_bytes())
    (tmp_path / "mailblast.toml").write_text(f'[bounces]\npassword_command = "echo {imap.password}"\n')
    moved = mailblast(
        tmp_path, "bounces", url, "--move-to", "Processed", env={"SSL_CERT_FILE": str(imap.ca_pem)}
    )
    assert moved.returncode == 0, moved.stderr
    assert "gone@mail-server.example-shop.com" in exported(tmp_path)
    assert "moved 1 message(s) to Processed" in moved.stdout
    c.select_folder("Bounces", readonly=True)
    assert len(c.search("ALL")) == 4  # the vacation reply and the other mail stay where they were
    c.select_folder("Processed", readonly=True)
    assert len(c.search("ALL")) == 1
    c.logout()


def test_a_refused_sign_in_is_one_clear_error_without_the_password(
    tmp_path: Path, imap: dovecot.Dovecot
) -> None:
    env = {"SSL_CERT_FILE": str(imap.ca_pem), "MAILBLAST_IMAP_PASSWORD": "wrong-pw-123"}
    proc = mailblast(tmp_path, "bounces", imap.url("INBOX"), env=env)
    assert proc.returncode == 3, proc.stderr
    assert "the sign-in was refused" in proc.stderr and "wrong-pw-123" not in proc.stdout + proc.stderr
    assert "Traceback" not in proc.stderr
    untrusted = mailblast(
        tmp_path, "bounces", imap.url("INBOX"), env={"MAILBLAST_IMAP_PASSWORD": imap.password}
    )
    assert untrusted.returncode == 3 and "certificate verify failed" in untrusted.stderr


def test_oauth2_from_the_environment_or_a_token_command(tmp_path: Path, imap: dovecot.Dovecot) -> None:
    c = client(imap)
    c.create_folder("Bounces")
    c.append("Bounces", (DATA / "own/gmail_5.1.1.eml").read_bytes())
    c.logout()
    trust = {"SSL_CERT_FILE": str(imap.ca_pem)}
    proc = mailblast(
        tmp_path, "bounces", imap.url("Bounces"), env={**trust, "MAILBLAST_IMAP_OAUTH_TOKEN": imap.token}
    )
    assert proc.returncode == 0, proc.stderr
    assert exported(tmp_path) == {"nobody.here@gmail.com": "bounce"}
    assert "method=XOAUTH2" in imap.log.read_text()
    (tmp_path / "mailblast.toml").write_text('[bounces]\noauth_token_command = "echo expired-token"\n')
    refused = mailblast(tmp_path, "bounces", imap.url("Bounces"), env=trust)
    assert refused.returncode == 3 and "the sign-in was refused" in refused.stderr
    assert "expired-token" not in refused.stdout + refused.stderr
    (tmp_path / "mailblast.toml").write_text(f'[bounces]\noauth_token_command = "echo {imap.token}"\n')
    again = mailblast(tmp_path, "bounces", imap.url("Bounces"), env=trust)
    assert again.returncode == 0, again.stderr
    assert "nothing new since the last run" in again.stdout

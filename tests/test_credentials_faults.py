"""Credentials (issue 16): the token in the environment wins over the command (which is then not
run), a secret echoed upper-cased, hex-encoded or cut short is redacted too, --outbox works with a
password_command, and a relay's sign-in hint names that relay's settings."""

from __future__ import annotations

import base64
import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from aiosmtpd.smtp import AuthResult

from tests.servers import SmtpServer
from tests.test_send_cli import campaign, mailblast
from tests.test_signin import PASSWORD, TOKEN, config, everything_written, user_url

Server = Callable[..., SmtpServer]


def test_the_token_in_the_environment_wins_and_the_command_is_not_run(
    tmp_path: Path, smtp_server: Server
) -> None:
    server = smtp_server(xoauth2=lambda user, token: token == TOKEN)
    campaign(tmp_path, 2)
    config(tmp_path, oauth_token_command="touch command-ran; echo ya29.from-the-command")
    env = {"MAILBLAST_SMTP_OAUTH_TOKEN": TOKEN}
    proc = mailblast(tmp_path, "send", "people.csv", "-t", "t.txt", "--smtp", user_url(server), env=env)
    assert proc.returncode == 0, proc.stderr
    assert len(server.received) == 2
    assert not (tmp_path / "command-ran").exists()


class EchoingPasswordServer(SmtpServer):
    """Refuses every password with a 535 that repeats it in the given ``form``."""

    form: Callable[[str], str] = str

    def _authenticate(
        self, server: Any, session: Any, envelope: Any, mechanism: str, data: Any
    ) -> AuthResult:
        password = data.password.decode()
        return AuthResult(
            success=False, handled=False, message=f"535 5.7.8 bad password {self.form(password)}"
        )


FORMS: dict[str, Callable[[str], str]] = {
    "upper": str.upper,
    "hex": lambda p: p.encode().hex(),
    "HEX": lambda p: p.encode().hex().upper(),
    "cut": lambda p: p[:9] + "...",
    "base64-cut": lambda p: base64.b64encode(p.encode()).decode()[:12] + "...",
    "upper-cut": lambda p: p[:8].upper(),
}


@pytest.mark.parametrize("form", list(FORMS))
def test_a_password_echoed_in_another_form_never_leaves(tmp_path: Path, form: str) -> None:
    server = EchoingPasswordServer(auth={"mailer@example.com": "x"})
    server.form = staticmethod(FORMS[form])  # type: ignore[assignment]
    server.start()
    try:
        campaign(tmp_path, 2)
        env = {"MAILBLAST_SMTP_PASSWORD": PASSWORD}
        url = user_url(server)
        proc = mailblast(
            tmp_path, "send", "people.csv", "-t", "t.txt", "--smtp", url, "--report", "r.csv", env=env
        )
    finally:
        server.stop()
    assert proc.returncode == 3, proc.stderr
    assert "535 5.7.8 bad password [redacted]" in proc.stderr
    echoed = FORMS[form](PASSWORD).removesuffix("...")
    written = everything_written(tmp_path, proc.stdout, proc.stderr)
    assert echoed not in written and echoed.lower() not in written.lower()


def test_send_into_an_outbox_with_a_password_command_set(tmp_path: Path) -> None:
    campaign(tmp_path, 2)
    config(tmp_path, url="smtp+starttls://me@smtp.example.com", password_command="touch asked; echo pw")
    proc = mailblast(tmp_path, "send", "people.csv", "-t", "t.txt", "--outbox", "outbox")
    assert proc.returncode == 0, proc.stderr
    assert "nothing left this machine: 2 message(s) delivered into outbox/" in proc.stderr
    assert not (tmp_path / "asked").exists()  # the rehearsal signs in nowhere


def test_a_relays_sign_in_hint_names_its_own_settings(tmp_path: Path, smtp_server: Server) -> None:
    locked = [smtp_server(auth={"mailer": "right"}) for _ in range(2)]
    campaign(tmp_path, 3)
    urls = [server.url.replace("://", "://mailer@") for server in locked]
    tables = [
        f'[[relay]]\nname = "env"\nurl = "{urls[0]}"\npassword_env = "P"\n',
        f'[[relay]]\nname = "cmd"\nurl = "{urls[1]}"\npassword_command = {json.dumps("echo wrong")}\n',
    ]
    hints = {
        0: "check the user name in relay env's url and the password (P, relay env's password_env)",
        1: "check the user name in relay cmd's url and the password (relay cmd's password_command)",
    }
    for i, table in enumerate(tables):
        (tmp_path / "mailblast.toml").write_text(table)
        proc = mailblast(tmp_path, "send", "people.csv", "-t", "t.txt", "--no-journal", env={"P": "wrong"})
        assert proc.returncode == 3, proc.stderr
        hint = proc.stderr.split("hint: ", 1)[1]
        assert hints[i] in hint and "MAILBLAST_SMTP_PASSWORD" not in hint and "[smtp]" not in hint

"""Signing in: XOAUTH2 tokens that expire, secret commands, --auth, and secrets that never show."""

from __future__ import annotations

import asyncio
import base64
import json
from collections.abc import Callable
from pathlib import Path

import pytest

from mailblast.errors import ConfigError
from mailblast.smtp.credentials import Credentials, SecretCommand, SecretError, gather_credentials
from tests.servers import SmtpServer
from tests.test_send_cli import campaign, mailblast

TOKEN = "ya29.a0AfB-secret-token"
PASSWORD = "correct-horse-battery-staple"
# Each run prints a new token, ya29.a0-fresh-1, -2, ...: the count is kept in a file.
COUNTING_TOKEN_COMMAND = (
    "n=$(cat count 2>/dev/null || echo 0); n=$((n+1)); echo $n > count; echo ya29.a0-fresh-$n"
)


def fresh_token(user: str, token: str) -> bool:
    return user == "mailer@example.com" and token.startswith("ya29.a0-fresh-")


def config(folder: Path, **smtp: str) -> None:
    lines = ["[smtp]", *(f"{key} = {json.dumps(value)}" for key, value in smtp.items())]
    (folder / "mailblast.toml").write_text("\n".join(lines) + "\n")


def user_url(server: SmtpServer, user: str = "mailer%40example.com") -> str:
    return server.url.replace("smtp://", f"smtp://{user}@")


def everything_written(folder: Path, *outputs: str) -> str:
    """All a run printed, and every file it left (the report and the journal)."""
    files = [
        p.read_bytes().decode("utf-8", "replace")
        for p in folder.iterdir()
        if p.is_file() and p.name != "mailblast.toml"
    ]
    return "\n".join([*outputs, *files])


def test_a_token_that_expires_mid_campaign_is_fetched_again_for_each_connection(
    tmp_path: Path, smtp_server: Callable[..., SmtpServer]
) -> None:
    # A token is refused once 4 messages went out with it: reusing one would fail the 3rd connection.
    server = smtp_server(xoauth2=fresh_token, token_messages=4)
    campaign(tmp_path, 20)
    config(tmp_path, oauth_token_command="echo ya29.a0-fresh-$$")  # the shell's process id: unique
    proc = mailblast(
        tmp_path,
        "send",
        "people.csv",
        "-t",
        "t.txt",
        "--smtp",
        user_url(server),
        "--max-messages",
        "3",
        "--report",
        "report.csv",
    )
    assert proc.returncode == 0, proc.stderr
    assert sorted(server.recipients()) == sorted(f"user{i}@example.com" for i in range(20))
    uses = server.token_uses
    assert len(uses) == server.connections >= 7  # a new token for each connection
    assert all(n <= 3 for n in uses.values())
    assert all(a.mechanism == "XOAUTH2" and a.success for a in server.auth_attempts)
    written = everything_written(tmp_path, proc.stdout, proc.stderr)
    assert (tmp_path / "people.csv.mailblast.sqlite").is_file()  # the journal is among the files read
    assert "ya29" not in written and "fresh-" not in written


def test_a_fixed_token_that_expires_stops_the_run_with_a_hint(
    tmp_path: Path, smtp_server: Callable[..., SmtpServer]
) -> None:
    server = smtp_server(xoauth2=lambda user, token: token == TOKEN, token_messages=3)
    campaign(tmp_path, 10)
    proc = mailblast(
        tmp_path,
        "send",
        "people.csv",
        "-t",
        "t.txt",
        "--smtp",
        user_url(server),
        "--max-messages",
        "3",
        "--report",
        "report.csv",
        "--connections",
        "1",
        env={"MAILBLAST_SMTP_OAUTH_TOKEN": TOKEN},
    )
    assert proc.returncode == 3
    assert len(server.received) == 3
    assert "535 5.7.8" in proc.stderr and "OAuth2 token was refused" in proc.stderr
    assert "oauth_token_command" in proc.stderr
    assert TOKEN not in everything_written(tmp_path, proc.stdout, proc.stderr)


@pytest.mark.parametrize(
    ("command", "says"),
    [
        (f"echo {TOKEN}; exit 1", "failed (exit status 1); its output is not shown"),
        ("true", "printed nothing"),
        ("printf '\\n\\n'", "printed nothing"),
    ],
)
def test_a_token_command_that_fails_stops_before_anything_is_sent(
    tmp_path: Path, smtp_server: Callable[..., SmtpServer], command: str, says: str
) -> None:
    server = smtp_server(xoauth2=fresh_token)
    campaign(tmp_path, 3)
    config(tmp_path, oauth_token_command=command)
    proc = mailblast(tmp_path, "send", "people.csv", "-t", "t.txt", "--smtp", user_url(server))
    assert proc.returncode == 2, proc.stderr
    assert f"error: [smtp] oauth_token_command {says}" in proc.stderr
    assert "nothing was sent" in proc.stderr
    assert TOKEN not in proc.stdout + proc.stderr
    assert server.connections == 0


def test_a_token_command_failing_mid_campaign_stops_the_run(
    tmp_path: Path, smtp_server: Callable[..., SmtpServer]
) -> None:
    server = smtp_server(xoauth2=fresh_token)
    campaign(tmp_path, 6)
    config(
        tmp_path,
        oauth_token_command=COUNTING_TOKEN_COMMAND.replace("; echo ya29", '; [ "$n" = 1 ] && echo ya29'),
    )
    proc = mailblast(
        tmp_path,
        "send",
        "people.csv",
        "-t",
        "t.txt",
        "--smtp",
        user_url(server),
        "--max-messages",
        "2",
        "--connections",
        "1",
        "--report",
        "report.csv",
    )
    assert proc.returncode == 3, proc.stderr
    assert len(server.received) == 2
    assert "stopped: [smtp] oauth_token_command failed (exit status 1)" in proc.stderr
    assert "Traceback" not in proc.stderr


def test_password_command_signs_in_and_never_shows(
    tmp_path: Path, smtp_server: Callable[..., SmtpServer]
) -> None:
    server = smtp_server(auth={"mailer@example.com": PASSWORD})
    campaign(tmp_path, 3)
    config(tmp_path, password_command=f"printf '{PASSWORD}\\n'")
    proc = mailblast(tmp_path, "send", "people.csv", "-t", "t.txt", "--smtp", user_url(server))
    assert proc.returncode == 0, proc.stderr
    assert len(server.received) == 3 and all(r.user == "mailer@example.com" for r in server.received)
    assert PASSWORD not in everything_written(tmp_path, proc.stdout, proc.stderr)


@pytest.mark.parametrize("method", ["login", "plain"])
def test_auth_forces_the_method(tmp_path: Path, smtp_server: Callable[..., SmtpServer], method: str) -> None:
    server = smtp_server(auth={"mailer@example.com": PASSWORD}, xoauth2=fresh_token)
    campaign(tmp_path, 2)
    env = {"MAILBLAST_SMTP_PASSWORD": PASSWORD, "MAILBLAST_SMTP_OAUTH_TOKEN": "ya29.a0-fresh-1"}
    proc = mailblast(
        tmp_path, "send", "people.csv", "-t", "t.txt", "--smtp", user_url(server), "--auth", method, env=env
    )
    assert proc.returncode == 0, proc.stderr
    assert {a.mechanism for a in server.auth_attempts} == {method.upper()}


@pytest.mark.parametrize(
    ("env", "mechanism"),
    [
        ({"MAILBLAST_SMTP_PASSWORD": PASSWORD, "MAILBLAST_SMTP_OAUTH_TOKEN": "ya29.a0-fresh-1"}, "XOAUTH2"),
        ({"MAILBLAST_SMTP_PASSWORD": PASSWORD}, "PLAIN"),
    ],
)
def test_by_default_a_token_goes_first_when_the_server_takes_one(
    tmp_path: Path, smtp_server: Callable[..., SmtpServer], env: dict[str, str], mechanism: str
) -> None:
    server = smtp_server(auth={"mailer@example.com": PASSWORD}, xoauth2=fresh_token)
    campaign(tmp_path, 2)
    proc = mailblast(tmp_path, "send", "people.csv", "-t", "t.txt", "--smtp", user_url(server), env=env)
    assert proc.returncode == 0, proc.stderr
    assert {a.mechanism for a in server.auth_attempts} == {mechanism}


def test_forcing_a_method_the_server_lacks_stops_cleanly(
    tmp_path: Path, smtp_server: Callable[..., SmtpServer]
) -> None:
    server = smtp_server(auth={"mailer@example.com": PASSWORD})
    campaign(tmp_path, 2)
    env = {"MAILBLAST_SMTP_OAUTH_TOKEN": TOKEN}
    url = user_url(server)
    proc = mailblast(
        tmp_path, "send", "people.csv", "-t", "t.txt", "--smtp", url, "--auth", "xoauth2", env=env
    )
    assert proc.returncode == 3
    assert "does not offer AUTH XOAUTH2 (it offers: LOGIN, PLAIN)" in proc.stderr
    bad = mailblast(tmp_path, "send", "people.csv", "-t", "t.txt", "--smtp", url, "--auth", "cram", env=env)
    assert bad.returncode == 2 and "--auth must be one of login, plain, xoauth2" in bad.stderr
    assert server.received == []


def test_basic_authentication_disabled_points_to_oauth2(
    tmp_path: Path, smtp_server: Callable[..., SmtpServer]
) -> None:
    server = smtp_server(basic_auth_disabled=True, xoauth2=fresh_token)
    campaign(tmp_path, 2)
    env = {"MAILBLAST_SMTP_PASSWORD": PASSWORD}
    proc = mailblast(tmp_path, "send", "people.csv", "-t", "t.txt", "--smtp", user_url(server), env=env)
    assert proc.returncode == 3
    assert "535 5.7.139 Authentication unsuccessful, basic authentication is disabled" in proc.stderr
    assert "use OAuth2" in proc.stderr and "MAILBLAST_SMTP_OAUTH_TOKEN" in proc.stderr
    assert PASSWORD not in proc.stdout + proc.stderr


# -- the pieces, without a server ------------------------------------------------------


def gather(username: str | None = "u", **kwargs: object) -> Credentials | None:
    options: dict = {
        "method": None,
        "password_command": None,
        "token_command": None,
        "environ": {},
        "ask_password": lambda prompt: "typed",
        "prompt": "Password",
    }
    options.update(kwargs)
    return gather_credentials(username, **options)


def test_a_token_alone_asks_for_no_password() -> None:
    credentials = gather(environ={"MAILBLAST_SMTP_OAUTH_TOKEN": TOKEN})
    assert credentials is not None and credentials.password is None and credentials.token == TOKEN
    assert credentials.choose_method("h", ["xoauth2", "plain"]) == "xoauth2"
    with pytest.raises(ConfigError, match="does not offer XOAUTH2"):
        credentials.choose_method("h", ["plain"])
    prompted = gather()
    assert prompted is not None and prompted.password == "typed"
    with pytest.raises(ConfigError, match="offers no password sign-in"):
        prompted.choose_method("h", ["xoauth2"])


def test_credentials_never_show_their_secrets_in_a_repr() -> None:
    credentials = Credentials("u", password=PASSWORD, token=TOKEN)
    assert PASSWORD not in repr(credentials) and TOKEN not in repr(credentials)


def test_secret_settings_need_a_user_in_the_url() -> None:
    assert gather(None, environ={"MAILBLAST_SMTP_PASSWORD": "x"}) is None
    with pytest.raises(ConfigError, match="oauth_token_command is set, but the SMTP URL names no user"):
        gather(None, token_command="echo t")
    with pytest.raises(ConfigError, match="--auth xoauth2 needs an OAuth2 access token"):
        gather(method="xoauth2")


def test_the_first_token_is_used_once_then_the_command_runs_again(tmp_path: Path) -> None:
    command = COUNTING_TOKEN_COMMAND.replace("count", str(tmp_path / "count"))
    credentials = gather(token_command=command)
    assert credentials is not None and credentials.token == "ya29.a0-fresh-1"

    async def three() -> list[str]:
        return [await credentials.fresh_token() for _ in range(3)]

    assert asyncio.run(three()) == ["ya29.a0-fresh-1", "ya29.a0-fresh-2", "ya29.a0-fresh-3"]
    echoed = "535 5.7.8 token ya29.a0-fresh-2 rejected"
    assert credentials.redact(echoed) == "535 5.7.8 token [redacted] rejected"


class EchoingTokenServer(SmtpServer):
    """Refuses every token with a 535 that repeats the AUTH blob and the token."""

    def _xoauth2_refusal(self, blob: bytes, token: str) -> str:
        return f"535 5.7.8 refused {base64.b64encode(blob).decode()} ({token})"


def test_an_echoed_token_never_leaves(tmp_path: Path) -> None:
    server = EchoingTokenServer(xoauth2=lambda user, token: False).start()
    try:
        campaign(tmp_path, 2)
        env = {"MAILBLAST_SMTP_OAUTH_TOKEN": TOKEN}
        url = user_url(server)
        proc = mailblast(
            tmp_path, "send", "people.csv", "-t", "t.txt", "--smtp", url, "--report", "r.csv", env=env
        )
    finally:
        server.stop()
    assert proc.returncode == 3
    assert "535 5.7.8 refused [redacted] ([redacted])" in proc.stderr  # the whole blob, and the token
    blob = base64.b64encode(f"user=mailer@example.com\x01auth=Bearer {TOKEN}\x01\x01".encode()).decode()
    written = everything_written(tmp_path, proc.stdout, proc.stderr)
    assert TOKEN not in written and blob not in written and blob[20:-20] not in written


def test_a_secret_command_never_quotes_its_output() -> None:
    with pytest.raises(SecretError) as failed:
        SecretCommand(f"echo {TOKEN} >&1; exit 7", "[smtp] password_command").run()
    assert TOKEN not in str(failed.value) and "exit status 7" in str(failed.value)

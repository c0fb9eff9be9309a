"""Where the SMTP login's secret comes from, and which AUTH method it goes by.

A password comes from MAILBLAST_SMTP_PASSWORD, ``[smtp] password_command`` or a prompt; an
OAuth2 access token from MAILBLAST_SMTP_OAUTH_TOKEN or ``[smtp] oauth_token_command``. A
command's first line of output is the secret (msmtp's ``passwordeval``). The password command
runs once per run; the token command runs again for each new connection, because access
tokens expire (hourly at Google and Microsoft). Nothing here ever shows a secret.
"""

from __future__ import annotations

import asyncio
import re
import subprocess
from collections import deque
from collections.abc import Callable, Collection, Mapping
from dataclasses import dataclass, field
from typing import Literal, cast, get_args

from mailblast.errors import ConfigError
from mailblast.smtp.redact import Redactor
from mailblast.smtp.replies import Verdict

PASSWORD_ENV = "MAILBLAST_SMTP_PASSWORD"
TOKEN_ENV = "MAILBLAST_SMTP_OAUTH_TOKEN"
AuthMethod = Literal["login", "plain", "xoauth2"]
AUTH_METHODS: tuple[str, ...] = get_args(AuthMethod)
PASSWORD_METHODS = ("cram-md5", "plain", "login")  # what aiosmtplib's login() tries, in order
COMMAND_TIMEOUT = 120.0  # seconds; a password manager may ask for its own passphrase first
BASIC_AUTH_HINT = (
    "the provider has switched off password sign-in (basic authentication) for SMTP: use OAuth2, "
    f"with a token in {TOKEN_ENV} or from [smtp] oauth_token_command (see README, OAuth2)"
)
# Microsoft 365: "535 5.7.139 Authentication unsuccessful, basic authentication is disabled"
_BASIC_AUTH_OFF = re.compile(r"basic\s+auth\w*\s+(?:is\s+)?(?:disabled|turned\s+off)", re.IGNORECASE)


class SecretError(Exception):
    """A secret command failed; the text names the setting and never holds its output."""


@dataclass(frozen=True)
class SecretCommand:
    """A shell command whose first line of output is a secret."""

    command: str
    setting: str  # where it was set, to name in errors: "[smtp] oauth_token_command"

    def run(self) -> str:
        try:
            done = subprocess.run(
                self.command, shell=True, stdout=subprocess.PIPE, timeout=COMMAND_TIMEOUT, check=False
            )
        except subprocess.TimeoutExpired:
            raise SecretError(f"{self.setting} did not finish within {COMMAND_TIMEOUT:.0f}s") from None
        except OSError as e:
            raise SecretError(f"{self.setting} could not be run: {e.strerror}") from None
        return self._secret(done.returncode, done.stdout)

    async def run_async(self) -> str:
        """The same, without blocking the event loop that keeps the other connections sending."""
        try:
            process = await asyncio.create_subprocess_shell(self.command, stdout=subprocess.PIPE)
        except OSError as e:
            raise SecretError(f"{self.setting} could not be run: {e.strerror}") from None
        try:
            out, _ = await asyncio.wait_for(process.communicate(), COMMAND_TIMEOUT)
        except TimeoutError:
            process.kill()
            raise SecretError(f"{self.setting} did not finish within {COMMAND_TIMEOUT:.0f}s") from None
        except asyncio.CancelledError:
            if process.returncode is None:
                process.kill()
            raise
        return self._secret(process.returncode, out)

    def _secret(self, returncode: int | None, out: bytes) -> str:
        # The output is never quoted: whatever it printed may be the secret, or part of it.
        if returncode:
            raise SecretError(f"{self.setting} failed (exit status {returncode}); its output is not shown")
        lines = out.decode("utf-8", "replace").strip().splitlines()
        if not lines or not lines[0].strip():
            raise SecretError(f"{self.setting} printed nothing")
        return lines[0].strip()


@dataclass
class Credentials:
    """A user name and what it may sign in with; ``method`` is set when --auth forces one."""

    username: str
    method: AuthMethod | None = None
    password: str | None = field(default=None, repr=False)  # never in a repr, a log or a traceback
    token: str | None = field(default=None, repr=False)  # a fixed token, or the command's first, unused
    token_command: SecretCommand | None = None
    chosen: str | None = None  # the method of the latest sign-in
    # the latest tokens a command gave: only a connection still open can echo its own
    _tokens: deque[str] = field(default_factory=lambda: deque(maxlen=64), repr=False)
    _redactor: Redactor | None = field(default=None, repr=False)

    @property
    def has_token(self) -> bool:
        return self.token is not None or self.token_command is not None

    async def fresh_token(self) -> str:
        """The token for a new connection: a command's unused first token, else the command run again."""
        if self.token_command is None:
            assert self.token is not None
            return self.token
        token, self.token = self.token, None
        if token is None:
            token = await self.token_command.run_async()
        self._tokens.append(token)
        self._redactor = None
        return token

    def redact(self, text: str) -> str:
        """``text`` without any form of the password or of any token used so far (servers echo them)."""
        if self._redactor is None:
            self._redactor = Redactor([self.password, self.token, *self._tokens], self.username)
        return self._redactor(text)

    def choose_method(self, host: str, offered: Collection[str]) -> str:
        """``xoauth2``, ``plain``, ``login`` or ``password`` (any the server offers); raises ConfigError."""
        self.chosen = self._choose(host, {m.lower() for m in offered})
        return self.chosen

    def _choose(self, host: str, offered: set[str]) -> str:
        listed = ", ".join(sorted(m.upper() for m in offered)) or "none"
        if self.method is not None:
            if self.method not in offered:
                raise ConfigError(
                    f"{host} does not offer AUTH {self.method.upper()} (it offers: {listed})",
                    "drop --auth to let mailblast choose, or pick one the server offers",
                )
            return self.method
        if self.has_token and "xoauth2" in offered:
            return "xoauth2"
        if self.password is not None and offered & set(PASSWORD_METHODS):
            return "password"
        if self.has_token:
            raise ConfigError(
                f"{host} does not offer XOAUTH2 (it offers: {listed}), and no password was given",
                f"sign in with a password ({PASSWORD_ENV} or [smtp] password_command)",
            )
        raise ConfigError(
            f"{host} offers no password sign-in (it offers: {listed})",
            f"for XOAUTH2, set {TOKEN_ENV} or [smtp] oauth_token_command",
        )


def check_sign_in_settings(
    username: str | None, *, method: str | None, password_command: str | None, token_command: str | None
) -> None:
    """The sign-in settings make sense together (no secret is read: a dry run checks them too)."""
    if method is not None and method not in AUTH_METHODS:
        raise ConfigError(f"--auth must be one of {', '.join(AUTH_METHODS)}, not {method!r}")
    if username is None:
        given = {
            "--auth": method,
            "[smtp] password_command": password_command,
            "[smtp] oauth_token_command": token_command,
        }
        named = [name for name, value in given.items() if value]
        if named:
            raise ConfigError(
                f"{named[0]} is set, but the SMTP URL names no user to sign in as",
                "put the user in the URL: smtp+starttls://USER@HOST (write @ in the user as %40)",
            )


def gather_credentials(
    username: str | None,
    *,
    method: str | None,
    password_command: str | None,
    token_command: str | None,
    environ: Mapping[str, str],
    ask_password: Callable[[str], str],
    prompt: str,
) -> Credentials | None:
    """What the run signs in with, read before anything is sent; raises ConfigError."""
    check_sign_in_settings(
        username, method=method, password_command=password_command, token_command=token_command
    )
    if username is None:
        return None
    credentials = Credentials(username, cast(AuthMethod | None, method))
    if method in (None, "xoauth2"):
        if environ.get(TOKEN_ENV):  # the environment wins, and the command is then not run at all
            credentials.token = environ[TOKEN_ENV]
        elif token_command:
            credentials.token_command = SecretCommand(token_command, "[smtp] oauth_token_command")
            credentials.token = _run(credentials.token_command)  # fails now, before anything is sent
        elif method == "xoauth2":
            raise ConfigError(
                "--auth xoauth2 needs an OAuth2 access token",
                f"set {TOKEN_ENV}, or oauth_token_command in the [smtp] table of mailblast.toml",
            )
    if method != "xoauth2":
        if environ.get(PASSWORD_ENV):
            credentials.password = environ[PASSWORD_ENV]
        elif password_command:
            credentials.password = _run(SecretCommand(password_command, "[smtp] password_command"))
        elif not credentials.has_token:  # asked only when there is nothing else to sign in with
            credentials.password = ask_password(prompt)
    return credentials


def _run(command: SecretCommand) -> str:
    try:
        return command.run()
    except SecretError as e:
        raise ConfigError(str(e), "run the command yourself to see what is wrong; nothing was sent") from None


DEFAULT_SECRET_SETTINGS = ("the SMTP URL", f"{PASSWORD_ENV} or [smtp] password_command")


def sign_in_hint(
    refusal: Verdict,
    credentials: Credentials | None,
    settings: tuple[str, str] = DEFAULT_SECRET_SETTINGS,
) -> str:
    """What to do when the server refused the sign-in; ``settings`` name where the user name and
    the password were set (a [[relay]] has its own)."""
    if _BASIC_AUTH_OFF.search(refusal.text):
        return BASIC_AUTH_HINT
    if credentials is not None and credentials.chosen == "xoauth2":
        if credentials.token_command is None:
            return (
                f"the OAuth2 token was refused: check the user name in the SMTP URL, and that the token in "
                f"{TOKEN_ENV} is for that user and not expired (oauth_token_command fetches a fresh one "
                "for each connection)"
            )
        return "the OAuth2 token was refused: check the user name in the SMTP URL and the token's scope"
    user_in, password_in = settings
    return f"check the user name in {user_in} and the password ({password_in})"

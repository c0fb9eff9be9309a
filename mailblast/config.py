"""Settings: mailblast.toml (or --config), overridden by command-line flags.

The file has top-level keys for the campaign and an [smtp] table for the server:

    template = "templates/welcome.md.j2"
    from = "Newsletter <news@example.com>"

    [smtp]
    url = "smtp://user@smtp.example.com:587"
    rate = "3/s"                # or several limits, each of which holds: ["3/s", "500/d"]

To send through several accounts in one run, give one [[relay]] table each instead of
[smtp] url (the command line's --smtp still means one server):

    [[relay]]
    url = "smtp+starttls://user@smtp.example.com"
    rate = "3/s"
    connections = 2
    password_env = "EXAMPLE_PASSWORD"    # or password_command = "pass show example"

Relative paths in the file are taken from the file's own folder.
"""

from __future__ import annotations

import os
import re
import tomllib
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

from mailblast.errors import ConfigError, did_you_mean
from mailblast.smtp.urls import Pace, parse_pace

DEFAULT_CONFIG = "mailblast.toml"
PIPELINING_ENV = "MAILBLAST_PIPELINING"
MAX_CONNECTIONS = 100  # per run: servers allow a few per client, and each costs memory

# key in the file -> (type, is a path)
TOP_KEYS: dict[str, tuple[type, bool]] = {
    "template": (str, True),
    "from": (str, False),
    "encoding": (str, False),
    "delimiter": (str, False),
    "email_column": (str, False),
    "allow_duplicates": (bool, False),
    "report": (str, True),
    "journal": (str, True),
    "quiet": (bool, False),
    "suppress": (list, True),
    "attachments_dir": (str, True),
    "attachments_max_mb": (float, False),
    "sandbox": (bool, False),
    "campaign": (str, False),
    "inline_css": (bool, False),
    "list_id": (str, False),
    "feedback_id": (str, False),
    "return_path": (str, False),
}
SMTP_KEYS: dict[str, tuple[type, bool]] = {
    "url": (str, False),
    "rate": (Pace, False),
    "connections": (int, False),
    "max_messages": (int, False),
    "retries": (int, False),
    "timeout": (float, False),
    "auth": (str, False),
    "password_command": (str, False),
    "oauth_token_command": (str, False),
    "pipelining": (bool, False),
}


RELAY_KEYS: dict[str, tuple[type, bool]] = {
    "name": (str, False),
    "url": (str, False),
    "rate": (Pace, False),
    "connections": (int, False),
    "max_messages": (int, False),
    "password_env": (str, False),
    "password_command": (str, False),
}


@dataclass(frozen=True)
class RelaySettings:
    """One [[relay]] table: a server of its own, with its own limit, connections and secret."""

    name: str  # "" for the run's one server ([smtp] url or --smtp)
    url: str
    rate: Pace = field(default_factory=Pace)
    connections: int = 2
    max_messages: int = 100
    password_env: str | None = None  # the environment variable holding its password
    password_command: str | None = None
    auth: str | None = None  # the one server's [smtp] auth and oauth_token_command
    oauth_token_command: str | None = None


def pipelining_default() -> bool:
    """Pipelining is on unless MAILBLAST_PIPELINING says 0 (or false, no, off)."""
    return os.environ.get(PIPELINING_ENV, "1").strip().lower() not in ("0", "false", "no", "off")


@dataclass
class Settings:
    """Everything a command may need, already merged from file and flags."""

    template: Path | None = None
    sender: str | None = None
    encoding: str | None = None
    delimiter: str | None = None
    email_column: str | None = None
    allow_duplicates: bool = False
    report: Path | None = None
    journal: Path | None = None
    quiet: bool = False
    suppress: tuple[Path, ...] = ()  # the file's, then --suppress's: every list applies
    attachments_dir: Path | None = None
    attachments_max_mb: float = 10.0
    sandbox: bool = True  # render templates in Jinja's sandbox
    inline_css: bool = True  # copy <style> rules into style attributes (htmlbody.py)
    list_id: str | None = None  # List-Id (RFC 2919) of every message, unless the template sets one
    feedback_id: str | None = None  # Feedback-ID (Gmail's feedback loop), likewise
    unsubscribe_url: str | None = None  # [unsubscribe]: Jinja text, rendered per row
    unsubscribe_mailto: str | None = None
    dkim_domain: str | None = None  # [dkim]: sign every message
    dkim_selector: str | None = None
    dkim_private_key: Path | None = None
    # VERP: the envelope sender, with {token} for a signed per-recipient token
    return_path: str | None = None
    bounces_source: str | None = None  # [bounces]: the mailbox `bounces` reads by default
    bounces_password_command: str | None = None
    bounces_oauth_token_command: str | None = None
    soft_bounce_limit: int = 3  # soft bounces within soft_bounce_days that suppress an address
    soft_bounce_days: float = 30.0
    smtp_url: str | None = None
    rate: Pace = field(default_factory=Pace)  # --rate (repeatable) or [smtp] rate: parsed once, here
    connections: int = 2
    max_messages: int = 100
    retries: int = 5
    timeout: float = 30.0
    auth: str | None = None  # login, plain or xoauth2; None: chosen from what the server offers
    password_command: str | None = None
    oauth_token_command: str | None = None
    pipelining: bool = field(default_factory=pipelining_default)  # when the server offers it
    relays: tuple[RelaySettings, ...] = ()  # [[relay]] tables; none: the one server of smtp_url
    campaign: str | None = None  # its name: another name is another campaign (journal.py)
    # per run only, never from the file
    server_changed: bool = False  # count earlier deliveries to another server as delivered
    limit: int | None = None  # send at most this many messages this run
    skip_invalid: bool = False  # send the valid rows, report the invalid ones
    no_journal: bool = False
    restart: bool = False
    retry_failed: bool = False
    skip_uncertain: bool = False
    wait: bool = False  # wait for the account's quota instead of stopping
    outbox: Path | None = None  # deliver into this Maildir through the local capture server
    test_to: str | None = None  # send a few messages to this address only (testsend.py)
    test_count: int | None = None
    test_row: int | None = None
    config_file: Path | None = None  # the file the settings came from, to name in hints

    def relay_list(self) -> tuple[RelaySettings, ...]:
        """The servers of the run: the [[relay]] tables, or the one server as a one-entry list."""
        if self.relays or not self.smtp_url:
            return self.relays
        one = RelaySettings(
            "",
            self.smtp_url,
            self.rate,
            self.connections,
            self.max_messages,
            password_command=self.password_command,
            auth=self.auth,
            oauth_token_command=self.oauth_token_command,
        )
        return (one,)


_KIND_NAMES = {
    str: "text in quotes",
    int: "a whole number",
    float: "a number",
    bool: "true or false",
    list: "a list of paths in quotes",
    Pace: 'a rate in quotes, or a list of them: "3/s" or ["3/s", "500/d"]',
}
UNSUBSCRIBE_KEYS: dict[str, tuple[type, bool]] = {"url": (str, False), "mailto": (str, False)}
BOUNCES_KEYS: dict[str, tuple[type, bool]] = {
    "source": (str, False),
    "password_command": (str, False),
    "oauth_token_command": (str, False),
    "soft_bounce_limit": (int, False),
    "soft_bounce_days": (float, False),
}
DKIM_KEYS: dict[str, tuple[type, bool]] = {
    "domain": (str, False),
    "selector": (str, False),
    "private_key": (str, True),
}
# names in the file -> names in Settings
_RENAMES = {
    "from": "sender",
    "smtp.url": "smtp_url",
    "unsubscribe.url": "unsubscribe_url",
    "unsubscribe.mailto": "unsubscribe_mailto",
    "dkim.domain": "dkim_domain",
    "dkim.selector": "dkim_selector",
    "dkim.private_key": "dkim_private_key",
    "bounces.source": "bounces_source",
    "bounces.password_command": "bounces_password_command",
    "bounces.oauth_token_command": "bounces_oauth_token_command",
    "bounces.soft_bounce_limit": "soft_bounce_limit",
    "bounces.soft_bounce_days": "soft_bounce_days",
}


def _read_file(path: Path) -> dict[str, Any]:
    try:
        with path.open("rb") as f:
            return tomllib.load(f)
    except FileNotFoundError:
        raise ConfigError(f"{path}: no such config file", "check the --config path") from None
    except tomllib.TOMLDecodeError as e:
        raise ConfigError(f"{path}: not valid TOML: {e}", "fix the file's syntax") from None
    except UnicodeDecodeError as e:  # TOML is UTF-8 by definition
        raise ConfigError(
            f"{path}: not UTF-8 text (byte {e.start + 1} is {e.object[e.start]:#04x})",
            "save the file as UTF-8",
        ) from None
    except OSError as e:
        raise ConfigError(f"{path}: cannot be read: {e.strerror}") from None


def _take(path: Path, table: dict[str, Any], known: dict[str, tuple[type, bool]], prefix: str) -> dict:
    values = {}
    for key, value in table.items():
        if key not in known:
            raise _unknown_setting(path, prefix + key)
        kind, is_path = known[key]
        ok = isinstance(value, kind) and not (kind is int and isinstance(value, bool))
        if kind is float and isinstance(value, int) and not isinstance(value, bool):
            ok = True
        if kind is list:
            ok = ok and all(isinstance(item, str) for item in value)
        if kind is Pace:
            ok = isinstance(value, str) or (
                isinstance(value, list) and all(isinstance(v, str) for v in value)
            )
        if not ok:
            raise ConfigError(f"{path}: {prefix}{key} should be {_KIND_NAMES[kind]}, not {value!r}")
        if kind is Pace:
            try:
                value = parse_pace(value)
            except ConfigError as e:
                raise ConfigError(f"{path}: {prefix}{key}: {e.message}", e.hint) from None
        elif kind is list:
            value = tuple(path.parent / item for item in value)
        elif is_path:
            value = path.parent / value
        values[_RENAMES.get(prefix + key, key)] = value
    return values


def _unknown_setting(path: Path, name: str) -> ConfigError:
    if name.rpartition(".")[2] in ("password", "pass", "passwd"):
        return ConfigError(
            f"{path}: {name}: a password is never kept in the config file",
            "set MAILBLAST_SMTP_PASSWORD in the environment, or type it when asked",
        )
    every = [
        *TOP_KEYS,
        *(f"smtp.{k}" for k in SMTP_KEYS),
        *(f"unsubscribe.{k}" for k in UNSUBSCRIBE_KEYS),
        *(f"dkim.{k}" for k in DKIM_KEYS),
        *(f"bounces.{k}" for k in BOUNCES_KEYS),
    ]
    guess = did_you_mean(name, every) or did_you_mean(name.replace("_", "."), every)
    if guess is not None:
        table, _, key = guess.rpartition(".")
        where = f"under [{table}]" if table else "at the top, before [smtp]"
        return ConfigError(
            f"{path}: unknown setting {name}; did you mean {guess}?", f"write {key} = ... {where}"
        )
    return ConfigError(f"{path}: unknown setting {name}", f"the settings are: {', '.join(every)}")


def _relays(path: Path, tables: Any, smtp_url: str | None) -> tuple[RelaySettings, ...]:
    if tables is None:
        return ()
    if not isinstance(tables, list) or not all(isinstance(t, dict) for t in tables):
        raise ConfigError(f"{path}: relay should be tables ([[relay]])")
    if smtp_url is not None:
        raise ConfigError(
            f"{path}: [smtp] url and [[relay]] tables are both set", "keep one: the relays, or the one url"
        )
    relays = []
    for number, table in enumerate(tables, 1):
        where = f"relay {number}"
        values = _take(path, table, RELAY_KEYS, f"{where}: ")
        url = values.pop("url", None)
        if not url:
            raise ConfigError(f"{path}: {where} has no url", 'write url = "smtp://HOST:PORT" in it')
        if values.get("password_env") and values.get("password_command"):
            raise ConfigError(f"{path}: {where} sets both password_env and password_command", "keep one")
        relay = RelaySettings(name=values.pop("name", "") or _host(url), url=url, **values)
        if relay.connections < 1 or relay.max_messages < 1 or relay.connections > MAX_CONNECTIONS:
            raise ConfigError(
                f"{path}: {where}: connections must be 1 to {MAX_CONNECTIONS} and max_messages at least 1"
            )
        relays.append(relay)
    names = [r.name for r in relays]
    if len(set(names)) < len(names):
        raise ConfigError(f"{path}: two relays have the same name", "give each a name = ... of its own")
    return tuple(relays)


def _host(url: str) -> str:
    """A relay's name when it has none: its host and port, without the user."""
    rest = url.partition("://")[2].rpartition("@")[2]
    return rest.split("/")[0] or url


def load_settings(config: Path | None, flags: dict[str, Any]) -> Settings:
    """Merge the config file (``config``, else ./mailblast.toml if present) with flags not None."""
    path = config if config is not None else Path(DEFAULT_CONFIG)
    values: dict[str, Any] = {}
    if config is not None or path.is_file():
        data = _read_file(path)
        smtp = data.pop("smtp", {})
        if not isinstance(smtp, dict):
            raise ConfigError(f"{path}: smtp should be a table ([smtp])")
        unsubscribe = data.pop("unsubscribe", {})
        if not isinstance(unsubscribe, dict):
            raise ConfigError(f"{path}: unsubscribe should be a table ([unsubscribe])")
        dkim = data.pop("dkim", {})
        if not isinstance(dkim, dict):
            raise ConfigError(f"{path}: dkim should be a table ([dkim])")
        bounces = data.pop("bounces", {})
        if not isinstance(bounces, dict):
            raise ConfigError(f"{path}: bounces should be a table ([bounces])")
        relay_tables = data.pop("relay", None)
        values.update(_take(path, data, TOP_KEYS, ""))
        values.update(_take(path, smtp, SMTP_KEYS, "smtp."))
        values.update(_take(path, unsubscribe, UNSUBSCRIBE_KEYS, "unsubscribe."))
        values.update(_take(path, dkim, DKIM_KEYS, "dkim."))
        values.update(_take(path, bounces, BOUNCES_KEYS, "bounces."))
        values["relays"] = _relays(path, relay_tables, smtp.get("url"))
        values["config_file"] = path
    values["suppress"] = (*values.get("suppress", ()), *(flags.get("suppress") or ()))
    values.update({k: v for k, v in flags.items() if v is not None and k not in ("suppress", "rate")})
    if flags.get("rate"):  # --rate, once or more: replaces the file's
        values["rate"] = parse_pace(flags["rate"])
    if flags.get("smtp_url") is not None:
        values["relays"] = ()  # --smtp (or MAILBLAST_SMTP_URL) means one server
    names = {f.name for f in fields(Settings)}
    unknown = set(values) - names
    assert not unknown, f"flags not in Settings: {unknown}"
    settings = Settings(**values)
    for name in ("connections", "max_messages"):
        if getattr(settings, name) < 1:
            raise ConfigError(f"{name.replace('_', '-')} must be at least 1, not {getattr(settings, name)}")
    if settings.connections > MAX_CONNECTIONS:
        raise ConfigError(
            f"connections must be at most {MAX_CONNECTIONS}, not {settings.connections:,}",
            "a mail server allows a few connections per client; more only get refused",
        )
    if settings.retries < 0:
        raise ConfigError(f"retries must be 0 or more, not {settings.retries}")
    if not settings.attachments_max_mb > 0:
        raise ConfigError(f"attachments_max_mb must be more than 0, not {settings.attachments_max_mb}")
    _check_list_headers(settings)
    if not settings.timeout > 0:
        raise ConfigError(f"timeout must be more than 0 seconds, not {settings.timeout}")
    if settings.soft_bounce_limit < 1 or not settings.soft_bounce_days > 0:
        raise ConfigError("[bounces] soft_bounce_limit must be at least 1 and soft_bounce_days more than 0")
    if settings.return_path is not None and (
        "@" not in settings.return_path or settings.return_path.count("{token}") != 1
    ):
        raise ConfigError(
            "return_path must be an address with {token} once in its local part, "
            f"not {settings.return_path!r}",
            'e.g. return_path = "bounces+{token}@example.com"',
        )
    return settings


_LIST_ID = re.compile(r"(?:[^<>]*<)?[A-Za-z0-9!#$%&'*+/=?^_`{|}~-]+(?:\.[A-Za-z0-9!#$%&'*+/=?^_`{|}~-]+)+>?")


def _check_list_headers(settings: Settings) -> None:
    """list_id and feedback_id: one line of text, and a List-Id that names a list (RFC 2919)."""
    for name in ("list_id", "feedback_id"):
        value = getattr(settings, name)
        if value is not None and (not value.strip() or any(ord(c) < 32 or ord(c) == 127 for c in value)):
            raise ConfigError(f"{name} must be one line of text, not {value!r}")
    if settings.list_id is not None:
        value = settings.list_id.strip()
        if not _LIST_ID.fullmatch(value) or value.count("<") != value.endswith(">"):
            raise ConfigError(
                f"list_id {value!r} does not name a list",
                'write a name and a domain-like id: list_id = "Greenleaf news <news.greenleaf-books.com>"',
            )
        settings.list_id = value if value.endswith(">") else f"<{value}>"  # RFC 2919 wants the brackets

"""Several relays in one run: each [[relay]] of mailblast.toml with its own limit, pool and secret."""

from __future__ import annotations

import ssl
from collections.abc import Callable, Mapping, Sequence
from functools import partial
from types import MappingProxyType

from mailblast.config import RelaySettings
from mailblast.errors import ConfigError
from mailblast.smtp.connection import Connection
from mailblast.smtp.credentials import PASSWORD_ENV, gather_credentials
from mailblast.smtp.ratelimit import SlidingWindowLimiter
from mailblast.smtp.replies import Verdict
from mailblast.smtp.sender import Relay
from mailblast.smtp.urls import Pace, parse_smtp_url


def relays_of(
    settings: Sequence[RelaySettings],
    *,
    timeout: float,
    pipelining: bool,
    tls_context: ssl.SSLContext,
    environ: Mapping[str, str],
    ask_password: Callable[[str], str],
    unused: Mapping[str, Verdict] = MappingProxyType({}),
    connection: Callable[..., Connection] = Connection,
) -> list[Relay]:
    """The sender's relays, each signed in with its own secret (read now, before anything is sent).

    One path for both: a single [smtp] url (or --smtp) is a one-entry list whose relay has no
    name, and takes its secret from MAILBLAST_SMTP_PASSWORD and the [smtp] table.
    Each limits to its pace; a quota's limiter is the Sender's to give (Sender's limiter_of).
    The ``unused`` relays take no part in the run, for the reason given: their secret is not read.
    ``connection`` makes each connection (Connection's arguments; a subclass may watch it).
    """
    relays = []
    for relay in settings:
        target = parse_smtp_url(relay.url)
        limiter = limiter_for(relay.rate)
        if relay.name in unused:
            connect = partial(Connection, target, None, timeout=timeout, tls_context=tls_context)
            why = unused[relay.name]
            relays.append(Relay(connect, limiter, relay.connections, name=relay.name, dropped=why))
            continue
        secret: Mapping[str, str] = environ if not relay.name else {}
        if relay.password_env is not None:
            if not environ.get(relay.password_env):
                raise ConfigError(
                    f"relay {relay.name}: the environment variable {relay.password_env} is not set",
                    f"set {relay.password_env} to the password of {target.username or 'the account'}",
                )
            secret = {PASSWORD_ENV: environ[relay.password_env]}
        which = f" (relay {relay.name})" if relay.name else ""
        credentials = gather_credentials(
            target.username,
            method=relay.auth,
            password_command=relay.password_command,
            token_command=relay.oauth_token_command,
            environ=secret,
            ask_password=ask_password,
            prompt=f"Password for {target.username} at {target.host}{which}",
        )
        connect = partial(
            connection, target, credentials, timeout=timeout, tls_context=tls_context, pipelining=pipelining
        )
        relays.append(
            Relay(
                connect, limiter, relay.connections, relay.max_messages, relay.name, credentials=credentials
            )
        )
    return relays


def limiter_for(pace: Pace) -> SlidingWindowLimiter:
    """The run's limiter of a relay without a quota: its tightest limit within a run, or none known."""
    rate = min(pace.pacing, key=lambda r: r.per_second) if pace.pacing else None
    return SlidingWindowLimiter(rate.count if rate else None, rate.period if rate else 1.0)


def describe(settings: Sequence[RelaySettings]) -> str:
    """One line for the start of the run: the relays and their limits."""
    return ", ".join(
        f"{r.name} ({f'at most {r.rate}' if r.rate else 'no rate'}, {r.connections} connection(s))"
        for r in settings
    )


def secret_settings(relay: RelaySettings) -> tuple[str, str]:
    """Where a relay's user name and password are set, for its sign-in hint."""
    if relay.password_env is not None:
        password = f"{relay.password_env}, relay {relay.name}'s password_env"
    elif relay.password_command is not None:
        password = f"relay {relay.name}'s password_command"
    else:
        password = f"the one typed for relay {relay.name}"
    return f"relay {relay.name}'s url", password

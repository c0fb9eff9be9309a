"""Several relays in one run: each [[relay]] of mailblast.toml with its own limit, pool and secret."""

from __future__ import annotations

import ssl
from collections.abc import Callable, Mapping, Sequence
from functools import partial

from mailblast.config import RelaySettings
from mailblast.errors import ConfigError
from mailblast.smtp.connection import Connection
from mailblast.smtp.credentials import PASSWORD_ENV, gather_credentials
from mailblast.smtp.ratelimit import SlidingWindowLimiter
from mailblast.smtp.sender import Relay
from mailblast.smtp.urls import parse_rate, parse_smtp_url


def relays_of(
    settings: Sequence[RelaySettings],
    *,
    timeout: float,
    pipelining: bool,
    tls_context: ssl.SSLContext,
    environ: Mapping[str, str],
    ask_password: Callable[[str], str],
) -> list[Relay]:
    """The sender's relays, each signed in with its own secret (read now, before anything is sent)."""
    relays = []
    for relay in settings:
        target = parse_smtp_url(relay.url)
        rate = parse_rate(relay.rate) if relay.rate else None
        secret = {}
        if relay.password_env is not None:
            if not environ.get(relay.password_env):
                raise ConfigError(
                    f"relay {relay.name}: the environment variable {relay.password_env} is not set",
                    f"set {relay.password_env} to the password of {target.username or 'the account'}",
                )
            secret = {PASSWORD_ENV: environ[relay.password_env]}
        credentials = gather_credentials(
            target.username,
            method=None,
            password_command=relay.password_command,
            token_command=None,
            environ=secret,
            ask_password=ask_password,
            prompt=f"Password for {target.username} at {target.host} (relay {relay.name})",
        )
        connect = partial(
            Connection, target, credentials, timeout=timeout, tls_context=tls_context, pipelining=pipelining
        )
        limiter = SlidingWindowLimiter(rate.count if rate else None, rate.period if rate else 1.0)
        relays.append(Relay(connect, limiter, relay.connections, relay.max_messages, relay.name))
    return relays


def describe(settings: Sequence[RelaySettings]) -> str:
    """One line for the start of the run: the relays and their limits."""
    return ", ".join(
        f"{r.name} ({'at most ' + r.rate if r.rate else 'no rate'}, {r.connections} connection(s))"
        for r in settings
    )

"""Parse the SMTP server URL and the sending rate given on the command line or in config."""

from __future__ import annotations

import ipaddress
import math
import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal
from urllib.parse import quote, unquote, urlsplit

from mailblast.errors import ConfigError

Security = Literal["starttls-if-offered", "starttls", "tls"]

# scheme -> (security, default port)
_SCHEMES: dict[str, tuple[Security, int]] = {
    "smtp": ("starttls-if-offered", 25),
    "smtp+starttls": ("starttls", 587),
    "smtps": ("tls", 465),
}
_SCHEME_OF: dict[Security, str] = {security: scheme for scheme, (security, _) in _SCHEMES.items()}

_URL_HINT = (
    "write the server as smtp://HOST[:PORT] (STARTTLS if offered, port 25), "
    "smtp+starttls://HOST[:PORT] (STARTTLS required, port 587) or "
    "smtps://HOST[:PORT] (implicit TLS, port 465), optionally with USER@ before HOST; "
    "put an IPv6 address in brackets, e.g. smtp://[::1]:2525"
)
_PASSWORD_MESSAGE = "the SMTP URL has a password in it (a ':' before the '@')"
_PASSWORD_HINT = (
    "put the password in MAILBLAST_SMTP_PASSWORD (or let mailblast prompt for it); "
    "a password in a URL ends up in shell history and process lists"
)
_HOST = re.compile(r"[\w.-]+")
# "anything://", or one of our schemes even when the slashes are missing
_SCHEME_PREFIX = re.compile(r"[a-z][a-z0-9+.-]*://|(?:smtp|smtps|smtp\+starttls):/*", re.I)


@dataclass(frozen=True)
class SmtpTarget:
    """Where to send: host, port, optional login name and how to secure the connection."""

    host: str
    port: int
    username: str | None
    security: Security

    @property
    def is_loopback(self) -> bool:
        """Whether the server is on this machine (localhost, 127.0.0.0/8 or ::1)."""
        if self.host == "localhost":
            return True
        try:
            return ipaddress.ip_address(self.host).is_loopback
        except ValueError:
            return False

    def display(self) -> str:
        """The target as a URL that is safe to print (it never holds a password)."""
        user = f"{quote(self.username, safe='')}@" if self.username else ""
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{_SCHEME_OF[self.security]}://{user}{host}:{self.port}"


def parse_smtp_url(url: str) -> SmtpTarget:
    """Parse ``smtp://``, ``smtp+starttls://`` or ``smtps://[USER@]HOST[:PORT]``."""
    url = url.strip()
    # Checked first, so that no error message ever quotes a password. Any colon before
    # the last "@" may start one, even where urlsplit would not see it (a "/" in the
    # password ends the netloc early; "smtp:u:p@host" has no netloc at all).
    prefix = _SCHEME_PREFIX.match(url)
    after_scheme = url[prefix.end() :] if prefix else url
    if ":" in after_scheme.rpartition("@")[0]:
        raise ConfigError(_PASSWORD_MESSAGE, hint=_PASSWORD_HINT)

    def bad(why: str) -> ConfigError:
        return ConfigError(f"invalid SMTP URL {_shown(url)!r}: {why}", hint=_URL_HINT)

    try:
        parts = urlsplit(url)
    except ValueError as error:  # only its IPv6 message is known not to repeat the URL
        raise bad("an IPv6 address with no closing ']'" if "IPv6" in str(error) else "not a URL") from None
    try:
        port = parts.port
    except ValueError:  # urllib's message repeats the port, which may be a password
        raise bad("the port must be a number from 1 to 65535") from None
    scheme = parts.scheme.lower()
    if scheme not in _SCHEMES:
        raise bad(f"unknown scheme {scheme!r}" if scheme else "no scheme")
    host = parts.hostname
    if not host:
        raise bad("no host")
    if not (_HOST.fullmatch(host) or _is_ip(host)):
        raise bad(f"{host!r} is not a host name or IP address")
    if port == 0:
        raise bad("port 0")
    if parts.path not in ("", "/") or parts.query or parts.fragment:
        raise bad("an SMTP URL has no path, query or fragment")
    security, default_port = _SCHEMES[scheme]
    username = unquote(parts.username) if parts.username else None
    return SmtpTarget(host, port or default_port, username, security)


def _shown(url: str) -> str:
    """The URL as an error message may repeat it: nothing after the first ':' that follows
    the scheme, since without an '@' nobody can tell a port from a password ("smtp://user:pw")."""
    prefix = _SCHEME_PREFIX.match(url)
    start = prefix.end() if prefix else 0
    if url.startswith("[", start):  # an IPv6 address: its colons are not a port
        start = url.find("]", start) + 1 or len(url)
    colon = url.find(":", start)
    return url if colon < 0 else url[: colon + 1] + "..."


def _is_ip(host: str) -> bool:
    try:
        ipaddress.ip_address(host)
    except ValueError:
        return False
    return True


_UNITS = {
    **dict.fromkeys(["s", "sec", "secs", "second", "seconds"], 1.0),
    **dict.fromkeys(["min", "mins", "minute", "minutes"], 60.0),
    **dict.fromkeys(["h", "hr", "hrs", "hour", "hours"], 3600.0),
    **dict.fromkeys(["d", "day", "days"], 86400.0),
}
_SHORT_UNITS = [("d", 86400.0), ("h", 3600.0), ("min", 60.0), ("s", 1.0)]
_RATE = re.compile(
    r"\s*([0-9]+)\s*/\s*((?:[0-9]+\.?[0-9]*|\.[0-9]+)(?:e[+-]?[0-9]+)?)?\s*([a-z]+)\s*",
    re.IGNORECASE | re.ASCII,
)
_RATE_HINT = "write the rate as COUNT/PERIOD, for example 3/s, 180/min, 10000/h or 5/2s"


@dataclass(frozen=True)
class Rate:
    """``count`` messages per ``period`` seconds."""

    count: int
    period: float

    def __post_init__(self) -> None:
        if self.count < 1 or not (0 < self.period < math.inf):
            raise ValueError(f"not a rate: {self.count} per {self.period} s")

    @property
    def per_second(self) -> float:
        """Messages per second."""
        return self.count / self.period

    def __str__(self) -> str:
        # A whole number of the largest unit that fits, so that parse_rate reads it back.
        unit, multiple = "s", self.period
        for name, seconds in _SHORT_UNITS:
            whole = self.period / seconds
            if whole >= 1 and whole.is_integer() and whole * seconds == self.period:
                unit, multiple = name, whole
                break
        if multiple == 1:
            return f"{self.count}/{unit}"
        number = str(int(multiple)) if multiple.is_integer() else repr(multiple)
        return f"{self.count}/{number}{unit}"


def parse_rate(text: str) -> Rate:
    """Parse a rate such as ``3/s``, ``180/min``, ``10000/h``, ``5/2s`` or ``500/day``."""

    def bad(why: str) -> ConfigError:
        return ConfigError(f"invalid rate {text!r}: {why}", hint=_RATE_HINT)

    match = _RATE.fullmatch(text)
    if not match:
        raise bad("expected COUNT/PERIOD")
    count_text, multiple_text, unit = match.groups()
    seconds = _UNITS.get(unit.lower())
    if seconds is None:
        raise bad(f"unknown time unit {unit!r}")
    count = int(count_text)
    if count < 1:
        raise bad("the count must be at least 1")
    period = float(multiple_text or 1) * seconds
    if not (0 < period < math.inf):
        raise bad("the period must be a positive number")
    return Rate(count, period)


QUOTA_FROM = 60.0  # seconds: a rate over a longer period is a quota kept across runs (quota.py)


@dataclass(frozen=True)
class Pace:
    """Every limit a server is sent under (``--rate 3/s --rate 500/d``); each one holds.

    Rates over a minute are quotas, kept across runs (quota.py); the others pace the run.
    No rate at all: the server's limit is learned from its replies (ratelimit.py).
    """

    rates: tuple[Rate, ...] = ()

    @property
    def pacing(self) -> tuple[Rate, ...]:
        """The limits within a run: a second, a minute."""
        return tuple(r for r in self.rates if r.period <= QUOTA_FROM)

    @property
    def quotas(self) -> tuple[Rate, ...]:
        """The limits kept across runs: an hour, a day."""
        return tuple(r for r in self.rates if r.period > QUOTA_FROM)

    def __bool__(self) -> bool:
        return bool(self.rates)

    def __str__(self) -> str:
        return " and ".join(str(r) for r in self.rates)


def parse_pace(texts: str | Sequence[str] | None) -> Pace:
    """Parse one rate or several (``["3/s", "500/d"]``); a rate given twice counts once."""
    if texts is None:
        return Pace()
    if isinstance(texts, str):
        texts = [texts]
    rates: list[Rate] = []
    for text in texts:
        if (rate := parse_rate(text)) not in rates:
            rates.append(rate)
    return Pace(tuple(rates))

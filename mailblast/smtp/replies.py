"""Decide what an SMTP reply means for the run: carry on, slow down, retry, give up or stop."""

from __future__ import annotations

import enum
import re
from dataclasses import dataclass

from mailblast.smtp.providers import Cause, recognise

__all__ = ["Cause", "Kind", "Verdict", "classify", "connection_lost"]


class Kind(enum.Enum):
    """What to do about a reply."""

    OK = "ok"  # accepted
    THROTTLED = "throttled"  # we are too fast (rate, connections): slow the whole run down, retry later
    TRANSIENT = "transient"  # temporary failure of this message or recipient: retry it alone, later
    PERMANENT = "permanent"  # this message will never go through: give up on it
    FATAL = "fatal"  # no message will go through (auth, daily quota): stop the run


@dataclass(frozen=True)
class Verdict:
    """A classified SMTP reply; ``code`` is None when no reply came at all."""

    kind: Kind
    code: int | None
    enhanced_code: str | None
    retry_after: float | None
    text: str
    cause: Cause = Cause.NONE
    provider: str | None = None  # whose reply this is, when its wording names one (e.g. "Amazon SES")
    reset_hint: str | None = None  # when a used-up quota frees, in that provider's terms

    @property
    def is_retryable(self) -> bool:
        """Whether sending the message again later may work."""
        return self.kind in (Kind.THROTTLED, Kind.TRANSIENT)

    def describe(self) -> str:
        """A one-line summary such as ``550 5.1.1 User unknown``."""
        text = " ".join(self.text.split())
        if self.code is None:
            return text or "no reply"  # the text already says what happened instead
        return f"{self.code} {text}" if text else str(self.code)


_ENHANCED = re.compile(r"\s*([245]\.[0-9]{1,3}\.[0-9]{1,3})\b")
_RETRY_AFTER = re.compile(
    r"\b(?:try\s+again|retry|wait)\s+(?:(?:in|after|for)\s+)?([0-9]+(?:\.[0-9]+)?)\s*"
    r"(seconds?|secs?|s|minutes?|mins?|m|hours?|hrs?|h)\b",
    re.IGNORECASE | re.ASCII,
)
_UNIT_SECONDS = {"s": 1.0, "m": 60.0, "h": 3600.0}

_AUTH_FATAL_CODES = {530, 534, 535, 538}
_AUTH_TEXT = re.compile(r"\bauth(?:enticat\w*)?\b|credential", re.IGNORECASE)
_DAILY = re.compile(r"\bdaily\b|\bper[\s-]day\b", re.IGNORECASE)
_QUOTA_OR_LIMIT = re.compile(r"quota|\blimit", re.IGNORECASE)
_QUOTA_EXCEEDED = re.compile(r"quota\s*exceeded", re.IGNORECASE)
# A full mailbox is one recipient's problem, not the sender's quota.
_RECIPIENT_MAILBOX = re.compile(r"mailbox|inbox|recipient", re.IGNORECASE)
# Exim's smtp_accept_max_per_connection: "421 ... too many messages in this connection".
_PER_CONNECTION = re.compile(
    r"too\s+many\s+(?:messages|mails?)\s+(?:in|on|per|for)\s+(?:this|one|a|the)?\s*(?:connection|session)"
    r"|(?:messages|mails?)\s+per\s+(?:connection|session)",
    re.IGNORECASE,
)
# Postfix anvil's "too many connections from", Exim's "Too many concurrent SMTP connections".
_CONNECTIONS = re.compile(
    r"too\s+many\s+(?:\w+\s+){0,2}connections|connection\s+(?:rate\s+)?limit|\bconcurrent\s+connections",
    re.IGNORECASE,
)
_TOO_MANY_RECIPIENTS = re.compile(r"too\s+many\s+recipients", re.IGNORECASE)
# "Too many messages per hour" is a rate, not an allowance that is spent until tomorrow.
_PER_HOUR_OR_FASTER = re.compile(r"per[\s-](?:second|minute|hour)\b|\brate\b", re.IGNORECASE)
# Words that speak of the client's rate or connections: "too many recipients" is one message's
# problem, "too much mail from" is Postfix's message rate limit.
_TOO_FAST = re.compile(
    r"too\s+many(?!\s+recipients)|too\s+much\s+mail|too\s+(?:quickly|fast)|slow\s+down"
    r"|\brate\b|\brate[-_]?limit|per[\s-](?:second|minute|hour)\b|throttl",
    re.IGNORECASE,
)


def classify(code: int | None, text: str, *, recipient: bool = False) -> Verdict:
    """Classify the reply ``code text``; a code of None, 0 or below means no reply came.

    ``recipient``: the reply refused one RCPT TO, so a temporary refusal is that recipient's
    trouble (a full mailbox, greylisting) unless its text speaks of the client's rate.
    """
    if code is not None and code <= 0:
        code = None
    match = _ENHANCED.match(text)
    enhanced = match.group(1) if match else None
    kind = _kind(code, enhanced, text, recipient)
    known = recognise(code, text) if code is not None and code >= 400 else None
    if known is not None:  # a provider's own wording says more than its code (SES's 454, Mailtrap's 535)
        kind = _KIND_OF_CAUSE.get(known.cause) or (Kind.TRANSIENT if code < 500 else Kind.PERMANENT)
        return Verdict(
            kind, code, enhanced, _retry_after(text), text, known.cause, known.provider, known.rule
        )
    cause = _cause(kind, code, enhanced, text, recipient)
    if cause is Cause.QUOTA_USED_UP:
        kind = Kind.FATAL  # even as a 4xx: retrying cannot help until the quota frees
    return Verdict(kind, code, enhanced, _retry_after(text), text, cause)


_KIND_OF_CAUSE = {
    Cause.QUOTA_USED_UP: Kind.FATAL,
    Cause.SIGN_IN: Kind.FATAL,
    Cause.THROTTLE: Kind.THROTTLED,
    Cause.CONNECTION_CAP: Kind.THROTTLED,
    Cause.PER_CONNECTION_CAP: Kind.THROTTLED,
}


def connection_lost(text: str = "connection lost") -> Verdict:
    """The verdict for a message that got no reply (timeout, refused, dropped)."""
    return classify(None, text)


def _kind(code: int | None, enhanced: str | None, text: str, recipient: bool) -> Kind:
    if code is None:
        return Kind.TRANSIENT
    if 200 <= code < 400:
        return Kind.OK
    if 500 <= code < 600 and _is_fatal(code, enhanced, text):
        return Kind.FATAL
    if 400 <= code < 600 and _is_throttled(code, enhanced, text, recipient):
        return Kind.THROTTLED
    if 500 <= code < 600:
        return Kind.PERMANENT
    # Any other 4xx, and codes outside SMTP's range: nothing says the message itself is bad.
    return Kind.TRANSIENT


def _is_fatal(code: int, enhanced: str | None, text: str) -> bool:
    return _is_sign_in(code, enhanced, text) or _is_quota_used_up(enhanced, text)


def _is_sign_in(code: int, enhanced: str | None, text: str) -> bool:
    if code in _AUTH_FATAL_CODES or enhanced in ("5.7.8", "5.7.9"):
        return True
    return enhanced == "5.7.0" and bool(_AUTH_TEXT.search(text))


def _is_quota_used_up(enhanced: str | None, text: str) -> bool:
    if enhanced == "5.4.5":
        return True
    if enhanced in ("5.2.2", "4.2.2") or _RECIPIENT_MAILBOX.search(text) or _PER_HOUR_OR_FASTER.search(text):
        return False
    daily_quota = _DAILY.search(text) and _QUOTA_OR_LIMIT.search(text)
    return bool(daily_quota or _QUOTA_EXCEEDED.search(text))


def _cause(kind: Kind, code: int | None, enhanced: str | None, text: str, recipient: bool) -> Cause:
    if code is None or kind is Kind.OK:
        return Cause.NONE
    if code >= 500 and _is_sign_in(code, enhanced, text):
        return Cause.SIGN_IN
    if 400 <= code < 600 and _is_quota_used_up(enhanced, text):
        return Cause.QUOTA_USED_UP
    if _PER_CONNECTION.search(text):
        return Cause.PER_CONNECTION_CAP
    if _CONNECTIONS.search(text):
        return Cause.CONNECTION_CAP
    if kind is Kind.THROTTLED:
        return Cause.THROTTLE
    if (
        _TOO_MANY_RECIPIENTS.search(text)
        or (enhanced or "")[1:4] in (".1.", ".2.")
        or (recipient and kind is Kind.TRANSIENT)
    ):
        return Cause.RECIPIENT  # x.1.x addresses, x.2.x mailboxes, or a RCPT's own trouble
    return Cause.NONE


def _is_throttled(code: int, enhanced: str | None, text: str, recipient: bool) -> bool:
    """Only replies about the client as a whole: its rate, its connections (4.7.x, x.4.5, the words)."""
    if _TOO_FAST.search(text):
        return True
    if recipient or code >= 500 or enhanced is None:
        return False
    return enhanced == "4.4.5" or enhanced.startswith("4.7.")


def _retry_after(text: str) -> float | None:
    match = _RETRY_AFTER.search(text)
    if not match:
        return None
    return float(match.group(1)) * _UNIT_SECONDS[match.group(2)[0].lower()]

"""What a message that came back is: a bounce (hard or soft), a complaint, an unsubscribe, an
auto-reply, or unrelated; and whom it is about. Pure: a parsed message in, findings out.

The structured parts are read first, because they are exact:

- an ARF report (RFC 5965: ``multipart/report; report-type=feedback-report``) is a complaint;
- a DSN (RFC 3464: a ``message/delivery-status`` part) lists each recipient with an Action and a
  Status; the status decides: 4.x.x is soft, 5.2.2 (mailbox full) is soft, any other 5.x.x hard.
  Its recipient is Final-Recipient (or Original-Recipient); when it has neither, the To of the
  returned headers (``text/rfc822-headers`` or ``message/rfc822``).

Only then the heuristics: real DSNs carry ``Auto-Submitted: auto-replied`` just as vacation
replies do, so that header says "auto-reply" only for a message that is not a DSN. Bounces in
the many non-standard formats (qmail, Yahoo, Exchange's older ones, ...) go to flufl.bounce (GNU
Mailman's detectors). Its plain-text matcher drops an address whose domain has a hyphen, so
when it finds nothing in what is plainly a bounce, the returned headers' To is used.
"""

from __future__ import annotations

import enum
import re
from collections.abc import Iterable
from dataclasses import dataclass, field
from email import message_from_string
from email.message import Message
from email.utils import getaddresses, parseaddr

from flufl.bounce import all_failures


class Kind(enum.StrEnum):
    HARD = "hard bounce"
    SOFT = "soft bounce"
    COMPLAINT = "complaint"
    UNSUBSCRIBE = "unsubscribe"
    AUTO_REPLY = "auto-reply"
    UNRELATED = "unrelated"

    @property
    def ignored(self) -> bool:
        return self in (Kind.AUTO_REPLY, Kind.UNRELATED)


@dataclass(frozen=True)
class Finding:
    """One recipient a message is about (a DSN may report several)."""

    kind: Kind
    address: str | None = None
    status: str | None = None  # the DSN's status code, e.g. 5.1.1
    detail: str = ""  # the diagnostic, or why it was classified so
    message_id: str | None = None  # of the message we sent, from the returned headers


@dataclass
class Returned:
    """What a bounce tells of the message it returns."""

    to: list[str] = field(default_factory=list)
    message_id: str | None = None


_STATUS = re.compile(r"\b([245])\.(\d{1,3})\.(\d{1,3})\b")
_MESSAGE_ID = re.compile(r"^\s*Message-ID:\s*(<[^>\s]+>)", re.IGNORECASE | re.MULTILINE)
_BOUNCE_SENDERS = re.compile(r"mailer-daemon|postmaster|mail delivery|mail administrator", re.IGNORECASE)
_BOUNCE_SUBJECTS = re.compile(
    r"undeliver|returned mail|delivery (?:status )?notification|delivery failure|failure notice|"
    r"could not be delivered|mail delivery failed|non[- ]?delivery",
    re.IGNORECASE,
)
_AUTO_SUBJECTS = re.compile(
    r"^\s*(?:out of (?:the )?office|automatic reply|auto(?:matic)?[- ]?(?:reply|response)|auto:|"
    r"abwesenheit|absence|vacation)",
    re.IGNORECASE,
)


_MAILBOX_FULL = re.compile(r"quota|mailbox (?:is )?full|insufficient (?:system )?storage", re.IGNORECASE)


def status_kind(status: str | None, action: str = "failed", diagnostic: str = "") -> Kind | None:
    """A DSN recipient's kind from its Action and Status; None when it is no failure.

    A full mailbox is soft whether it says 5.2.2 or, as older servers do, 5.0.0 with "quota".
    """
    action = action.strip().lower()
    if action in ("delivered", "relayed", "expanded"):
        return None
    match = _STATUS.search(status or "")
    if match is None:
        return Kind.SOFT if action == "delayed" else Kind.HARD
    klass, subject, detail = match.groups()
    if klass == "2":
        return None
    if klass == "4" or action == "delayed":
        return Kind.SOFT
    if (subject, detail) == ("2", "2"):  # mailbox full: it may empty
        return Kind.SOFT
    if (subject, detail) == ("0", "0") and _MAILBOX_FULL.search(f"{status} {diagnostic}"):
        return Kind.SOFT
    return Kind.HARD


def classify(message: Message, unsubscribe: re.Pattern[str] | None = None) -> list[Finding]:
    """The findings of one message; one finding (UNRELATED, AUTO_REPLY...) when it is about no one.

    ``unsubscribe`` matches the [unsubscribe] mailto address: a message to it is an unsubscribe
    from its sender.
    """
    returned = returned_headers(message)
    if (report := _part(message, "message/feedback-report")) is not None:
        return [_complaint(report, returned)]
    status = _part(message, "message/delivery-status")
    if status is not None and (findings := _dsn(status, returned)):
        return findings
    if unsubscribe is not None and _sent_to(message, unsubscribe):
        _, sender = parseaddr(str(message.get("From", "")))
        return [Finding(Kind.UNSUBSCRIBE, sender or None, detail=str(message.get("Subject", "")))]
    if status is not None or _from_a_mailer(message):
        # a mail server's report: its Auto-Submitted does not make it a vacation reply
        return _heuristic(message, returned)
    if _is_auto_reply(message):
        return [Finding(Kind.AUTO_REPLY, detail=str(message.get("Subject", "")))]
    return _heuristic(message, returned)


def returned_headers(message: Message) -> Returned:
    """The To and Message-ID of the returned message, wherever the bounce put it."""
    found = Returned()
    for part in message.walk():
        kind = part.get_content_type()
        headers: Message | None = None
        if kind == "message/rfc822":
            payload = part.get_payload()
            headers = payload[0] if isinstance(payload, list) and payload else None
        elif kind == "text/rfc822-headers":
            headers = message_from_string(_text(part))
        if headers is not None:
            found.to = [a for _, a in getaddresses([str(v) for v in headers.get_all("To", [])]) if "@" in a]
            if headers.get("Message-ID"):
                found.message_id = str(headers["Message-ID"]).strip()
            return found
    # not MIME: the returned message quoted in the text
    match = _MESSAGE_ID.findall(_all_text(message))
    if len(match) >= 1:
        own = str(message.get("Message-ID", "")).strip()
        others = [m for m in match if m != own]
        found.message_id = others[-1] if others else None
    return found


def _complaint(report: Message, returned: Returned) -> Finding:
    fields = _fields(report)
    address = _address(fields.get("original-rcpt-to")) or (returned.to[0] if returned.to else None)
    detail = f"feedback-type {fields.get('feedback-type', 'abuse')}"
    return Finding(Kind.COMPLAINT, address, None, detail, returned.message_id)


def _dsn(status: Message, returned: Returned) -> list[Finding]:
    findings: list[Finding] = []
    for block in _recipient_blocks(status):
        diagnostic = " ".join((block.get("diagnostic-code") or "").split())
        diagnostic = diagnostic.split(";", 1)[1].strip() if ";" in diagnostic[:12] else diagnostic
        kind = status_kind(block.get("status"), block.get("action", "failed"), diagnostic)
        if kind is None:
            continue
        # the address as it was sent to; Final-Recipient may be an alias or a mailbox it led to
        address = _address(block.get("original-recipient")) or _address(block.get("final-recipient"))
        code = _STATUS.search(block.get("status") or "")
        finding = Finding(kind, address, code.group(0) if code else None, diagnostic, returned.message_id)
        if finding not in findings:
            findings.append(finding)
    if findings and all(f.address is None for f in findings) and returned.to:
        # no recipient in the report itself: the returned headers say whom it was for
        findings = [Finding(f.kind, returned.to[0], f.status, f.detail, f.message_id) for f in findings[:1]]
    return findings


def _heuristic(message: Message, returned: Returned) -> list[Finding]:
    try:
        temporary, permanent = all_failures(message)
    except Exception:  # a detector tripping over a malformed message (an unknown charset...)
        temporary, permanent = set(), set()
    findings = [
        Finding(kind, _decode(address), None, "found by flufl.bounce", returned.message_id)
        for kind, addresses in ((Kind.HARD, permanent), (Kind.SOFT, temporary - permanent))
        for address in sorted(addresses)
    ]
    if findings:
        return findings
    looks_like_bounce = _BOUNCE_SENDERS.search(str(message.get("From", ""))) and _BOUNCE_SUBJECTS.search(
        str(message.get("Subject", ""))
    )
    if looks_like_bounce and returned.to:
        code = _STATUS.search(_all_text(message))
        kind = status_kind(code.group(0) if code else None) or Kind.HARD
        return [
            Finding(kind, returned.to[0], code.group(0) if code else None, "a bounce", returned.message_id)
        ]
    return [Finding(Kind.UNRELATED)]


def _from_a_mailer(message: Message) -> bool:
    return bool(
        _BOUNCE_SENDERS.search(str(message.get("From", "")))
        or _BOUNCE_SUBJECTS.search(str(message.get("Subject", "")))
    )


def _is_auto_reply(message: Message) -> bool:
    auto = str(message.get("Auto-Submitted", "")).strip().lower()
    if auto and auto != "no":
        return True
    if any(message.get(h) for h in ("X-Autoreply", "X-Autorespond", "X-Auto-Response-Suppress")):
        return True
    if str(message.get("Precedence", "")).strip().lower() == "auto_reply":
        return True
    return bool(_AUTO_SUBJECTS.search(str(message.get("Subject", ""))))


def _sent_to(message: Message, pattern: re.Pattern[str]) -> bool:
    for name in ("Delivered-To", "X-Original-To", "Envelope-To", "To", "Cc"):
        for _, address in getaddresses([str(v) for v in message.get_all(name, [])]):
            if address and pattern.fullmatch(address):
                return True
    return False


def _part(message: Message, content_type: str) -> Message | None:
    return next((p for p in message.walk() if p.get_content_type() == content_type), None)


def _recipient_blocks(status: Message) -> Iterable[dict[str, str]]:
    """message/delivery-status: the per-message block, then one block per recipient."""
    payload = status.get_payload()
    blocks: list[dict[str, str]] = []
    if isinstance(payload, list):
        blocks = [{k.lower(): str(v) for k, v in part.items()} for part in payload]
    else:  # some MTAs send it as text the parser left unparsed
        for chunk in re.split(r"\r?\n\s*\r?\n", str(payload)):
            fields: dict[str, str] = {}
            for line in re.sub(r"\r?\n[ \t]+", " ", chunk).splitlines():
                name, sep, value = line.partition(":")
                if sep:
                    fields[name.strip().lower()] = value.strip()
            if fields:
                blocks.append(fields)
    return [b for b in blocks if "final-recipient" in b or "original-recipient" in b or "action" in b]


def _fields(part: Message) -> dict[str, str]:
    payload = part.get_payload()
    if isinstance(payload, list):
        return {k.lower(): str(v) for p in payload for k, v in p.items()}
    out = {}
    for line in str(payload).splitlines():
        name, sep, value = line.partition(":")
        if sep:
            out.setdefault(name.strip().lower(), value.strip())
    return out


def _address(value: str | None) -> str | None:
    """``rfc822; ann@example.com`` -> ``ann@example.com``."""
    if not value:
        return None
    text = value.split(";", 1)[1] if ";" in value else value
    _, address = parseaddr(text.strip())
    return address if "@" in address else None


def _decode(address: bytes | str) -> str:
    return address.decode("utf-8", "replace") if isinstance(address, bytes) else address


def _text(part: Message) -> str:
    payload = part.get_payload(decode=True)
    if isinstance(payload, bytes):
        try:
            return payload.decode(part.get_content_charset() or "utf-8", "replace")
        except LookupError:  # a charset Python does not know
            return payload.decode("latin-1")
    return str(part.get_payload())


def _all_text(message: Message) -> str:
    return "\n".join(_text(p) for p in message.walk() if p.get_content_maintype() == "text")

"""Remove secrets from text a server sent, before it is shown, logged, journaled or reported.

A server may echo what it was sent, and what it was sent at login is the password: in
the clear, or in base64 as AUTH LOGIN (the password alone), AUTH PLAIN
("\\0user\\0password") and AUTH XOAUTH2 (an OAuth2 token) send it. Every such form is
removed, and also the base64 of the password wherever it lands inside a longer base64
blob (at each of the three byte alignments), so a blob echoed in part gives nothing away.
"""

from __future__ import annotations

import base64
import re
from collections.abc import Iterable

REDACTED = "[redacted]"
_MIN_FRAGMENT = 4  # base64 characters (3 bytes of the secret): shorter pieces match ordinary words
_MIN_START = 6  # characters of a secret's start that count as the secret echoed cut short


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


def secret_forms(secret: str, username: str | None = None) -> set[str]:
    """Every text form in which ``secret`` may come back from a server."""
    raw = secret.encode("utf-8")
    forms = {secret, _b64(raw)}
    if username is not None:
        user = username.encode("utf-8")
        forms |= {_b64(b"\0" + user + b"\0" + raw), _b64(user + b"\0" + user + b"\0" + raw)}
        forms.add(_b64(b"user=" + user + b"\x01auth=Bearer " + raw + b"\x01\x01"))  # AUTH XOAUTH2
    for offset in range(3):
        # the characters of base64(prefix + secret) that depend on the secret's bytes only
        encoded = _b64(b"\0" * offset + raw)
        start, end = (4 if offset else 0), 4 * ((offset + len(raw)) // 3)
        if end - start >= _MIN_FRAGMENT:
            forms.add(encoded[start:end])
    return {form for form in forms if form}


def _starts(secret: str) -> set[str]:
    """The forms of ``secret`` whose start alone gives it away when a server cuts its echo short:
    the secret, its hex and its base64 (whatever the case, as all forms are matched)."""
    raw = secret.encode("utf-8")
    return {secret.lower(), raw.hex(), _b64(raw).lower()}


class Redactor:
    """``redact(text)``: ``text`` with every form of every secret replaced by [redacted].

    Forms are matched whatever their case (a server may echo a secret upper-cased), and the
    secret or its hex cut short (a server may echo the first characters only) from
    ``_MIN_START`` characters on.
    """

    def __init__(self, secrets: Iterable[str | None], username: str | None = None) -> None:
        forms: set[str] = set()
        self._starts: set[str] = set()
        for secret in secrets:
            if secret:
                forms |= secret_forms(secret, username)
                forms.add(secret.encode("utf-8").hex())
                self._starts |= _starts(secret)
        # longest first, so a whole blob goes before a fragment of it
        ordered = sorted(forms, key=len, reverse=True)
        self._pattern = re.compile("|".join(map(re.escape, ordered)), re.IGNORECASE) if ordered else None

    def __call__(self, text: str) -> str:
        if self._pattern is None:
            return text
        return self._cut_short(self._pattern.sub(REDACTED, text))

    def _cut_short(self, text: str) -> str:
        """``text`` without the start of a secret (``_MIN_START`` characters or more) in it."""
        lower = text.lower()
        spans: list[tuple[int, int]] = []
        for form in self._starts:
            head = form[: min(_MIN_START, len(form))]
            at = lower.find(head)
            while at != -1:
                end = at + len(head)
                while end < len(lower) and end - at < len(form) and lower[end] == form[end - at]:
                    end += 1
                spans.append((at, end))
                at = lower.find(head, end)
        merged: list[list[int]] = []
        for start, end in sorted(spans):
            if merged and start <= merged[-1][1]:
                merged[-1][1] = max(merged[-1][1], end)
            else:
                merged.append([start, end])
        for start, end in reversed(merged):
            text = text[:start] + REDACTED + text[end:]
        return text

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


class Redactor:
    """``redact(text)``: ``text`` with every form of every secret replaced by [redacted]."""

    def __init__(self, secrets: Iterable[str | None], username: str | None = None) -> None:
        forms: set[str] = set()
        for secret in secrets:
            if secret:
                forms |= secret_forms(secret, username)
        # longest first, so a whole blob goes before a fragment of it
        ordered = sorted(forms, key=len, reverse=True)
        self._pattern = re.compile("|".join(map(re.escape, ordered))) if ordered else None

    def __call__(self, text: str) -> str:
        if self._pattern is None:
            return text
        return self._pattern.sub(REDACTED, text)

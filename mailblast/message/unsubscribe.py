"""One-click unsubscribe: the List-Unsubscribe and List-Unsubscribe-Post headers (RFC 2369, RFC 8058).

mailblast.toml's ``[unsubscribe] url`` and ``mailto`` are Jinja text rendered per row, in
the template's own (sandboxed) environment. Every value a row puts into them is
percent-encoded, so that it stays inside its URL: no line break, no ``>`` that closes
the ``<...>``, no ``,`` that starts another URL.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import re
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import quote

ONE_CLICK = "List-Unsubscribe=One-Click"
HEADER_NAMES = ("list-unsubscribe", "list-unsubscribe-post")
# A rendered link: visible ASCII only, and none of what ends or separates <...> links.
_LINK = re.compile(r"[!-~]+")
_NOT_IN_LINK = re.compile(r'[<>,"\\]')
_LONE_PERCENT = re.compile(r"%(?![0-9A-Fa-f]{2})")
# In a value: URL syntax stays as it is, and "%" where it starts an escape already made
# (as | urlencode makes); anything else is percent-encoded.
_SAFE_IN_VALUE = "%:/?#[]@!$&'()*+;=~"


class BadLink(ValueError):
    """The rendered url or mailto is not a link that can go in List-Unsubscribe."""


def escape_value(value: Any) -> str:
    """A row's value as it may appear in a URL (Jinja's ``finalize`` for url and mailto)."""
    text = "" if value is None else str(value)
    return quote(_LONE_PERCENT.sub("%25", text), safe=_SAFE_IN_VALUE)


def mailto_link(text: str) -> str:
    """``mailto:`` added to a bare address."""
    return text if text.lower().startswith("mailto:") else f"mailto:{text}"


def check_written(key: str, text: str) -> str | None:
    """What is wrong with the url or mailto as written in mailblast.toml, if anything."""
    if not text.strip():
        return f"[unsubscribe] {key} is empty"
    literal = re.split(r"\{[{%#]", text, maxsplit=1)[0].strip().lower()  # before any Jinja
    if key == "url" and len(literal) >= len("https://") and not literal.startswith(("https://", "http://")):
        return f"[unsubscribe] url must start with https:// (it is {text!r})"
    return None


def check_link(key: str, link: str) -> str:
    """The rendered link, checked; raises BadLink."""
    if not _LINK.fullmatch(link) or _NOT_IN_LINK.search(link):
        raise BadLink(f"[unsubscribe] {key} {link!r} has a character a link cannot hold (space, <, >, comma)")
    lower = link.lower()
    if key == "url" and not lower.startswith(("https://", "http://")):
        raise BadLink(f"[unsubscribe] url {link!r} is not an https:// URL")
    if key == "mailto" and "@" not in link:
        raise BadLink(f"[unsubscribe] mailto {link!r} has no address")
    return link


def headers(url: str | None, mailto: str | None) -> list[tuple[str, str]]:
    """List-Unsubscribe (mailto first, as RFC 2369 lists them) and, for an https URL, the One-Click Post."""
    links = [f"<{link}>" for link in (mailto, url) if link]
    if not links:
        return []
    out = [("List-Unsubscribe", ", ".join(links))]
    if url and url.lower().startswith("https://"):
        out.append(("List-Unsubscribe-Post", ONE_CLICK))
    return out


def own_headers(header_source: str) -> dict[str, str]:
    """The List-Unsubscribe headers a template writes itself: lower-case name -> the line as written."""
    found = {}
    for line in header_source.splitlines():
        name, sep, _ = line.partition(":")
        if sep and name.strip().lower() in HEADER_NAMES:
            found[name.strip().lower()] = line
    return found


def warnings(where: str, header_source: str, url: str | None, mailto: str | None) -> list[str]:
    """check's warnings: Gmail and Yahoo refuse bulk mail without one-click unsubscribe."""
    own = own_headers(header_source)
    link = own.get("list-unsubscribe")
    if url is None and mailto is None and link is None:
        return [
            f"{where}: no List-Unsubscribe header: Gmail and Yahoo require bulk mail to offer one-click "
            'unsubscribe; set [unsubscribe] url = "https://..." in mailblast.toml'
        ]
    https = bool(url and url.strip().lower().startswith("https://")) or "https:" in (link or "").lower()
    if not https:
        return [
            f"{where}: List-Unsubscribe has no https URL, so there is no one-click unsubscribe "
            "(RFC 8058); set [unsubscribe] url to an https:// address"
        ]
    if link is not None and "list-unsubscribe-post" not in own:
        return [
            f"{where}: List-Unsubscribe has an https URL but no List-Unsubscribe-Post: {ONE_CLICK} "
            "header, which one-click unsubscribe needs"
        ]
    return []


# -- signed tokens: {{ unsubscribe_token }} in [unsubscribe] url and mailto ----------------------
#
# A token names the address and the campaign, and carries an HMAC-SHA256 over both with a key kept
# in the user's config folder (campaign/signing_key.py), so that the endpoint (server/unsubscribe.py)
# and `bounces` can trust it without looking anything up: a tampered or made-up token matches no
# MAC and unsubscribes nobody, and no one can make a token for an address they only know.

TOKEN_MAC_BYTES = 16


@dataclass(frozen=True)
class Signing:
    """What a template needs to sign its rows' tokens: the key and the campaign's tag."""

    key: bytes = field(repr=False)
    campaign: str
    # a test send (--test-to): every token names the test address, so that a copy's link can
    # never unsubscribe the real recipient
    only_for: str | None = None


def _mac(key: bytes, purpose: str, campaign: str, address: str) -> bytes:
    message = "\0".join((purpose, campaign, address.casefold())).encode()
    return hmac.new(key, message, hashlib.sha256).digest()[:TOKEN_MAC_BYTES]


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def _unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def unsubscribe_token(signing: Signing, address: str) -> str:
    """``PAYLOAD.MAC``: URL-safe base64 (unreserved characters only), so it needs no encoding."""
    address = signing.only_for or address
    payload = _b64(f"{signing.campaign}\n{address}".encode())
    return f"{payload}.{_b64(_mac(signing.key, 'unsubscribe', signing.campaign, address))}"


def read_unsubscribe_token(key: bytes, token: str) -> tuple[str, str] | None:
    """(campaign, address) of a genuine token; None for anything else."""
    payload, dot, mac = token.strip().partition(".")
    if not dot or len(token) > 2000:
        return None
    try:
        campaign, newline, address = _unb64(payload).decode().partition("\n")
        given = _unb64(mac)
    except (ValueError, UnicodeDecodeError):
        return None
    if not newline or "@" not in address or _b64(given) != mac or _b64(_unb64(payload)) != payload:
        return None  # one token, one spelling: base64's unused bits cannot make another
    if not hmac.compare_digest(given, _mac(key, "unsubscribe", campaign, address)):
        return None
    return campaign, address

"""One-click unsubscribe: the List-Unsubscribe and List-Unsubscribe-Post headers (RFC 2369, RFC 8058).

mailblast.toml's ``[unsubscribe] url`` and ``mailto`` are Jinja text rendered per row, in
the template's own (sandboxed) environment. Every value a row puts into them is
percent-encoded but for RFC 3986's unreserved characters, so that it stays one value inside its
URL: no line break, no ``>`` that closes the ``<...>``, no ``,`` that starts another URL, no
``&``, ``#``, ``?``, ``@`` or ``)`` that changes what the URL says.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import re
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import quote

ONE_CLICK = "List-Unsubscribe=One-Click"
HEADER_NAMES = ("list-unsubscribe", "list-unsubscribe-post")
# A rendered link: visible ASCII only, and none of what ends or separates <...> links.
_LINK = re.compile(r"[!-~]+")
_NOT_IN_LINK = re.compile(r'[<>,"\\]')
MAX_LINK = 900  # a header line holds 998 octets (RFC 5322), with "List-Unsubscribe: <" before it
# What a --test-to copy's link holds in place of each of the row's values.
TEST_COPY_VALUE = "mailblast-test-copy"


class BadLink(ValueError):
    """The rendered url or mailto is not a link that can go in List-Unsubscribe."""


class LinkTooLong(BadLink):
    """The rendered link cannot fit on a header line: the row's values made it so long."""


class _Encoded(str):
    """Text ``| urlencode`` made of pairs (``{"id": id} | urlencode``): encoded already, kept as is."""


def escape_value(value: Any) -> str:
    """A row's value as it may appear in a URL (Jinja's ``finalize`` for url and mailto).

    Everything but RFC 3986's unreserved characters (letters, digits, ``-._~``) is
    percent-encoded, ``%`` too: a value stays one value. It cannot add a parameter (``&``,
    ``=``), cut off the rest with ``#``, start a query (``?``) in a mailto and add a ``cc=``,
    move the address (``@``), or end a Markdown link early (``)``).
    """
    if isinstance(value, _Encoded):
        return str(value)
    return quote("" if value is None else str(value), safe="")


def urlencode_once(value: Any) -> Any:
    """``| urlencode`` in [unsubscribe]: every value is percent-encoded on the way out
    (escape_value), so a lone value is left for that, and encoded once, not twice; a dict or a
    list of pairs becomes a query string whose separators stay separators."""
    if isinstance(value, dict):
        value = value.items()
    if not isinstance(value, str) and isinstance(value, Iterable):
        try:
            pairs = [(k, v) for k, v in value]
        except (TypeError, ValueError):
            return value  # not pairs: encoded whole, as any value
        return _Encoded("&".join(f"{escape_value(k)}={escape_value(v)}" for k, v in pairs))
    return value


def test_copy_context(context: dict[str, Any], address: str) -> dict[str, Any]:
    """The values a --test-to copy's links are rendered with: the test address for ``email`` and
    a placeholder for every column, so the copy's link can never unsubscribe the real recipient."""
    fields = {name: TEST_COPY_VALUE for name in context.get("row", {})}
    return {
        **context,
        **{name: TEST_COPY_VALUE for name in fields if name in context},
        "row": fields,
        "email": address,
    }


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
    if len(link) > MAX_LINK:
        raise LinkTooLong(
            f"[unsubscribe] {key} is {len(link):,} characters long with this row's values; a link "
            f"must fit on one header line ({MAX_LINK} characters)"
        )
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


def campaign_tag(identity: str) -> str:
    """A campaign's short name in tokens (8 hex digits, as VERP's fit in a local part): from its
    identity (the journal's uid), so that it stays the same wherever the campaign's files move."""
    return hashlib.sha256(identity.encode()).hexdigest()[:8]


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

"""VERP: each message's envelope sender names its recipient, so that a bounce says whom it is for.

``return_path = "bounces+{token}@example.com"`` gives every message a Return-Path such as
``bounces+3f9a1c2e-k2m4q7x9r5t8v3w6@example.com``: the campaign's tag, then an HMAC over the
campaign and the address (campaign/signing_key.py's key). The address itself is not in it (a local
part holds 64 characters); `bounces` finds it among the campaign's recipients by its MAC. A token
cannot be forged or guessed without the key, so a bounce cannot be faked to suppress someone.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import re

from mailblast.message.unsubscribe import Signing

MAC_BYTES = 10  # 80 bits: 16 base32 characters


def verp_mac(key: bytes, campaign: str, address: str) -> str:
    digest = hmac.new(key, f"verp\0{campaign}\0{address.casefold()}".encode(), hashlib.sha256).digest()
    return base64.b32encode(digest[:MAC_BYTES]).decode().lower()


def verp_token(signing: Signing, address: str) -> str:
    address = signing.only_for or address
    return f"{signing.campaign}-{verp_mac(signing.key, signing.campaign, address)}"


def return_path(pattern: str, signing: Signing | None, address: str) -> str:
    """The envelope sender for ``address``; without a campaign to sign for, the bare address."""
    if signing is None or not signing.campaign:
        return re.sub(r"[+\-=.]?\{token\}", "", pattern)
    return pattern.replace("{token}", verp_token(signing, address))


def token_in(pattern: str, address: str) -> tuple[str, str] | None:
    """(campaign, mac) when ``address`` is ``pattern`` with a token in it."""
    before, _, after = pattern.partition("{token}")
    regex = re.escape(before) + r"([0-9a-f]{8})-([a-z2-7]{16})" + re.escape(after)
    match = re.fullmatch(regex, address.strip(), re.IGNORECASE)
    return (match.group(1).lower(), match.group(2).lower()) if match else None

"""DKIM: sign each message as it is built (dkimpy), and make new keys.

rsa-sha256 for an RSA key, ed25519-sha256 (RFC 8463) for an Ed25519 one. The signature
covers the headers a receiver judges a bulk message by, those of them the message has.
Named dkim_sign so as not to shadow dkimpy's own ``dkim`` package.
"""

from __future__ import annotations

import base64
import functools
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import dkim
import platformdirs
from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ed25519, padding, rsa
from cryptography.hazmat.primitives.asymmetric.utils import Prehashed

from mailblast.errors import ConfigError

# Every identity and list header the message has is signed: a receiver judges a bulk message by
# them, and a header left unsigned could be changed on the way without breaking the signature.
SIGNED_HEADERS = (
    b"from",
    b"to",
    b"cc",
    b"reply-to",
    b"subject",
    b"date",
    b"message-id",
    b"mime-version",
    b"content-type",
    b"list-id",
    b"list-unsubscribe",
    b"list-unsubscribe-post",
    b"feedback-id",
)
# Named once more in h= (RFC 6376 8.15): a second From or Subject, or a List-Unsubscribe that
# was not there, added on the way, then breaks the signature instead of being shown.
OVERSIGNED_HEADERS = (b"from", b"subject", b"list-unsubscribe", b"list-unsubscribe-post")
KeyType = Literal["rsa", "ed25519"]
MIN_RSA_BITS = 1024  # what receivers (and dkimpy's verifier) accept at the least; 2048 is advised
_SELECTOR = re.compile(
    r"[A-Za-z0-9](?:[A-Za-z0-9_-]*[A-Za-z0-9])?(?:\.[A-Za-z0-9](?:[A-Za-z0-9_-]*[A-Za-z0-9])?)*"
)
_DOMAIN = re.compile(r"(?:[A-Za-z0-9](?:[A-Za-z0-9-]*[A-Za-z0-9])?\.)+[A-Za-z0-9-]{2,}")


class SigningError(Exception):
    """dkimpy could not sign a message."""


@dataclass(frozen=True)
class DkimKey:
    """A loaded signing key; plain data, so that a worker process can be handed it."""

    domain: str
    selector: str
    path: Path
    pem: bytes
    key_type: KeyType

    @property
    def algorithm(self) -> str:
        return "ed25519-sha256" if self.key_type == "ed25519" else "rsa-sha256"


def check_names(domain: str, selector: str, where: str) -> None:
    """Raise ConfigError unless ``domain`` and ``selector`` can make a DNS name."""
    if not _DOMAIN.fullmatch(domain):
        raise ConfigError(f"{where} domain {domain!r} is not a domain name", "write it as example.com")
    if not _SELECTOR.fullmatch(selector):
        raise ConfigError(
            f"{where} selector {selector!r} is not a DNS label",
            "use letters, digits and hyphens, e.g. mail2026",
        )


def load_key(domain: str, selector: str, path: Path) -> DkimKey:
    """Read and check ``[dkim]``'s private key; raises ConfigError naming the file."""
    check_names(domain, selector, "[dkim]")
    try:
        pem = path.read_bytes()
    except FileNotFoundError:
        raise ConfigError(
            f"[dkim] private_key {path}: no such file",
            f"the path is relative to mailblast.toml; mailblast dkim-keygen {domain} {selector} makes one",
        ) from None
    except OSError as e:
        raise ConfigError(f"[dkim] private_key {path}: cannot be read: {e.strerror}") from None
    try:
        key = serialization.load_pem_private_key(pem, password=None)
    except TypeError:
        raise ConfigError(
            f"[dkim] private_key {path}: the key has a passphrase",
            "mailblast needs the key without one: openssl pkey -in KEY -out KEY.plain",
        ) from None
    except (ValueError, UnsupportedAlgorithm):
        raise ConfigError(
            f"[dkim] private_key {path}: not a PEM private key",
            "give the private key file (-----BEGIN PRIVATE KEY-----), not the public key or DNS record",
        ) from None
    if isinstance(key, ed25519.Ed25519PrivateKey):
        return DkimKey(domain, selector, path, pem, "ed25519")
    if isinstance(key, rsa.RSAPrivateKey):
        if key.key_size < MIN_RSA_BITS:
            raise ConfigError(
                f"[dkim] private_key {path}: an RSA key of {key.key_size} bits is too short",
                "receivers ignore DKIM keys under 1024 bits; make a 2048-bit one with mailblast dkim-keygen",
            )
        return DkimKey(domain, selector, path, pem, "rsa")
    raise ConfigError(f"[dkim] private_key {path}: DKIM keys are RSA or Ed25519, not {type(key).__name__}")


# dkimpy parses the PEM again for every message (pure-Python ASN.1, a fifth of the signing time);
# the key is the same every time, so it is parsed once. The parse is a pure function of the bytes.
dkim.parse_pem_private_key = functools.lru_cache(maxsize=8)(dkim.parse_pem_private_key)


class _RsaByOpenSSL:
    """dkimpy's signing key interface (``sign(digest).signature``) over an OpenSSL RSA key."""

    signature: bytes

    def __init__(self, key: rsa.RSAPrivateKey) -> None:
        self._key = key

    def sign(self, digest: bytes) -> _RsaByOpenSSL:
        self.signature = self._key.sign(digest, padding.PKCS1v15(), Prehashed(hashes.SHA256()))
        return self


class _Dkim(dkim.DKIM):
    """dkimpy's signer, with the RSA operation done by OpenSSL.

    dkimpy's own RSA is pure Python: 12 ms a signature, which would make a send several times
    slower; through ``cryptography`` it is a fraction of a millisecond. dkimpy already signs
    Ed25519 through a key object's ``sign(digest)``; the RSA key is handed over that way.
    """

    rsa_key: _RsaByOpenSSL | None = None

    def gen_header(
        self,
        fields: Any,
        include_headers: Any,
        canon_policy: Any,
        header_name: Any,
        pk: Any,
        standardize: bool = False,
    ) -> Any:
        if self.rsa_key is None:
            return super().gen_header(fields, include_headers, canon_policy, header_name, pk, standardize)
        self.signature_algorithm = b"ed25519-sha256"  # only picks the pk.sign(digest) branch
        try:
            return super().gen_header(
                fields, include_headers, canon_policy, header_name, self.rsa_key, standardize
            )
        finally:
            self.signature_algorithm = b"rsa-sha256"


class Signer:
    """Adds a DKIM-Signature to messages as they are built."""

    def __init__(self, key: DkimKey) -> None:
        private = serialization.load_pem_private_key(key.pem, password=None)
        self._domain = key.domain.encode("ascii")
        self._selector = key.selector.encode("ascii")
        self._algorithm = key.algorithm.encode("ascii")
        self._rsa: _RsaByOpenSSL | None = None
        if isinstance(private, ed25519.Ed25519PrivateKey):
            raw = private.private_bytes(
                serialization.Encoding.Raw, serialization.PrivateFormat.Raw, serialization.NoEncryption()
            )
            self._dkimpy_key = base64.b64encode(raw)  # dkimpy takes the seed in base64
        else:
            assert isinstance(private, rsa.RSAPrivateKey)
            self._rsa = _RsaByOpenSSL(private)
            # dkimpy still wants it, to parse (once: see the cache above) and then not use
            self._dkimpy_key = private.private_bytes(
                serialization.Encoding.PEM,
                serialization.PrivateFormat.TraditionalOpenSSL,
                serialization.NoEncryption(),
            )

    def sign(self, message: bytes) -> bytes:
        """``message`` (CRLF line ends) with its DKIM-Signature header in front."""
        signer = _Dkim(message, signature_algorithm=self._algorithm)
        signer.rsa_key = self._rsa
        present = {name.lower() for name, _ in signer.headers}
        try:
            signature = signer.sign(
                self._selector,
                self._domain,
                self._dkimpy_key,
                canonicalize=(b"relaxed", b"relaxed"),
                include_headers=[
                    *(name for name in SIGNED_HEADERS if name in present),
                    *OVERSIGNED_HEADERS,
                ],
            )
        except dkim.DKIMException as e:  # a message mailblast built is well-formed: not expected
            raise SigningError(f"the message cannot be DKIM-signed: {e}") from None
        return signature + message


# -- dkim-keygen --------------------------------------------------------------------------


def new_key(key_type: KeyType) -> tuple[bytes, str]:
    """A new private key in PEM, and the p= value of its DNS record."""
    private: rsa.RSAPrivateKey | ed25519.Ed25519PrivateKey
    if key_type == "ed25519":
        private = ed25519.Ed25519PrivateKey.generate()
        public = private.public_key().public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    else:
        private = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        public = private.public_key().public_bytes(
            serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
        )
    pem = private.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    return pem, base64.b64encode(public).decode("ascii")


def dns_record(domain: str, selector: str, key_type: KeyType, public: str) -> tuple[str, str]:
    """The name and the TXT value to publish for a key."""
    return f"{selector}._domainkey.{domain}", f"v=DKIM1; k={key_type}; p={public}"


def zone_line(name: str, value: str) -> str:
    """The record as a zone-file line; a TXT string holds at most 255 characters, so a long value
    is split into several, which DNS joins again."""
    chunks = " ".join(f'"{value[i : i + 255]}"' for i in range(0, len(value), 255))
    return f"{name}. IN TXT ( {chunks} )"


def default_key_path(domain: str, selector: str) -> Path:
    """Where dkim-keygen writes a key when not told: the user's config folder, outside any
    campaign folder, so that no template, attachment or copy of the folder carries it along."""
    return platformdirs.user_config_path("mailblast") / "dkim" / f"{domain}.{selector}.pem"


def exposed(path: Path) -> str | None:
    """A warning when others than its owner may read the private key at ``path``."""
    try:
        mode = path.stat().st_mode
    except OSError:
        return None
    if os.name != "posix" or not mode & 0o077:
        return None
    return (
        f"[dkim] private_key {path} can be read by others than you (mode {mode & 0o777:o}); "
        f"anyone who reads it can sign mail as your domain: chmod 600 {path}"
    )


def write_new_key(domain: str, selector: str, key_type: str, path: Path) -> tuple[str, str]:
    """Write a new private key to ``path`` (never over a file); the DNS record's name and value."""
    check_names(domain, selector, "dkim-keygen:")
    if key_type not in ("rsa", "ed25519"):
        raise ConfigError(f"--type must be rsa or ed25519, not {key_type!r}")
    kind: KeyType = "ed25519" if key_type == "ed25519" else "rsa"
    pem, public = new_key(kind)
    try:
        path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)  # readable by its owner only
    except FileExistsError:
        raise ConfigError(
            f"{path} exists already; nothing was written",
            "a key in use must not be replaced by accident: pick another --out, or move the file away",
        ) from None
    except OSError as e:
        raise ConfigError(f"{path}: cannot write the key: {e.strerror}") from None
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(pem)
            f.flush()
            os.fsync(f.fileno())
    except OSError as e:
        # A key cut short (a full disk) would block every later try ("exists already"): remove it.
        path.unlink(missing_ok=True)
        raise ConfigError(
            f"{path}: cannot write the key: {e.strerror}; nothing was kept",
            "free some space (or pick another --out) and run dkim-keygen again",
        ) from None
    return dns_record(domain, selector, kind, public)

"""The mailboxes `bounces` reads: a Maildir, an mbox file, or an IMAP folder.

Each message has a key that stays the same from one run to the next, so that what was
processed is remembered: a Maildir's unique file name (without its ``:2,`` flags, which a mail
client changes), an mbox message's SHA-256, an IMAP folder's ``UIDVALIDITY:UID`` (a server that
renumbers its folder changes UIDVALIDITY, and its messages are then read again).

Reading never changes a mailbox: IMAP folders are selected read-only and fetched with
BODY.PEEK (no \\Seen flag). Only ``move()``, for --move-to, changes anything.
"""

from __future__ import annotations

import contextlib
import hashlib
import mailbox
import os
import ssl
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol
from urllib.parse import unquote, urlsplit

from mailblast.errors import ConfigError, InputError, StoppedError
from mailblast.smtp.credentials import PASSWORD_ENV, TOKEN_ENV, Credentials, gather_credentials

IMAP_PASSWORD_ENV = "MAILBLAST_IMAP_PASSWORD"
IMAP_TOKEN_ENV = "MAILBLAST_IMAP_OAUTH_TOKEN"
FETCH_BATCH = 100


@dataclass(frozen=True)
class Item:
    key: str
    data: bytes


class Mailbox(Protocol):
    name: str  # where it is, as the processed table and the output name it (no secret)

    def items(self, known: Callable[[str], bool]) -> Iterator[Item]:
        """Every message whose key is not ``known`` (read before): those are not even fetched."""
        ...

    def move(self, keys: list[str], folder: str) -> None: ...

    def close(self) -> None: ...


class MaildirBox:
    """A Maildir: new/ and cur/; --move-to FOLDER moves into its Maildir++ subfolder .FOLDER."""

    def __init__(self, path: Path) -> None:
        if not (path / "cur").is_dir() or not (path / "new").is_dir():
            raise InputError(
                f"{path}: not a Maildir (no cur/ and new/ in it)", "give a Maildir, an mbox file or imaps://"
            )
        self.path = path
        self.name = f"maildir:{path.resolve()}"
        self._files: dict[str, Path] = {}

    def items(self, known: Callable[[str], bool]) -> Iterator[Item]:
        for sub in ("new", "cur"):
            for entry in sorted(os.scandir(self.path / sub), key=lambda e: e.name):
                if not entry.is_file() or entry.name.startswith("."):
                    continue
                key = entry.name.split(":", 1)[0]
                if known(key):
                    continue
                self._files[key] = Path(entry.path)
                try:
                    data = Path(entry.path).read_bytes()
                except FileNotFoundError:  # a mail client moved it meanwhile: read next time
                    continue
                yield Item(key, data)

    def move(self, keys: list[str], folder: str) -> None:
        target = self.path / f".{folder.strip('.').replace('/', '.')}"
        for sub in ("tmp", "new", "cur"):
            (target / sub).mkdir(parents=True, exist_ok=True)
        for key in keys:
            source = self._files[key]
            name = source.name if ":" in source.name else f"{source.name}:2,"
            os.replace(source, target / "cur" / name)

    def close(self) -> None:
        pass


class MboxBox:
    """An mbox file; --move-to FOLDER appends to the mbox file FOLDER beside it and removes."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.name = f"mbox:{path.resolve()}"
        try:
            self._box = mailbox.mbox(path, create=False)
        except (OSError, mailbox.Error) as e:
            raise InputError(f"{path}: cannot be read as an mbox file: {e}") from None
        self._keys: dict[str, str] = {}

    def items(self, known: Callable[[str], bool]) -> Iterator[Item]:
        for key in list(self._box.iterkeys()):
            data = self._box.get_bytes(key)
            digest = hashlib.sha256(data).hexdigest()[:32]  # an mbox has no lasting names
            if not known(digest):
                self._keys[digest] = key
                yield Item(digest, data)

    def move(self, keys: list[str], folder: str) -> None:
        target = mailbox.mbox(self.path.parent / folder)
        self._box.lock()
        target.lock()
        try:
            for digest in keys:
                key = self._keys[digest]
                target.add(self._box.get_message(key))
            target.flush()
            for digest in keys:
                self._box.remove(self._keys[digest])
            self._box.flush()
        finally:
            target.unlock()
            target.close()
            self._box.unlock()

    def close(self) -> None:
        self._box.close()


@dataclass(frozen=True)
class ImapSource:
    host: str
    port: int
    user: str
    folder: str
    tls: bool  # imaps:// (TLS from the start); imap:// is for a server on this machine only

    @property
    def name(self) -> str:
        scheme = "imaps" if self.tls else "imap"
        return f"{scheme}://{self.user}@{self.host}:{self.port}/{self.folder}"


def parse_imap_url(text: str) -> ImapSource:
    """``imaps://user@host[:port]/FOLDER`` (the user's @ written %40)."""
    parts = urlsplit(text)
    if parts.scheme not in ("imaps", "imap"):
        raise ConfigError(f"{text!r} is not an imaps:// URL")
    if parts.password is not None:
        raise ConfigError(
            "the IMAP URL holds a password", f"remove it from the URL and set {IMAP_PASSWORD_ENV} instead"
        )
    if not parts.hostname or not parts.username:
        raise ConfigError(f"{parts.scheme}:// needs a user and a host: imaps://USER@HOST[:PORT]/FOLDER")
    try:
        port = parts.port or (993 if parts.scheme == "imaps" else 143)
    except ValueError:
        raise ConfigError(f"the IMAP URL's port is not a number from 1 to 65535: {text!r}") from None
    folder = unquote(parts.path.lstrip("/")) or "INBOX"
    source = ImapSource(parts.hostname, port, unquote(parts.username), folder, parts.scheme == "imaps")
    if not source.tls and parts.hostname not in ("localhost", "127.0.0.1", "::1"):
        raise ConfigError(
            "imap:// sends the password in the clear; it is for a server on this machine only",
            "use imaps://",
        )
    return source


class ImapBox:
    """An IMAP folder, read-only (EXAMINE) unless messages are to be moved."""

    def __init__(
        self, source: ImapSource, credentials: Credentials, *, writable: bool, timeout: float = 60
    ) -> None:
        import imapclient  # only for IMAP
        from imapclient.exceptions import IMAPClientError, LoginError

        self.source = source
        self.name = source.name
        context = ssl.create_default_context()
        try:
            self._client = imapclient.IMAPClient(
                source.host, port=source.port, ssl=source.tls, ssl_context=context, timeout=timeout
            )
        except (OSError, ssl.SSLError, IMAPClientError) as e:
            raise StoppedError(f"cannot connect to {source.name}: {e}", "check the host and port") from None
        try:
            if credentials.has_token:
                token = credentials.token
                if token is None:
                    assert credentials.token_command is not None
                    token = credentials.token_command.run()
                self._client.oauth2_login(source.user, token)
            else:
                assert credentials.password is not None
                self._client.login(source.user, credentials.password)
        except LoginError:
            self._client.shutdown()
            secret = (
                f"the OAuth2 token ({IMAP_TOKEN_ENV} or [bounces] oauth_token_command)"
                if credentials.has_token
                else f"the password ({IMAP_PASSWORD_ENV} or [bounces] password_command)"
            )
            raise StoppedError(
                f"{source.name}: the sign-in was refused", f"check the user in the URL and {secret}"
            ) from None
        try:
            selected = self._client.select_folder(source.folder, readonly=not writable)
        except IMAPClientError as e:
            self._client.logout()
            raise InputError(f"{source.name}: no such folder ({_imap_text(e)})") from None
        self.uidvalidity = int(selected[b"UIDVALIDITY"])
        self._error = IMAPClientError

    def items(self, known: Callable[[str], bool]) -> Iterator[Item]:
        uids = [uid for uid in sorted(self._client.search("ALL")) if not known(f"{self.uidvalidity}:{uid}")]
        for start in range(0, len(uids), FETCH_BATCH):
            batch = uids[start : start + FETCH_BATCH]
            fetched = self._client.fetch(batch, [b"BODY.PEEK[]"])
            for uid in batch:
                data = fetched.get(uid, {}).get(b"BODY[]")
                if data is not None:
                    yield Item(f"{self.uidvalidity}:{uid}", bytes(data))

    def move(self, keys: list[str], folder: str) -> None:
        uids = [int(k.split(":")[1]) for k in keys]
        with contextlib.suppress(self._error):
            self._client.create_folder(folder)
        if self._client.has_capability("MOVE"):
            self._client.move(uids, folder)
        else:
            self._client.copy(uids, folder)
            self._client.delete_messages(uids)
            self._client.uid_expunge(uids)

    def close(self) -> None:
        with contextlib.suppress(Exception):
            self._client.logout()


def imap_credentials(
    source: ImapSource,
    *,
    password_command: str | None,
    token_command: str | None,
    environ: Mapping[str, str],
    ask_password: Callable[[str], str],
) -> Credentials:
    """The sign-in, gathered as SMTP's is (credentials.py), from IMAP's own variables."""
    own = {PASSWORD_ENV: environ.get(IMAP_PASSWORD_ENV, ""), TOKEN_ENV: environ.get(IMAP_TOKEN_ENV, "")}
    credentials = gather_credentials(
        source.user,
        method=None,
        password_command=password_command,
        token_command=token_command,
        environ={k: v for k, v in own.items() if v},
        ask_password=ask_password,
        prompt=f"Password for {source.user} at {source.host}",
    )
    assert credentials is not None
    return credentials


def open_mailbox(
    text: str,
    *,
    writable: bool,
    password_command: str | None = None,
    token_command: str | None = None,
    environ: Mapping[str, str] | None = None,
    ask_password: Callable[[str], str] | None = None,
) -> Mailbox:
    """SOURCE as given to `bounces`: a Maildir folder, an mbox file, or imaps://USER@HOST/FOLDER."""
    if text.startswith(("imaps://", "imap://")):
        source = parse_imap_url(text)
        credentials = imap_credentials(
            source,
            password_command=password_command,
            token_command=token_command,
            environ=environ if environ is not None else os.environ,
            ask_password=ask_password or _no_prompt,
        )
        return ImapBox(source, credentials, writable=writable)
    path = Path(text)
    if path.is_dir():
        return MaildirBox(path)
    if path.is_file():
        return MboxBox(path)
    raise InputError(
        f"{text}: no such mailbox", "give a Maildir folder, an mbox file, or imaps://USER@HOST/FOLDER"
    )


def _no_prompt(prompt: str) -> str:
    raise ConfigError(
        "the IMAP URL names a user but no password was given",
        f"set {IMAP_PASSWORD_ENV}, or password_command in the [bounces] table",
    )


def _imap_text(error: Exception) -> str:
    return " ".join(str(error).split())[:200]

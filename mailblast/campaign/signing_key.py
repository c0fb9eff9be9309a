"""The key that signs unsubscribe tokens and VERP return paths, and each campaign's tag.

The key is 32 random bytes in ``signing.key`` in the user's config folder (platformdirs;
``MAILBLAST_CONFIG_DIR`` moves it), readable by the user only, made the first time it is needed.
Whoever has it can make tokens that unsubscribe anyone: keep it like a password. The unsubscribe
endpoint must run where it can read the same file (copy it there).
"""

from __future__ import annotations

import os
import secrets
from pathlib import Path

import platformdirs

from mailblast.errors import InputError

CONFIG_DIR_ENV = "MAILBLAST_CONFIG_DIR"
KEY_FILE = "signing.key"


def config_dir() -> Path:
    override = os.environ.get(CONFIG_DIR_ENV)
    return Path(override) if override else platformdirs.user_config_path("mailblast")


def key_path() -> Path:
    return config_dir() / KEY_FILE


def load_key(*, create: bool = True) -> bytes:
    path = key_path()
    try:
        text = path.read_text().strip()
    except FileNotFoundError:
        if not create:
            raise InputError(
                f"{path}: no signing key", "copy signing.key from the machine that sends, or send once first"
            ) from None
        return _create(path)
    except OSError as e:
        raise InputError(f"{path}: the signing key cannot be read: {e.strerror}") from None
    try:
        key = bytes.fromhex(text)
    except ValueError:
        key = b""
    if len(key) < 16:
        raise InputError(f"{path}: not a signing key (64 hex digits)", "restore it from a backup")
    return key


def _create(path: Path) -> bytes:
    key = secrets.token_bytes(32)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:  # another process made it first: use that one
        return load_key(create=False)
    except OSError as e:
        raise InputError(
            f"{path}: the signing key cannot be written: {e.strerror}",
            f"set {CONFIG_DIR_ENV} to a writable folder",
        ) from None
    with os.fdopen(fd, "w") as f:
        f.write(key.hex() + "\n")
    return key

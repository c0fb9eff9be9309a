"""`send --test-to ADDRESS`: a few real messages to yourself, exactly as their recipients would get them.

Only the envelope changes: each message goes to ADDRESS alone (no Cc, no Bcc), with the
headers and body its own recipient would see. No journal is used, so a later real send still
sends to everyone.
"""

from __future__ import annotations

import itertools
from collections.abc import Iterator
from dataclasses import replace

from email_validator import EmailNotValidError, validate_email

from mailblast.config import Settings
from mailblast.errors import ConfigError, InputError
from mailblast.message.compose import Composed, ComposedMessage
from mailblast.message.recipients import Recipient
from mailblast.message.worker import ComposeWorker

DEFAULT_COUNT = 3


def address_of(settings: Settings) -> str | None:
    """The --test-to address (None: a real send), once the test-send options are checked."""
    if settings.test_to is None:
        for name, value in (("--test-count", settings.test_count), ("--row", settings.test_row)):
            if value is not None:
                raise ConfigError(f"{name} goes with --test-to", "add --test-to YOUR-ADDRESS")
        return None
    try:
        return validate_email(settings.test_to, check_deliverability=False).normalized
    except EmailNotValidError as e:
        raise ConfigError(f"--test-to {settings.test_to!r} is not a valid address: {e}") from None


def pick(recipients: Iterator[Recipient], count: int | None, row: int | None) -> list[Recipient]:
    """The first ``count`` recipients to send (default 3), or the one of row ``row``."""
    if count is not None and row is not None:
        raise ConfigError("--test-count and --row exclude each other", "give one of them")
    if row is None:
        count = DEFAULT_COUNT if count is None else count
        if count < 1:
            raise ConfigError(f"--test-count must be at least 1, not {count}")
        return list(itertools.islice(recipients, count))
    for recipient in recipients:
        if recipient.row == row:
            return [recipient]
    raise InputError(
        f"row {row} is not one that would be sent",
        "rows are counted from 1, the first after the header; an invalid, duplicate, suppressed or "
        "empty row is not sent",
    )


def redirect(message: Composed, address: str) -> Composed:
    """The same message, for the envelope recipient ``address`` alone."""
    if not isinstance(message, ComposedMessage):
        return message  # a row error stays what it is
    smtputf8 = message.needs_smtputf8 or not address.isascii()
    return replace(message, envelope_to=[address], needs_smtputf8=smtputf8)


class Redirected:
    """A composer whose messages all go to one address."""

    def __init__(self, composer: ComposeWorker, address: str) -> None:
        self._composer = composer
        self._address = address
        self.parallel, self.batch = composer.parallel, composer.batch

    async def compose(self, recipients: list[Recipient], campaign: str = "") -> list[Composed]:
        return [redirect(m, self._address) for m in await self._composer.compose(recipients, campaign)]

    def close(self) -> None:
        self._composer.close()

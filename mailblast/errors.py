"""The exceptions mailblast raises, in one tree.

Every message is written for the user, and ``hint`` says what to do next.
Only the command layer (``mailblast.cli``) turns them into output and exit codes.

    MailblastError            anything mailblast reports to the user
    ├── InputError            bad input or usage; nothing was sent      (exit 2)
    │   ├── ConfigError       mailblast.toml, flags, SMTP URL or rate
    │   ├── RecipientsError   the recipients file as a whole (missing, empty, undecodable)
    │   └── TemplateError     the template file (missing, syntax error)
    └── StoppedError          the run stopped early: a fatal server reply,
                              an interruption, nothing listening       (exit 3)

Problems with single rows are not exceptions: they are collected as
``mailblast.message.recipients.RowProblem`` so that ``check`` can report all of them at once.
"""

from __future__ import annotations

import difflib
from collections.abc import Iterable


class MailblastError(Exception):
    """An error with text ready for the user, and a hint that says what to do next."""

    exit_code = 1

    def __init__(self, message: str, hint: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.hint = hint

    def __str__(self) -> str:
        return self.message if not self.hint else f"{self.message}\nHint: {self.hint}"


class InputError(MailblastError):
    """Bad input or usage: nothing was sent."""

    exit_code = 2


class ConfigError(InputError):
    """A bad option, config file, SMTP URL or rate."""


class RecipientsError(InputError):
    """The recipients file cannot be read at all."""


class TemplateError(InputError):
    """The template cannot be loaded or compiled."""


class StoppedError(MailblastError):
    """The run stopped before every message was tried."""

    exit_code = 3


def did_you_mean(word: str, choices: Iterable[str]) -> str | None:
    """The choice closest to ``word`` (ignoring case), if one is close enough to be a typo."""
    folded = {c.casefold(): c for c in choices}
    match = difflib.get_close_matches(word.casefold(), list(folded), n=1, cutoff=0.7)
    return folded[match[0]] if match else None

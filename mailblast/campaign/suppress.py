"""The suppression list: addresses that must never be mailed (unsubscribed, bounced, complained).

Each file is a CSV with an address column (found as in a recipients file), or plain
text with one address per line. Addresses are compared case-insensitively. The list
is kept in a temporary SQLite table (recipients.SeenAddresses), so a list of millions
does not grow memory.
"""

from __future__ import annotations

import csv
import itertools
from collections.abc import Iterator, Sequence
from pathlib import Path

from email_validator import EmailNotValidError, validate_email

from mailblast.errors import InputError, RecipientsError
from mailblast.message.recipients import SeenAddresses, detect_encoding, find_address_column, pick_delimiter

BATCH = 5000
_HINT = "check the --suppress path (or suppress in mailblast.toml); nothing was sent"


def address_key(text: str) -> str:
    """An address as the list compares it: the form recipients.py gives, then case-folded."""
    text = text.strip().strip("<>").strip()
    if text.isascii() and "xn--" not in text.lower():
        return text.casefold()
    try:  # an internationalised domain: compare the Unicode form, as the recipients file has it
        return validate_email(text, check_deliverability=False).normalized.casefold()
    except EmailNotValidError:
        return text.casefold()


class SuppressionList:
    """The addresses of one or more suppression files; ``address in suppressed``."""

    def __init__(self, paths: Sequence[Path]) -> None:
        self.paths = tuple(paths)
        self.warnings: list[str] = []
        self.entries = 0  # distinct addresses
        self._seen = SeenAddresses()
        try:
            for path in self.paths:
                self.entries += self._load(path)
        except BaseException:
            self._seen.close()
            raise

    def __contains__(self, address: str) -> bool:
        return address_key(address) in self._seen

    def close(self) -> None:
        self._seen.close()

    def describe(self) -> str:
        names = ", ".join(str(p) for p in self.paths)
        return f"suppression list: {self.entries:,} address(es) from {names}"

    def _load(self, path: Path) -> int:
        try:
            encoding = _encoding(path)
            with path.open(encoding=encoding, newline="") as f:
                added = 0
                addresses = self._addresses(path, f)
                while batch := list(itertools.islice(addresses, BATCH)):
                    added += self._seen.add_all(batch)
                return added
        except FileNotFoundError:
            raise InputError(f"{path}: no such suppression file", _HINT) from None
        except IsADirectoryError:
            raise InputError(f"{path}: is a folder, not a suppression file", _HINT) from None
        except UnicodeDecodeError as e:
            raise InputError(
                f"{path}: the suppression file is not valid {e.encoding} text", "save it as UTF-8"
            ) from None
        except csv.Error as e:
            raise InputError(f"{path}: not a readable CSV: {e}", _HINT) from None
        except OSError as e:
            raise InputError(f"{path}: the suppression file cannot be read: {e.strerror}", _HINT) from None

    def _addresses(self, path: Path, f: Iterator[str]) -> Iterator[str]:
        """Every address of an open file, as keys; lines with no address are counted and warned of."""
        lines = iter(f)
        first, number = "", 0
        for number, first in enumerate(lines, start=1):  # noqa: B007 - number is used below
            if first.strip() and not first.startswith("#"):
                break
        else:
            return
        ignored = _Ignored()
        if "@" in first:  # no header: one address per line
            for n, line in enumerate(itertools.chain([first], lines), start=number):
                text = line.strip()
                if "@" in text:
                    yield address_key(text)
                elif text and not text.startswith("#"):
                    ignored.add(n)
        else:
            delimiter = pick_delimiter(first)
            header = tuple(name.strip() for name in next(csv.reader([first], delimiter=delimiter)))
            try:
                column = header.index(find_address_column(header, None))
            except RecipientsError as e:
                raise InputError(
                    f"{path}: {e.message}", "name the address column email, or give one address per line"
                ) from None
            reader = csv.reader(lines, delimiter=delimiter)
            for values in reader:
                if len(values) > column and "@" in values[column]:
                    yield address_key(values[column])
                elif any(v.strip() for v in values):
                    ignored.add(number + reader.line_num)
        if ignored.count:
            more = f" and {ignored.count - 1:,} more" if ignored.count > 1 else ""
            self.warnings.append(f"{path}: ignored line {ignored.first}{more}, with no address")


class _Ignored:
    first = 0
    count = 0

    def add(self, line: int) -> None:
        self.first = self.first or line
        self.count += 1


def _encoding(path: Path) -> str:
    with path.open("rb"):  # the errors of opening it, said for a suppression file
        pass
    try:
        return detect_encoding(path)
    except RecipientsError as e:
        raise InputError(e.message, "save the suppression file as UTF-8") from None


def load_suppression(paths: Sequence[Path]) -> SuppressionList | None:
    """The list from these files, or None when there are none; a file that cannot be read stops."""
    return SuppressionList(paths) if paths else None

"""The suppression list: addresses that must never be mailed (unsubscribed, bounced, complained).

Every send, check and preview uses the machine's shared list (suppression_db.py), plus the
files of ``--suppress`` and ``suppress = [...]``. Each file is a CSV with an address column
(found as in a recipients file), or text with one address a line. A line is understood when it
holds one address, however it is written: ``a@x,2026-11-01`` (a CSV without a header),
``Bob <b@x>``, ``c@x   # note``, ``mailto:d@x``. A line that holds none is a warning naming the
file and the line, never silently dropped. Addresses are compared case-insensitively. The
addresses are kept in a temporary SQLite table (recipients.SeenAddresses), so a list of millions
does not grow memory, and compose workers can look a Cc or Bcc up in it by its path.
"""

from __future__ import annotations

import csv
import email.utils
import itertools
import re
from collections.abc import Iterator, Sequence
from pathlib import Path
from urllib.parse import unquote

from email_validator import EmailNotValidError, validate_email

from mailblast.campaign.suppression_db import SuppressionStore
from mailblast.errors import InputError, RecipientsError
from mailblast.message.recipients import SeenAddresses, detect_encoding, find_address_column, pick_delimiter

BATCH = 5000
MAX_WARNINGS = 20  # lines not understood, named one by one per file; then a count
_HINT = "check the --suppress path (or suppress in mailblast.toml); nothing was sent"
# the common case, taken without email-validator's cost: one plain ASCII address
_PLAIN = re.compile(r"[A-Za-z0-9.!#$%&'*+/=?^_`{|}~-]+@[A-Za-z0-9](?:[A-Za-z0-9.-]*[A-Za-z0-9])?")
_COMMENT = re.compile(r"(?:^|\s)#.*$", re.DOTALL)  # "# note" at the start or after a space
_SEPARATORS = re.compile(r"[,;\t]")


def address_key(text: str) -> str:
    """An address as the list compares it: the form recipients.py gives, then case-folded."""
    text = text.strip().strip("<>").strip()
    if text.isascii() and "xn--" not in text.lower():
        return text.casefold()
    try:  # an internationalised domain: compare the Unicode form, as the recipients file has it
        return validate_email(text, check_deliverability=False).normalized.casefold()
    except EmailNotValidError:
        return text.casefold()


def parse_field(text: str) -> str | None:
    """The one address a value holds (``Bob <b@x>``, ``mailto:b@x``, ``<b@x>``), or None."""
    text = text.strip()
    if len(text) > 1 and text[0] == text[-1] == '"':
        text = text[1:-1].strip()
    if text[:7].lower() == "mailto:":
        text = unquote(text[7:].split("?", 1)[0]).strip()
    if "@" not in text:
        return None
    if _PLAIN.fullmatch(text):
        return text
    name, address = email.utils.parseaddr(text)
    if not address or "@" not in address:
        return None
    if address != text and "<" not in text and not name:
        return None  # parseaddr took only part of it: "a@x b@y", "a@x junk"
    if _PLAIN.fullmatch(address):
        return address
    try:
        return validate_email(address, check_deliverability=False).normalized
    except EmailNotValidError:
        return None


def parse_line(line: str) -> str | None:
    """The one address a suppression file's line holds, or None (a comment line is not asked)."""
    text = line.strip()
    if _PLAIN.fullmatch(text):  # most lines: one plain address, nothing else
        return text
    text = _COMMENT.sub("", text).strip()
    found = parse_field(text)
    if found is not None or not _SEPARATORS.search(text):
        return found
    # a CSV line without a header: the first value that is an address (a@x,2026-11-01)
    delimiter = pick_delimiter(text)
    try:
        values = next(csv.reader([text], delimiter=delimiter), [])
    except csv.Error:  # a stray line break or quote inside the line
        values = text.split(delimiter)
    for value in values:
        if (found := parse_field(value)) is not None:
            return found
    return None


class SuppressionList:
    """The shared list and the addresses of suppression files; ``address in suppressed``."""

    def __init__(self, paths: Sequence[Path], store: SuppressionStore | None = None) -> None:
        self.paths = tuple(paths)
        self.store_path = store.path if store is not None else None
        self.warnings: list[str] = []
        self.entries = 0  # distinct addresses
        self.shared = 0  # of those, from the shared list
        self._seen = SeenAddresses()
        try:
            if store is not None:
                keys = store.keys()
                while batch := list(itertools.islice(keys, BATCH)):
                    self.shared += self._seen.add_all(batch)
                self.entries = self.shared
            for path in self.paths:
                self.entries += self._load(path)
            self.db_path = self._seen.commit()
        except BaseException:
            self._seen.close()
            raise

    def __contains__(self, address: str) -> bool:
        return address_key(address) in self._seen

    def close(self) -> None:
        self._seen.close()

    def describe(self) -> str:
        names = [str(p) for p in self.paths]
        if self.store_path is not None:
            names.insert(0, f"the shared list {self.store_path} ({self.shared:,})")
        return f"suppression list: {self.entries:,} address(es) from {', '.join(names)}"

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
        """Every address of an open file, as keys; lines not understood are warned of."""
        lines = iter(f)
        first, number = "", 0
        for number, first in enumerate(lines, start=1):  # noqa: B007 - number is used below
            if first.strip() and not first.lstrip().startswith("#"):
                break
        else:
            return
        ignored = _Ignored(path)
        if "@" in first:  # no header: one address a line, maybe with more after it
            for n, line in enumerate(itertools.chain([first], lines), start=number):
                text = line.strip()
                if not text or text.startswith("#"):
                    continue
                address = parse_line(text)
                if address is not None:
                    yield address_key(address)
                else:
                    ignored.add(n, text)
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
            start = number
            for values in reader:
                address = parse_field(_COMMENT.sub("", values[column])) if len(values) > column else None
                if address is not None:
                    yield address_key(address)
                elif any(v.strip() for v in values) and not values[0].lstrip().startswith("#"):
                    ignored.add(start + reader.line_num, (delimiter.join(values)))
        self.warnings.extend(ignored.warnings())


class _Ignored:
    """The lines of one file that hold no address: each named, up to MAX_WARNINGS."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.lines: list[str] = []
        self.count = 0

    def add(self, line: int, text: str) -> None:
        self.count += 1
        if self.count <= MAX_WARNINGS:
            shown = text if len(text) <= 60 else text[:57] + "..."
            self.lines.append(f"{self.path}, line {line}: not understood, no address in it: {shown!r}")

    def warnings(self) -> list[str]:
        more = self.count - len(self.lines)
        tail = [f"{self.path}: {more:,} more line(s) not understood"] if more > 0 else []
        return [*self.lines, *tail]


def _encoding(path: Path) -> str:
    with path.open("rb"):  # the errors of opening it, said for a suppression file
        pass
    try:
        return detect_encoding(path)
    except RecipientsError as e:
        raise InputError(e.message, "save the suppression file as UTF-8") from None


def load_suppression(paths: Sequence[Path]) -> SuppressionList | None:
    """The shared list and these files, or None when there is neither; a file that cannot be read stops."""
    store = SuppressionStore.existing()
    try:
        if store is not None and not len(store):
            store.close()
            store = None
        if store is None and not paths:
            return None
        return SuppressionList(paths, store)
    finally:
        if store is not None:
            store.close()

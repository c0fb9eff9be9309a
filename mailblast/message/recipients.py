"""Recipients: stream the rows of a CSV file and say what is wrong with each.

The file is never held in memory: rows are read one at a time, and duplicate
addresses are remembered in a temporary SQLite table rather than a Python set.
"""

from __future__ import annotations

import codecs
import csv
import functools
import importlib
import io
import sqlite3
import tempfile
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import email_validator
from email_validator import EmailNotValidError, validate_email

from mailblast.errors import RecipientsError
from mailblast.message.spreadsheet import is_report, restore

# Internal relays deliver to .local and .test: accept them (check warns), as email-validator's docs
# allow by editing this list. Still refused: .invalid, .onion, .arpa, localhost.
for _name in ("local", "test"):
    if _name in email_validator.SPECIAL_USE_DOMAIN_NAMES:
        email_validator.SPECIAL_USE_DOMAIN_NAMES.remove(_name)


def _check_each_domain_once() -> None:
    """email-validator checks an address's domain afresh each time (IDNA, a Unicode lookup a
    character), most of its work; a file's addresses share a few domains, and the check is a pure
    function of the name (and of the list above, edited first), so each is checked once."""
    module = importlib.import_module("email_validator.validate_email")
    check = getattr(module, "validate_email_domain_name", None)
    if callable(check) and not hasattr(check, "cache_info"):
        module.validate_email_domain_name = functools.lru_cache(maxsize=4096)(check)


_check_each_domain_once()
ADDRESS_COLUMN_NAMES = ("email", "e-mail", "email address", "e-mail address", "mail", "address")
DELIMITERS = (",", ";", "\t")
SAMPLE_BYTES = 1 << 20
DELIMITER_HINT = "pass --delimiter if the file uses another separator"


@dataclass(frozen=True)
class RowProblem:
    """One thing wrong with one row, ready to print."""

    file: str
    row: int
    line: int
    column: str | None
    message: str
    is_error: bool = True
    template: str | None = None  # the template at fault, when the cause is written there, not in the row

    def __str__(self) -> str:
        if self.template is not None:
            return f"{self.template}: {self.message}"
        where = f"{self.file}, row {self.row} (line {self.line})"
        if self.column:
            where += f', column "{self.column}"'
        return f"{where}: {self.message}"


@dataclass(frozen=True)
class Recipient:
    """A data row: ``row`` 1 is the first row after the header."""

    row: int
    line: int
    fields: dict[str, str]
    address: str
    needs_smtputf8: bool = False


@dataclass
class RowResult:
    """What reading one row gave: a recipient, or the problems that stop it being one."""

    row: int
    line: int
    recipient: Recipient | None
    problems: list[RowProblem] = field(default_factory=list)
    duplicate_of: int | None = None
    values: tuple[str, ...] = ()  # a bad row's cells as read, to report it as not sent


@dataclass(frozen=True)
class CsvFormat:
    encoding: str
    delimiter: str
    header: tuple[str, ...]
    address_column: str
    warnings: tuple[str, ...] = ()
    is_report: bool = False  # a mailblast report: its cells lose the mark that kept formulas off


def detect_encoding(path: Path) -> str:
    """UTF-8 (with or without BOM) when the sample decodes as such, else charset-normalizer's guess."""
    with _open_binary(path) as f:
        sample = f.read(SAMPLE_BYTES)
    if sample.startswith(codecs.BOM_UTF8):
        return "utf-8-sig"
    try:
        # A final=False decoder tolerates a multi-byte character cut at the sample's end.
        codecs.getincrementaldecoder("utf-8")().decode(sample, final=len(sample) < SAMPLE_BYTES)
        return "utf-8"
    except UnicodeDecodeError:
        pass
    import charset_normalizer  # here: a compose worker, which never reads a file, is 4 MiB smaller

    best = charset_normalizer.from_bytes(sample).best()
    if best is None:
        raise RecipientsError(
            f"{path}: cannot tell which text encoding this file uses",
            "pass --encoding, for example --encoding cp1252",
        )
    return best.encoding


def _check_encoding(name: str) -> str:
    try:
        return codecs.lookup(name).name
    except LookupError:
        raise RecipientsError(
            f'"{name}" is not a text encoding Python knows',
            "use a name such as utf-8, cp1252 or latin-1",
        ) from None


class _CountingReader(io.RawIOBase):
    """A raw file that counts the bytes read, so long jobs can show how far they are."""

    def __init__(self, raw: io.FileIO) -> None:
        self._raw = raw
        self.count = 0

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: Any) -> int:
        n = self._raw.readinto(buffer) or 0
        self.count += n
        return n

    def close(self) -> None:
        self._raw.close()
        super().close()


def _open_binary(path: Path) -> io.FileIO:
    """The one place where opening the recipients file can fail, with a line for the user."""
    try:
        return io.FileIO(path, "r")
    except FileNotFoundError:
        raise RecipientsError(f"{path}: no such file", "check the path to the recipients CSV") from None
    except IsADirectoryError:
        raise RecipientsError(f"{path}: is a folder, not a CSV file") from None
    except PermissionError:
        raise RecipientsError(f"{path}: permission denied", "check the file's permissions") from None


def _open_text(path: Path, encoding: str) -> io.TextIOWrapper:
    """Text over a byte-counting reader: ``f.buffer.raw.count`` says how far it has read."""
    return io.TextIOWrapper(
        io.BufferedReader(_CountingReader(_open_binary(path))), encoding=encoding, newline=""
    )


def pick_delimiter(header_line: str) -> str:
    counts = {d: header_line.count(d) for d in DELIMITERS}
    best = max(DELIMITERS, key=lambda d: counts[d])
    return best if counts[best] else ","


def find_address_column(header: tuple[str, ...], wanted: str | None) -> str:
    folded = {name.casefold(): name for name in header}
    if wanted is not None:
        if wanted in header:
            return wanted
        if wanted.casefold() in folded:
            return folded[wanted.casefold()]
        raise RecipientsError(
            f'there is no column "{wanted}"; the columns are: {", ".join(header)}',
            "pass --email-column with one of those names",
        )
    for name in ADDRESS_COLUMN_NAMES:
        if name in folded:
            return folded[name]
    raise RecipientsError(
        f'no address column: none of the columns ({", ".join(header)}) is named "email"',
        'rename the address column to "email", or pass --email-column NAME',
    )


class RecipientsFile:
    """A recipients CSV: its format is read up front, its rows streamed on demand."""

    def __init__(
        self,
        path: Path | str,
        *,
        encoding: str | None = None,
        delimiter: str | None = None,
        email_column: str | None = None,
    ) -> None:
        self.path = Path(path)
        self.name = str(path)
        enc = _check_encoding(encoding) if encoding else detect_encoding(self.path)
        if delimiter is not None and len(delimiter) != 1:
            raise RecipientsError(f"--delimiter must be one character, not {delimiter!r}")
        self.format = self._read_format(enc, delimiter, email_column)
        self.size = self.path.stat().st_size
        self._reading: _CountingReader | None = None
        self.blank_lines = 0  # of the last pass over the rows: skipped, not rows, but said
        self.first_blank_lines: list[int] = []  # the first few of them

    @property
    def bytes_read(self) -> int:
        """How far the current pass over the rows has read, for progress bars."""
        return self._reading.count if self._reading else 0

    def _read_format(self, encoding: str, delimiter: str | None, email_column: str | None) -> CsvFormat:
        with _open_text(self.path, encoding) as f:
            try:
                first = f.readline()
            except UnicodeError as e:
                raise self._decode_error(encoding, e) from None
        if not first.strip():
            raise RecipientsError(
                f"{self.name}: the file is empty" if not first else f"{self.name}: the first line is empty",
                "the first line must be a header naming the columns, such as: email,name",
            )
        delim = delimiter or pick_delimiter(first)
        try:
            raw = next(csv.reader([first], delimiter=delim, strict=True))
        except csv.Error as e:
            raise RecipientsError(
                f"{self.name}, line 1 (the header): {_csv_problem(e)}", DELIMITER_HINT
            ) from None
        header = tuple(name.strip() for name in raw)
        report = is_report(header)
        if report:
            raw = [restore(name) for name in raw]
            header = tuple(name.strip() for name in raw)
        warnings = []
        trimmed = [name for name in raw if name != name.strip()]
        if trimmed:
            names = ", ".join(repr(n) for n in trimmed)
            warnings.append(f"{self.name}: trimmed spaces around column names {names}")
        if any(not name for name in header):
            raise RecipientsError(
                f"{self.name}, line 1: column {header.index('') + 1} of the header has no name",
                "give every column a name in the header line",
            )
        dupes = sorted({n for n in header if header.count(n) > 1})
        if dupes:
            raise RecipientsError(
                f"{self.name}, line 1: the header names {', '.join(dupes)} more than once",
                "give every column a distinct name",
            )
        address_column = find_address_column(header, email_column)
        return CsvFormat(encoding, delim, header, address_column, tuple(warnings), report)

    def _decode_error(self, encoding: str, err: UnicodeError) -> RecipientsError:
        # The text layer decodes ahead in chunks, so find the line again byte by byte.
        decoder = codecs.getincrementaldecoder(encoding)()
        line = 0
        with _open_binary(self.path) as f:
            for line, raw in enumerate(f, start=1):  # noqa: B007 - line is used after the loop
                try:
                    decoder.decode(raw)
                except UnicodeError:
                    break
        reason = err.reason if isinstance(err, UnicodeDecodeError) else str(err)
        hint = "pass --encoding with the file's encoding, for example --encoding cp1252"
        if "BOM" in reason:  # utf-16 and utf-32 need a byte order mark to know which way round
            hint = f"a file without a byte order mark needs --encoding {encoding}-le or {encoding}-be"
        return RecipientsError(
            f"{self.name}, line {line}: bytes that are not valid {encoding} ({reason})", hint
        )

    def rows(self, *, allow_duplicates: bool = False) -> Iterator[RowResult]:
        """Yield every data row in file order, with its problems. Blank lines are skipped."""
        fmt = self.format
        seen = None if allow_duplicates else SeenAddresses()
        self.blank_lines, self.first_blank_lines = 0, []
        try:
            with _open_text(self.path, fmt.encoding) as f:
                self._reading = f.buffer.raw  # type: ignore[attr-defined]
                # strict: a quote never closed is an error, not a value that swallows the rest of the file
                reader = csv.reader(f, delimiter=fmt.delimiter, strict=True)
                row = line = 0
                try:
                    next(reader)  # the header, already read
                    while True:
                        line = reader.line_num + 1
                        try:
                            values = next(reader)
                        except StopIteration:
                            return
                        if not values:
                            self.blank_lines += 1
                            if len(self.first_blank_lines) < 5:
                                self.first_blank_lines.append(line)
                            continue
                        row += 1
                        yield self._row(row, line, values, seen)
                except UnicodeError as e:
                    raise self._decode_error(fmt.encoding, e) from None
                except csv.Error as e:
                    # the row that starts on ``line`` is the one at fault, however far the reader got
                    raise RecipientsError(
                        f"{self.name}, row {row + 1} (line {line}): {_csv_problem(e)}",
                        "check the quoting of that row; " + DELIMITER_HINT,
                    ) from None
        finally:
            if seen is not None:
                seen.close()

    def _row(self, row: int, line: int, values: list[str], seen: SeenAddresses | None) -> RowResult:
        fmt = self.format
        result = RowResult(row, line, None)

        def problem(column: str | None, message: str, is_error: bool = True) -> None:
            result.problems.append(RowProblem(self.name, row, line, column, message, is_error))
            if is_error:  # kept for a bad row only: a good one has its fields
                result.values = tuple(values)

        if all(not v.strip() for v in values):
            problem(None, "empty row, skipped", is_error=False)
            return result
        if len(values) != len(fmt.header):
            many = "many" if len(values) > len(fmt.header) else "few"
            problem(
                None,
                f"too {many} fields: {len(values)} where the header has {len(fmt.header)} "
                f"(a stray {fmt.delimiter!r} or an unquoted value?)",
            )
            return result
        if fmt.is_report:
            values = [restore(v) for v in values]
        fields = dict(zip(fmt.header, values, strict=True))
        raw_address = fields[fmt.address_column].strip()
        if not raw_address:
            problem(fmt.address_column, "no address")
            return result
        try:
            checked = validate_email(raw_address, check_deliverability=False)
        except EmailNotValidError as e:
            problem(fmt.address_column, f"{raw_address!r} is not a valid address: {e}")
            return result
        address = checked.normalized
        if seen is not None:
            first = seen.add(address, row)
            if first is not None:
                result.duplicate_of = first
                problem(
                    fmt.address_column,
                    f"{address} duplicates row {first}, skipped (--allow-duplicates sends it again)",
                    is_error=False,
                )
                return result
        if checked.smtputf8:
            problem(
                fmt.address_column,
                f"{address} has a non-ASCII local part: the server must support SMTPUTF8",
                is_error=False,
            )
        result.recipient = Recipient(row, line, fields, address, bool(checked.smtputf8))
        return result


def _csv_problem(error: csv.Error) -> str:
    """The csv module's complaint, in the user's words."""
    text = str(error)
    if "unexpected end of data" in text:
        return 'a quoted value is never closed: a " opens it and no " ends it before the end of the file'
    if "field larger than field limit" in text:
        limit = csv.field_size_limit()
        return f"a value longer than {limit:,} characters (a quote that is never closed?)"
    return text


class SeenAddresses:
    """The addresses met so far, on disk so a million rows do not grow memory."""

    def __init__(self) -> None:
        self._dir = tempfile.TemporaryDirectory(prefix="mailblast-")
        self._db = sqlite3.connect(Path(self._dir.name) / "seen.sqlite", isolation_level=None)
        self._db.executescript(
            "PRAGMA journal_mode=OFF; PRAGMA synchronous=OFF; PRAGMA cache_size=-4096;"
            "CREATE TABLE seen (address TEXT PRIMARY KEY, row INTEGER) WITHOUT ROWID;"
            "BEGIN;"
        )

    def add(self, address: str, row: int) -> int | None:
        """Remember ``address``; return the row it was first seen on if it is a duplicate."""
        key = address.casefold()
        cur = self._db.execute("INSERT OR IGNORE INTO seen VALUES (?, ?)", (key, row))
        if cur.rowcount:
            return None
        return self._db.execute("SELECT row FROM seen WHERE address = ?", (key,)).fetchone()[0]

    def add_all(self, addresses: Iterable[str]) -> int:
        """Remember many addresses at once (the row is 0); return how many were new."""
        before = self._db.total_changes
        self._db.executemany("INSERT OR IGNORE INTO seen VALUES (?, 0)", ((a.casefold(),) for a in addresses))
        return self._db.total_changes - before

    def __contains__(self, address: str) -> bool:
        key = address.casefold()
        return self._db.execute("SELECT 1 FROM seen WHERE address = ?", (key,)).fetchone() is not None

    def commit(self) -> Path:
        """Make what was added readable by other connections (compose workers); returns the file."""
        if self._db.in_transaction:
            self._db.execute("COMMIT")
        return Path(self._dir.name) / "seen.sqlite"

    def close(self) -> None:
        self._db.close()
        self._dir.cleanup()

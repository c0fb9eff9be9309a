"""The failure report: the original columns plus what happened, a valid recipients file itself.

Every cell is written through ``spreadsheet.defuse``, so a value from a row (or a server reply)
never runs as a formula where the report is opened.
"""

from __future__ import annotations

import contextlib
import csv
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TextIO

from mailblast.display import printable
from mailblast.errors import ConfigError, StoppedError
from mailblast.message.recipients import CsvFormat
from mailblast.message.spreadsheet import REPORT_COLUMNS, defuse
from mailblast.smtp.outcomes import Outcome, Status

__all__ = [
    "REPORT_COLUMNS",
    "ReportWriter",
    "check_writable",
    "copy_report",
    "default_report_path",
    "report_file",
    "wants_bom",
]
REPORTED = {Status.FAILED, Status.UNCERTAIN, Status.NOT_ATTEMPTED}


class ReportWriter:
    """Writes one CSV row per recipient that was not sent, as outcomes arrive."""

    def __init__(
        self, stream: TextIO, header: tuple[str, ...], *, delimiter: str = ",", bom: bool = False
    ) -> None:
        """``delimiter`` and ``bom`` as the recipients file had them, so that the report opens where
        it did: a spreadsheet reads UTF-8 without a BOM as its local code page (RenÃ©)."""
        self._header = header
        if bom:
            stream.write("\ufeff")
        # A recipients file that already has a "status" column keeps it; ours get a prefix.
        extra = [f"mailblast_{c}" if c in header else c for c in REPORT_COLUMNS]
        self._writer = csv.writer(stream, delimiter=delimiter)
        self._writer.writerow([defuse(c) for c in (*header, *extra)])
        self.rows = 0

    def write(self, outcome: Outcome) -> None:
        if outcome.status not in REPORTED:
            return
        fields = outcome.recipient.fields
        cells = (
            *(fields.get(c, "") for c in self._header),
            outcome.status.value,
            outcome.smtp_code,
            outcome.enhanced_code,
            printable(outcome.error),  # a server's words: no control sequence for `cat` to run
            outcome.attempts,
        )
        self._writer.writerow([defuse(c) for c in cells])
        self.rows += 1


REPORT_HINT = (
    "free some disk space; the journal has every outcome (mailblast report writes the report from it), "
    "and the same command again resumes"
)


def wants_bom(fmt: CsvFormat) -> bool:
    """A report file gets a BOM when its recipients file had one, or was not UTF-8 (a spreadsheet's)."""
    return fmt.encoding.replace("_", "-").lower() != "utf-8"


def default_report_path(recipients_path: Path) -> Path:
    """Where the report goes when it should not flood a terminal: beside the recipients file."""
    return recipients_path.with_name(f"{recipients_path.stem}.not-sent.csv")


def copy_report(stream: TextIO, path: Path) -> None:
    try:
        with path.open("w", encoding="utf-8", newline="") as f:
            shutil.copyfileobj(stream, f)
    except OSError as e:
        raise ConfigError(f"{path}: cannot write the report: {e.strerror}", "pass --report PATH") from None


@contextmanager
def report_file(path: Path | None) -> Iterator[TextIO]:
    if path is None:
        with tempfile.TemporaryFile("w+", encoding="utf-8", newline="") as f:
            yield f
        return
    try:
        f = path.open("w", encoding="utf-8", newline="")
    except OSError as e:
        raise ConfigError(f"--report {path}: cannot write: {e.strerror}") from None
    try:
        yield f
    except BaseException:
        with contextlib.suppress(OSError):
            f.close()
        raise
    try:
        f.close()  # flushes the last rows
    except OSError as e:
        raise StoppedError(f"{path}: the report cannot be written: {e.strerror}", REPORT_HINT) from None


def check_writable(path: Path) -> None:
    """Fail now, not after the check pass, if the report cannot be written; leave the file as it is."""
    existed = path.exists()
    try:
        path.open("a").close()
    except OSError as e:
        raise ConfigError(
            f"--report {path}: cannot write: {e.strerror}", "pass --report with a path you can write"
        ) from None
    if not existed:
        path.unlink()

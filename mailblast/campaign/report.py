"""The failure report: the original columns plus what happened, a valid recipients file itself.

Every cell is written through ``spreadsheet.defuse``, so a value from a row (or a server reply)
never runs as a formula where the report is opened.
"""

from __future__ import annotations

import contextlib
import csv
import itertools
import os
import shutil
import tempfile
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import TextIO

from mailblast.campaign.journal import CampaignInfo, Journal
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
    "journal_report",
    "report_file",
    "wants_bom",
    "write_atomically",
]
REPORTED = {Status.FAILED, Status.UNCERTAIN, Status.NOT_ATTEMPTED}


class ReportWriter:
    """Writes one CSV row per recipient that was not sent, as outcomes arrive."""

    def __init__(
        self,
        stream: TextIO,
        header: tuple[str, ...],
        *,
        delimiter: str = ",",
        bom: bool = False,
        campaign: str = "",
    ) -> None:
        """``delimiter`` and ``bom`` as the recipients file had them, so that the report opens where
        it did: a spreadsheet reads UTF-8 without a BOM as its local code page (RenÃ©)."""
        self._header = header
        self._campaign = campaign  # its uid: sending the report joins the campaign
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
            self._campaign,
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


def default_report_path(recipients_path: Path, campaign: str = "") -> Path:
    """Where the report goes when it should not flood a terminal: beside the recipients file,
    named after the campaign when it has a name (two campaigns of one file keep a report each)."""
    name = f".{_file_safe(campaign)}" if campaign else ""
    return recipients_path.with_name(f"{recipients_path.stem}{name}.not-sent.csv")


def _file_safe(name: str) -> str:
    return "".join(c if c.isalnum() or c in "-_" else "_" for c in name)[:64]


def copy_report(stream: TextIO, path: Path) -> int:
    return write_atomically(path, lambda f: shutil.copyfileobj(stream, f) or 0)


def write_atomically(path: Path, write: Callable[[TextIO], int]) -> int:
    """Write the report to a temporary file beside ``path``, then rename it over ``path``: a kill
    or a hang-up leaves the previous complete report or the new one, never a part."""
    temporary = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        with temporary.open("w", encoding="utf-8", newline="") as f:
            rows = write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(temporary, path)
    except OSError as e:
        with contextlib.suppress(OSError):
            temporary.unlink()
        raise StoppedError(f"{path}: the report cannot be written: {e.strerror}", REPORT_HINT) from None
    except BaseException:
        with contextlib.suppress(OSError):
            temporary.unlink()
        raise
    return rows


def journal_report(
    journal: Journal,
    campaign: CampaignInfo,
    *,
    delimiter: str = ",",
    bom: bool = False,
    extra: Iterable[Outcome] = (),
) -> Callable[[TextIO], int]:
    """Writes every recipient of the campaign not delivered yet, from the journal, then ``extra``
    (rows not in the journal: invalid ones left out with --skip-invalid); returns the rows."""

    def write(stream: TextIO) -> int:
        report = ReportWriter(stream, campaign.header, delimiter=delimiter, bom=bom, campaign=campaign.uid)
        for outcome in itertools.chain(journal.not_sent(campaign.id), extra):
            report.write(outcome)
        return report.rows

    return write


def report_file() -> TextIO:
    """A temporary file for a report being written; its rows are copied where they go once complete."""
    return tempfile.TemporaryFile("w+", encoding="utf-8", newline="")


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

"""The failure report: the original columns plus what happened, a valid recipients file itself.

Every cell is written through ``spreadsheet.defuse``, so a value from a row (or a server reply)
never runs as a formula where the report is opened.
"""

from __future__ import annotations

import csv
from typing import TextIO

from mailblast.outcomes import Outcome, Status
from mailblast.spreadsheet import REPORT_COLUMNS, defuse

__all__ = ["REPORT_COLUMNS", "ReportWriter"]
REPORTED = {Status.FAILED, Status.UNCERTAIN, Status.NOT_ATTEMPTED}


class ReportWriter:
    """Writes one CSV row per recipient that was not plainly sent, as outcomes arrive."""

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
            outcome.error,
            outcome.attempts,
        )
        self._writer.writerow([defuse(c) for c in cells])
        self.rows += 1

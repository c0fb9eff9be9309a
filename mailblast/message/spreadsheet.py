"""Report cells that a spreadsheet would run as a formula (CSV injection, CWE-1236).

As OWASP advises, a report cell that begins with ``=``, ``+``, ``-``, ``@``, tab or CR gets a
leading ``'``, which spreadsheets show as plain text. So does one that already begins with
``'``, so that reading a report back (as a recipients file) can drop exactly one mark from
every cell that has one, and get every value back as it was.
"""

from __future__ import annotations

REPORT_COLUMNS = ("status", "smtp_code", "enhanced_code", "error", "attempts")
_FORMULA_START = ("=", "+", "-", "@", "\t", "\r", "'")


def defuse(value: object) -> str:
    text = str(value)
    return f"'{text}" if text.startswith(_FORMULA_START) else text


def restore(text: str) -> str:
    """The value ``defuse`` was given (for cells of a mailblast report)."""
    return text[1:] if text.startswith("'") else text


def is_report(header: tuple[str, ...]) -> bool:
    """Whether a CSV header is that of a mailblast report: the original columns, then ours."""
    ours = header[-len(REPORT_COLUMNS) :]
    return len(ours) == len(REPORT_COLUMNS) and all(
        name in (column, f"mailblast_{column}") for name, column in zip(ours, REPORT_COLUMNS, strict=True)
    )

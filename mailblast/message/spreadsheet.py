"""Report cells that a spreadsheet would run as a formula (CSV injection, CWE-1236).

As OWASP advises, a report cell that begins with ``=``, ``+``, ``-``, ``@``, tab or CR gets a
leading ``'``, which spreadsheets show as plain text. So does one that already begins with
``'``, so that reading a report back (as a recipients file) can drop exactly one mark from
every cell that has one, and get every value back as it was.
"""

from __future__ import annotations

# "campaign" names the campaign (its uid), so that sending the report joins it; reports written
# before it was added end at "attempts", and are reports still.
REPORT_COLUMNS = ("status", "smtp_code", "enhanced_code", "error", "attempts", "campaign")
_FORMULA_START = ("=", "+", "-", "@", "\t", "\r", "'")


def defuse(value: object) -> str:
    text = str(value)
    return f"'{text}" if text.startswith(_FORMULA_START) else text


def restore(text: str) -> str:
    """The value ``defuse`` was given (for cells of a mailblast report)."""
    return text[1:] if text.startswith("'") else text


def is_report(header: tuple[str, ...]) -> bool:
    """Whether a CSV header is that of a mailblast report: the original columns, then ours."""
    for columns in (REPORT_COLUMNS, REPORT_COLUMNS[:-1]):
        ours = header[-len(columns) :]
        if len(ours) == len(columns) and all(
            name in (column, f"mailblast_{column}") for name, column in zip(ours, columns, strict=True)
        ):
            return True
    return False


def report_campaign(header: tuple[str, ...], fields: dict[str, str]) -> str:
    """The campaign a report's row names ("" for none, or a report from before campaigns)."""
    last = header[-1] if header else ""
    return fields.get(last, "").strip() if last in ("campaign", "mailblast_campaign") else ""

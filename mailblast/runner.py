"""Runners: wire the stages together for each command and show what happened.

recipients (CSV rows) -> compose (message bytes) -> send -> outcomes -> report
"""

from __future__ import annotations

import asyncio
import os
import re
import shutil
import tempfile
from collections import Counter
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import TextIO

from rich.console import Console

from mailblast import display
from mailblast.compose import ComposedMessage, Template, compose_rows
from mailblast.config import Settings
from mailblast.connection import Connection
from mailblast.errors import ConfigError, InputError, StoppedError
from mailblast.outcomes import Outcome, Status
from mailblast.progress import SendProgress
from mailblast.ratelimit import SlidingWindowLimiter
from mailblast.recipients import Recipient, RecipientsFile
from mailblast.replies import Verdict
from mailblast.report import ReportWriter
from mailblast.sender import Sender, SenderOptions
from mailblast.urls import SmtpTarget, parse_rate, parse_smtp_url

FIX_HINT = "fix the rows above (or the template), then run the command again; nothing was sent"


@dataclass
class Inputs:
    recipients: RecipientsFile
    template: Template


@dataclass
class ScanTally:
    rows: int = 0
    valid: int = 0
    invalid: int = 0
    duplicates: int = 0
    empty: int = 0

    def as_dict(self) -> dict[str, int]:
        return {
            "rows": self.rows,
            "valid": self.valid,
            "invalid": self.invalid,
            "duplicates": self.duplicates,
            "empty": self.empty,
        }


def load_inputs(settings: Settings, recipients_path: Path) -> Inputs:
    if settings.template is None:
        raise ConfigError("no template given", "pass --template PATH, or set template in mailblast.toml")
    recipients = RecipientsFile(
        recipients_path,
        encoding=settings.encoding,
        delimiter=settings.delimiter,
        email_column=settings.email_column,
    )
    template = Template(settings.template, default_from=settings.sender)
    return Inputs(recipients, template)


def scan(
    inputs: Inputs,
    settings: Settings,
    console: Console,
    on_message: Callable[[ComposedMessage], None] | None = None,
) -> ScanTally:
    """Read and render every row, print every problem, count the outcome."""
    for warning in inputs.recipients.format.warnings:
        display.print_warning(console, warning)
    tally = ScanTally()
    rows = compose_rows(inputs.recipients, inputs.template, allow_duplicates=settings.allow_duplicates)
    size = inputs.recipients.size
    with display.file_progress(console, "checking rows", size) as progress:
        for prepared in rows:
            result = prepared.row
            tally.rows += 1
            for problem in result.problems:
                display.print_problem(console, problem)
            if prepared.message is not None:
                tally.valid += 1
                if on_message is not None:
                    on_message(prepared.message)
            elif result.duplicate_of is not None:
                tally.duplicates += 1
            elif any(p.is_error for p in result.problems):
                tally.invalid += 1
            else:
                tally.empty += 1
            if progress is not None and tally.rows % 512 == 0:
                progress.update(progress.task_ids[0], completed=inputs.recipients.bytes_read)
    if tally.rows == 0:
        raise InputError(
            f"{inputs.recipients.name}: the file has a header but no rows",
            "add one row per recipient below the header line",
        )
    return tally


def run_check(settings: Settings, recipients_path: Path, console: Console) -> int:
    inputs = load_inputs(settings, recipients_path)
    tally = scan(inputs, settings, console)
    display.print_counts(console, f"check {inputs.recipients.name}", tally.as_dict())
    return _verdict(console, tally)


def _verdict(console: Console, tally: ScanTally) -> int:
    if tally.invalid:
        console.print(f"[bold red]{tally.invalid} invalid row(s).[/] Hint: {FIX_HINT}")
        return InputError.exit_code
    return 0


def run_preview(settings: Settings, recipients_path: Path, row: int, console: Console) -> int:
    if row < 1:
        raise ConfigError(f"--row must be 1 or more, not {row}", "row 1 is the first row after the header")
    inputs = load_inputs(settings, recipients_path)
    for prepared in compose_rows(inputs.recipients, inputs.template, allow_duplicates=True):
        if prepared.row.row != row:
            continue
        for problem in prepared.row.problems:
            display.print_problem(console, problem)
        if prepared.message is None:
            return InputError.exit_code
        display.show_message(console, prepared.message)
        return 0
    raise InputError(
        f"{inputs.recipients.name} has no row {row}",
        "rows are counted from 1, the first row after the header; blank lines are not counted",
    )


def eml_name(message: ComposedMessage) -> str:
    safe = re.sub(r"[^\w@.+-]", "_", message.recipient.address, flags=re.ASCII)
    return f"{message.recipient.row:06d}-{safe}.eml"


def run_dry_run(settings: Settings, recipients_path: Path, out: Path | None, console: Console) -> int:
    inputs = load_inputs(settings, recipients_path)
    write: Callable[[ComposedMessage], None] | None = None
    if out is not None:
        try:
            out.mkdir(parents=True, exist_ok=True)
        except OSError as e:
            raise ConfigError(f"--out {out}: cannot create the folder: {e.strerror}") from None

        def write(message: ComposedMessage) -> None:
            (out / eml_name(message)).write_bytes(message.data)

    tally = scan(inputs, settings, console, write)
    display.print_counts(console, f"dry run of {inputs.recipients.name}: nothing sent", tally.as_dict())
    if out is not None:
        console.print(f"wrote {tally.valid} message(s) to {out}/ as .eml files", highlight=False)
    return _verdict(console, tally)


PASSWORD_ENV = "MAILBLAST_SMTP_PASSWORD"


def smtp_target(settings: Settings) -> SmtpTarget:
    url = settings.smtp_url
    if not url:
        raise ConfigError(
            "no SMTP server given",
            "pass --smtp smtp://HOST:PORT, set MAILBLAST_SMTP_URL, or set url in the [smtp] table of "
            "mailblast.toml (--dry-run checks everything without a server)",
        )
    return parse_smtp_url(url)


def run_send(
    settings: Settings,
    recipients_path: Path,
    console: Console,
    ask_password: Callable[[str], str],
    stdout: TextIO,
) -> int:
    """Check every row, then send them all; report what was not sent."""
    target = smtp_target(settings)
    rate = parse_rate(settings.rate) if settings.rate else None
    password = None
    if target.username is not None:
        password = os.environ.get(PASSWORD_ENV) or ask_password(
            f"Password for {target.username} at {target.host}"
        )
    inputs = load_inputs(settings, recipients_path)
    tally = scan(inputs, settings, console)
    if tally.invalid:
        return _verdict(console, tally)
    pace = f"at most {rate}" if rate else "no --rate given, so at the pace the server allows"
    console.print(
        f"sending {tally.valid:,} message(s) to {target.display()}, {pace}, "
        f"over {settings.connections} connection(s)",
        highlight=False,
    )
    limiter = SlidingWindowLimiter(rate.count if rate else None, rate.period if rate else 1.0)
    options = SenderOptions(settings.connections, settings.max_messages, settings.retries)

    def connect() -> Connection:
        return Connection(target, password, timeout=settings.timeout)

    with _report_file(settings.report) as report_stream:
        report = ReportWriter(report_stream, inputs.recipients.format.header)
        reasons: Counter[str] = Counter()

        def on_outcome(outcome: Outcome) -> None:
            report.write(outcome)
            if outcome.status in (Status.FAILED, Status.UNCERTAIN):
                reasons[outcome.reply.describe() if outcome.reply else outcome.error] += 1

        sender = Sender(connect, limiter, options, on_outcome)
        sender.counts.total = tally.valid
        rows = (
            r.recipient
            for r in inputs.recipients.rows(allow_duplicates=settings.allow_duplicates)
            if r.recipient is not None
        )
        elapsed = asyncio.run(_send(sender, rows, inputs.template, console, settings.quiet))
        if settings.report is None and report.rows:
            report_stream.seek(0)
            shutil.copyfileobj(report_stream, stdout)
    counts = sender.counts
    display.print_counts(
        console,
        "summary",
        {
            "sent": f"{counts.sent:,}",
            "failed": f"{counts.failed:,}",
            "uncertain": f"{counts.uncertain:,}",
            "skipped": f"{tally.duplicates + tally.empty:,}",
            "not attempted": f"{counts.not_attempted:,}",
            "elapsed": f"{elapsed:.1f}s",
            "average rate": f"{(counts.sent + counts.uncertain) / elapsed if elapsed else 0:.2f} msg/s",
        },
    )
    for reason, n in reasons.most_common(5):
        console.print(f"  {n:,} × {reason}", highlight=False, soft_wrap=True)
    if report.rows:
        where = settings.report or "standard output"
        console.print(f"report of {report.rows:,} recipient(s) not plainly sent: {where}", highlight=False)
    if sender.stopped_by is not None:
        raise StoppedError(f"stopped: {sender.stopped_by.describe()}", _stop_hint(sender.stopped_by))
    return 1 if counts.failed or counts.uncertain else 0


def _stop_hint(reason: Verdict) -> str:
    text = reason.describe()
    if "TLS" in text:
        cause = "the server's certificate must be valid for its name; for a private CA, set SSL_CERT_FILE"
    elif reason.code in (530, 534, 535, 538):
        cause = f"check the user name in the SMTP URL and {PASSWORD_ENV}"
    elif "cannot connect" in text:
        cause = "check the host and port of the SMTP URL, and that the server is running"
    else:
        cause = "fix the cause"
    return f"{cause}; then send the report's rows again: mailblast send REPORT.csv (see --report)"


async def _send(
    sender: Sender, rows: Iterator[Recipient], template: Template, console: Console, quiet: bool
) -> float:
    async with SendProgress(console, sender.counts, quiet=quiet) as progress:
        await sender.run(rows, template.compose)
    return progress.elapsed


@contextmanager
def _report_file(path: Path | None) -> Iterator[TextIO]:
    if path is None:
        with tempfile.TemporaryFile("w+", encoding="utf-8", newline="") as f:
            yield f
        return
    try:
        f = path.open("w", encoding="utf-8", newline="")
    except OSError as e:
        raise ConfigError(f"--report {path}: cannot write: {e.strerror}") from None
    with f:
        yield f

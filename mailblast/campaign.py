"""Campaign runners: `send` with its journal, and `status` / `report` from the journal alone."""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
import signal
import ssl
import tempfile
import time
from collections.abc import Callable, Collection, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, replace
from datetime import datetime
from functools import partial
from pathlib import Path
from typing import Any, TextIO

from rich.console import Console

from mailblast import capture, display, testsend
from mailblast.check import Inputs, ScanTally, load_inputs, scan, verdict_of_scan
from mailblast.compose import ComposedMessage
from mailblast.config import Settings
from mailblast.connection import Connection, TransactionError
from mailblast.credentials import Credentials, gather_credentials, sign_in_hint
from mailblast.errors import ConfigError, InputError, MailblastError, StoppedError
from mailblast.journal import Journal, default_path
from mailblast.outcomes import Counts, Outcome, Reasons, Status, average_rate, rate_seconds
from mailblast.progress import SendProgress
from mailblast.quota import (
    WAIT_AT_MOST,
    QuotaBook,
    QuotaLimiter,
    account_of,
    is_quota,
    quota_use,
    stop_message,
    when,
)
from mailblast.ratelimit import SlidingWindowLimiter
from mailblast.recipients import CsvFormat, Recipient, RecipientsFile
from mailblast.relay import describe as describe_relays
from mailblast.relay import relays_of
from mailblast.replies import Kind, Verdict
from mailblast.report import ReportWriter
from mailblast.sender import Relay, Sender, SenderOptions
from mailblast.urls import SmtpTarget, parse_rate, parse_smtp_url
from mailblast.worker import ComposeWorker

# A recipients file this large is composed in a worker process, started before the check pass so
# that its start-up overlaps it; for smaller ones the start-up would cost more than it saves.
COMPOSE_IN_WORKER_FROM = 64 * 1024  # bytes, about a thousand rows
INTERRUPTED = Verdict(Kind.FATAL, None, None, None, "interrupted")
QUOTA_USED = Verdict(Kind.FATAL, None, None, None, "the account's quota is used")
JOURNAL_FAILED = Verdict(Kind.FATAL, None, None, None, "the journal cannot be written")
REPORT_FAILED = Verdict(Kind.FATAL, None, None, None, "the report cannot be written")
STOPPED = "the run stopped first"
REPORT_HINT = (
    "free some disk space; the journal has every outcome (mailblast report writes the report from it), "
    "and the same command again resumes"
)
STOP_POLL = 0.05  # seconds between looks at a stopping run
STOP_GRACE = 1.0  # seconds a stopping run with nothing in flight gets to close its connections


REHEARSAL_JOURNAL = "journal.mailblast.sqlite"
REAL_SERVER_HINT = (
    "pass --smtp smtp://HOST:PORT, set MAILBLAST_SMTP_URL, or set url in the [smtp] table of mailblast.toml"
)


@dataclass
class Plan:
    """What this run will send: the recipients, how many, and which may already have arrived."""

    recipients: Iterator[Recipient]
    total: int
    maybe_sent: frozenset[int] = frozenset()


def run_send(
    settings: Settings,
    recipients_path: Path,
    console: Console,
    ask_password: Callable[[str], str],
    stdout: TextIO,
    resume_command: str,
    *,
    quotas: bool = True,
    facts: dict[str, Any] | None = None,
) -> int:
    """Check every row, then send those not sent yet; journal, report and summarise.

    A rate over more than a minute is a quota kept across runs (quota.py), unless ``quotas`` is off.
    ``facts``, when given, receives what --json prints; the report then goes to a file, as on a terminal.
    """
    if settings.outbox is not None or not (settings.smtp_url or settings.relays):
        return _rehearse(settings, recipients_path, console, ask_password, stdout, resume_command, facts)
    target = parse_smtp_url(settings.smtp_url or settings.relays[0].url)
    rate = parse_rate(settings.rate) if settings.rate and not settings.relays else None  # relays: their own
    test_to = testsend.address_of(settings)
    if test_to is not None:
        settings = replace(settings, no_journal=True)  # a test send leaves the campaign as it was
    if settings.report is not None:
        _check_writable(settings.report)  # before the check pass, which may take minutes
    inputs = load_inputs(settings, recipients_path)
    # Started before the check pass, so that a worker process's start-up overlaps it.
    composer = ComposeWorker(inputs.template, in_worker=inputs.recipients.size >= COMPOSE_IN_WORKER_FROM)
    journal = None
    book = QuotaBook() if quotas and is_quota(rate) else None
    try:
        journal = None if settings.no_journal else _open_journal(settings, recipients_path, console)
        tally, plan = _check_and_plan(journal, inputs, settings, console)
        if facts is not None:
            facts["rows"] = tally.as_dict(suppression=True)
            facts["to_send"] = plan.total
        if tally.invalid:
            return verdict_of_scan(console, tally)
        if test_to is not None:
            chosen = testsend.pick(plan.recipients, settings.test_count, settings.test_row)
            plan = Plan(iter(chosen), len(chosen))
            composer = testsend.Redirected(composer, test_to)
            console.print(
                f"test send: {len(chosen):,} message(s), each to {test_to} only (no Cc or Bcc), as "
                f"{', '.join(r.address for r in chosen)} would get it; no journal, so a real send "
                "still sends to everyone",
                soft_wrap=True,
            )
        if plan.total == 0:
            console.print(_nothing_to_send(journal, settings), highlight=False)
            return 0
        account = account_of(target)
        if book is not None:
            assert rate is not None
            use = quota_use(book, account, rate, time.time())
            console.print(use.describe(), highlight=False)
            if use.next_free - use.now > WAIT_AT_MOST and not settings.wait:
                raise StoppedError(
                    stop_message(account, rate, 0, plan.total, use.next_free),
                    _quota_hint(journal, resume_command),
                )
        # asked only now: a bad row should not cost typing a password
        tls_context = ssl.create_default_context()  # once: loading the CA store takes milliseconds
        relays = relays_of(
            settings.relays,
            timeout=settings.timeout,
            pipelining=settings.pipelining,
            tls_context=tls_context,
            environ=os.environ,
            ask_password=ask_password,
        )
        credentials = None if relays else gather_credentials(
            target.username,
            method=settings.auth,
            password_command=settings.password_command,
            token_command=settings.oauth_token_command,
            environ=os.environ,
            ask_password=ask_password,
            prompt=f"Password for {target.username} at {target.host}",
        )
        pace = f"at most {rate}" if rate else "no --rate given, so at the pace the server allows"
        console.print(
            f"sending {plan.total:,} message(s) through {len(relays)} relays: "
            f"{describe_relays(settings.relays)}"
            if relays
            else f"sending {plan.total:,} message(s) to {target.display()}, {pace}, "
            f"over {settings.connections} connection(s)",
            highlight=False,
        )

        def connect() -> Connection:
            return Connection(
                target,
                credentials,
                timeout=settings.timeout,
                tls_context=tls_context,
                pipelining=settings.pipelining,
            )

        limiter: SlidingWindowLimiter
        if book is not None:
            assert rate is not None
            limiter = QuotaLimiter(
                book,
                account,
                rate,
                wait=settings.wait,
                stopping=lambda: sender.stopping,
                on_exhausted=lambda _: sender.stop(QUOTA_USED),
                on_wait=lambda at: console.print(
                    f"the quota of {rate} for {account} is used: waiting until {when(at)}", highlight=False
                ),
            )
        else:
            limiter = SlidingWindowLimiter(rate.count if rate else None, rate.period if rate else 1.0)
        options = SenderOptions(settings.retries)
        # On a terminal, a long report goes to a file rather than over the screen; with --json too.
        to_file = stdout.isatty() or facts is not None
        report_path = settings.report or (default_report_path(recipients_path) if to_file else None)
        with _report_file(settings.report) as report_stream:
            fmt = inputs.recipients.format
            report = ReportWriter(
                report_stream,
                fmt.header,
                delimiter=fmt.delimiter,
                bom=report_path is not None and wants_bom(fmt),
            )
            recorder = Recorder(journal, report, plan.maybe_sent)
            sender = Sender(
                relays or [Relay(connect, limiter, settings.connections, settings.max_messages)],
                options,
                recorder.outcome,
                on_sending=recorder.sending,
                on_not_delivered=recorder.not_delivered,
                on_notice=lambda text: console.print(text, highlight=False),
            )
            recorder.stop = sender.stop
            sender.counts.total = plan.total
            window = rate.period if rate and book is None else 1.0
            if journal is not None:
                journal.start_sending(window)
            elapsed, cut_short = asyncio.run(_send(sender, plan, composer, settings, console, recorder))
            # whatever ended the run, every recipient not sent is in the report
            unknown = recorder.finish(plan.recipients, sender.counts)
            if settings.report is None and recorder.report.rows:
                report_stream.seek(0)
                if report_path is None:
                    shutil.copyfileobj(report_stream, stdout)
                else:
                    _copy_report(report_stream, report_path)
        if not recorder.report.rows:
            report_path = None  # nothing was written: no hint may name it
        _summarise(console, sender.counts, tally, elapsed, window, recorder, report_path)
        if facts is not None:
            facts.update(
                _send_facts(sender.counts, tally, elapsed, window, journal, report_path, recorder.report.rows)
            )
        if journal is not None:
            console.print(f"journal: {journal.path}", highlight=False)
    finally:
        composer.close()
        inputs.close()
        if book is not None:
            book.close()
        if journal is not None:
            journal.close()
    if journal is not None:
        resume = f"run the same command again to resume: {resume_command}"
    elif report_path is not None:
        resume = f"send the report's rows again: mailblast send {report_path} with the same options"
    else:
        resume = "send the rows of the report printed above again (--report FILE keeps it in a file)"
    if recorder.journal_error is not None:
        raise StoppedError(
            recorder.journal_error.message + _unrecorded(recorder), recorder.journal_error.hint
        )
    if recorder.report_error is not None:
        raise StoppedError(
            f"{settings.report}: the report cannot be written: {recorder.report_error}", REPORT_HINT
        )
    if cut_short and unknown:
        raise StoppedError(
            f"stopped at once: {unknown:,} message(s) in flight have an unknown outcome "
            "(reported as uncertain)",
            resume,
        )
    if sender.stopped_by is INTERRUPTED or (cut_short and sender.stopped_by is None):
        raise StoppedError(f"interrupted: {sender.counts.not_attempted:,} recipient(s) not attempted", resume)
    if sender.stopped_by is QUOTA_USED and isinstance(limiter, QuotaLimiter):
        assert rate is not None and limiter.exhausted_until is not None
        counts = sender.counts
        raise StoppedError(
            stop_message(account, rate, counts.sent, counts.not_attempted, limiter.exhausted_until),
            _quota_hint(journal, resume_command),
        )
    if sender.stopped_by is not None:
        hint = _stop_hint(sender.stopped_by, resume, target, credentials)
        raise StoppedError(f"stopped: {sender.stopped_by.describe()}", hint)
    # an uncertain message accepted on its resend was delivered (maybe twice): not a failure
    return 1 if sender.counts.failed or recorder.unconfirmed else 0


def _rehearse(
    settings: Settings,
    recipients_path: Path,
    console: Console,
    ask_password: Callable[[str], str],
    stdout: TextIO,
    resume_command: str,
    facts: dict[str, Any] | None,
) -> int:
    """The whole send, into a Maildir through the capture server on a free loopback port."""
    outbox = settings.outbox or capture.DEFAULT_OUTBOX
    why = "--outbox given" if settings.outbox is not None else "no SMTP server configured"
    console.print(
        f"{why}: delivering into {outbox}/ through a local capture server; nothing leaves this machine",
        soft_wrap=True,
    )
    # The rehearsal keeps its own journal, so that a real send later still sends to everyone.
    journal = settings.journal or outbox / REHEARSAL_JOURNAL
    with capture.in_background(outbox) as server:
        # only the capture server: no relay of mailblast.toml either
        local = replace(settings, smtp_url=server.url, relays=(), journal=journal, outbox=None)
        # a rehearsal uses no account's quota
        code = run_send(
            local, recipients_path, console, ask_password, stdout, resume_command, quotas=False, facts=facts
        )
    if facts is not None:
        facts["outbox"] = str(outbox)
    if code == InputError.exit_code:
        return code  # a bad row: the check pass said what to fix, and nothing was sent
    console.print(
        f"nothing left this machine: {server.captured:,} message(s) delivered into {outbox}/ "
        f"(it holds {len(server.outbox):,}; a Maildir, which mail clients open, e.g. mutt -f {outbox})",
        soft_wrap=True,
    )
    console.print(f"to send for real: {REAL_SERVER_HINT}", soft_wrap=True)
    return code


@dataclass
class _Open:
    """A recipient handed to the sender, with no outcome yet."""

    recipient: Recipient
    tries: int = 0
    in_flight: bool = False  # its DATA began, and neither an outcome nor a refusal came back


class Recorder:
    """Outcomes -> journal and report: each outcome is recorded before the sender counts it.

    It also keeps the few recipients the sender holds without an outcome, so that however
    the run ends, ``finish()`` reports every one of them.
    """

    def __init__(
        self, journal: Journal | None, report: ReportWriter, maybe_sent: Collection[int] = ()
    ) -> None:
        self.journal = journal
        self.report = report
        self.maybe_sent = maybe_sent  # rows an earlier run left in flight
        self.reasons = Reasons()
        self.unconfirmed = 0  # uncertain, and not accepted on a resend either
        self.stop: Callable[[Verdict], None] = lambda reason: None  # the sender's stop()
        self.journal_error: MailblastError | None = None
        self.report_error: str | None = None
        self.unrecorded: list[Recipient] = []  # accepted by the server, but not in the journal
        self._open: dict[int, _Open] = {}

    @property
    def in_flight(self) -> int:
        return sum(o.in_flight for o in self._open.values())

    def track(self, recipients: Iterator[Recipient]) -> Iterator[Recipient]:
        """``recipients``, remembering each one until its outcome comes."""
        for recipient in recipients:
            self._open[recipient.row] = _Open(recipient)
            yield recipient

    def sending(self, message: ComposedMessage) -> None:
        if self.journal_error is not None:  # the journal is gone: what goes now could not be recorded
            raise TransactionError(JOURNAL_FAILED)
        if self.journal is not None:
            try:
                self.journal.mark_sending(message.recipient, message.message_id)
            except MailblastError as e:
                self._journal_failed(e)
                raise TransactionError(JOURNAL_FAILED) from None  # not sent: it could not be recorded
        entry = self._open.get(message.recipient.row)
        if entry is not None:
            entry.tries += 1
            entry.in_flight = True

    def not_delivered(self, message: ComposedMessage) -> None:
        """A reply proved the try was not delivered: it is to be sent again, not in flight."""
        entry = self._open.get(message.recipient.row)
        if entry is not None:
            entry.tries += not entry.in_flight  # refused before DATA: sending() did not count it
            entry.in_flight = False
        if self.journal is not None:
            try:
                self.journal.mark_pending(message.recipient)
            except MailblastError as e:
                self._journal_failed(e)

    def outcome(self, outcome: Outcome) -> None:
        self._open.pop(outcome.recipient.row, None)
        if self.journal is not None:
            try:
                self.journal.record(outcome, was_in_flight=outcome.recipient.row in self.maybe_sent)
            except MailblastError as e:
                self._journal_failed(e)
                if outcome.status is not Status.NOT_ATTEMPTED:
                    self.unrecorded.append(outcome.recipient)
        self._write(outcome)
        if outcome.status is Status.FAILED:
            text = outcome.reply.describe() if outcome.reply else outcome.error
            self.reasons.add("failed", outcome.smtp_code, outcome.enhanced_code, text)
        elif outcome.status is Status.UNCERTAIN:
            self.reasons.add("uncertain", "", "", outcome.error)
            self.unconfirmed += outcome.reply is None or outcome.reply.kind is not Kind.OK

    def finish(self, rest: Iterator[Recipient], counts: Counts) -> int:
        """Report what the run left without an outcome; return how many were in flight.

        The journal already has them right: in flight ones "sending", the others pending.
        """
        if self.journal is not None:  # None once it failed
            try:
                self.journal.end_sending()
            except MailblastError as e:
                self._journal_failed(e)
        unknown = 0
        for entry in sorted(self._open.values(), key=lambda o: o.recipient.row):
            if entry.in_flight:
                unknown += 1
                error = "in flight when the run stopped at once: may or may not have been delivered"
                self._left(Outcome(entry.recipient, Status.UNCERTAIN, "", entry.tries, None, error), counts)
            else:
                self._left(
                    Outcome(entry.recipient, Status.NOT_ATTEMPTED, "", entry.tries, None, STOPPED), counts
                )
        self._open.clear()
        for recipient in rest:
            self._left(Outcome(recipient, Status.NOT_ATTEMPTED, "", 0, None, STOPPED), counts)
        return unknown

    def _left(self, outcome: Outcome, counts: Counts) -> None:
        """An outcome the sender never gave: reported and counted, not journaled (the journal has it)."""
        if outcome.status is Status.UNCERTAIN:
            self.reasons.add("uncertain", "", "", outcome.error)
            self.unconfirmed += 1
        self._write(outcome)
        counts.add(outcome)

    def _write(self, outcome: Outcome) -> None:
        if self.report_error is not None:
            return
        try:
            self.report.write(outcome)
        except OSError as e:
            self.report_error = e.strerror or str(e)
            self.stop(REPORT_FAILED)

    def _journal_failed(self, error: MailblastError) -> None:
        if self.journal_error is None:
            self.journal_error = error
            self.journal = None  # nothing more is written to it; the report still gets everything
            self.stop(JOURNAL_FAILED)


def _unrecorded(recorder: Recorder) -> str:
    if not recorder.unrecorded:
        return ""
    names = ", ".join(f"row {r.row} {r.address}" for r in recorder.unrecorded[:10])
    return (
        f"; {len(recorder.unrecorded):,} message(s) had their outcome but could not record it "
        f"({names}): the next run counts them as in flight"
    )


def _open_journal(settings: Settings, recipients_path: Path, console: Console) -> Journal:
    path = settings.journal or default_path(recipients_path)
    journal, set_aside = Journal.for_send(path, restart=settings.restart)
    if set_aside is not None:
        display.print_warning(console, f"{path} was damaged: kept as {set_aside}, and a new journal started")
    return journal


def _check_and_plan(
    journal: Journal | None, inputs: Inputs, settings: Settings, console: Console
) -> tuple[ScanTally, Plan]:
    """The check pass, which also records the file's rows in the journal if every row is good."""
    recipients = inputs.recipients
    if journal is None:
        tally = scan(inputs, settings, console)
        rows = (
            r.recipient
            for r in recipients.rows(allow_duplicates=settings.allow_duplicates)
            if r.recipient and not inputs.is_suppressed(r.recipient)
        )
        return tally, Plan(rows, tally.valid)
    is_new, edited = journal.begin_run(
        recipients.path,
        inputs.template.path,
        inputs.template.source_sha,
        recipients.format.header,
        restart=settings.restart,
        allow_duplicates=settings.allow_duplicates,
    )
    try:
        tally = scan(
            inputs,
            settings,
            console,
            on_valid=journal.add,
            on_suppressed=partial(journal.add, suppressed=True),
        )
    except BaseException:
        journal.abandon_run()
        raise
    if tally.invalid:
        journal.abandon_run()  # nothing is sent, and the journal stays as it was
        return tally, Plan(iter(()), 0)
    changes = journal.end_run()
    console.print(f"journal: {journal.path}{' (new campaign)' if is_new else ''}", highlight=False)
    counts = journal.counts()
    in_flight = journal.in_flight()
    todo = counts["pending"]
    todo += 0 if settings.skip_uncertain else counts["sending"]
    todo += counts["failed"] if settings.retry_failed else 0
    if not is_new:
        console.print(
            f"resuming: {counts['sent']:,} sent, {todo:,} to go "
            f"({counts['failed']:,} failed, {counts['uncertain']:,} uncertain before)",
            highlight=False,
        )
        if changes.added:
            console.print(f"the recipients file has {changes.added:,} row(s) new since the last run")
        if changes.removed:
            more = changes.removed - len(changes.removed_sample)
            display.print_warning(
                console,
                f"{changes.removed:,} recipient(s) of the last run are no longer in the file and will not "
                f"be sent: {', '.join(changes.removed_sample)}{f' and {more:,} more' if more else ''}",
            )
        if edited:
            display.print_warning(
                console,
                "the template was edited since the last run: recipients not yet sent get the new version",
            )
        if counts["failed"] and not settings.retry_failed and todo:
            console.print(f"{counts['failed']:,} failed recipient(s) are not retried (--retry-failed does)")
    if in_flight:
        names = ", ".join(f"row {row} {address}" for row, address in in_flight[:10])
        action = (
            "left out (--skip-uncertain)" if settings.skip_uncertain else "sent again, possible duplicates"
        )
        display.print_warning(console, f"in flight when the last run stopped, {action}: {names}")
    todo_rows = journal.todo(retry_failed=settings.retry_failed, skip_uncertain=settings.skip_uncertain)
    return tally, Plan(todo_rows, todo, frozenset(row for row, _ in in_flight))


async def _send(
    sender: Sender,
    plan: Plan,
    composer: ComposeWorker | testsend.Redirected,
    settings: Settings,
    console: Console,
    recorder: Recorder,
) -> tuple[float, bool]:
    """Run the sender; Ctrl-C (or SIGTERM) once stops gracefully, twice stops at once.

    Returns (seconds, whether the run was cut short); Recorder.finish() reports what it left.
    """
    loop = asyncio.get_running_loop()
    task = asyncio.current_task()
    assert task is not None
    signals = 0

    def on_signal() -> None:
        nonlocal signals
        signals += 1
        if signals == 1:
            console.print(
                "\nstopping: messages in flight finish; Ctrl-C again to stop at once", highlight=False
            )
            sender.stop(INTERRUPTED)
        else:
            task.cancel()

    async def end_when_stopped() -> None:
        """Once the run is stopping (a signal, a fatal reply, the journal), nothing new starts:
        end it when nothing is in flight, or after --timeout anyway. What waits (a rate limit,
        a retry) is reported, not waited for."""
        while not sender.stopping:
            await asyncio.sleep(STOP_POLL)
        deadline = loop.time() + settings.timeout
        idle_since = None
        while loop.time() < deadline:
            await asyncio.sleep(STOP_POLL)
            if recorder.in_flight:
                idle_since = None
            elif idle_since is None:
                idle_since = loop.time()
            elif loop.time() - idle_since >= STOP_GRACE:
                break
        task.cancel()

    watch = asyncio.create_task(end_when_stopped())
    cut_short = False
    try:
        with _on_signals(loop, on_signal):
            async with SendProgress(console, sender.counts, quiet=settings.quiet) as progress:
                await sender.run(recorder.track(plan.recipients), composer.compose, plan.maybe_sent)
    except asyncio.CancelledError:
        cut_short = True
    finally:
        watch.cancel()
    return progress.elapsed, cut_short


@contextmanager
def _on_signals(loop: asyncio.AbstractEventLoop, handler: Callable[[], None]) -> Iterator[None]:
    """Ctrl-C and SIGTERM call ``handler`` in the loop; where the loop cannot (Windows' loops have
    no add_signal_handler), signal.signal hands them to it."""
    signals = (signal.SIGINT, signal.SIGTERM)
    installed: list[int] = []
    previous: dict[int, Any] = {}
    try:
        for sig in signals:
            loop.add_signal_handler(sig, handler)
            installed.append(sig)
    except NotImplementedError:
        for sig in set(signals) - set(installed):
            previous[sig] = signal.signal(sig, lambda *_: loop.call_soon_threadsafe(handler))
    try:
        yield
    finally:
        for sig in installed:
            loop.remove_signal_handler(sig)
        for sig, old in previous.items():
            signal.signal(sig, old)


def _summarise(
    console: Console,
    counts: Counts,
    tally: ScanTally,
    elapsed: float,
    window: float,
    recorder: Recorder,
    report: Path | None,
) -> None:
    delivered = counts.sent + counts.uncertain
    display.print_counts(
        console,
        "summary",
        {
            "sent": f"{counts.sent:,}",
            "failed": f"{counts.failed:,}",
            "uncertain": f"{counts.uncertain:,}",
            "skipped": f"{tally.duplicates + tally.empty:,}",
            **({"suppressed": f"{tally.suppressed:,}"} if tally.suppressed else {}),
            "not attempted": f"{counts.not_attempted:,}",
            "elapsed": f"{elapsed:.1f}s",
            "average rate": f"{average_rate(delivered, rate_seconds(elapsed, window)):.2f} msg/s",
        },
    )
    if recorder.reasons:
        display.print_reasons(console, "failures by reason", recorder.reasons.lines())
    if recorder.report.rows:
        where = report or "standard output"
        console.print(
            f"report of the {recorder.report.rows:,} recipient(s) not sent: {where}", highlight=False
        )


def _send_facts(
    counts: Counts,
    tally: ScanTally,
    elapsed: float,
    window: float,
    journal: Journal | None,
    report: Path | None,
    report_rows: int,
) -> dict[str, Any]:
    """What `send --json` prints: the summary's figures, measured the same way."""
    delivered = counts.sent + counts.uncertain
    return {
        "counts": {
            "total": counts.total,
            "sent": counts.sent,
            "failed": counts.failed,
            "uncertain": counts.uncertain,
            "skipped": tally.duplicates + tally.empty,
            "suppressed": tally.suppressed,
            "not_attempted": counts.not_attempted,
        },
        "elapsed_seconds": round(elapsed, 3),
        "rate_per_second": round(average_rate(delivered, rate_seconds(elapsed, window)), 3),
        "journal": str(journal.path) if journal is not None else None,
        "report": str(report) if report is not None else None,
        "report_rows": report_rows,
    }


def _stop_hint(reason: Verdict, resume: str, target: SmtpTarget, credentials: Credentials | None) -> str:
    """What to do about a stop; the mix-up of ports 465 and 587 is the commonest setup mistake."""
    text = reason.describe()
    if "WRONG_VERSION_NUMBER" in text:
        cause = (
            f"port {target.port} does not start with TLS: port 587 usually wants smtp+starttls://, "
            "and smtps:// is for port 465"
        )
    elif "does not offer STARTTLS" in text:
        cause = (
            "the server offers no STARTTLS: port 465 wants smtps://; a relay without TLS is "
            "smtp:// (then without a password, unless it is on this machine)"
        )
    elif "certificate verify failed" in text:
        cause = (
            "the server's certificate is not trusted: if it is signed by a private CA, set SSL_CERT_FILE "
            "to that CA's PEM file; if it is made out to another name, use that name in the URL"
        )
    elif "TLS" in text:
        cause = "check that the port and the scheme match: smtps:// for port 465, smtp+starttls:// for 587"
    elif reason.code in (530, 534, 535, 538):
        cause = sign_in_hint(reason, credentials)
    elif "cannot connect" in text and target.port == 465 and target.security != "tls":
        cause = "port 465 usually wants smtps:// (TLS from the start)"
    elif "cannot connect" in text:
        cause = "check the host and port of the SMTP URL, and that the server is running"
    else:
        cause = "fix the cause"
    return f"{cause}; then {resume}"


def wants_bom(fmt: CsvFormat) -> bool:
    """A report file gets a BOM when its recipients file had one, or was not UTF-8 (a spreadsheet's)."""
    return fmt.encoding.replace("_", "-").lower() != "utf-8"


def _quota_hint(journal: Journal | None, resume_command: str) -> str:
    again = (
        f"run the same command again then, to resume: {resume_command}"
        if journal is not None
        else "send the report's rows again then"
    )
    return f"{again}; or pass --wait to wait for it"


def default_report_path(recipients_path: Path) -> Path:
    """Where the report goes when it should not flood a terminal: beside the recipients file."""
    return recipients_path.with_name(f"{recipients_path.stem}.not-sent.csv")


def _copy_report(stream: TextIO, path: Path) -> None:
    try:
        with path.open("w", encoding="utf-8", newline="") as f:
            shutil.copyfileobj(stream, f)
    except OSError as e:
        raise ConfigError(f"{path}: cannot write the report: {e.strerror}", "pass --report PATH") from None


def _nothing_to_send(journal: Journal | None, settings: Settings) -> str:
    if journal is None:
        return "nothing to send"
    counts = journal.counts()
    text = f"nothing to send: {counts['sent']:,} sent"
    if counts["failed"]:
        text += f", {counts['failed']:,} failed earlier (--retry-failed sends them again)"
    if counts["suppressed"]:
        text += f", {counts['suppressed']:,} suppressed"
    if counts["sending"] and settings.skip_uncertain:
        text += f", {counts['sending']:,} left out as uncertain (--skip-uncertain)"
    return text


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


def _check_writable(path: Path) -> None:
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


# -- status and report, from the journal alone ---------------------------------------------


def _existing_journal(settings: Settings, recipients_path: Path) -> Journal:
    return Journal(settings.journal or default_path(recipients_path), read_only=True)


def run_status(
    settings: Settings,
    recipients_path: Path,
    console: Console,
    *,
    list_suppressed: bool = False,
    facts: dict[str, Any] | None = None,
) -> int:
    journal = _existing_journal(settings, recipients_path)
    try:
        campaign = journal.find(recipients_path, settings.template)
        if list_suppressed:  # one address a line: itself a suppression file
            for _, address in journal.suppressed(campaign.id):
                console.print(address, highlight=False, soft_wrap=True)
            return 0
        counts = journal.counts(campaign.id)
        seconds = journal.active_seconds(campaign.id)  # rate_seconds of every run, as in send's summary
        last = journal.last_activity(campaign.id)
        delivered = counts["sent"] + counts["uncertain"]
        display.print_counts(
            console,
            f"campaign {campaign.recipients} with {campaign.template}",
            {
                "journal": str(journal.path),
                "started": _when(campaign.created_at),
                "last activity": _when(last) if last else "never",
                "sent": f"{counts['sent']:,}",
                "failed": f"{counts['failed']:,}",
                "uncertain": f"{counts['uncertain'] + counts['sending']:,}",
                "pending": f"{counts['pending']:,}",
                **({"suppressed": f"{counts['suppressed']:,}"} if counts["suppressed"] else {}),
                "average rate": f"{average_rate(delivered, seconds):.2f} msg/s",
            },
        )
        if relays := journal.relay_counts(campaign.id):
            display.print_counts(console, "sent through", {name: f"{n:,}" for name, n in relays})
        if counts["sending"]:
            console.print(
                f"{counts['sending']:,} message(s) were in flight when a run stopped: the next send "
                "sends them again (or leaves them out with --skip-uncertain)",
                highlight=False,
            )
        reasons = Reasons()
        failure_rows = journal.failure_reasons(campaign.id)
        for row in failure_rows:
            reasons.add(*row)
        if reasons:
            display.print_reasons(console, "failures by reason", reasons.lines())
        if facts is not None:
            facts.update(
                journal=str(journal.path),
                recipients=campaign.recipients,
                template=campaign.template,
                started=_iso(campaign.created_at),
                last_activity=_iso(last) if last else None,
                counts=dict(counts),
                active_seconds=round(seconds, 3),
                rate_per_second=round(average_rate(delivered, seconds), 3),
                failures=[
                    dict(zip(("status", "smtp_code", "enhanced_code", "error", "count"), row, strict=True))
                    for row in failure_rows
                ],
            )
    finally:
        journal.close()
    _print_quota(settings, console)
    return 0


def _print_quota(settings: Settings, console: Console) -> None:
    """The account's use of its quota, when the settings name one."""
    rate = parse_rate(settings.rate) if settings.rate else None
    if not settings.smtp_url or not is_quota(rate):
        return
    assert rate is not None
    book = QuotaBook()
    try:
        use = quota_use(book, account_of(parse_smtp_url(settings.smtp_url)), rate, time.time())
    finally:
        book.close()
    console.print(use.describe(), highlight=False)


def run_report(
    settings: Settings, recipients_path: Path, out: Path | None, console: Console, stdout: TextIO
) -> int:
    journal = _existing_journal(settings, recipients_path)
    try:
        campaign = journal.find(recipients_path, settings.template)

        fmt = _format_if_readable(recipients_path, settings)

        def write(stream: TextIO, bom: bool) -> int:
            delimiter = fmt.delimiter if fmt else ","
            report = ReportWriter(stream, campaign.header, delimiter=delimiter, bom=bom)
            for outcome in journal.not_sent(campaign.id):
                report.write(outcome)
            return report.rows

        if out is None:
            write(stdout, bom=False)
            return 0
        with _report_file(out) as stream:
            rows = write(stream, bom=fmt is not None and wants_bom(fmt))
    finally:
        journal.close()
    console.print(f"wrote {rows:,} recipient(s) not sent to {out}", highlight=False)
    return 0


def _format_if_readable(recipients_path: Path, settings: Settings) -> CsvFormat | None:
    """The recipients file's format, to write the report like it; None when it is gone or changed."""
    try:
        return RecipientsFile(
            recipients_path, encoding=settings.encoding, delimiter=settings.delimiter
        ).format
    except InputError:
        return None


def _iso(timestamp: float) -> str:
    return datetime.fromtimestamp(timestamp).astimezone().isoformat(timespec="seconds")


def _when(timestamp: float) -> str:
    return datetime.fromtimestamp(timestamp).astimezone().strftime("%Y-%m-%d %H:%M:%S %Z")

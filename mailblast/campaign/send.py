"""`send`: the check pass, then the sender, with the journal, the report and the summary."""

from __future__ import annotations

import asyncio
import os
import secrets
import shutil
import signal
import ssl
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, replace
from functools import partial
from pathlib import Path
from typing import Any, TextIO

from rich.console import Console

from mailblast import display
from mailblast.campaign import feedback, testsend
from mailblast.campaign.check import Inputs, ScanTally, load_inputs, scan, verdict_of_scan
from mailblast.campaign.journal import Journal, default_path, rehearsal_path
from mailblast.campaign.progress import SendProgress
from mailblast.campaign.quotas import QUOTA_USED, RunQuotas, quota_accounts
from mailblast.campaign.recorder import Recorder, describe_unrecorded
from mailblast.campaign.report import (
    REPORT_HINT,
    ReportWriter,
    check_writable,
    copy_report,
    default_report_path,
    report_file,
    wants_bom,
)
from mailblast.campaign.signing_key import campaign_tag
from mailblast.campaign.suppression_db import SuppressionStore
from mailblast.config import RelaySettings, Settings
from mailblast.errors import InputError, MailblastError, StoppedError
from mailblast.message.recipients import Recipient
from mailblast.message.worker import ComposeWorker
from mailblast.server import capture
from mailblast.smtp.connection import Connection
from mailblast.smtp.credentials import (
    DEFAULT_SECRET_SETTINGS,
    Credentials,
    gather_credentials,
    sign_in_hint,
)
from mailblast.smtp.outcomes import Counts, average_rate, rate_seconds
from mailblast.smtp.quota import QuotaBook
from mailblast.smtp.ratelimit import SlidingWindowLimiter
from mailblast.smtp.relay import describe as describe_relays
from mailblast.smtp.relay import relays_of, secret_settings
from mailblast.smtp.replies import Kind, Verdict
from mailblast.smtp.sender import Relay, Sender, SenderOptions
from mailblast.smtp.urls import SmtpTarget, parse_rate, parse_smtp_url

# A recipients file this large is composed in a worker process, started before the check pass so
# that its start-up overlaps it; for smaller ones the start-up would cost more than it saves.
COMPOSE_IN_WORKER_FROM = 64 * 1024  # bytes, about a thousand rows
INTERRUPTED = Verdict(Kind.FATAL, None, None, None, "interrupted")
STOP_POLL = 0.05  # seconds between looks at a stopping run
STOP_GRACE = 1.0  # seconds a stopping run with nothing in flight gets to close its connections


REAL_SERVER_HINT = (
    "pass --smtp smtp://HOST:PORT, set MAILBLAST_SMTP_URL, or set url in the [smtp] table of mailblast.toml"
)


@dataclass
class Plan:
    """What this run will send: the recipients, how many, and which may already have arrived."""

    recipients: Iterator[Recipient]
    total: int
    maybe_sent: frozenset[int] = frozenset()
    campaign: str = ""  # the campaign's identity: its messages' Message-IDs are its own


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
    destination: str | None = None,
    destination_fault: Callable[[], str | None] | None = None,
) -> int:
    """Check every row, then send those not sent yet; journal, report and summarise.

    A rate over more than a minute is a quota kept across runs (quota.py), unless ``quotas`` is off.
    ``destination`` names where the messages go, when the server's URL would not say (a rehearsal);
    ``destination_fault`` says why it can take no more (its disk is full), which stops the run.
    ``facts``, when given, receives what --json prints; the report then goes to a file, as on a terminal.
    """
    if settings.outbox is not None or not (settings.smtp_url or settings.relays):
        return _rehearse(settings, recipients_path, console, ask_password, stdout, resume_command, facts)
    target = parse_smtp_url(settings.smtp_url or settings.relays[0].url)
    rate = parse_rate(settings.rate) if settings.rate and not settings.relays else None  # relays: their own
    test_to = testsend.address_of(settings)

    def notice(text: str) -> None:
        console.print(text, highlight=False, soft_wrap=True)

    if test_to is not None:
        settings = replace(settings, no_journal=True)  # a test send leaves the campaign as it was
    if settings.report is not None:
        check_writable(settings.report)  # before the check pass, which may take minutes
    inputs = load_inputs(settings, recipients_path)
    # Started before the check pass, so that a worker process's start-up overlaps it.
    composer = ComposeWorker(inputs.template, in_worker=inputs.recipients.size >= COMPOSE_IN_WORKER_FROM)
    journal = None
    accounts = quota_accounts(settings) if quotas else []
    book = QuotaBook() if accounts else None
    store: SuppressionStore | None = None
    try:
        journal = None if settings.no_journal else _open_journal(settings, recipients_path, console)
        tally, plan = _check_and_plan(journal, inputs, settings, console, composer)
        if facts is not None:
            facts["rows"] = tally.as_dict(suppression=True)
            facts["to_send"] = plan.total
        if tally.invalid:
            return verdict_of_scan(console, tally)
        if test_to is not None:
            chosen = testsend.pick(plan.recipients, settings.test_count, settings.test_row)
            plan = Plan(iter(chosen), len(chosen), campaign=plan.campaign)
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
        if test_to is None:  # a test send feeds nothing back: it is not the campaign
            store, tag = _open_feedback(journal, target, settings, console)
        run_quotas = None
        if book is not None:
            run_quotas = RunQuotas(book, accounts, wait=settings.wait, notice=notice)
            run_quotas.check()
            if len(run_quotas.exhausted) == max(1, len(settings.relays)):  # no relay can send
                raise StoppedError(run_quotas.stop_text(0, plan.total), _quota_hint(journal, resume_command))
        # asked only now: a bad row should not cost typing a password
        tls_context = ssl.create_default_context()  # once: loading the CA store takes milliseconds
        relays = relays_of(
            settings.relays,
            timeout=settings.timeout,
            pipelining=settings.pipelining,
            tls_context=tls_context,
            environ=os.environ,
            ask_password=ask_password,
            limiter_of=run_quotas.limiter if run_quotas else lambda _: None,
            unused=run_quotas.unused() if run_quotas else {},
        )
        credentials = (
            None
            if relays
            else gather_credentials(
                target.username,
                method=settings.auth,
                password_command=settings.password_command,
                token_command=settings.oauth_token_command,
                environ=os.environ,
                ask_password=ask_password,
                prompt=f"Password for {target.username} at {target.host}",
            )
        )
        pace = f"at most {rate}" if rate else "no --rate given, so at the pace the server allows"
        console.print(
            f"sending {plan.total:,} message(s) through {len(relays)} relays: "
            f"{describe_relays(settings.relays)}"
            if relays
            else f"sending {plan.total:,} message(s) to {destination or target.display()}, {pace}, "
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

        limiter = (run_quotas.limiter("") if run_quotas else None) or SlidingWindowLimiter(
            rate.count if rate else None, rate.period if rate else 1.0
        )
        options = SenderOptions(settings.retries)
        # On a terminal, a long report goes to a file rather than over the screen; with --json too.
        to_file = stdout.isatty() or facts is not None
        report_path = settings.report or (default_report_path(recipients_path) if to_file else None)
        with report_file(settings.report) as report_stream:
            fmt = inputs.recipients.format
            report = ReportWriter(
                report_stream,
                fmt.header,
                delimiter=fmt.delimiter,
                bom=report_path is not None and wants_bom(fmt),
            )
            recorder = Recorder(
                journal,
                report,
                plan.maybe_sent,
                destination_fault,
                feedback.SendFeedback(store, tag) if store is not None else None,
            )
            sender = Sender(
                relays or [Relay(connect, limiter, settings.connections, settings.max_messages)],
                options,
                recorder.outcome,
                on_sending=recorder.sending,
                on_not_delivered=recorder.not_delivered,
                on_notice=notice,
            )
            if run_quotas is not None:
                run_quotas.sender = sender
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
                    copy_report(report_stream, report_path)
        if not recorder.report.rows:
            report_path = None  # nothing was written: no hint may name it
        several = [r for r in sender.relays if r.name]  # the [[relay]] tables; none for the one server
        _summarise(console, sender.counts, tally, elapsed, window, recorder, report_path, several)
        if facts is not None:
            facts.update(
                _send_facts(sender.counts, tally, elapsed, window, journal, report_path, recorder.report.rows)
            )
            if several:
                facts["relays"] = [
                    {"name": r.name, "took": r.took, "dropped": r.dropped.describe() if r.dropped else None}
                    for r in several
                ]
        if journal is not None:
            console.print(f"journal: {journal.path}", highlight=False)
    finally:
        composer.close()
        inputs.close()
        if store is not None:
            store.close()
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
            recorder.journal_error.message + describe_unrecorded(recorder), recorder.journal_error.hint
        )
    if run_quotas is not None and run_quotas.fault is not None:
        raise StoppedError(
            f"stopped: {run_quotas.fault.message}; "
            f"{sender.counts.not_attempted:,} recipient(s) not attempted",
            f"{run_quotas.fault.hint}, then {resume}",
        )
    if recorder.destination_error is not None:
        raise StoppedError(
            f"stopped: {recorder.destination_error}; {sender.counts.not_attempted:,} recipient(s) not "
            "attempted, none marked failed",
            f"free some disk space (or fix the cause), then {resume}",
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
    if sender.stopped_by is QUOTA_USED and run_quotas is not None:
        counts = sender.counts
        raise StoppedError(
            run_quotas.stop_text(counts.sent, counts.not_attempted), _quota_hint(journal, resume_command)
        )
    if sender.stopped_by is not None:
        # with relays, the one whose failure stopped the run: its own URL and settings
        last = next((r.name for r in sender.relays if r.dropped is sender.stopped_by), None)
        relay = next((r for r in settings.relays if r.name == last), None)
        if relay is not None:
            target = parse_smtp_url(relay.url)
        hint = _stop_hint(sender.stopped_by, resume, target, credentials, relay)
        raise StoppedError(f"stopped: {sender.stopped_by.describe()}", hint)
    # an uncertain message accepted on its resend was delivered (maybe twice): not a failure
    return 1 if sender.counts.failed or recorder.unconfirmed else 0


def _open_feedback(
    journal: Journal | None, target: SmtpTarget, settings: Settings, console: Console
) -> tuple[SuppressionStore | None, str | None]:
    """The shared list, to write refusals at send into, and the campaign's tag; warns of the last
    campaign's rates. A list that cannot be written (a full disk) is a warning, not a stop: the
    list was read already, so no one on it is mailed; only this run's refusals go unrecorded."""
    store = None
    try:
        store = SuppressionStore()
        tag = _tag_campaign(store, journal, target, settings)
        for warning in feedback.previous_campaign_warnings(store, tag):
            display.print_warning(console, warning)
        return store, tag
    except MailblastError as e:
        if store is not None:
            store.close()
        display.print_warning(console, f"{e.message}: addresses refused as unknown go unrecorded this run")
        return None, None


def _tag_campaign(
    store: SuppressionStore, journal: Journal | None, target: SmtpTarget, settings: Settings
) -> str | None:
    """The campaign's tag in the shared list (its entries, rates, VERP and unsubscribe tokens)."""
    campaign = journal.campaign if journal is not None else None
    if journal is None or campaign is None:
        return None
    if settings.relays:
        account = ", ".join(sorted(_account_of(parse_smtp_url(r.url)) for r in settings.relays))
    else:
        account = _account_of(target)
    name = f"{Path(campaign.recipients).name} with {Path(campaign.template).name}"
    tag = campaign_tag(Path(campaign.recipients), Path(campaign.template))
    store.tag_campaign(tag, journal.path, campaign.id, name, account)
    return tag


def _account_of(target: SmtpTarget) -> str:
    return f"{target.username or ''}@{target.host}:{target.port}"


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
    journal = settings.journal or rehearsal_path(outbox)
    with capture.in_background(outbox) as server:
        # only the capture server: no relay of mailblast.toml either
        # nor any sign-in: the capture server takes mail without one, and a password_command
        # (or a token's) would be run, or refused for a URL that names no user, for nothing
        local = replace(
            settings,
            smtp_url=server.url,
            relays=(),
            journal=journal,
            outbox=None,
            auth=None,
            password_command=None,
            oauth_token_command=None,
        )
        # a rehearsal uses no account's quota
        code = run_send(
            local,
            recipients_path,
            console,
            ask_password,
            stdout,
            resume_command,
            quotas=False,
            facts=facts,
            destination=f"{outbox}/ (the capture server)",
            destination_fault=lambda: (
                server.storage_error and f"the outbox {outbox}/ cannot be written: {server.storage_error}"
            ),
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


def _open_journal(settings: Settings, recipients_path: Path, console: Console) -> Journal:
    path = settings.journal or default_path(recipients_path)
    journal, set_aside = Journal.for_send(path, restart=settings.restart)
    if set_aside is not None:
        display.print_warning(console, f"{path} was damaged: kept as {set_aside}, and a new journal started")
    return journal


def _check_and_plan(
    journal: Journal | None, inputs: Inputs, settings: Settings, console: Console, composer: ComposeWorker
) -> tuple[ScanTally, Plan]:
    """The check pass, which also records the file's rows in the journal if every row is good."""
    recipients = inputs.recipients
    if journal is None:
        tally = scan(inputs, settings, console, worker=composer)
        rows = (
            r.recipient
            for r in recipients.rows(allow_duplicates=settings.allow_duplicates)
            if r.recipient and not inputs.is_suppressed(r.recipient)
        )
        return tally, Plan(rows, tally.valid, campaign=secrets.token_hex(8))  # a campaign of one run
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
            worker=composer,
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
    in_flight_rows = frozenset(row for row, _ in in_flight)
    return tally, Plan(todo_rows, todo, in_flight_rows, journal.campaign_identity())


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
                await sender.run(
                    recorder.track(plan.recipients),
                    partial(composer.compose, campaign=plan.campaign),
                    plan.maybe_sent,
                    composer.parallel,
                    composer.batch,
                )
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
    relays: list[Relay],
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
    if relays:
        _summarise_relays(console, relays)
    if recorder.reasons:
        display.print_reasons(console, "failures by reason", recorder.reasons.lines())
    if recorder.feedback is not None and recorder.feedback.suppressed:
        shown = recorder.feedback.suppressed
        more = f" and {len(shown) - 5:,} more" if len(shown) > 5 else ""
        console.print(
            f"{len(shown):,} address(es) refused as nonexistent are now on the shared suppression list, "
            f"so no campaign mails them again: {', '.join(shown[:5])}{more} (mailblast suppress list)",
            highlight=False,
            soft_wrap=True,
        )
    if recorder.feedback is not None and recorder.feedback.error is not None:
        display.print_warning(console, f"{recorder.feedback.error.message}: refusals were not all recorded")
    if recorder.report.rows:
        where = report or "standard output"
        console.print(
            f"report of the {recorder.report.rows:,} recipient(s) not sent: {where}", highlight=False
        )


def _summarise_relays(console: Console, relays: list[Relay]) -> None:
    """How many messages each relay took (sent, or uncertain), and why any of them stopped taking more."""
    display.print_counts(console, "sent through", {r.name: f"{r.took:,}" for r in relays})
    for relay in relays:
        if relay.dropped is not None:
            console.print(
                f"  {relay.name} dropped: {relay.dropped.describe()}", highlight=False, soft_wrap=True
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


def _stop_hint(
    reason: Verdict,
    resume: str,
    target: SmtpTarget,
    credentials: Credentials | None,
    relay: RelaySettings | None = None,
) -> str:
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
        where = secret_settings(relay) if relay is not None else DEFAULT_SECRET_SETTINGS
        cause = sign_in_hint(reason, credentials, where)
    elif "cannot connect" in text and target.port == 465 and target.security != "tls":
        cause = "port 465 usually wants smtps:// (TLS from the start)"
    elif "cannot connect" in text:
        cause = "check the host and port of the SMTP URL, and that the server is running"
    else:
        cause = "fix the cause"
    return f"{cause}; then {resume}"


def _quota_hint(journal: Journal | None, resume_command: str) -> str:
    again = (
        f"run the same command again then, to resume: {resume_command}"
        if journal is not None
        else "send the report's rows again then"
    )
    return f"{again}; or pass --wait to wait for it"


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

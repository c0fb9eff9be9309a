"""`send`: the check pass, then the sender, with the journal, the report and the summary."""

from __future__ import annotations

import asyncio
import itertools
import math
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
from mailblast.campaign.journal import Destination, Journal, default_path, recipient_key, rehearsal_path
from mailblast.campaign.progress import SendProgress
from mailblast.campaign.quotas import QUOTA_USED, RunQuotas, quota_accounts
from mailblast.campaign.recorder import Recorder, describe_unrecorded
from mailblast.campaign.rehearsal import CAPTURE, WatchedConnection, is_capture_server, server_name
from mailblast.campaign.report import (
    REPORT_HINT,
    ReportWriter,
    check_writable,
    copy_report,
    default_report_path,
    journal_report,
    report_file,
    wants_bom,
    write_atomically,
)
from mailblast.campaign.suppression_db import SuppressionStore
from mailblast.config import RelaySettings, Settings
from mailblast.errors import ConfigError, InputError, MailblastError, StoppedError
from mailblast.message.recipients import Recipient, RecipientsFile, RowResult
from mailblast.message.spreadsheet import report_campaign
from mailblast.message.unsubscribe import campaign_tag
from mailblast.message.worker import ComposeWorker
from mailblast.server import capture
from mailblast.smtp.credentials import DEFAULT_SECRET_SETTINGS, Credentials, sign_in_hint
from mailblast.smtp.outcomes import Counts, Outcome, Status, average_rate, rate_seconds
from mailblast.smtp.quota import QuotaBook
from mailblast.smtp.relay import describe as describe_relays
from mailblast.smtp.relay import relays_of, secret_settings
from mailblast.smtp.replies import Cause, Kind, Verdict
from mailblast.smtp.sender import Relay, Sender, SenderOptions
from mailblast.smtp.urls import Rate, SmtpTarget, parse_smtp_url

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
    destination: Destination | None = None  # where the journal records the deliveries go
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
    delivers_to: Destination | Callable[[bool], Destination] | None = None,
) -> int:
    """Check every row, then send those not sent yet; journal, report and summarise.

    A rate over more than a minute is a quota kept across runs (quota.py), unless ``quotas`` is off.
    ``destination`` names where the messages go, when the server's URL would not say (a rehearsal);
    ``destination_fault`` says why it can take no more (its disk is full), which stops the run.
    ``delivers_to`` is what the journal records them as (else the server is asked, see rehearsal.py).
    ``facts``, when given, receives what --json prints; the report then goes to a file, as on a terminal.
    """
    if settings.outbox is not None or not (settings.smtp_url or settings.relays):
        return _rehearse(settings, recipients_path, console, ask_password, stdout, resume_command, facts)
    target = parse_smtp_url(settings.smtp_url or settings.relays[0].url)
    rate = settings.rate if not settings.relays else None  # relays: their own
    test_to = testsend.address_of(settings)

    def notice(text: str) -> None:
        console.print(text, highlight=False, soft_wrap=True)

    if test_to is not None:
        settings = replace(settings, no_journal=True)  # a test send leaves the campaign as it was
    if settings.limit is not None and (settings.limit < 1 or settings.no_journal):
        raise ConfigError(
            f"--limit must be at least 1, not {settings.limit}"
            if settings.limit < 1
            else "--limit needs the journal, which keeps the rest pending for the next run",
            "drop --no-journal (and --test-to, which keeps no journal)" if settings.limit >= 1 else None,
        )
    if settings.report is not None:
        check_writable(settings.report)  # before the check pass, which may take minutes
    if not settings.no_journal and delivers_to is None:
        delivers_to = partial(_destination_of, settings, notice)
    inputs = load_inputs(settings, recipients_path)
    # Started before the check pass, so that a worker process's start-up overlaps it.
    composer = ComposeWorker(inputs.template, in_worker=inputs.recipients.size >= COMPOSE_IN_WORKER_FROM)
    journal = None
    accounts = quota_accounts(settings) if quotas else []
    book = QuotaBook() if accounts else None
    store: SuppressionStore | None = None
    try:
        joins = None
        if not settings.no_journal:
            journal_path, joins = _journal_of(settings, inputs.recipients)
            journal = _open_journal(settings, journal_path, console)
        tally, plan, invalid = _check_and_plan(
            journal, inputs, settings, console, composer, delivers_to, joins
        )
        if facts is not None:
            facts["rows"] = tally.as_dict(suppression=True)
            facts["to_send"] = plan.total
            if journal is not None and tally.valid and not (tally.invalid and not settings.skip_invalid):
                facts["campaign"] = {"name": journal.campaign.name, "uid": journal.campaign.uid}
            if plan.destination is not None:
                servers = sorted(set(plan.destination.servers.values()))
                facts["destination"] = {"servers": servers, "rehearsal": plan.destination.rehearsal}
        if tally.invalid and not settings.skip_invalid:
            if facts is not None:
                facts["error"] = {"message": f"{tally.invalid:,} invalid row(s)", "hint": tally.fix_hint()}
            return verdict_of_scan(console, tally)
        if plan.destination is not None and plan.destination.rehearsal and book is not None:
            book.close()  # a rehearsal uses no account's quota
            book = None
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
        if plan.total == 0 and not invalid:
            console.print(_nothing_to_send(journal, settings), highlight=False)
            _report_when_nothing_to_send(
                journal, settings, recipients_path, inputs, stdout, console, facts, tally
            )
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

        def rehearsing() -> None:
            nonlocal said_rehearsal
            if journal is not None and not said_rehearsal:
                said_rehearsal = True
                journal.rehearsing(CAPTURE)
                notice(
                    f"{target.display()} is a mailblast capture server: this run is a rehearsal, and a "
                    "send to a real server later still sends to everyone"
                )

        said_rehearsal = plan.destination is not None and plan.destination.rehearsal
        relays = relays_of(
            settings.relay_list(),
            timeout=settings.timeout,
            pipelining=settings.pipelining,
            tls_context=tls_context,
            environ=os.environ,
            ask_password=ask_password,
            unused=run_quotas.unused() if run_quotas else {},
            connection=partial(WatchedConnection, on_capture=rehearsing),
        )
        credentials = relays[0].credentials
        pace = f"at most {rate}" if rate else "no --rate given, so at the pace the server allows"
        console.print(
            f"sending {plan.total:,} message(s) through {len(relays)} relays: "
            f"{describe_relays(settings.relays)}"
            if settings.relays
            else f"sending {plan.total:,} message(s) to {destination or target.display()}, {pace}, "
            f"over {settings.connections} connection(s)",
            highlight=False,
        )
        options = SenderOptions(settings.retries)
        fmt = inputs.recipients.format
        campaign = journal.campaign if journal is not None else None
        report_path = _report_path(settings, journal, recipients_path, stdout.isatty() or facts is not None)
        bom = report_path is not None and wants_bom(fmt)
        report_existed = report_path is not None and report_path.exists()
        if journal is not None and campaign is not None and report_path is not None:
            # before sending: whatever ends the run (even kill -9), the file lists every recipient
            # not delivered yet (and, until the run ends, some it delivers)
            left_out = [_invalid_outcome(r, fmt.header) for r in invalid]
            write_atomically(
                report_path,
                journal_report(journal, campaign, delimiter=fmt.delimiter, bom=bom, extra=left_out),
            )
        with report_file() as report_stream:
            report = ReportWriter(
                report_stream,
                campaign.header if campaign is not None else fmt.header,
                delimiter=fmt.delimiter,
                bom=bom,
                campaign=campaign.uid if campaign is not None else "",
            )
            for result in invalid:  # --skip-invalid
                report.write(_invalid_outcome(result, fmt.header))
            recorder = Recorder(
                journal,
                report,
                plan.maybe_sent,
                destination_fault,
                feedback.SendFeedback(store, tag) if store is not None else None,
            )
            sender = Sender(
                relays,
                options,
                recorder.outcome,
                on_sending=recorder.sending,
                on_not_delivered=recorder.not_delivered,
                on_notice=notice,
                limiter_of=run_quotas.limiter if run_quotas is not None else None,
            )
            recorder.stop = sender.stop
            sender.counts.total = plan.total
            window = min((r.period for r in rate.pacing), default=1.0) if rate else 1.0
            if journal is not None:
                journal.start_sending(window)
            elapsed, cut_short = asyncio.run(_send(sender, plan, composer, settings, console, recorder))
            # whatever ended the run, every recipient not sent is in the report
            unknown = recorder.finish(plan.recipients, sender.counts)
            report_rows = recorder.report.rows
            if recorder.journal is not None and campaign is not None:
                # every recipient of the campaign not delivered yet, not only this run's
                left_out = [_invalid_outcome(r, fmt.header) for r in invalid]
                write = journal_report(
                    recorder.journal, campaign, delimiter=fmt.delimiter, bom=bom, extra=left_out
                )
                if report_path is None:
                    report_rows = _write_if_any(write, stdout)
                else:
                    report_rows = write_atomically(report_path, write)
                    if not report_rows and not report_existed and settings.report is None:
                        report_path.unlink()  # a file of no rows where there was none
            elif test_to is not None:
                # a test send's rows are real members': a report of them, sent, would mail them
                report_rows = 0
            elif report_rows or settings.report is not None:
                report_stream.seek(0)
                if report_path is None:
                    shutil.copyfileobj(report_stream, stdout)
                else:
                    copy_report(report_stream, report_path)
        if not report_rows:
            report_path = None  # nothing was written: no hint may name it
        several = [r for r in sender.relays if r.name]  # the [[relay]] tables; none for the one server
        _summarise(
            console,
            sender.counts,
            tally,
            elapsed,
            window,
            recorder,
            report_path,
            report_rows,
            several,
            test_to,
        )
        learned = _learned(sender.relays)
        for name, limit, suggested in learned:
            console.print(
                f"{name + ': ' if name else ''}learned the server's limit, about {limit}: "
                f"next time pass --rate {suggested}",
                highlight=False,
                soft_wrap=True,
            )
        if facts is not None:
            facts.update(
                _send_facts(sender.counts, tally, elapsed, window, journal, report_path, report_rows)
            )
            facts["learned"] = [
                {"relay": name, "limit": str(limit), "suggested_rate": str(suggested)}
                for name, limit, suggested in learned
            ]
            if journal is not None and (where := journal.destination) is not None:  # a rehearsal found late
                facts["destination"] = {
                    "servers": sorted(set(where.servers.values())),
                    "rehearsal": where.rehearsal,
                }
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
    if test_to is not None:
        resume = f"send the test again (only {test_to} gets messages)"
    elif journal is not None:
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
        n = sender.counts.not_attempted
        what = f"{n:,} recipient(s) not attempted" if test_to is None else f"{n:,} test message(s) not sent"
        raise StoppedError(f"interrupted: {what}", resume)
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
    return 1 if sender.counts.failed or recorder.unconfirmed or invalid else 0


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
    if journal is None:
        return None
    campaign = journal.campaign
    if settings.relays:
        account = ", ".join(sorted(_account_of(parse_smtp_url(r.url)) for r in settings.relays))
    else:
        account = _account_of(target)
    name = f"{Path(campaign.recipients).name} with {Path(campaign.template).name}"
    tag = campaign_tag(campaign.uid)
    store.tag_campaign(tag, journal.path, campaign.id, campaign.name or name, account)
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
            delivers_to=Destination({"": CAPTURE}, rehearsal=True),
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


def _destination_of(settings: Settings, notice: Callable[[str], None], ask: bool) -> Destination:
    """The server each relay (or the one server) is, as the journal records its deliveries; with
    ``ask``, each is asked first whether it is a mailblast capture server (else the run's own
    connections tell, as they open)."""
    urls = {r.name: r.url for r in settings.relays} or {"": settings.smtp_url or ""}
    targets = {name: parse_smtp_url(url) for name, url in urls.items()}
    if ask and all(is_capture_server(t, settings.timeout) for t in targets.values()):
        notice(
            f"{', '.join(t.display() for t in targets.values())} is a mailblast capture server: this run "
            "is a rehearsal, and a send to a real server later still sends to everyone"
        )
        return Destination(dict.fromkeys(targets, CAPTURE), rehearsal=True)
    return Destination({name: server_name(t) for name, t in targets.items()})


def _journal_of(settings: Settings, recipients: RecipientsFile) -> tuple[Path, str | None]:
    """The journal to use, and the uid of the campaign this file's run joins (None: its own run).

    A report names its campaign: sending it joins that campaign, whose journal is given, or
    beside the report. So does a file all of whose rows a campaign beside it already holds.
    """
    own = settings.journal or default_path(recipients.path)
    if settings.restart:
        return own, None
    fmt = recipients.format
    uid = _campaign_named_in(recipients) if fmt.is_report else ""
    beside = sorted(recipients.path.parent.glob("*.mailblast.sqlite"))
    if uid:
        for path in [own] if settings.journal else [own, *beside]:
            if path.is_file() and _journal_has(path, lambda j: j.find_uid(uid) is not None):
                return path, uid
        raise InputError(
            f"{recipients.name} is a report of a campaign (uid {uid}) whose journal is not "
            f"{'at ' + str(own) if settings.journal else 'beside it'}",
            "pass --journal with that campaign's journal, so that nobody is sent a second copy",
        )
    if settings.journal or own.exists() or settings.campaign:
        return own, None
    for path in beside:
        # the keys of the file's rows, read (not rendered) until one is not in the campaign
        for campaign in _journal_has(path, lambda j: j.campaigns()) or []:
            keys = (
                recipient_key(r.recipient, settings.allow_duplicates)
                for r in recipients.rows(allow_duplicates=settings.allow_duplicates)
                if r.recipient is not None
            )
            if _journal_has(path, lambda j, c=campaign, k=keys: j.holds_all(c.id, k)):
                return path, campaign.uid
    return own, None


def _journal_has(path: Path, question: Callable[[Journal], Any]) -> Any:
    """``question`` asked of the journal at ``path``, opened read-only; None if it cannot be read."""
    try:
        journal = Journal(path, read_only=True)
    except InputError:
        return None
    try:
        return question(journal)
    except InputError:
        return None
    finally:
        journal.close()


def _campaign_named_in(recipients: RecipientsFile) -> str:
    header = recipients.format.header
    for result in recipients.rows(allow_duplicates=True):
        if result.recipient is not None and (uid := report_campaign(header, result.recipient.fields)):
            return uid
    return ""


def _campaign_file(journal: Journal | None, recipients_path: Path) -> Path:
    """The campaign's own recipients file, where it is now: its journal's folder, when this run
    sends another file (a report) of it; a moved folder took the journal along."""
    if journal is None:
        return recipients_path
    name = Path(journal.campaign.recipients).name
    return recipients_path if name == recipients_path.name else journal.path.parent / name


def _invalid_outcome(result: RowResult, header: tuple[str, ...]) -> Outcome:
    """A row left out with --skip-invalid, as the report lists it: not sent, and why."""
    fields = result.recipient.fields if result.recipient else dict(zip(header, result.values, strict=False))
    problems = "; ".join(p.message for p in result.problems if p.is_error)
    recipient = Recipient(result.row, result.line, fields, "", False)
    return Outcome(recipient, Status.NOT_ATTEMPTED, "", 0, None, f"invalid row, not sent: {problems}")


def _report_path(
    settings: Settings, journal: Journal | None, recipients_path: Path, to_file: bool
) -> Path | None:
    """Where the report goes: --report; else standard output (None), except on a terminal (a long
    report would flood it) or with --json: a file beside the recipients, named after the campaign."""
    if settings.report is not None or not to_file:
        return settings.report
    if journal is not None:  # the campaign's, wherever this run's rows came from (a report, say)
        return default_report_path(_campaign_file(journal, recipients_path), journal.campaign.name)
    return default_report_path(recipients_path)


def _report_when_nothing_to_send(
    journal: Journal | None,
    settings: Settings,
    recipients_path: Path,
    inputs: Inputs,
    stdout: TextIO,
    console: Console,
    facts: dict[str, Any] | None,
    tally: ScanTally,
) -> None:
    """A run with nothing to send still leaves the campaign's report (its failed recipients, say)
    and --json's document with every key."""
    path = _report_path(settings, journal, recipients_path, stdout.isatty() or facts is not None)
    rows = 0
    if journal is not None:
        fmt = inputs.recipients.format
        bom = path is not None and wants_bom(fmt)
        write = journal_report(journal, journal.campaign, delimiter=fmt.delimiter, bom=bom)
        existed = path is not None and path.exists()
        rows = _write_if_any(write, stdout) if path is None else write_atomically(path, write)
        if path is not None and not rows and not existed and settings.report is None:
            path.unlink()
        if rows:
            console.print(f"report of the {rows:,} recipient(s) not sent: {path or 'standard output'}")
    if facts is not None:
        facts.update(_send_facts(Counts(), tally, 0.0, 1.0, journal, path if rows else None, rows))


def _write_if_any(write: Callable[[TextIO], int], stdout: TextIO) -> int:
    """The report on standard output, if it has a row: no header alone."""
    with report_file() as stream:
        rows = write(stream)
        if rows:
            stream.seek(0)
            shutil.copyfileobj(stream, stdout)
    return rows


def _open_journal(settings: Settings, path: Path, console: Console) -> Journal:
    journal, set_aside = Journal.for_send(path, restart=settings.restart)
    if set_aside is not None:
        display.print_warning(console, f"{path} was damaged: kept as {set_aside}, and a new journal started")
    return journal


def _check_and_plan(
    journal: Journal | None,
    inputs: Inputs,
    settings: Settings,
    console: Console,
    composer: ComposeWorker,
    delivers_to: Destination | Callable[[bool], Destination] | None = None,
    joins: str | None = None,
) -> tuple[ScanTally, Plan, list[RowResult]]:
    """The check pass, which also records the file's rows in the journal if every row is good
    (or with --skip-invalid, the good ones: the bad ones are returned, to be reported)."""
    recipients = inputs.recipients
    invalid: list[RowResult] = []
    on_invalid = invalid.append if settings.skip_invalid else None
    if journal is None:
        tally = scan(inputs, settings, console, worker=composer, on_invalid=on_invalid)
        bad = {r.row for r in invalid}  # a template's error: the row itself read fine
        rows = (
            r.recipient
            for r in recipients.rows(allow_duplicates=settings.allow_duplicates)
            if r.recipient and not inputs.is_suppressed(r.recipient) and r.row not in bad
        )
        return tally, Plan(rows, tally.valid, campaign=secrets.token_hex(8)), invalid  # a campaign of one run
    start = journal.begin_run(
        recipients.path,
        inputs.template.path,
        inputs.template.source_sha,
        recipients.format.header,
        name=settings.campaign or "",
        uid=joins,
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
            on_invalid=on_invalid,
        )
    except BaseException:
        journal.abandon_run()
        raise
    if tally.invalid and not settings.skip_invalid:
        journal.abandon_run()  # nothing is sent, and the journal stays as it was
        return tally, Plan(iter(()), 0), invalid
    changes = journal.end_run()
    campaign = journal.campaign
    destination = delivers_to(False) if callable(delivers_to) else delivers_to
    if callable(delivers_to) and destination is not None and journal.earlier_deliveries_matter(destination):
        destination = delivers_to(True)  # a rehearsal, or a real send? asked before sending
    delivering = None
    if destination is not None:
        delivering = journal.deliver_to(destination, server_changed=settings.server_changed)
    if joins is not None:
        console.print(
            f"journal: {journal.path}: {recipients.name} joins {campaign.describe()} "
            f"(of {Path(campaign.recipients).name}), so nobody gets a second copy (a new mailing to "
            "them is another campaign: --campaign NAME)",
            highlight=False,
            soft_wrap=True,
        )
    else:
        named = f" {campaign.describe()}" if campaign.name else ""
        new = " (new campaign)" if start.is_new else ""
        console.print(f"journal: {journal.path}{named}{new}", highlight=False)
    if delivering is not None and delivering.ignored_rehearsals:
        console.print(
            f"ignoring {delivering.ignored_rehearsals:,} rehearsal deliveries (to a mailblast capture "
            "server): those recipients are sent for real now",
            highlight=False,
        )
    if delivering is not None and delivering.earlier:
        went = ", ".join(f"{n:,} to {server}" for server, n in delivering.earlier)
        console.print(f"counted as delivered (--server-changed): {went}", highlight=False)
    # a report's rows are sent because they were not delivered: its failed ones are retried
    retry_failed = settings.retry_failed or joins is not None
    counts = journal.counts()
    in_flight = journal.in_flight()
    todo = counts["pending"]
    todo += 0 if settings.skip_uncertain else counts["sending"]
    todo += counts["failed"] if retry_failed else 0
    if joins is not None and counts["sent"]:
        console.print(
            f"{counts['sent']:,} row(s) of {recipients.name} were delivered already in this campaign: "
            "skipped",
            highlight=False,
        )
    if not start.is_new:
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
        if start.edited:
            display.print_warning(
                console,
                "template changed since the last run: the rows already sent keep the earlier version "
                "(a new mailing to the same people is another campaign: --campaign NAME)",
            )
        if counts["failed"] and not retry_failed and todo:
            console.print(f"{counts['failed']:,} failed recipient(s) are not retried (--retry-failed does)")
    if in_flight:
        names = ", ".join(f"row {row} {address}" for row, address in in_flight[:10])
        action = (
            "left out (--skip-uncertain)" if settings.skip_uncertain else "sent again, possible duplicates"
        )
        display.print_warning(console, f"in flight when the last run stopped, {action}: {names}")
    todo_rows = journal.todo(retry_failed=retry_failed, skip_uncertain=settings.skip_uncertain)
    if settings.limit is not None and todo > settings.limit:
        console.print(
            f"--limit {settings.limit:,}: sending {settings.limit:,} of the {todo:,} to go; the other "
            f"{todo - settings.limit:,} stay pending for the next run",
            highlight=False,
        )
        todo_rows, todo = itertools.islice(todo_rows, settings.limit), settings.limit
    in_flight_rows = frozenset(row for row, _ in in_flight)
    plan = Plan(todo_rows, todo, in_flight_rows, destination, journal.campaign_identity())
    return tally, plan, invalid


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
    report_rows: int,
    relays: list[Relay],
    test_to: str | None = None,
) -> None:
    """The run's figures; a test send's speak of its messages to ``test_to`` only."""
    delivered = counts.sent + counts.uncertain
    about_the_file = {
        "skipped": f"{tally.duplicates + tally.empty:,}",
        **({"suppressed": f"{tally.suppressed:,}"} if tally.suppressed else {}),
    }
    display.print_counts(
        console,
        "summary" if test_to is None else f"test send to {test_to}",
        {
            "sent": f"{counts.sent:,}",
            "failed": f"{counts.failed:,}",
            "uncertain": f"{counts.uncertain:,}",
            **(about_the_file if test_to is None else {}),
            (
                "not attempted" if test_to is None else "not sent (the run stopped)"
            ): f"{counts.not_attempted:,}",
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
    if report_rows:
        where = report or "standard output"
        console.print(f"report of the {report_rows:,} recipient(s) not sent: {where}", highlight=False)


def _learned(relays: list[Relay]) -> list[tuple[str, Rate, Rate]]:
    """What each relay without a --rate learned of its server's limit, and the --rate to pass."""
    found = []
    for relay in relays:
        learned, suggested = relay.limiter.learned, relay.limiter.suggested()
        if learned is not None and suggested is not None:
            # tenths of a second, rounded up: a longer period is the safer side, and whole seconds
            # would halve a limit of 1 in 1.08 s (SES's 1/s, learned with its margin) to 1/2s
            seconds = math.ceil(learned[1] * 10 - 1e-4) / 10
            found.append((relay.name, Rate(learned[0], seconds), Rate(suggested[0], seconds)))
    return found


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
    if reason.cause is Cause.QUOTA_USED_UP:
        # The provider's rule (smtp/providers.py): when the quota frees, what --rate keeps under it.
        rule = reason.reset_hint or (
            "the server does not say when the quota frees (most count a day, or a rolling 24 hours); "
            "pass --rate N/d to keep the account under it"
        )
        return f"{rule}; once it frees, {resume}"
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

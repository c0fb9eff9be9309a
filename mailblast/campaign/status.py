"""`status` and `report`: a campaign read from its journal alone (opened read-only)."""

from __future__ import annotations

import time
from datetime import datetime
from pathlib import Path
from typing import Any, TextIO

from rich.console import Console

from mailblast import display
from mailblast.campaign.feedback import Rates, rates_of
from mailblast.campaign.journal import CampaignInfo, Journal, default_path, rehearsal_path
from mailblast.campaign.quotas import quota_accounts
from mailblast.campaign.report import journal_report, wants_bom, write_atomically
from mailblast.campaign.suppression_db import SuppressionStore
from mailblast.config import Settings
from mailblast.errors import InputError
from mailblast.message.recipients import CsvFormat, RecipientsFile
from mailblast.message.unsubscribe import campaign_tag
from mailblast.server.capture import DEFAULT_OUTBOX
from mailblast.smtp.outcomes import Reasons, average_rate
from mailblast.smtp.quota import QuotaBook, quota_use


def _existing_journal(settings: Settings, recipients_path: Path, console: Console) -> Journal:
    """The journal given, or the file's; if only a rehearsal ran (no server), the rehearsal's."""
    path = settings.journal or default_path(recipients_path)
    rehearsal = rehearsal_path(settings.outbox or DEFAULT_OUTBOX)
    if settings.journal is None and not path.exists() and rehearsal.is_file():
        text = f"no send to a server yet: the rehearsal's journal, {rehearsal}"
        console.print(text, highlight=False, soft_wrap=True)
        path = rehearsal
    return Journal(path, read_only=True)


def run_status(
    settings: Settings,
    recipients_path: Path,
    console: Console,
    *,
    list_suppressed: bool = False,
    facts: dict[str, Any] | None = None,
) -> int:
    journal = _existing_journal(settings, recipients_path, console)
    try:
        campaign = journal.find(settings.campaign or "", settings.template)
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
            f"{campaign.describe()}: {campaign.recipients} with {campaign.template}",
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
        rates = _rates(campaign, delivered + counts["failed"])
        if rates is not None:
            display.print_counts(console, "after the send", rates.shown())
            for warning in rates.warnings():
                display.print_warning(console, warning)
        if relays := journal.relay_counts(campaign.id):
            display.print_counts(console, "sent through", {name: f"{n:,}" for name, n in relays})
        servers = journal.server_counts(campaign.id)
        if servers:
            shown = {f"{name}{' (rehearsal)' if r else ''}": f"{n:,}" for name, r, n in servers}
            display.print_counts(console, "delivered to", shown)
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
                campaign={"name": campaign.name, "uid": campaign.uid},
                delivered_to=[
                    {"server": server, "rehearsal": bool(rehearsal), "count": n}
                    for server, rehearsal, n in servers
                ],
                recipients=campaign.recipients,
                template=campaign.template,
                started=_iso(campaign.created_at),
                last_activity=_iso(last) if last else None,
                counts=dict(counts),
                active_seconds=round(seconds, 3),
                rate_per_second=round(average_rate(delivered, seconds), 3),
                after_the_send=vars(rates) if rates is not None else None,
                failures=[
                    dict(zip(("status", "smtp_code", "enhanced_code", "error", "count"), row, strict=True))
                    for row in failure_rows
                ],
            )
    finally:
        journal.close()
    _print_quota(settings, console)
    return 0


def _rates(campaign: CampaignInfo, attempted: int) -> Rates | None:
    """The campaign's bounce, complaint and unsubscribe counts, once anything came back."""
    store = SuppressionStore.existing()
    if store is None:
        return None
    with store:
        tag = campaign_tag(campaign.uid)
        rates = rates_of(store, tag, attempted)
    return rates if rates.bounces or rates.soft or rates.complaints or rates.unsubscribes else None


def _print_quota(settings: Settings, console: Console) -> None:
    """Each account's use of its quota, when the settings name one: the one server's, or each relay's."""
    for relay in settings.relay_list():
        if relay.rate:
            name = f"relay {relay.name}: " if relay.name else ""
            console.print(f"{name}limits: at most {relay.rate}", highlight=False, soft_wrap=True)
    accounts = quota_accounts(settings)
    if not accounts:
        return
    book = QuotaBook()
    try:
        now = time.time()
        for account in accounts:
            for rate in account.rates:
                use = quota_use(book, account.account, rate, now)
                console.print(account.said(use.describe()), highlight=False, soft_wrap=True)
    finally:
        book.close()


def run_report(
    settings: Settings, recipients_path: Path, out: Path | None, console: Console, stdout: TextIO
) -> int:
    journal = _existing_journal(settings, recipients_path, console)
    try:
        campaign = journal.find(settings.campaign or "", settings.template)
        fmt = _format_if_readable(recipients_path, settings)
        delimiter = fmt.delimiter if fmt else ","
        if out is None:
            journal_report(journal, campaign, delimiter=delimiter)(stdout)
            return 0
        bom = fmt is not None and wants_bom(fmt)
        rows = write_atomically(out, journal_report(journal, campaign, delimiter=delimiter, bom=bom))
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

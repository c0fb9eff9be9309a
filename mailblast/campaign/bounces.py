"""`mailblast bounces SOURCE`: read what came back, and feed the shared suppression list.

Each message not read before is classified (bounce_kinds.py), matched to its campaign and
recipient, and decided on (bounce_policy.py). Matching is exact where it can be:

1. the VERP token of the address the bounce was sent to (``return_path``), checked against the
   campaign's recipients;
2. the Message-ID of the returned message, looked up in the journals of the campaigns sent from
   this machine;
3. the DSN's own recipient (Original-Recipient, Final-Recipient), with no campaign.

Nothing in the mailbox changes unless --move-to: then the messages that were acted on (bounces,
complaints, unsubscribes) go to that folder; auto-replies and unrelated mail stay where they
are. Every message read is remembered, so a second run changes nothing. --dry-run writes
nothing at all.
"""

from __future__ import annotations

import email
import email.policy
import os
import re
import time
from collections import Counter
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from email.message import Message
from email.utils import getaddresses
from pathlib import Path

from rich.console import Console

from mailblast import display
from mailblast.campaign.bounce_kinds import Finding, Kind, classify
from mailblast.campaign.bounce_policy import DAY, SOURCE_OF, SoftRule, decide
from mailblast.campaign.journal import Journal
from mailblast.campaign.mailboxes import Mailbox, open_mailbox
from mailblast.campaign.signing_key import load_key
from mailblast.campaign.suppress import address_key, parse_field
from mailblast.campaign.suppression_db import SuppressionStore
from mailblast.config import Settings
from mailblast.errors import InputError, MailblastError
from mailblast.message import verp
from mailblast.message.unsubscribe import read_unsubscribe_token

EVENT_OF = {
    Kind.HARD: "hard",
    Kind.SOFT: "soft",
    Kind.COMPLAINT: "complaint",
    Kind.UNSUBSCRIBE: "unsubscribe",
}
_RECIPIENT_HEADERS = ("Delivered-To", "X-Original-To", "Envelope-To", "To")


@dataclass(frozen=True)
class Match:
    address: str
    campaign: str | None
    how: str  # "VERP", "Message-ID", "the bounce"


class Campaigns:
    """The campaigns this machine sent, from the shared list's register, read lazily."""

    def __init__(self, store: SuppressionStore, key: Callable[[], bytes]) -> None:
        self.store = store
        self._key = key
        self._by_mac: dict[str, dict[str, str]] = {}  # tag -> VERP mac -> address

    def by_verp(self, tag: str, mac: str) -> str | None:
        if tag not in self._by_mac:
            self._by_mac[tag] = self._macs(tag)
        return self._by_mac[tag].get(mac)

    def _macs(self, tag: str) -> dict[str, str]:
        campaign = self.store.campaign(tag)
        if campaign is None:
            return {}
        key = self._key()
        with _journal(Path(campaign.journal)) as journal:
            if journal is None:
                return {}
            return {verp.verp_mac(key, tag, a): a for a in journal.addresses(campaign.campaign)}

    def by_token(self, token: str) -> tuple[str, str] | None:
        """(campaign, address) of a genuine unsubscribe token."""
        return read_unsubscribe_token(self._key(), token)

    def by_message_id(self, message_ids: Iterable[str]) -> dict[str, tuple[str, str]]:
        """message id -> (campaign tag, address), from every campaign's journal."""
        wanted = sorted(set(message_ids))
        found: dict[str, tuple[str, str]] = {}
        if not wanted:
            return found
        by_journal: dict[str, dict[int, str]] = {}
        for c in self.store.campaigns():
            by_journal.setdefault(c.journal, {})[c.campaign] = c.tag
        for path, tags in by_journal.items():
            with _journal(Path(path)) as journal:
                if journal is None:
                    continue
                for mid, (campaign, address) in journal.by_message_id(wanted).items():
                    if campaign in tags:
                        found[mid] = (tags[campaign], address)
        return found


class _journal:  # a context manager read like a function
    """A campaign's journal, read-only; None when it is gone or unreadable (a bounce still counts)."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.journal: Journal | None = None

    def __enter__(self) -> Journal | None:
        try:
            self.journal = Journal(self.path, read_only=True)
        except MailblastError:
            self.journal = None
        return self.journal

    def __exit__(self, *_: object) -> None:
        if self.journal is not None:
            self.journal.close()


def unsubscribe_pattern(mailto: str | None) -> re.Pattern[str] | None:
    """The [unsubscribe] mailto address as a pattern: its Jinja parts match anything."""
    if not mailto:
        return None
    text = mailto.strip()
    text = text[7:] if text.lower().startswith("mailto:") else text
    text = text.split("?", 1)[0]
    parts = re.split(r"\{\{.*?\}\}|\{%.*?%\}", text)
    return re.compile(".+?".join(re.escape(p) for p in parts), re.IGNORECASE)


def run_bounces(
    settings: Settings,
    source: str | None,
    console: Console,
    *,
    dry_run: bool = False,
    move_to: str | None = None,
    ask_password: Callable[[str], str] | None = None,
    clock: Callable[[], float] = time.time,
) -> int:
    source = source or settings.bounces_source
    if not source:
        raise InputError(
            "no mailbox given", "pass SOURCE (a Maildir, an mbox file or imaps://USER@HOST/FOLDER), or set "
            "[bounces] source in mailblast.toml"
        )  # fmt: skip
    rule = SoftRule(settings.soft_bounce_limit, settings.soft_bounce_days)
    box = open_mailbox(
        source,
        writable=move_to is not None and not dry_run,
        password_command=settings.bounces_password_command,
        token_command=settings.bounces_oauth_token_command,
        environ=os.environ,
        ask_password=ask_password,
    )
    store = SuppressionStore(durable=False)
    try:
        return _process(settings, box, store, console, rule, dry_run, move_to, clock)
    finally:
        store.close()
        box.close()


def _process(
    settings: Settings,
    box: Mailbox,
    store: SuppressionStore,
    console: Console,
    rule: SoftRule,
    dry_run: bool,
    move_to: str | None,
    clock: Callable[[], float],
) -> int:
    unsubscribe = unsubscribe_pattern(settings.unsubscribe_mailto)
    campaigns = Campaigns(store, load_key)
    kinds: Counter[str] = Counter()
    suppressed = 0
    to_move: list[str] = []
    verb = "would be " if dry_run else ""
    console.print(f"reading {box.name}{' (dry run: nothing is written or moved)' if dry_run else ''}")
    # first every new message classified, then their Message-IDs looked up in the journals at once
    read: list[tuple[str, list[Finding], list[str]]] = []
    for item in box.items(lambda key: store.is_processed(box.name, key)):
        message = email.message_from_bytes(item.data, policy=email.policy.compat32)
        read.append((item.key, classify(message, unsubscribe), _sent_to(message)))
    by_id = campaigns.by_message_id(f.message_id for _, found, _ in read for f in found if f.message_id)
    for key, findings, sent_to in read:
        acted = False
        for finding in findings:
            kinds[str(finding.kind)] += 1
            if finding.kind.ignored:
                continue
            match = _match(finding, sent_to, settings.return_path, campaigns, by_id)
            if match is not None and (address := parse_field(match.address)) is not None:
                match = Match(address, match.campaign, match.how)  # what a bounce says is untrusted text
            else:
                match = None
            if match is None:
                display.print_warning(console, f"{key}: a {finding.kind} about no address it could read")
                continue
            acted = True
            added, said = _act(store, finding, match, rule, clock(), dry_run)
            suppressed += added
            console.print(said, soft_wrap=True)
        if acted:
            to_move.append(key)
        if not dry_run:
            store.mark_processed(box.name, key)
    seen = len(read)
    if move_to is not None and to_move:
        if dry_run:
            console.print(f"{len(to_move):,} message(s) would be moved to {move_to}")
        else:
            box.move(to_move, move_to)
            console.print(f"moved {len(to_move):,} message(s) to {move_to}")
    counts = {kind.value: f"{kinds[kind.value]:,}" for kind in Kind if kinds[kind.value]}
    counts[f"{verb}suppressed"] = f"{suppressed:,}"
    display.print_counts(console, "bounces", {"new messages": f"{seen:,}", **counts})
    if not seen:
        console.print("nothing new since the last run", highlight=False)
    return 0


def _act(
    store: SuppressionStore, finding: Finding, match: Match, rule: SoftRule, now: float, dry_run: bool
) -> tuple[bool, str]:
    """Record the finding and suppress if the policy says so; (newly suppressed, the line to print)."""
    key = address_key(match.address)
    earlier = store.soft_bounces_since(key, now - rule.days * DAY) if finding.kind is Kind.SOFT else []
    decision = decide(finding.kind, now, earlier, rule)
    said = _describe(finding, match)
    if dry_run:
        return decision.suppress and key not in store, f"{said}: {decision.why}"
    detail = _detail(finding)
    store.record_event(key, EVENT_OF[finding.kind], match.campaign, now, detail)  # counted in the rates
    if key in store:
        return False, f"{said}: already suppressed"
    added = decision.suppress and store.add(
        key, match.address, detail, SOURCE_OF[finding.kind], match.campaign, now
    )
    return added, f"{said}: {decision.why}"


def _sent_to(message: Message) -> list[str]:
    """The addresses a message came to: a VERP address or an unsubscribe token is among them."""
    values = [str(v) for name in _RECIPIENT_HEADERS for v in message.get_all(name, [])]
    return [address for _, address in getaddresses(values) if "@" in address]


def _match(
    finding: Finding,
    sent_to: list[str],
    return_path: str | None,
    campaigns: Campaigns,
    by_id: dict[str, tuple[str, str]],
) -> Match | None:
    if finding.kind is Kind.UNSUBSCRIBE:
        # mailto = "unsubscribe+{{ unsubscribe_token }}@...": the token says who, whoever writes
        for address in sent_to:
            local = address.rpartition("@")[0]
            if "+" in local and (found := campaigns.by_token(local.rpartition("+")[2])) is not None:
                return Match(found[1], found[0], "token")
    elif return_path is not None:
        for address in sent_to:
            token = verp.token_in(return_path, address)
            if token is not None and (found_address := campaigns.by_verp(*token)) is not None:
                return Match(found_address, token[0], "VERP")
    if finding.message_id and finding.message_id in by_id:
        tag, address = by_id[finding.message_id]
        return Match(address, tag, "Message-ID")
    if finding.address:
        return Match(finding.address, None, "the bounce")
    return None


def _describe(finding: Finding, match: Match) -> str:
    status = f" {finding.status}" if finding.status else ""
    campaign = f", campaign {match.campaign}" if match.campaign else ""
    return f"{finding.kind}{status} {match.address} (matched by {match.how}{campaign})"


def _detail(finding: Finding) -> str:
    return " ".join(x for x in (finding.status or "", finding.detail) if x) or str(finding.kind)

"""What a send feeds back into the shared suppression list, and the rates providers judge a sender by.

- An address refused for good at RCPT because it does not exist (5.1.1 bad mailbox, 5.1.2 bad
  domain, 5.1.10 null MX) is suppressed by the send itself, with the server's reply. A refusal
  of the content or the sender (5.7.x: spam, policy, DMARC) says nothing about the address,
  and is not.
- A delivery resets the address's soft bounces (bounce_policy.py).
- Rates: SES reviews an account at a 5% bounce rate and 0.1% complaints; Gmail and Yahoo want
  spam complaints under 0.3%. status shows each campaign's; send warns before it starts when the
  previous campaign through the same account passed them.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from rich.console import Console

from mailblast.campaign.journal import Journal
from mailblast.campaign.signing_key import load_key
from mailblast.campaign.suppress import address_key
from mailblast.campaign.suppression_db import CampaignTag, SuppressionStore
from mailblast.errors import InputError, MailblastError
from mailblast.smtp.outcomes import Outcome, Status

# RFC 3463 / RFC 7505: the address itself is bad. 5.1.10 is Microsoft's "recipient not found" too.
ADDRESS_REFUSED = frozenset({"5.1.1", "5.1.2", "5.1.10"})
BOUNCE_RATE_LIMIT = 0.05  # SES puts an account under review at 5%
COMPLAINT_RATE_LIMIT = 0.001  # SES at 0.1%; Gmail and Yahoo at 0.3% (Postmaster Tools)


def refuses_the_address(outcome: Outcome) -> bool:
    """A permanent refusal of the address itself, not of the message or the sender."""
    reply = outcome.reply
    return (
        outcome.status is Status.FAILED
        and reply is not None
        and reply.code is not None
        and 500 <= reply.code < 600
        and (reply.enhanced_code or "") in ADDRESS_REFUSED
    )


class SendFeedback:
    """The send's side of the shared list: refusals at RCPT in, deliveries reset soft bounces.

    A write that fails (a full disk) is kept as ``error`` for the summary, never raised into the
    sender: no one is mailed because of it.
    """

    def __init__(self, store: SuppressionStore, campaign: str, *, clock: Callable[[], float] = time.time):
        self.store = store
        self.campaign = campaign
        self.clock = clock
        self.suppressed: list[str] = []
        self.error: MailblastError | None = None
        self._soft = store.soft_bounced()

    def outcome(self, outcome: Outcome) -> None:
        if self.error is not None:
            return
        address = outcome.recipient.address
        try:
            if refuses_the_address(outcome):
                assert outcome.reply is not None
                key = address_key(address)
                reply = outcome.reply.describe()
                now = self.clock()
                if self.store.add(key, address, reply, "refused at send", self.campaign, now):
                    self.suppressed.append(address)
                self.store.record_event(key, "refused", self.campaign, now, reply)
            elif outcome.status is Status.SENT and self._soft and (key := address_key(address)) in self._soft:
                self.store.delivered([key], self.clock())
                self._soft.discard(key)
        except MailblastError as e:
            self.error = e


@dataclass(frozen=True)
class Rates:
    """A campaign's counts, as shares of the messages it tried to deliver (sent, uncertain, refused)."""

    delivered: int
    bounces: int  # hard bounces, and addresses refused at send
    soft: int
    complaints: int
    unsubscribes: int

    def rate(self, count: int) -> float:
        return count / self.delivered if self.delivered else 0.0

    def warnings(self) -> list[str]:
        out = []
        if self.delivered and self.rate(self.bounces) > BOUNCE_RATE_LIMIT:
            out.append(
                f"bounce rate {self.rate(self.bounces):.1%} is over 5%, where SES puts an account under "
                "review: clean the list before the next campaign"
            )
        if self.delivered and self.rate(self.complaints) > COMPLAINT_RATE_LIMIT:
            out.append(
                f"complaint rate {self.rate(self.complaints):.2%} is over 0.1% (SES reviews at 0.1%; Gmail "
                "and Yahoo want under 0.3%): mail only people who asked, and make unsubscribing easy"
            )
        return out

    def shown(self) -> dict[str, str]:
        def one(count: int) -> str:
            return f"{count:,} ({self.rate(count):.2%})"

        return {
            "bounces": one(self.bounces),
            "soft bounces": one(self.soft),
            "complaints": one(self.complaints),
            "unsubscribes": one(self.unsubscribes),
        }


def rates_of(store: SuppressionStore, campaign: str, delivered: int) -> Rates:
    counts = store.event_counts(campaign)
    return Rates(
        delivered,
        counts["hard"] + counts["refused"],
        counts["soft"],
        counts["complaint"],
        counts["unsubscribe"],
    )


def delivered_of(campaign: CampaignTag) -> int | None:
    """How many messages the campaign tried to deliver, by its journal; None when it cannot be read."""
    try:
        journal = Journal(Path(campaign.journal), read_only=True)
    except MailblastError:
        return None
    try:
        counts = journal.counts(campaign.campaign)
        return counts["sent"] + counts["uncertain"] + counts["failed"]
    except MailblastError:
        return None
    finally:
        journal.close()


def previous_campaign_warnings(store: SuppressionStore, tag: str | None) -> list[str]:
    """send's warnings before it starts: the last campaign through the same account passed a rate."""
    current = store.campaign(tag) if tag else None
    if current is None:
        return []
    earlier = [
        c for c in store.campaigns() if c.account == current.account and c.tag != tag
        and c.started_at <= current.started_at
    ]  # fmt: skip
    if not earlier:
        return []
    previous = earlier[-1]
    delivered = delivered_of(previous)
    if not delivered:
        return []
    return [
        f"the previous campaign through this account ({previous.name}): {text}"
        for text in rates_of(store, previous.tag, delivered).warnings()
    ]


def record_unsubscribe(campaign: str, address: str, *, clock: Callable[[], float] = time.time) -> bool:
    """An unsubscribe from the endpoint: into the shared list at once; False if it already was."""
    key = address_key(address)
    now = clock()
    with SuppressionStore() as store:
        store.record_event(key, "unsubscribe", campaign, now, "one-click unsubscribe")
        return store.add(key, address, "one-click unsubscribe", "unsubscribe", campaign, now)


def run_unsubscribe_server(host: str, port: int, console: Console) -> int:
    """`mailblast unsubscribe-server`: serve until Ctrl-C, one line per unsubscribe."""
    from mailblast.server.unsubscribe import UnsubscribeServer

    key = load_key(create=False)
    try:
        server = UnsubscribeServer(
            host,
            port,
            key,
            lambda campaign, address: record_unsubscribe(campaign, address) and None,
            lambda text: console.print(text, highlight=False, soft_wrap=True),
        )
    except OSError as e:
        raise InputError(f"cannot listen on {host}:{port}: {e.strerror}", "pick another --port") from None
    console.print(
        f"unsubscribe endpoint on {server.url}/ (put it behind your https reverse proxy); "
        f"recording into {SuppressionStore().path}; Ctrl-C stops",
        highlight=False,
        soft_wrap=True,
    )
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        server.server_close()
    return 0

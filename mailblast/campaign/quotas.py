"""A run's quotas (smtp/quota.py): the one server's account, or each [[relay]]'s.

Before sending, each account's use is printed, and a relay whose next slot is more than
WAIT_AT_MOST away (unless --wait) takes no part in the run. While sending, each quota relay
has a QuotaLimiter on its own account: when its quota is used up the relay is dropped and its
messages go through the others; when its next slot is only minutes away it rests while another
relay can send, and otherwise waits for it. The run stops when no relay is left.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass

from mailblast.config import Settings
from mailblast.smtp.quota import (
    WAIT_AT_MOST,
    QuotaBook,
    QuotaLimiter,
    QuotaStateError,
    account_of,
    quota_use,
    stop_message,
    when,
)
from mailblast.smtp.replies import Kind, Verdict
from mailblast.smtp.sender import Relay, Sender
from mailblast.smtp.urls import Pace, Rate, parse_smtp_url

QUOTA_USED = Verdict(Kind.FATAL, None, None, None, "the account's quota is used")
QUOTA_STATE_FAILED = Verdict(Kind.FATAL, None, None, None, "the quota database cannot be written")


@dataclass(frozen=True)
class QuotaAccount:
    """A relay whose rate is a quota, and the account that quota belongs to."""

    relay: str  # the relay's name; "" for the run's one server
    account: str
    pace: Pace  # the relay's every limit: its quotas, and what paces it within a run

    @property
    def rates(self) -> tuple[Rate, ...]:
        return self.pace.quotas

    @property
    def rate(self) -> Pace:
        """The quotas, as one line says them: 500/d, or 100/h and 500/d."""
        return Pace(self.rates)

    @property
    def quota(self) -> str:
        return f"the quota of {self.rate} for {self.account}"

    def said(self, text: str) -> str:
        return f"relay {self.relay}: {text}" if self.relay else text


def quota_accounts(settings: Settings) -> list[QuotaAccount]:
    """The run's quota relays: each [[relay]] whose rate is a quota, or the one server's --rate."""
    return [
        QuotaAccount(r.name, account_of(parse_smtp_url(r.url)), r.rate)
        for r in settings.relay_list()
        if r.rate.quotas
    ]


def used_verdict(account: QuotaAccount, free_at: float) -> Verdict:
    """Why a relay takes no more messages: its quota is used until ``free_at``."""
    text = f"{account.quota} is used; the next may go at {when(free_at)}"
    return Verdict(Kind.FATAL, None, None, None, text)


class RunQuotas:
    """The quotas of one run, in the shared QuotaBook; the Sender asks it for each relay's limiter."""

    def __init__(
        self,
        book: QuotaBook,
        accounts: list[QuotaAccount],
        *,
        wait: bool,
        notice: Callable[[str], None],
        wall_clock: Callable[[], float] = time.time,
    ) -> None:
        self.book = book
        self.accounts = {a.relay: a for a in accounts}
        self.wait = wait
        self.notice = notice
        self._wall = wall_clock
        self.exhausted: dict[str, float] = {}  # relay: when its next slot frees, for those used up
        self.fault: QuotaStateError | None = None  # the database failed: the run stopped
        self._told_resting: set[str] = set()

    def check(self) -> None:
        """Print each account's use, and note the relays used up (a free slot too far off)."""
        now = self._wall()
        for name, account in self.accounts.items():
            uses = [quota_use(self.book, account.account, rate, now) for rate in account.rates]
            next_free = max(use.next_free for use in uses)
            used_up = next_free - now > WAIT_AT_MOST and not self.wait
            if used_up:
                self.exhausted[name] = next_free
            for use in uses:
                self.notice(
                    account.said(
                        use.describe() + ("; it sends nothing in this run" if used_up and name else "")
                    )
                )

    def unused(self) -> dict[str, Verdict]:
        """The relays that take no part in this run, and why: their quota is used up already."""
        return {name: used_verdict(self.accounts[name], at) for name, at in self.exhausted.items()}

    def limiter(self, relay: Relay, sender: Sender) -> QuotaLimiter | None:
        """The limiter of ``relay`` if its rate is a quota: when used up it drops the relay (and the
        sender stops when none is left); when its next slot is minutes away the relay rests."""
        account = self.accounts.get(relay.name)
        if account is None:
            return None
        pacing = account.pace.pacing
        return QuotaLimiter(
            self.book,
            account.account,
            account.rates,
            pacing=min(pacing, key=lambda r: r.per_second) if pacing else None,
            wait=self.wait,
            stopping=lambda: sender.stopping or relay.dropped is not None,
            on_exhausted=lambda at: self._used_up(sender, relay, account, at),
            on_wait=lambda at: self.notice(
                account.said(f"{account.quota} is used: waiting until {when(at)}")
            ),
            give_way=lambda seconds: self._give_way(sender, relay, account, seconds),
            on_fault=lambda error: self._fault(sender, error),
        )

    def stop_text(self, sent: int, left: int) -> str:
        """Why the run stopped, when every relay's quota is used up."""
        if list(self.exhausted) == [""]:
            account = self.accounts[""]
            return stop_message(account.account, account.rate, sent, left, self.exhausted[""])
        used_up = [name for name in self.accounts if name in self.exhausted]  # in the config's order
        first = min(used_up, key=self.exhausted.__getitem__)
        quotas = ", ".join(
            f"{name} ({self.accounts[name].rate} for {self.accounts[name].account})" for name in used_up
        )
        return (
            f"the quotas of relays {quotas} are used: {sent:,} sent in this run, {left:,} left; "
            f"the next may go at {when(self.exhausted[first])} through {first}"
        )

    def _fault(self, sender: Sender, error: QuotaStateError) -> None:
        """The shared database cannot be written: every relay's quota is unknown, so the run stops
        as it does on Ctrl-C (what is in flight finishes; the rest goes in the report)."""
        if self.fault is None:
            self.fault = error
            sender.stop(QUOTA_STATE_FAILED)

    def _used_up(self, sender: Sender, relay: Relay, account: QuotaAccount, free_at: float) -> None:
        self.exhausted[account.relay] = free_at
        sender.drop(relay, used_verdict(account, free_at), last=QUOTA_USED)

    def _give_way(self, sender: Sender, relay: Relay, account: QuotaAccount, seconds: float) -> bool:
        """Let the other relays send while this one's next slot is ``seconds`` away, if one can."""
        if not sender.rest(relay, seconds):
            return False
        if account.relay not in self._told_resting:
            self._told_resting.add(account.relay)
            self.notice(
                account.said(
                    f"{account.quota} is used until {when(self._wall() + seconds)}: "
                    "the other relays send meanwhile"
                )
            )
        return True

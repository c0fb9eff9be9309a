"""Outcomes: what happened to each recipient, and the running counts of a send."""

from __future__ import annotations

import enum
from dataclasses import dataclass

from mailblast.message.recipients import Recipient
from mailblast.smtp.replies import Verdict


class Status(enum.StrEnum):
    SENT = "sent"
    FAILED = "failed"  # refused for good; never retried
    UNCERTAIN = "uncertain"  # the reply to the final "." was lost: may have been delivered twice, or not
    NOT_ATTEMPTED = "not attempted"  # the run stopped before this recipient was tried


@dataclass(frozen=True)
class Outcome:
    """The end of one recipient's send."""

    recipient: Recipient
    status: Status
    message_id: str
    attempts: int
    reply: Verdict | None = None  # the last reply, or the reason for the status
    error: str = ""
    relay: str = ""  # the relay that took it, when the run has several
    # Uncertain, and the run ended before it was sent again: the journal keeps it in flight, so
    # that the next run resends it as a possible duplicate rather than as never sent.
    left_in_flight: bool = False

    @property
    def smtp_code(self) -> str:
        return str(self.reply.code) if self.reply and self.reply.code else ""

    @property
    def enhanced_code(self) -> str:
        return (self.reply.enhanced_code or "") if self.reply else ""


@dataclass
class Counts:
    """Live counts, read by the progress display; updated only by the sender."""

    total: int = 0
    sent: int = 0
    failed: int = 0
    uncertain: int = 0
    not_attempted: int = 0
    retrying: int = 0

    @property
    def done(self) -> int:
        return self.sent + self.failed + self.uncertain + self.not_attempted

    def add(self, outcome: Outcome) -> None:
        match outcome.status:
            case Status.SENT:
                self.sent += 1
            case Status.FAILED:
                self.failed += 1
            case Status.UNCERTAIN:
                self.uncertain += 1
            case Status.NOT_ATTEMPTED:
                self.not_attempted += 1


def rate_seconds(sending: float, rate_window: float) -> float:
    """The time an average rate is taken over: the sending time plus one rate window.

    A limit of N per window lets the first N go at once, so N / sending time can exceed the
    limit; over one window more, the average never does. ``rate_window`` is 1 s without --rate.
    """
    return sending + rate_window


def average_rate(delivered: int, seconds: float) -> float:
    return delivered / seconds if seconds > 0 else 0.0


class Reasons:
    """Failures grouped by reply code and enhanced status code, not by the text: eight 550 5.1.1
    bounces that each name their own address are one reason, shown with the first one's text."""

    def __init__(self) -> None:
        self._groups: dict[tuple[str, str, str, str], list] = {}

    def add(self, status: str, code: str, enhanced: str, text: str, n: int = 1) -> None:
        key = (status, code, enhanced, "" if code else text)  # no code: the text is all there is
        self._groups.setdefault(key, [text, 0])[1] += n

    def __bool__(self) -> bool:
        return bool(self._groups)

    def lines(self) -> list[tuple[str, int]]:
        """(what happened, how many), the most frequent first."""
        out = []
        for (status, code, enhanced, _), (text, n) in self._groups.items():
            head = f"{code} {enhanced}".strip()
            rest = text.removeprefix(code).strip().removeprefix(enhanced).strip() if code else text
            if not head:
                out.append((f"{status}: {rest}", n))
            elif not rest:
                out.append((f"{status} {head}", n))
            else:
                out.append((f"{status} {head}{', for example' if n > 1 else ''}: {rest}", n))
        return sorted(out, key=lambda line: -line[1])

"""Outcomes: what happened to each recipient, and the running counts of a send."""

from __future__ import annotations

import enum
from dataclasses import dataclass

from mailblast.recipients import Recipient
from mailblast.replies import Verdict


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

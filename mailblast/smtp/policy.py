"""What a refused or unanswered message means for it, its relay and the run: pure, free of I/O.

``decide(attempt)`` turns one failed try into one decision:

- ``RETRY``: this message alone, after a backoff (a temporary trouble of its own);
- ``REQUEUE``: back in the queue now (a lost reply's resend; another relay takes it);
- ``FAIL``: give up on it (its ``status`` and ``error`` say how);
- ``DROP_RELAY``: nothing more goes through this relay (sign-in refused, quota used up);
- ``SLOW_DOWN``: the server says the run is too fast: the whole run slows, the message waits its turn.

A decision may also carry ``per_connection_cap``: the relay takes at most that many messages
per connection (reconnect sooner; it says nothing about the rate).

Throttling is recognised by behaviour as well as by wording (``ThrottleSense``): the same
temporary reply hitting several messages within a short span is about the server, not any one
recipient. Exim's ratelimit ACL answers "451 Try again later" unless its configuration words it
otherwise: retried per recipient, with each one's own backoff, 90 of 120 ran out of retries while
the moving average never dropped. Replies whose enhanced code names an address or mailbox
(4.1.x, 4.2.x: "452 4.2.2 mailbox full") stay that recipient's own, however many share them.
"""

from __future__ import annotations

import enum
import re
from collections import deque
from dataclasses import dataclass

from mailblast.smtp.outcomes import Status
from mailblast.smtp.replies import Cause, Kind, Verdict

MAX_THROTTLED = 50  # throttle replies one message may get before it counts as failed
SAME_REPLY_SPAN = 10.0  # seconds within which the same temporary reply counts as server-wide
SAME_REPLY_MESSAGES = 3  # ... when it hits this many messages


class Action(enum.Enum):
    RETRY = "retry"
    REQUEUE = "requeue"
    FAIL = "fail"
    DROP_RELAY = "drop relay"
    SLOW_DOWN = "slow down"


@dataclass(frozen=True)
class Attempt:
    """One failed try of a message, with what the run knows of its history."""

    verdict: Verdict
    uncertain: bool = False  # the reply to the final "." was lost: it may have been delivered
    maybe_delivered: str = ""  # why an earlier try may have been delivered already ("" if none)
    attempts: int = 1  # tries of this message so far, this one included
    failures: int = 0  # its temporary failures before this one
    throttled: int = 0  # its throttle replies before this one
    retries: int = 5  # temporary failures allowed
    server_wide: bool = False  # the same reply hit several messages lately (ThrottleSense)
    session_index: int = 0  # messages started on its connection before it
    at_cap: bool = False  # the relay's last sessions were each first refused at this same index


@dataclass(frozen=True)
class Decision:
    action: Action
    backoff: int = 0  # RETRY: the failure number whose jittered backoff it waits (ratelimit.backoff_delay)
    status: Status = Status.FAILED  # FAIL: FAILED or UNCERTAIN
    error: str = ""  # FAIL: why
    per_connection_cap: int | None = None  # the relay takes at most this many messages a connection
    lost_reply: bool = False  # the connection was lost after the final "."


def decide(attempt: Attempt) -> Decision:
    """What to do after ``attempt`` failed."""
    verdict = attempt.verdict
    if attempt.uncertain:
        if not attempt.maybe_delivered:
            # It may have been delivered: send it once more, as MTAs do (RFC 1047).
            return Decision(Action.REQUEUE, lost_reply=True)
        return Decision(Action.FAIL, status=Status.UNCERTAIN, error="again on the resend", lost_reply=True)
    per_connection = verdict.cause is Cause.PER_CONNECTION_CAP and verdict.kind is not Kind.PERMANENT
    if per_connection or (attempt.at_cap and verdict.is_retryable):
        # "421 4.7.0 too many messages in this connection" (Exim's smtp_accept_max_per_connection),
        # or a refusal at the same message of every session: the ones before it on the connection
        # were fine, so no slower, only shorter sessions.
        return Decision(Action.REQUEUE, per_connection_cap=max(1, attempt.session_index))
    if verdict.cause is Cause.QUOTA_USED_UP or verdict.kind is Kind.FATAL:
        return Decision(Action.DROP_RELAY)
    if verdict.kind is Kind.THROTTLED:
        if attempt.throttled + 1 > MAX_THROTTLED:
            return Decision(Action.FAIL, error=f"still throttled after {attempt.attempts} attempts")
        return Decision(Action.SLOW_DOWN)
    if verdict.kind is Kind.TRANSIENT:
        failures = attempt.failures + 1
        if failures > attempt.retries:
            return Decision(Action.FAIL, error=f"gave up after {attempt.attempts} attempts")
        # Not worded as throttling, so it counts against the retries (a server failing everything
        # is not slowed into success); server-wide, the run slows and it waits its turn.
        return Decision(Action.SLOW_DOWN) if attempt.server_wide else Decision(Action.RETRY, backoff=failures)
    return Decision(Action.FAIL, error=verdict.describe())


def recipients_own(verdict: Verdict) -> bool:
    """Whether the reply is about one address or mailbox, whoever else gets the same."""
    enhanced = verdict.enhanced_code or ""
    return enhanced[1:4] in (".1.", ".2.")


_ADDRESSES = re.compile(r"<[^>]*>|\S+@\S+")
_NUMBERS = re.compile(r"\d+")


def reply_key(verdict: Verdict) -> tuple[int | None, str]:
    """The reply without what differs between recipients (addresses, counters, ids)."""
    text = _NUMBERS.sub("#", _ADDRESSES.sub("<>", verdict.text.lower()))
    return verdict.code, " ".join(text.split())


class ThrottleSense:
    """Notices when one temporary reply hits several messages within ``span`` seconds.

    A refusal worded as throttling is one already; this finds the ones that are not worded so
    (Exim's "451 Try again later"). Pure: the caller passes the time.
    """

    def __init__(self, span: float = SAME_REPLY_SPAN, messages: int = SAME_REPLY_MESSAGES) -> None:
        self._span = span
        self._messages = messages
        self._seen: dict[tuple[int | None, str], deque[tuple[float, int]]] = {}
        self.server_wide_replies: set[tuple[int | None, str]] = set()

    def known(self, verdict: Verdict) -> bool:
        """Whether this reply was found server-wide already."""
        return reply_key(verdict) in self.server_wide_replies

    def note(self, verdict: Verdict, message: int, now: float) -> bool:
        """Record that ``verdict`` refused message ``message`` (any id) at ``now``; True if server-wide."""
        if verdict.kind is not Kind.TRANSIENT or verdict.code is None or recipients_own(verdict):
            return False
        key = reply_key(verdict)
        if key in self.server_wide_replies:
            return True
        seen = self._seen.setdefault(key, deque())
        while seen and seen[0][0] <= now - self._span:
            seen.popleft()
        seen.append((now, message))
        if len({m for _, m in seen}) >= self._messages:
            self.server_wide_replies.add(key)  # once learned, the same reply is always the server's
            return True
        return False


"""A deterministic simulation: the real Sender against fake sessions on a virtual clock.

Each fake server replays one real server's way of counting, so that the learner and the pacing
can be tested in milliseconds without sockets:

- ``PostfixAnvil``: Postfix's smtpd_client_message_rate_limit as anvil counts it, in fixed
  windows of whole seconds (a new one only at an event more than a period after the start),
  refused MAILs included; and Postfix's error counting per session (every refused command is an
  error, a delivery forgives them; from 10 on each reply comes a second late, at 20 "421 too many
  errors" and the session is gone);
- ``ExponentialAverage``: Exim's ratelimit, an exponentially weighted moving average per period:
  ``rate = (1 - a) / (i / p) + a * rate`` with ``a = exp(-i / p)`` for an event ``i`` seconds after
  the last. ``strict`` stores every attempt's rate (refused ones too); ``leaky`` (Exim's default)
  keeps the old rate when it refuses;
- ``SlidingWindow``: at most ``limit`` accepted in any ``(now - period, now]`` (serve --rate);
- ``FixedWindow``: at most ``limit`` accepted in each ``[k * period, (k + 1) * period)``, on the clock's
  whole periods (a provider's per-second counter);
- connection caps (``max_connections``) and per-connection caps (``per_connection``, Exim's
  smtp_accept_max_per_connection: "421 too many messages in this connection").

Every step of a session (a pipelined content and next envelope, or a first envelope) costs one
round trip of ``rtt`` seconds; opening a session costs ``open_time``.
"""

from __future__ import annotations

import asyncio
import math
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field

from mailblast.message.compose import ComposedMessage
from mailblast.message.recipients import Recipient
from mailblast.smtp.outcomes import Counts, Outcome
from mailblast.smtp.ratelimit import SlidingWindowLimiter
from mailblast.smtp.replies import classify
from mailblast.smtp.sender import Relay, Sender, SenderOptions
from mailblast.smtp.transaction import Accepted, Ready, TransactionError
from tests.test_ratelimit import FakeClock, run_virtual

POSTFIX_REPLY = "450 4.7.1 Error: too much mail from 127.0.0.1"
POSTFIX_ERRORS_REPLY = "421 4.7.0 mail.example.com Error: too many errors"
EXIM_RATE_REPLY = "451 4.7.1 Rate limit exceeded: too many messages"
NEUTRAL_REPLY = "451 Try again later"
PER_CONNECTION_REPLY = "421 4.7.0 too many messages in this connection"
CONNECTIONS_REPLY = "421 4.7.0 Too many connections"
SLIDING_REPLY = "421 4.7.0 Too many emails per second"
SOFT_ERRORS, HARD_ERRORS, ERROR_SLEEP = 10, 20, 1.0  # Postfix's smtpd error limits, its defaults


class Limit:
    """A server's message rate limit: ``mail(now)`` is None when it accepts, else its reply."""

    reply = POSTFIX_REPLY

    def mail(self, now: float) -> str | None:
        raise NotImplementedError


class PostfixAnvil(Limit):
    def __init__(self, limit: int, period: int) -> None:
        self.limit, self.period = limit, period
        self.start: int | None = None
        self.count = 0

    def event(self, now: float) -> None:
        second = math.floor(now)
        if self.start is None or self.start + self.period < second:
            self.start, self.count = second, 0

    def mail(self, now: float) -> str | None:
        self.event(now)
        self.count += 1
        return self.reply if self.count > self.limit else None


class ExponentialAverage(Limit):
    def __init__(self, limit: float, period: float, *, strict: bool, reply: str = EXIM_RATE_REPLY) -> None:
        self.limit, self.period, self.strict, self.reply = limit, period, strict, reply
        self.rate = 0.0
        self.last: float | None = None

    def mail(self, now: float) -> str | None:
        if self.last is None:
            rate = 1.0
        else:
            i_over_p = max(now - self.last, 1e-9) / self.period
            a = math.exp(-i_over_p)
            rate = (1 - a) / i_over_p + a * self.rate
        refused = rate > self.limit
        if self.strict or not refused:
            self.rate, self.last = rate, now
        return self.reply if refused else None


class SlidingWindow(Limit):
    def __init__(self, limit: int, period: float, reply: str = SLIDING_REPLY) -> None:
        self.limit, self.period, self.reply = limit, period, reply
        self.times: deque[float] = deque()

    def mail(self, now: float) -> str | None:
        while self.times and self.times[0] <= now - self.period:
            self.times.popleft()
        if len(self.times) >= self.limit:
            return self.reply
        self.times.append(now)
        return None


class FixedWindow(Limit):
    def __init__(self, limit: int, period: float, reply: str = SLIDING_REPLY) -> None:
        self.limit, self.period, self.reply = limit, period, reply
        self.window = -1
        self.count = 0

    def mail(self, now: float) -> str | None:
        window = math.floor(now / self.period)
        if window != self.window:
            self.window, self.count = window, 0
        if self.count >= self.limit:
            return self.reply
        self.count += 1
        return None


@dataclass
class FakeServer:
    """One server: its limit, its caps, what it received and refused, on the virtual clock."""

    clock: FakeClock
    limit: Limit | None = None
    max_connections: int | None = None
    per_connection: int | None = None
    per_connection_reply: str = PER_CONNECTION_REPLY  # it closes the connection if a 421
    postfix_errors: bool = False
    rtt: float = 0.02
    open_time: float = 0.03
    received: list[tuple[float, str]] = field(default_factory=list)
    refused: list[tuple[float, str]] = field(default_factory=list)
    connections_refused: int = 0
    sessions: int = 0
    open: int = 0
    most_open: int = 0

    def refuse(self, reply: str) -> TransactionError:
        self.refused.append((self.clock.now, reply))
        code, _, text = reply.partition(" ")
        return TransactionError(classify(int(code), text))

    def per_second(self) -> float:
        if not self.received:
            return 0.0
        return len(self.received) / max(self.received[-1][0] - self.received[0][0], 1e-9)


class FakeTransactions:
    """What the sender uses of smtp.transaction.Transactions, against a FakeServer."""

    pipelining = True

    def __init__(self, session: FakeConnection) -> None:
        self._session = session
        self.started = 0
        self.refusals = 0
        self.errors = 0  # Postfix's count of this session's errors

    async def _reply_time(self, replies: int) -> None:
        server = self._session.server
        slow = server.postfix_errors and self.errors >= SOFT_ERRORS
        await asyncio.sleep(server.rtt + (ERROR_SLEEP * replies if slow else 0.0))

    async def step(
        self, content: Ready | None, envelope: ComposedMessage | None
    ) -> tuple[Accepted | TransactionError | None, Ready | TransactionError | None]:
        session, server = self._session, self._session.server
        await self._reply_time(1 + (3 if envelope is not None else 0))
        sent: Accepted | TransactionError | None = None
        begun: Ready | TransactionError | None = None
        if content is not None:
            server.received.append((server.clock.now, content.message.recipient.address))
            sent = Accepted(classify(250, "2.0.0 Ok: queued"))
            self.errors = self.refusals = 0
        if envelope is None:
            return sent, begun
        if not session.is_open:
            return sent, TransactionError(classify(None, "connection lost at MAIL"))
        self.started += 1
        if server.postfix_errors and self.errors >= HARD_ERRORS:
            session.is_open = False
            return sent, server.refuse(POSTFIX_ERRORS_REPLY)
        if server.per_connection is not None and self.started > server.per_connection:
            if server.per_connection_reply.startswith("421"):
                session.close_now()
            return sent, server.refuse(server.per_connection_reply)
        reply = server.limit.mail(server.clock.now) if server.limit is not None else None
        if reply is not None:
            self.refusals += 3  # MAIL refused, then RCPT and DATA out of sequence
            self.errors += 3
            if reply.startswith("421"):
                session.close_now()
            return sent, server.refuse(reply)
        return sent, Ready(envelope)


class FakeConnection:
    """What the sender uses of smtp.connection.Connection."""

    def __init__(self, server: FakeServer) -> None:
        self.server = server
        self.is_open = False
        self.transactions: FakeTransactions | None = None
        self._counted = False

    async def open(self) -> None:
        server = self.server
        await asyncio.sleep(server.open_time)
        if isinstance(server.limit, PostfixAnvil):
            server.limit.event(server.clock.now)  # a connect is an anvil event too
        if server.max_connections is not None and server.open >= server.max_connections:
            server.connections_refused += 1
            raise server.refuse(CONNECTIONS_REPLY)
        server.sessions += 1
        server.open += 1
        server.most_open = max(server.most_open, server.open)
        self._counted = True
        self.is_open = True
        self.transactions = FakeTransactions(self)

    def close_now(self) -> None:
        self.is_open = False
        if self._counted:
            self._counted = False
            self.server.open -= 1

    def abort(self) -> None:
        self.close_now()

    async def close(self) -> None:
        if self.is_open:
            await asyncio.sleep(self.server.rtt)
        self.close_now()


def messages(n: int) -> list[ComposedMessage]:
    return [
        ComposedMessage(
            Recipient(i + 1, i + 2, {}, f"user{i}@example.com"),
            "news@example.com",
            [f"user{i}@example.com"],
            b"Subject: hi\r\n\r\nhello\r\n",
            f"<{i}@example.com>",
            False,
        )
        for i in range(n)
    ]


@dataclass
class Run:
    """What a simulated run did."""

    seconds: float
    counts: Counts
    outcomes: list[Outcome]
    notices: list[str]
    sender: Sender
    server: FakeServer

    @property
    def refusals(self) -> int:
        return len(self.server.refused)

    @property
    def delivered(self) -> int:
        return len({address for _, address in self.server.received})


def simulate(
    server_of: Callable[[FakeClock], FakeServer],
    n: int,
    *,
    connections: int = 2,
    limiter_of: Callable[[FakeClock], SlidingWindowLimiter] | None = None,
    max_messages: int = 100,
    retries: int = 5,
    start: float = 0.0,
    timeout: float = 3600.0,
) -> Run:
    """Send ``n`` messages through the real Sender to ``server_of(clock)``, on virtual time."""
    clock = FakeClock(start)
    server = server_of(clock)
    limiter = (limiter_of or learning)(clock)
    outcomes: list[Outcome] = []
    notices: list[str] = []
    relay = Relay(lambda: FakeConnection(server), limiter, connections, max_messages)  # type: ignore[arg-type, return-value]
    sender = Sender([relay], SenderOptions(retries), outcomes.append, on_notice=notices.append)
    batch = messages(n)

    async def compose(recipients: list[Recipient]) -> list[ComposedMessage]:
        return [batch[r.row - 1] for r in recipients]

    async def main() -> float:
        await asyncio.wait_for(sender.run(iter([m.recipient for m in batch]), compose), timeout)
        return clock.now - start

    seconds: float = run_virtual(clock, main)
    return Run(seconds, sender.counts, outcomes, notices, sender, server)


def learning(clock: FakeClock) -> SlidingWindowLimiter:
    """A limiter without --rate on the virtual clock: it learns the server's limit."""
    return SlidingWindowLimiter(None, clock=clock, sleep=asyncio.sleep)


def pacing(limit: int, period: float) -> Callable[[FakeClock], SlidingWindowLimiter]:
    """A limiter for --rate limit/period on the virtual clock."""
    return lambda clock: SlidingWindowLimiter(limit, period, clock=clock, sleep=asyncio.sleep)



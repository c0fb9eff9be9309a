"""Send: lanes of SMTP connections behind one shared rate limiter per relay.

Recipients are composed just ahead of sending into a bounded buffer, so memory stays
flat however long the file. One queue assigns the work; each ``Lane`` is one connection's
worth of it, with an explicit state (idle -> connecting -> ready -> in flight -> closing),
and counts its own messages and refusals, so that it recycles its connection itself: after
``max_messages`` messages, or after many refusals since its last delivery (Postfix slows
such sessions down, then drops them). What a failed try means is decided by ``policy.decide``
(pure); the sender carries it out:

- slow down (throttled, or the same temporary reply across several messages): the message
  goes back in the queue and the whole run slows down;
- retry: that message alone is retried with exponential backoff, up to ``retries`` times;
- fail: that recipient fails and the rest go on;
- drop relay (fatal): its messages go through the other relays; with none left no new
  message starts, the ones in flight finish, the rest are "not attempted";
- requeue: a reply lost after the final "." is sent once more, and reported as uncertain;
  a relay that keeps losing them is dropped while another can send. A cap on messages per
  connection is requeued too, and the relay reconnects sooner, no slower.

A connection the server refuses while others are open means it takes fewer connections:
the pool shrinks to the ones open, and a spare lane tries again only rarely. Connect
failures with nothing open count against ``retries`` like any temporary failure.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import enum
import itertools
import math
import random
from collections.abc import Awaitable, Callable, Collection, Iterator, Sequence
from dataclasses import dataclass, field

from mailblast.message.compose import Composed, ComposedMessage, RowError
from mailblast.message.recipients import Recipient
from mailblast.message.worker import BATCH, batches
from mailblast.smtp.connection import Connection
from mailblast.smtp.credentials import Credentials
from mailblast.smtp.outcomes import Counts, Outcome, Status
from mailblast.smtp.policy import Action, Attempt, ThrottleSense, decide
from mailblast.smtp.ratelimit import SlidingWindowLimiter, Slot, backoff_delay
from mailblast.smtp.replies import Cause, Kind, Verdict
from mailblast.smtp.transaction import Accepted, Ready, TransactionError

# A relay that lost this many replies to the final "." in a row (it drops every connection
# there) is dropped while another can send: each lost reply costs a resend, perhaps a duplicate.
LOST_REPLIES_TO_DROP = 3
SAME_INDEX_SESSIONS = 3  # sessions in a row first refused at their Nth message: N per connection
SPARE_PROBE_AFTER = 30.0  # seconds before a refused connection is tried again; doubles each time
SPARE_PROBE_CAP = 600.0
# A connection refused this often since its last delivery is replaced by a new one before
# Postfix slows it down: a refused pipelined envelope costs up to 3 of the 10 it allows.
REFUSALS_PER_CONNECTION = 8
ENVELOPE_ERRORS = 3  # a refused pipelined envelope: MAIL, then RCPT and DATA out of sequence
ComposeBatch = Callable[[list[Recipient]], Awaitable[list[Composed]]]


@dataclass
class _Job:
    message: ComposedMessage
    attempts: int = 0  # connects and transactions tried for it
    failures: int = 0  # transient failures, counted against the retries
    throttled: int = 0
    maybe_delivered: str = ""  # why an earlier try may have reached the recipient already
    waiting: bool = False  # tried, and waiting to be tried again (counted in Counts.retrying)
    relay: Relay | None = None  # the relay of its latest try


@dataclass
class _Begun:
    """A job whose transaction has started, with the rate limit's slot it holds."""

    job: _Job
    slot: Slot
    ready: Ready | None = None  # once its DATA got 354
    index: int = 0  # messages started on its connection before it
    lane: Lane | None = None


@dataclass(eq=False)
class Relay:
    """One server the run sends through, with its own rate limit and connections."""

    connect: Callable[[], Connection]
    limiter: SlidingWindowLimiter
    connections: int = 2
    max_messages: int = 100
    name: str = ""  # as the journal records it; "" for a run's only server
    credentials: Credentials | None = None  # what it signs in with, for a sign-in hint
    # what the run learns of it
    dropped: Verdict | None = None  # it failed fatally: its messages go through the others
    resting_until: float = 0.0  # loop time before which it takes no message (its quota has none)
    took: int = 0  # messages it took in this run (sent, or uncertain: perhaps delivered)
    pool: int = 0  # connections it takes, as far as we know
    ever_connected: bool = False
    connect_failures: int = 0  # in a row, with no connection open
    connect_after: float = 0.0  # loop time before which no worker connects (a backoff)
    lost_replies: int = 0  # replies to the final "." lost in a row
    capped: bool = False  # max_messages was learned from its refusals (said once)
    # (opened, index, refused at) of the first refusal of its latest sessions, one after another:
    # the same index each time is a cap on messages per connection that no reply named
    first_refusals: collections.deque[tuple[float, int, float]] = field(
        default_factory=lambda: collections.deque(maxlen=SAME_INDEX_SESSIONS)
    )
    open: set[Connection] = field(default_factory=set)
    connecting: int = 0
    settled: asyncio.Condition | None = None

    def __post_init__(self) -> None:
        self.pool = self.pool or self.connections

    def open_now(self) -> int:
        return sum(1 for c in self.open if c.is_open)

    def described(self, text: str) -> str:
        return f"{self.name}: {text}" if self.name else text


class LaneState(enum.Enum):
    """Where a lane's connection is: each lane is one connection's worth of work."""

    IDLE = "idle"  # no connection (not opened yet, or closed after its work)
    CONNECTING = "connecting"
    READY = "ready"  # open, nothing in flight
    IN_FLIGHT = "in flight"  # a message's DATA got 354: its content goes out in the next step
    CLOSING = "closing"


@dataclass(eq=False)
class Lane:
    """One connection of a relay, with its explicit state; it counts its own messages and
    refusals and says when its connection is worn out (recycled after ``max_messages``, or after
    many refusals since its last delivery, before Postfix slows the session down)."""

    relay: Relay
    state: LaneState = LaneState.IDLE
    connection: Connection | None = None
    in_flight: _Begun | None = None  # its DATA got 354: its content goes out in the next step
    held: _Job | None = None  # taken from the queue, waiting to ride along with the content
    messages: int = 0  # started on this connection
    refused: int = 0  # messages refused on it since its last delivery
    opened_at: float = -math.inf  # loop time its connection opened
    # a reply naming no cause refused the first message after several delivered: a fresh
    # session shows whether the server caps messages per connection (see Sender._session_cap)
    fresh_session: bool = False
    spare_wait: float = SPARE_PROBE_AFTER  # before it tries a connection the server refused again

    @property
    def is_open(self) -> bool:
        return self.connection is not None and self.connection.is_open

    @property
    def pipelines(self) -> bool:
        """Whether the next envelope may ride along with the content in flight."""
        transactions = self.connection.transactions if self.connection is not None else None
        return transactions is not None and transactions.pipelining

    @property
    def worn_out(self) -> bool:
        """Recycle the connection now: its messages are used, or the server is counting errors."""
        return (
            self.messages >= self.relay.max_messages
            or self.refused * ENVELOPE_ERRORS >= REFUSALS_PER_CONNECTION
            or self.fresh_session
        )

    def opened(self, connection: Connection, now: float) -> None:
        self.connection, self.state = connection, LaneState.READY
        self.messages = self.refused = 0
        self.opened_at, self.fresh_session = now, False
        self.relay.open.add(connection)

    def started(self, begun: _Begun | None) -> None:
        """``begun`` (if any) got its 354: it is in flight; else nothing is."""
        self.in_flight = begun
        if self.connection is not None:
            self.state = LaneState.IN_FLIGHT if begun is not None else LaneState.READY

    def settled(self, accepted: bool) -> None:
        self.refused = 0 if accepted else self.refused + 1

    def release(self) -> Connection | None:
        """Hand over the connection for closing (QUIT goes in the background): the lane is idle."""
        connection, self.connection = self.connection, None
        if connection is not None:
            self.relay.open.discard(connection)
        self.state = LaneState.IDLE
        return connection

    async def close(self) -> None:
        """Its work is done: QUIT, and wait for it."""
        connection, self.connection = self.connection, None
        if connection is not None:
            self.relay.open.discard(connection)
            self.state = LaneState.CLOSING
            await connection.close()
        self.state = LaneState.IDLE


@dataclass
class SenderOptions:
    retries: int = 5
    backoff_base: float = 1.0
    backoff_cap: float = 60.0
    buffer: int = 0  # composed messages held ahead of sending; 0: a few per connection


class Sender:
    """Deliver every recipient through the relays, each with up to its ``connections`` connections.

    Each relay's workers take the next message when its limiter lets them, so the work spreads
    across relays in proportion to what each takes. A relay that fails fatally is dropped and its
    messages go through the others; the run stops when none is left.
    """

    def __init__(
        self,
        relays: Sequence[Relay],
        options: SenderOptions,
        on_outcome: Callable[[Outcome], Outcome | None],
        *,
        on_sending: Callable[[ComposedMessage], None] | None = None,
        on_not_delivered: Callable[[ComposedMessage], None] | None = None,
        on_notice: Callable[[str], None] | None = None,
        rng: random.Random | None = None,
        limiter_of: Callable[[Relay, Sender], SlidingWindowLimiter | None] | None = None,
    ) -> None:
        """``limiter_of(relay, sender)`` may give a relay the limiter it sends under instead of its
        own (a quota's, quota.py, which drops or rests the relay through this sender).
        ``on_outcome`` records an outcome, and may return it as it recorded it (the recorder's,
        when the destination's own fault made it no failure): that is what is counted."""
        self.relays = list(relays)
        for relay in self.relays:
            if limiter_of is not None and (limiter := limiter_of(relay, self)) is not None:
                relay.limiter = limiter
        self._options = options
        self._on_outcome = on_outcome
        self._on_sending = on_sending
        self._on_not_delivered = on_not_delivered
        self._on_notice = on_notice
        self._rng = rng or random.Random()
        self.counts = Counts()
        self.stopped_by: Verdict | None = None
        self._workers = sum(r.connections for r in self.relays)
        self._sense = ThrottleSense()
        self._wake: asyncio.Event | None = None  # set when the run stops or ends: sleepers wake

    @property
    def pool(self) -> int:
        """Connections the relays take, as far as we know."""
        return sum(r.pool for r in self.relays if r.dropped is None)

    @property
    def stopping(self) -> bool:
        return self.stopped_by is not None

    def stop(self, reason: Verdict) -> None:
        """Start no new message; the ones in flight finish."""
        if self.stopped_by is None:
            self.stopped_by = reason
            if self._wake is not None:
                self._wake.set()
            for handle, job in list(self._waiting.items()):
                handle.cancel()
                self._waiting.pop(handle)
                self._finish(job, Status.NOT_ATTEMPTED, reason, "the run stopped before a retry")

    async def run(
        self,
        recipients: Iterator[Recipient],
        compose: ComposeBatch,
        maybe_sent: Collection[int] = (),
        parallel: int = 1,
        batch: int = BATCH,
    ) -> Counts:
        """Send to every recipient; ``maybe_sent`` rows were in flight when an earlier run died.

        ``compose`` is given ``parallel`` batches of ``batch`` at a time (and one more, ready when
        one finishes)."""
        self._queue: asyncio.Queue[_Job | None] = asyncio.Queue()
        self._room = asyncio.Semaphore(self._options.buffer or 4 * self._workers + batch)
        self._waiting: dict[asyncio.TimerHandle, _Job] = {}
        self._closing: set[asyncio.Task[None]] = set()
        for relay in self.relays:
            relay.settled = asyncio.Condition()
        self._wake = asyncio.Event()
        if self.stopping:
            self._wake.set()
        self._outstanding = 0
        self._producing = True
        lanes = [Lane(r) for r in self.relays for _ in range(r.connections)]
        workers = [asyncio.create_task(self._run_lane(lane)) for lane in lanes]
        try:
            await self._produce(recipients, compose, maybe_sent, parallel + 1, batch)
            self._producing = False
            self._maybe_done()
            await asyncio.gather(*workers)
            await asyncio.gather(*self._closing)
        finally:
            for task in [*workers, *self._closing]:
                task.cancel()
        return self.counts

    async def _produce(
        self,
        recipients: Iterator[Recipient],
        compose: ComposeBatch,
        maybe_sent: Collection[int],
        ahead: int,
        size: int,
    ) -> None:
        # The next batches are composed (perhaps in other processes) while this one is sent.
        ready: asyncio.Queue[tuple[list[Recipient], list[Composed]] | None] = asyncio.Queue(maxsize=1)

        async def hand_on(batch: list[Recipient], task: asyncio.Future[list[Composed]] | None) -> None:
            if task is not None and self.stopping:
                task.cancel()
            await ready.put((batch, [] if task is None or self.stopping else await task))

        async def compose_ahead() -> None:
            under_way: collections.deque[tuple[list[Recipient], asyncio.Future[list[Composed]] | None]]
            under_way = collections.deque()
            try:
                for batch in batches(recipients, size):
                    started = None if self.stopping else asyncio.ensure_future(compose(batch))
                    under_way.append((batch, started))
                    if len(under_way) >= ahead:
                        await hand_on(*under_way.popleft())
                while under_way:
                    await hand_on(*under_way.popleft())
            finally:
                for _, left in under_way:
                    if left is not None:
                        left.cancel()
            await ready.put(None)

        composing = asyncio.create_task(compose_ahead())
        try:
            while (item := await ready.get()) is not None:
                for recipient, composed in itertools.zip_longest(*item):
                    await self._enqueue(recipient, composed, maybe_sent)
            await composing
        finally:
            composing.cancel()

    async def _enqueue(
        self, recipient: Recipient, composed: Composed | None, maybe_sent: Collection[int]
    ) -> None:
        if not self.stopping:
            await self._room.acquire()
            if self.stopping:
                self._room.release()
        if self.stopping or composed is None:
            self._not_attempted(recipient)
        elif isinstance(composed, RowError):
            self._room.release()
            why = "; ".join(e.message for e in composed.each())
            self._report(Outcome(recipient, Status.FAILED, "", 0, None, f"cannot render: {why}"))
        else:
            self._outstanding += 1
            job = _Job(composed)
            if recipient.row in maybe_sent:
                job.maybe_delivered = "it was in flight when an earlier run stopped"
            self._queue.put_nowait(job)

    def _not_attempted(self, recipient: Recipient) -> None:
        reason = self.stopped_by
        self._report(Outcome(recipient, Status.NOT_ATTEMPTED, "", 0, reason, "the run stopped first"))

    def _report(self, outcome: Outcome) -> None:
        # recorded (journal) before it is counted anywhere, and counted as recorded
        self.counts.add(self._on_outcome(outcome) or outcome)

    def _finish(self, job: _Job, status: Status, reply: Verdict | None, error: str = "") -> None:
        self._set_waiting(job, False)
        if job.maybe_delivered and status is Status.FAILED:
            status = Status.UNCERTAIN  # an earlier try may have been delivered
            error = f"{job.maybe_delivered}; then: {error}"
        left_in_flight = job.maybe_delivered != "" and job.attempts > 0 and status is Status.NOT_ATTEMPTED
        if left_in_flight:  # tried, perhaps delivered, and stopped before the resend
            status, error = Status.UNCERTAIN, f"{job.maybe_delivered}, and the run stopped before a resend"
        message = job.message
        relay = job.relay if status in (Status.SENT, Status.UNCERTAIN) else None
        if relay is not None:
            relay.took += 1
        outcome = Outcome(
            message.recipient,
            status,
            message.message_id,
            job.attempts,
            reply,
            error,
            relay.name if relay is not None else "",
            left_in_flight,
        )
        self._report(outcome)
        self._outstanding -= 1
        self._room.release()
        self._maybe_done()

    def _maybe_done(self) -> None:
        if not self._producing and self._outstanding == 0:
            assert self._wake is not None
            self._wake.set()  # spare workers stop waiting for their next probe
            for _ in range(self._workers):
                self._queue.put_nowait(None)

    def _set_waiting(self, job: _Job, waiting: bool) -> None:
        if job.waiting != waiting:
            job.waiting = waiting
            self.counts.retrying += 1 if waiting else -1

    def _retry_later(self, job: _Job, delay: float) -> None:
        self._set_waiting(job, True)
        if delay <= 0:
            self._queue.put_nowait(job)
            return

        def due() -> None:
            self._waiting.pop(handle, None)
            self._queue.put_nowait(job)

        handle = asyncio.get_running_loop().call_later(delay, due)
        self._waiting[handle] = job

    async def _sleep(self, seconds: float) -> None:
        """Sleep, but wake at once when the run stops or ends."""
        assert self._wake is not None
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._wake.wait(), seconds)

    async def _run_lane(self, lane: Lane) -> None:
        """One connection's work: take the next message, open the connection when it has none,
        start the message when the limiter allows, recycle the connection when it is worn out."""
        assert self._wake is not None  # set once the run stops or ends
        relay = lane.relay
        ending = False  # the queue said the run is over
        try:
            while True:
                job, lane.held = lane.held, None
                if relay.dropped is not None and not self.stopping:
                    if job is not None:
                        self._retry_later(job, 0)  # for the other relays
                    if lane.in_flight is None:
                        break
                    job, ending = None, True  # its content goes (the connection is fine), then this ends
                if lane.in_flight is None and not ending and not self._wake.is_set() and self._resting(relay):
                    if job is not None:
                        self._retry_later(job, 0)  # for the other relays
                        job = None
                    self._close_later(lane)  # it would only sit idle
                    await self._sleep(relay.resting_until - asyncio.get_running_loop().time())
                    continue
                if job is None and not ending and (lane.in_flight is None or lane.pipelines):
                    job, ending = await self._next(wait=lane.in_flight is None)
                if job is None and lane.in_flight is None:
                    break
                if job is not None and self.stopping:
                    self._finish(job, Status.NOT_ATTEMPTED, self.stopped_by, "the run stopped first")
                    job = None
                    if lane.in_flight is None:
                        continue
                slot = None
                if job is not None and lane.in_flight is None:
                    if not lane.is_open:
                        lane.release()  # the server closed it
                        spare = await self._open_for(lane, job)
                        if spare:
                            # The server takes no more connections: others send; try again rarely.
                            await self._sleep(lane.spare_wait)
                            lane.spare_wait = min(SPARE_PROBE_CAP, lane.spare_wait * 2)
                        if not lane.is_open:
                            continue
                    slot = await relay.limiter.acquire()
                    if slot.refused or self.stopping or relay.dropped is not None:
                        relay.limiter.release(slot, accepted=not slot.refused)
                        if not self.stopping:  # dropped, or resting: the other relays send it
                            self._retry_later(job, 0)
                            continue
                        self._finish(job, Status.NOT_ATTEMPTED, self.stopped_by, "the run stopped first")
                        continue
                elif job is not None:
                    # The next envelope goes out with this content, if it may start now.
                    if lane.messages < relay.max_messages:
                        slot = relay.limiter.try_acquire()
                    if slot is None:
                        lane.held, job = job, None
                start = None
                if job is not None and slot is not None:
                    start = _Begun(job, slot, index=lane.messages, lane=lane)
                lane.started(await self._step(lane, lane.in_flight, start))
                if lane.in_flight is None and lane.worn_out:
                    self._close_later(lane)
        except asyncio.CancelledError:
            if lane.connection is not None:
                lane.connection.abort()  # stopping at once: no QUIT, no waiting for a reply
            raise
        await lane.close()

    def _close_later(self, lane: Lane) -> None:
        """QUIT in the background: the lane goes on (opens its next connection) meanwhile."""
        if (connection := lane.release()) is None:
            return
        closing = asyncio.create_task(connection.close())
        self._closing.add(closing)
        closing.add_done_callback(self._closing.discard)

    @staticmethod
    def _resting(relay: Relay) -> bool:
        return relay.resting_until > asyncio.get_running_loop().time()

    async def _next(self, *, wait: bool) -> tuple[_Job | None, bool]:
        """The next job (None if ``wait`` is False and there is none yet), and whether the run is over."""
        if not wait and self._queue.empty():
            return None, False
        job = await self._queue.get() if wait else self._queue.get_nowait()
        return job, job is None

    async def _step(self, lane: Lane, content: _Begun | None, start: _Begun | None) -> _Begun | None:
        """Send ``content``'s message and start ``start``'s transaction; the latter if its DATA got 354."""
        relay, connection = lane.relay, lane.connection
        assert connection is not None and connection.transactions is not None
        if content is not None and self._on_sending is not None:
            try:
                self._on_sending(content.job.message)  # from its final "." on, the server may have it
            except TransactionError as e:  # it cannot be recorded, so it must not go
                connection.abort()  # its DATA got 354: only dropping the connection ends that unsent
                self._settle(relay, content, e)
                if start is not None:
                    relay.limiter.release(start.slot, accepted=False)
                    self._finish(start.job, Status.NOT_ATTEMPTED, self.stopped_by, "the run stopped first")
                return None
        if start is not None:
            start.job.relay = relay
            start.job.attempts += 1
            lane.messages += 1
            self._set_waiting(start.job, False)
        sent, started = await connection.transactions.step(
            content.ready if content else None, start.job.message if start else None
        )
        if content is not None:
            assert sent is not None
            self._settle(relay, content, sent)
        if start is not None:
            assert started is not None
            if isinstance(started, Ready):
                start.ready = started
                return start
            self._settle(relay, start, started)
        return None

    def _settle(self, relay: Relay, begun: _Begun, result: Accepted | TransactionError) -> None:
        if begun.lane is not None:
            begun.lane.settled(isinstance(result, Accepted))
        if isinstance(result, Accepted):
            relay.lost_replies = 0
            self._delivered(begun.job, result)
        else:
            begun.slot.maybe_delivered = result.uncertain  # a quota keeps counting it
            at_cap = self._session_cap(relay, begun, result.verdict)
            if self._failed(relay, begun.job, result, begun.index, at_cap=at_cap) is Action.SLOW_DOWN:
                relay.limiter.throttled(result.verdict.retry_after, begun.slot)
        relay.limiter.release(begun.slot, accepted=isinstance(result, Accepted))

    async def _open_for(self, lane: Lane, job: _Job) -> bool:
        """Open ``lane``'s connection for ``job`` (if not, the job is handled); True: be a spare."""
        relay = lane.relay
        settled = relay.settled
        assert settled is not None
        while True:
            if (wait := relay.connect_after - asyncio.get_running_loop().time()) > 0:
                self._set_waiting(job, True)
                await self._sleep(wait)
            if self.stopping:
                self._finish(job, Status.NOT_ATTEMPTED, self.stopped_by, "the run stopped first")
                return False
            connection = relay.connect()
            lane.state = LaneState.CONNECTING
            relay.connecting += 1
            try:
                await connection.open()
            except TransactionError as e:
                error: TransactionError | None = e
            else:
                error = None
            finally:
                lane.state = LaneState.IDLE
                relay.connecting -= 1
                async with settled:
                    settled.notify_all()
            if error is None:
                relay.ever_connected = True
                relay.connect_failures = 0
                lane.opened(connection, asyncio.get_running_loop().time())
                if (now_open := relay.open_now()) > relay.pool:
                    relay.pool = now_open  # a spare got through: the server takes more again
                return False
            job.attempts += 1
            verdict = error.verdict
            if verdict.kind is Kind.FATAL:  # TLS or login refused
                self._fatal(relay, job, verdict)
                return False
            # Whether the connections opening at the same time got through decides what this meant.
            async with settled:
                await settled.wait_for(lambda: relay.connecting == 0)
            if relay.open_now():
                if self._closing:  # a recycled connection may still count at the server
                    await asyncio.gather(*self._closing, return_exceptions=True)
                    continue
                self._shrink(relay, verdict)
                self._retry_later(job, 0)
                return True
            now = asyncio.get_running_loop().time()
            if relay.connect_after > now:
                continue  # another worker failed alongside and counted this round already
            relay.connect_failures += 1
            if (not relay.ever_connected and verdict.code is None) or (
                relay.connect_failures > self._options.retries
            ):  # nothing listening, or the server went away for good
                self._fatal(relay, job, verdict)
                return False
            asked = min(verdict.retry_after or 0.0, self._options.backoff_cap)
            relay.connect_after = now + max(self._backoff(relay.connect_failures), asked, 0.001)

    def drop(self, relay: Relay, verdict: Verdict, *, last: Verdict | None = None) -> None:
        """Nothing more goes through ``relay``: its messages go through the others, and when none
        is left the run stops, for ``last`` if given (else ``verdict``)."""
        if relay.dropped is None:
            relay.dropped = verdict
            left = [r.name for r in self.relays if r.dropped is None]
            if left and not self.stopping and self._on_notice is not None:
                self._on_notice(
                    f"warning: dropped relay {relay.name} ({verdict.describe()}); "
                    f"its messages go through {', '.join(left)}"
                )
        if all(r.dropped is not None for r in self.relays):
            self.stop(last or verdict)

    def rest(self, relay: Relay, seconds: float) -> bool:
        """Let ``relay`` take no message for ``seconds`` if another relay can send meanwhile.

        False: none can, so ``relay`` had better wait for its own next slot."""
        now = asyncio.get_running_loop().time()
        if not any(r is not relay and r.dropped is None and r.resting_until <= now for r in self.relays):
            return False
        relay.resting_until = now + seconds
        return True

    def _fatal(self, relay: Relay, job: _Job, verdict: Verdict) -> None:
        """Nothing more goes through ``relay``: drop it, and stop the run if it was the last."""
        self.drop(relay, verdict)
        if self.stopping:
            self._finish(job, Status.NOT_ATTEMPTED, verdict, relay.described(verdict.describe()))
        else:
            self._retry_later(job, 0)

    def _shrink(self, relay: Relay, verdict: Verdict) -> None:
        """The server refused a connection while others were open: it takes only those."""
        if (now_open := relay.open_now()) >= relay.pool:
            return
        first = relay.pool == relay.connections
        relay.pool = now_open
        if first and self._on_notice is not None:
            self._on_notice(
                relay.described(
                    f"the server refused connection {relay.pool + 1} ({verdict.describe()}): "
                    f"sending over {relay.pool} connection(s), trying one more now and then"
                )
            )

    def _backoff(self, attempt: int) -> float:
        o = self._options
        return backoff_delay(attempt, base=o.backoff_base, cap=o.backoff_cap, rng=self._rng)

    def _delivered(self, job: _Job, accepted: Accepted) -> None:
        refused = _listed(accepted.refused)
        if job.maybe_delivered:
            note = f"{job.maybe_delivered}, so it was sent again: may be a duplicate"
            self._finish(job, Status.UNCERTAIN, accepted.reply, f"{note}{'; ' + refused if refused else ''}")
        else:
            self._finish(job, Status.SENT, accepted.reply, refused and f"refused: {refused}")

    def _failed(
        self, relay: Relay, job: _Job, error: TransactionError, index: int = 0, *, at_cap: bool = False
    ) -> Action:
        """Carry out what the policy decides for this failed try; returns the action."""
        verdict = error.verdict
        now = asyncio.get_running_loop().time()
        server_wide = self._sense.note(verdict, id(job), now)
        attempt = Attempt(
            verdict,
            uncertain=error.uncertain,
            maybe_delivered=job.maybe_delivered,
            attempts=job.attempts,
            failures=job.failures,
            throttled=job.throttled,
            retries=self._options.retries,
            server_wide=server_wide,
            session_index=index,
            at_cap=at_cap,
        )
        decision = decide(attempt)
        if decision.per_connection_cap is not None:
            self._cap(relay, decision.per_connection_cap, verdict)
        match decision.action:
            case Action.REQUEUE if decision.lost_reply:
                job.maybe_delivered = "the reply to the final '.' was lost"
                self._retry_later(job, 0)
                self._lost_reply(relay)
            case Action.REQUEUE:
                self._not_delivered(job)
                self._retry_later(job, 0)
            case Action.SLOW_DOWN:
                if verdict.kind is Kind.THROTTLED:
                    job.throttled += 1
                else:
                    job.failures += 1  # a reply not worded as throttling: see policy.decide
                self._not_delivered(job)
                self._retry_later(job, 0)
            case Action.RETRY:
                job.failures += 1
                self._not_delivered(job)
                self._retry_later(job, self._backoff(decision.backoff))
            case Action.DROP_RELAY:
                self._fatal(relay, job, verdict)
            case Action.FAIL if decision.status is Status.UNCERTAIN:
                self._finish(job, Status.UNCERTAIN, verdict, f"{job.maybe_delivered}, and {decision.error}")
                self._lost_reply(relay)
            case Action.FAIL:
                also = f"; also refused: {_listed(error.refused)}" if error.refused else ""
                self._finish(job, Status.FAILED, verdict, decision.error + also)
        return decision.action

    def _session_cap(self, relay: Relay, begun: _Begun, verdict: Verdict) -> bool:
        """Whether sessions one after another were first refused at the same message (and the
        reply named no cause): a cap on messages per connection."""
        lane = begun.lane
        if lane is None or not verdict.is_retryable or verdict.cause is not Cause.NONE or begun.index < 2:
            return False  # a reply that names its cause (a rate: THROTTLE) is taken at its word
        if self._sense.known(verdict):
            return False  # the server's throttling, recognised by behaviour
        lane.fresh_session = True
        now = asyncio.get_running_loop().time()
        if relay.first_refusals and lane.opened_at <= relay.first_refusals[-1][2]:
            return False  # not a session opened after the last one's refusal
        relay.first_refusals.append((lane.opened_at, begun.index, now))
        indexes = {index for _, index, _ in relay.first_refusals}
        return len(relay.first_refusals) == SAME_INDEX_SESSIONS and len(indexes) == 1

    def _cap(self, relay: Relay, cap: int, verdict: Verdict) -> None:
        """The server takes at most ``cap`` messages per connection: reconnect after that many."""
        if cap >= relay.max_messages:
            return
        relay.max_messages = cap
        if not relay.capped and self._on_notice is not None:
            self._on_notice(
                relay.described(
                    f"the server takes {cap} message(s) per connection ({verdict.describe()}): "
                    f"reconnecting after every {cap} (--max-messages {cap} says so from the start)"
                )
            )
        relay.capped = True

    def _lost_reply(self, relay: Relay) -> None:
        """Another reply to the final "." lost: a relay that keeps losing them is dropped."""
        relay.lost_replies += 1
        if relay.lost_replies < LOST_REPLIES_TO_DROP or not relay.name:
            return
        if any(r is not relay and r.dropped is None for r in self.relays):
            why = Verdict(
                Kind.FATAL,
                None,
                None,
                None,
                f"{relay.lost_replies} replies to the final '.' were lost in a row "
                "(it drops the connection there): each costs a resend, perhaps a duplicate",
            )
            self.drop(relay, why)

    def _not_delivered(self, job: _Job) -> None:
        """A reply proved this try was not delivered: the journal says pending again, not sending."""
        if self._on_not_delivered is not None and not job.maybe_delivered:
            self._on_not_delivered(job.message)


def _listed(refused: tuple[tuple[str, Verdict], ...]) -> str:
    return "; ".join(f"{address}: {v.describe()}" for address, v in refused)

"""policy.decide alone (pure), and what the sender does with its decisions against real servers."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from pathlib import Path

from mailblast.message.compose import Template
from mailblast.message.recipients import RecipientsFile
from mailblast.message.worker import ComposeWorker
from mailblast.smtp.connection import Connection
from mailblast.smtp.outcomes import Outcome, Status
from mailblast.smtp.policy import Action, Attempt, ThrottleSense, decide
from mailblast.smtp.ratelimit import SlidingWindowLimiter
from mailblast.smtp.replies import classify
from mailblast.smtp.sender import Lane, LaneState, Relay, Sender, SenderOptions, _Begun, _Job
from mailblast.smtp.urls import parse_smtp_url
from tests.servers import SmtpServer
from tests.simulation import FakeConnection, FakeServer, messages
from tests.test_ratelimit import FakeClock, run_virtual
from tests.test_sender import TEMPLATE, addresses, send, statuses

Server = Callable[..., SmtpServer]


def attempt(reply: str, *, recipient: bool = False, **history: object) -> Attempt:
    code, _, text = reply.partition(" ")
    return Attempt(classify(int(code), text, recipient=recipient), **history)  # type: ignore[arg-type]


def test_each_kind_of_refusal_gets_its_one_decision() -> None:
    assert decide(attempt("452 4.2.2 Mailbox full", recipient=True)).action is Action.RETRY
    assert decide(attempt("550 5.1.1 User unknown", recipient=True)).action is Action.FAIL
    assert decide(attempt("450 4.7.1 Too many emails per second")).action is Action.SLOW_DOWN
    assert decide(attempt("535 5.7.8 Authentication failed")).action is Action.DROP_RELAY
    assert decide(attempt("550 5.4.5 Daily user sending limit exceeded")).action is Action.DROP_RELAY
    lost = decide(Attempt(classify(None, "connection lost"), uncertain=True))
    assert lost.action is Action.REQUEUE and lost.lost_reply
    again = decide(Attempt(classify(None, "lost"), uncertain=True, maybe_delivered="the reply was lost"))
    assert (again.action, again.status) == (Action.FAIL, Status.UNCERTAIN)


def test_retries_and_throttles_run_out() -> None:
    assert decide(attempt("451 4.3.0 Temporary failure", failures=4, retries=5)).backoff == 5
    out = decide(attempt("451 4.3.0 Temporary failure", failures=5, retries=5, attempts=6))
    assert (out.action, out.error) == (Action.FAIL, "gave up after 6 attempts")
    assert decide(attempt("421 4.7.0 Slow down", throttled=50, attempts=51)).action is Action.FAIL


def test_a_neutral_reply_hitting_several_messages_is_server_wide() -> None:
    sense = ThrottleSense(span=10.0, messages=3)
    neutral = classify(451, "Try again later", recipient=True)
    assert [sense.note(neutral, m, t) for m, t in ((1, 0.0), (2, 1.0))] == [False, False]
    assert sense.note(neutral, 3, 2.0)  # a third message within 10 s: the server's, not theirs
    assert sense.note(neutral, 4, 100.0)  # learned: the same reply later is the server's at once
    assert decide(Attempt(neutral, server_wide=True)).action is Action.SLOW_DOWN
    assert decide(Attempt(neutral, server_wide=False)).action is Action.RETRY


def test_a_reply_about_one_mailbox_stays_that_recipients_however_many_share_it() -> None:
    sense = ThrottleSense(span=10.0, messages=3)
    full = classify(452, "4.2.2 Mailbox full", recipient=True)
    assert not any(sense.note(full, m, float(m)) for m in range(10))
    spread = ThrottleSense(span=10.0, messages=3)
    neutral = classify(451, "Try again later")
    assert not any(spread.note(neutral, m, 20.0 * m) for m in range(5))  # far apart: each its own
    same = ThrottleSense(span=10.0, messages=3)
    assert not any(same.note(neutral, 7, float(t)) for t in range(5))  # one message, tried again


def test_a_per_connection_cap_reconnects_and_does_not_slow_down() -> None:
    cap = decide(attempt("421 4.7.0 too many messages in this connection", session_index=10))
    assert (cap.action, cap.per_connection_cap) == (Action.REQUEUE, 10)
    same_index = decide(attempt("451 Try again later", session_index=7, at_cap=True))
    assert (same_index.action, same_index.per_connection_cap) == (Action.REQUEUE, 7)


def test_a_servers_cap_on_messages_per_connection_is_learned_and_said_once(
    tmp_path: Path, smtp_server: Server
) -> None:
    server = smtp_server(per_connection=10)
    notices: list[str] = []
    sender, outcomes = send(tmp_path, server.url, 60, connections=2, notices=notices)
    assert statuses(outcomes) == {Status.SENT: 60}
    assert sorted(server.recipients()) == sorted(addresses(60))
    assert len(server.rejected) <= 2  # learned at the first refusal (one per connection at most)
    assert sender.relays[0].max_messages == 10
    assert len([n for n in notices if "10 message(s) per connection" in n]) == 1
    assert sender.relays[0].limiter.current_limit is None  # no slower: it was no rate limit


def test_a_neutral_try_again_later_from_a_rate_limit_ends_with_everyone_delivered(
    tmp_path: Path, smtp_server: Server
) -> None:
    """Exim's ratelimit answers "451 Try again later" unless told otherwise: no word of rate."""
    server = smtp_server(rate=(5, 1.0), throttle_reply="451 Try again later", throttle_at="rcpt")
    _, outcomes = send(tmp_path, server.url, 30, connections=2, retries=5)
    assert statuses(outcomes) == {Status.SENT: 30}
    assert sorted(server.recipients()) == sorted(addresses(30))
    assert server.connections <= 6  # no storm of connections


def relay_to(server: SmtpServer, name: str, limiter: SlidingWindowLimiter | None = None) -> Relay:
    target = parse_smtp_url(server.url)
    limiter = limiter or SlidingWindowLimiter(None)
    return Relay(lambda: Connection(target, None, timeout=5), limiter, 1, name=name)


def test_a_relay_that_drops_every_connection_after_the_final_dot_is_dropped(
    tmp_path: Path, smtp_server: Server
) -> None:
    """Issue 16: 18 of 40 were sent twice through it, and the healthy relay was never tried."""
    bad, good = smtp_server(drop_after_data_every=1), smtp_server()
    csv_path = tmp_path / "r.csv"
    csv_path.write_text("email,name\n" + "".join(f"{a},User\n" for a in addresses(40)))
    (tmp_path / "t.txt").write_text(TEMPLATE)
    outcomes: list[Outcome] = []
    notices: list[str] = []
    sender = Sender(
        [relay_to(bad, "bad"), relay_to(good, "good")],
        SenderOptions(backoff_base=0.01, backoff_cap=0.05),
        outcomes.append,
        on_notice=notices.append,
    )
    people = (r.recipient for r in RecipientsFile(csv_path).rows() if r.recipient is not None)
    compose = ComposeWorker(Template(tmp_path / "t.txt"), in_worker=False).compose
    asyncio.run(asyncio.wait_for(sender.run(people, compose), 60))
    assert len(outcomes) == 40 and {o.status for o in outcomes} <= {Status.SENT, Status.UNCERTAIN}
    assert len(bad.received) <= 3  # dropped after 3 lost replies, not one per message
    assert sorted(set(good.recipients())) == sorted(addresses(40))
    assert any("dropped relay bad" in n and "lost in a row" in n for n in notices)


def test_a_lane_goes_through_its_states_and_recycles_itself() -> None:
    clock = FakeClock()
    server = FakeServer(clock)
    relay = Relay(lambda: FakeConnection(server), SlidingWindowLimiter(None), 1, max_messages=2)  # type: ignore[arg-type, return-value]
    lane = Lane(relay)
    assert lane.state is LaneState.IDLE and not lane.is_open

    async def main() -> None:
        connection = relay.connect()
        await connection.open()
        lane.opened(connection, clock.now)
        assert lane.state is LaneState.READY and relay.open_now() == 1
        for count, message in enumerate(messages(2), 1):
            lane.messages += 1
            lane.started(_Begun(_Job(message), relay.limiter.try_acquire(), index=count - 1, lane=lane))
            assert lane.state is LaneState.IN_FLIGHT
            lane.started(None)
            lane.settled(True)
            assert lane.state is LaneState.READY and lane.worn_out is (count == 2)  # its own count
        await lane.close()
        assert lane.state is LaneState.IDLE and relay.open_now() == 0

    run_virtual(clock, main)

"""The learner and the pacing against real servers' ways of counting, on virtual time (simulation.py).

Each case is one of issue 17's "Done when" figures, for 120 messages unless said: the real Sender,
its policy and its limiter, against fake sessions that count as Postfix, Exim and providers do.
"""

from __future__ import annotations

import itertools

import pytest

from mailblast.smtp.outcomes import Status
from tests.simulation import (
    NEUTRAL_REPLY,
    ExponentialAverage,
    FakeServer,
    FixedWindow,
    PostfixAnvil,
    Run,
    SlidingWindow,
    pacing,
    simulate,
)


def delivered_once(run: Run, n: int) -> None:
    assert run.counts.sent == n and run.counts.failed == 0 and run.counts.uncertain == 0
    assert run.delivered == n == len(run.server.received)  # each exactly once


def refusals_after(run: Run, settled: float) -> list[float]:
    return [at for at, _ in run.server.refused if at >= settled]


def test_exims_strict_moving_average_without_a_rate() -> None:
    """30 / 10s / per_mail / strict: 229 s and a minute idle before; now a pace, learned."""
    run = simulate(lambda c: FakeServer(c, ExponentialAverage(30, 10.0, strict=True)), 120)
    delivered_once(run, 120)
    assert run.seconds <= 50 and run.refusals <= 12
    learned = run.sender.relays[0].limiter.learned
    assert learned is not None and 25 <= learned[0] / learned[1] * 10 <= 33  # about 30 per 10 s


def test_exims_neutral_try_again_later_is_throttling_recognised_by_behaviour() -> None:
    """'451 Try again later' from the same average: 30 of 120 delivered and 90 failed before."""
    server = lambda c: FakeServer(  # noqa: E731
        c, ExponentialAverage(30, 10.0, strict=True, reply=NEUTRAL_REPLY), max_connections=5
    )
    run = simulate(server, 120)
    delivered_once(run, 120)
    assert run.seconds <= 50
    assert run.server.connections_refused == 0 and run.server.sessions <= 6  # no storm


def test_a_rate_paced_evenly_draws_no_refusal_from_a_moving_average() -> None:
    """--rate 30/10s sent bursts of 30 and then waited: 8 refusals, 2.15 msg/s."""
    server = lambda c: FakeServer(c, ExponentialAverage(30, 10.0, strict=True))  # noqa: E731
    run = simulate(server, 120, limiter_of=pacing(30, 10.0))
    delivered_once(run, 120)
    assert run.refusals == 0
    assert run.server.per_second() >= 2.6


def test_a_cap_on_messages_per_connection_is_learned_not_taken_for_a_rate() -> None:
    """smtp_accept_max_per_connection = 10: 200 in 73.5 s, taken for a rate limit, before."""
    run = simulate(lambda c: FakeServer(c, None, per_connection=10), 200)
    delivered_once(run, 200)
    assert run.seconds <= 5 and run.refusals <= 3
    assert run.sender.relays[0].max_messages == 10
    assert len([n for n in run.notices if "10 message(s) per connection" in n]) == 1


def test_a_cap_on_messages_per_connection_that_no_reply_names_is_learned_from_the_sessions() -> None:
    """Every session refused only at its 11th MAIL, with a neutral reply: 10 per connection."""
    server = lambda c: FakeServer(c, None, per_connection=10, per_connection_reply=NEUTRAL_REPLY)  # noqa: E731
    run = simulate(server, 200, connections=1)
    delivered_once(run, 200)
    assert run.sender.relays[0].max_messages == 10
    assert run.refusals <= 4 and run.seconds <= 10
    assert len([n for n in run.notices if "10 message(s) per connection" in n]) == 1


@pytest.mark.parametrize("start", [0.0, 0.5, 0.99])
def test_postfix_anvil_over_three_connections(start: float) -> None:
    """anvil 30/10s with Postfix's error counting, 3 connections: 35 s and 26 refusals before."""
    server = lambda c: FakeServer(c, PostfixAnvil(30, 10), postfix_errors=True)  # noqa: E731
    run = simulate(server, 120, connections=3, start=start)
    delivered_once(run, 120)
    assert run.seconds <= 40 and run.refusals <= 12


def test_a_sliding_window_is_learned_and_not_probed_forever() -> None:
    """3 per sliding second, 300 messages: 2.33 msg/s and a refusal every 10 s for good before."""
    run = simulate(lambda c: FakeServer(c, SlidingWindow(3, 1.0)), 300)
    delivered_once(run, 300)
    assert 300 / run.seconds >= 2.6 and run.refusals <= 20


@pytest.mark.parametrize(
    "limit",
    [
        lambda: SlidingWindow(3, 1.0),
        lambda: ExponentialAverage(30, 10.0, strict=True),
        lambda: ExponentialAverage(30, 10.0, strict=False),
    ],
    ids=["sliding 3/s", "exim strict 30/10s", "exim leaky 30/10s"],
)
def test_the_learner_converges_and_stays(limit: object) -> None:
    """Once settled it holds at 90-97% of the limit and probes upward at most once a minute."""
    run = simulate(lambda c: FakeServer(c, limit()), 1500)  # type: ignore[operator]
    delivered_once(run, 1500)
    settled = 60.0
    later = refusals_after(run, settled)
    assert len(later) <= (run.seconds - settled) / 60 + 1
    sent_after = [at for at, _ in run.server.received if at >= settled]
    pace = len(sent_after) / (sent_after[-1] - settled)
    assert 0.90 * 3 <= pace <= 0.97 * 3 * 1.03  # the limit is 3 a second in each
    gaps = [b - a for a, b in itertools.pairwise(sent_after)]
    assert max(gaps) < 1.5  # never idle with work to do: a pause after a refusal is one spacing


@pytest.mark.parametrize(
    "limit", [lambda: SlidingWindow(1, 1.0), lambda: FixedWindow(1, 1.0)], ids=["sliding 1/s", "fixed 1/s"]
)
def test_a_limit_of_one_a_second_is_sent_at_not_waited_out(limit: object) -> None:
    """SES's 1 a second, no --rate: 10 messages took 246 s, idle a minute after each probe refused.

    With a limit of 1, the message in flight fills it: the next one waited for the next step up
    (a minute away once settled) instead of for that message's release.
    """
    run = simulate(lambda c: FakeServer(c, limit()), 60)  # type: ignore[operator]
    delivered_once(run, 60)
    received = [at for at, _ in run.server.received]
    assert max(b - a for a, b in itertools.pairwise(received)) < 2.0  # about one spacing, not a minute
    assert 60 / run.seconds >= 0.8
    assert run.refusals <= 12


def test_the_summary_can_suggest_the_rate_learned() -> None:
    run = simulate(lambda c: FakeServer(c, PostfixAnvil(30, 10)), 120, connections=3)
    limiter = run.sender.relays[0].limiter
    assert limiter.learned == (30, pytest.approx(11.0, abs=0.6))
    assert limiter.suggested() == (27, pytest.approx(11.0, abs=0.6))


def test_the_outcomes_are_the_senders_own() -> None:
    run = simulate(lambda c: FakeServer(c, SlidingWindow(5, 1.0)), 40)
    assert {o.status for o in run.outcomes} == {Status.SENT}

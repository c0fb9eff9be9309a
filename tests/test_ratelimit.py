"""Tests for mailblast.smtp.ratelimit, all on fake time: nothing here really sleeps."""

from __future__ import annotations

import asyncio
import math
import random
import selectors
from collections import deque
from collections.abc import Awaitable, Callable
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from mailblast.smtp.ratelimit import MAX_PAUSE, SlidingWindowLimiter, Slot, backoff_delay
from mailblast.smtp.sender import REFUSALS_PER_CONNECTION


class FakeClock:
    """A clock that moves only when told to; its sleep() moves it."""

    def __init__(self, now: float = 0.0) -> None:
        self.now = now
        self.sleeps: list[float] = []

    def __call__(self) -> float:
        return self.now

    async def sleep(self, seconds: float) -> None:
        self.sleeps.append(seconds)
        self.now += seconds
        await asyncio.sleep(0)


class _VirtualSelector(selectors.SelectSelector):
    # The event loop blocks in select() until its next timer; jump the clock there instead.
    def __init__(self, clock: FakeClock) -> None:
        super().__init__()
        self._clock = clock

    def select(self, timeout: float | None = None) -> list[Any]:
        if timeout is None:
            raise RuntimeError("deadlock: every task is waiting and no timer is set")
        self._clock.now += timeout
        return []


class _VirtualLoop(asyncio.SelectorEventLoop):
    def __init__(self, clock: FakeClock) -> None:
        self._virtual_clock = clock
        super().__init__(_VirtualSelector(clock))

    def time(self) -> float:
        return self._virtual_clock.now


def run_virtual(clock: FakeClock, main: Callable[[], Awaitable[Any]]) -> Any:
    """Run ``main()`` on an event loop whose time is ``clock``: asyncio.sleep costs nothing."""
    with asyncio.Runner(loop_factory=lambda: _VirtualLoop(clock)) as runner:
        return runner.run(main())  # type: ignore[arg-type]


def simulate(
    limiter: SlidingWindowLimiter,
    clock: FakeClock,
    replies: list[tuple[float, bool]],
    connections: int,
) -> list[Slot]:
    """Send one message per (latency, throttled) reply over ``connections`` connections."""
    queue = deque(replies)
    slots: list[Slot] = []

    async def connection() -> None:
        while queue:
            latency, throttled = queue.popleft()
            slot = await limiter.acquire()
            slots.append(slot)
            await asyncio.sleep(latency)
            if throttled:
                limiter.throttled()
            limiter.release(slot)

    async def main() -> None:
        await asyncio.gather(*(connection() for _ in range(connections)))

    run_virtual(clock, main)
    return slots


def most_in_any_window(slots: list[Slot], period: float) -> int:
    """Most messages a server could count in one window [t, t + period).

    The server may count a message at any moment between its MAIL FROM
    (acquired_at) and its final reply (released_at); the worst window starts
    at some message's reply.
    """
    spans: list[tuple[float, float]] = []
    for slot in slots:
        assert slot.released_at is not None
        spans.append((slot.acquired_at, slot.released_at))
    worst = 0
    for _, start in spans:
        seen = sum(1 for sent, replied in spans if replied >= start and sent < start + period)
        worst = max(worst, seen)
    return worst


# --- the sync core -------------------------------------------------------------------------


def test_a_rate_is_paced_evenly_and_never_more_than_the_limit_in_a_window() -> None:
    """Ported: it granted the limit at once, then waited a window; now one every window / limit."""
    clock = FakeClock()
    limiter = SlidingWindowLimiter(3, 1.0, clock=clock)
    assert limiter.window == 1.1  # the period plus a 10% margin
    spacing = 1.1 / 3
    slots = []
    for i in range(3):
        clock.now = i * spacing
        slot = limiter.try_acquire()
        assert slot is not None
        slots.append(slot)
        assert limiter.try_acquire() is None  # not two at once: even, not a burst
        assert limiter.delay() == (pytest.approx(spacing) if i < 2 else math.inf)  # 3 held: the limit
    clock.now = 3 * spacing
    assert limiter.try_acquire() is None  # three still held: the window holds the fourth back
    assert limiter.delay() == math.inf
    for slot in slots:
        limiter.release(slot)  # all three replied at 3 spacings
    assert limiter.delay() == pytest.approx(1.1)
    clock.now = 3 * spacing + 1.099
    assert limiter.try_acquire() is None
    clock.now = 3 * spacing + 1.1
    assert limiter.delay() == 0
    assert limiter.try_acquire() is not None


@pytest.mark.parametrize(
    ("period", "window"), [(1.0, 1.1), (10.0, 11.0), (60.0, 61.0), (3600.0, 3601.0), (0.5, 0.55)]
)
def test_the_margin_is_a_tenth_of_the_period_and_at_most_a_second(period: float, window: float) -> None:
    limiter = SlidingWindowLimiter(30, period)
    assert limiter.window == pytest.approx(window)
    assert limiter.period == period


def test_a_released_slot_counts_until_release_time_plus_window() -> None:
    clock = FakeClock()
    limiter = SlidingWindowLimiter(1, 2.0, clock=clock)
    slot = limiter.try_acquire()
    assert slot is not None
    clock.now = 5.0
    limiter.release(slot)
    assert slot.released_at == 5.0
    clock.now = 6.5
    assert limiter.try_acquire() is None
    assert limiter.delay() == pytest.approx(0.7)
    clock.now = 7.2
    assert limiter.try_acquire() is not None


def test_an_unreleased_slot_blocks_forever() -> None:
    clock = FakeClock()
    limiter = SlidingWindowLimiter(1, 1.0, clock=clock)
    assert limiter.try_acquire() is not None
    clock.now = 1e6
    assert limiter.try_acquire() is None
    assert limiter.delay() == math.inf


def test_releasing_twice_is_harmless() -> None:
    clock = FakeClock()
    limiter = SlidingWindowLimiter(2, 1.0, clock=clock)
    slot = limiter.try_acquire()
    assert slot is not None
    limiter.release(slot)
    clock.now = 0.5
    limiter.release(slot)
    assert slot.released_at == 0.0
    clock.now = 1.0
    assert limiter.delay() == 0


def test_no_known_limit_grants_everything() -> None:
    limiter = SlidingWindowLimiter(None, clock=FakeClock())
    assert all(limiter.try_acquire() for _ in range(1000))
    assert limiter.delay() == 0
    assert limiter.current_limit is None
    assert limiter.configured_limit is None


@pytest.mark.parametrize(("limit", "period"), [(0, 1.0), (-1, 1.0), (1, 0.0), (1, -2.0)])
def test_rejects_nonsense_settings(limit: int, period: float) -> None:
    with pytest.raises(ValueError):
        SlidingWindowLimiter(limit, period)


# --- async acquire -------------------------------------------------------------------------


def test_acquire_sleeps_exactly_until_a_slot_frees() -> None:
    clock = FakeClock()
    limiter = SlidingWindowLimiter(2, 1.0, clock=clock, sleep=clock.sleep)
    for at in (0.0, 0.55):  # evenly: one every 1.1 / 2 s
        clock.now = at
        slot = limiter.try_acquire()
        assert slot is not None
        limiter.release(slot)
    clock.now = 0.6
    slot = asyncio.run(limiter.acquire())
    assert clock.sleeps == [pytest.approx(0.5)]  # until the first leaves the window
    assert slot.acquired_at == pytest.approx(1.1)


def test_acquire_waits_for_a_release_instead_of_polling() -> None:
    clock = FakeClock()
    sleeps: list[float] = []

    async def counting_sleep(seconds: float) -> None:
        sleeps.append(seconds)
        await asyncio.sleep(seconds)

    limiter = SlidingWindowLimiter(1, 1.0, clock=clock, sleep=counting_sleep)

    async def main() -> Slot:
        held = await limiter.acquire()
        waiter = asyncio.create_task(limiter.acquire())
        await asyncio.sleep(30.0)
        limiter.release(held)
        return await waiter

    slot = run_virtual(clock, main)
    assert slot.acquired_at == pytest.approx(31.1)
    assert sleeps == [pytest.approx(1.1)]


def test_hold_releases_even_on_error() -> None:
    clock = FakeClock()
    limiter = SlidingWindowLimiter(1, 1.0, clock=clock)

    async def main() -> None:
        async with limiter.hold():
            clock.now = 3.0
            raise OSError("connection dropped")

    with pytest.raises(OSError):
        asyncio.run(main())
    clock.now = 4.1
    assert limiter.try_acquire() is not None


def test_instant_replies_reach_full_throughput() -> None:
    clock = FakeClock()
    limiter = SlidingWindowLimiter(3, 1.0, clock=clock)
    slots = simulate(limiter, clock, [(0.0, False)] * 300, connections=2)
    assert len(slots) == 300
    assert most_in_any_window(slots, 1.0) == 3
    # 100 windows of 3 messages, evenly: one every window / 3 (it was 3 at once, then a wait).
    assert max(s.acquired_at for s in slots) == pytest.approx(299 * limiter.window / 3)
    assert clock.now <= 100 * limiter.window


def test_waiters_are_served_first_come_first_served() -> None:
    clock = FakeClock()
    limiter = SlidingWindowLimiter(1, 1.0, clock=clock)
    arrivals = [0.4, 0.1, 0.3, 0.5, 0.2]
    granted: list[float] = []

    async def customer(arrival: float) -> None:
        await asyncio.sleep(arrival)
        slot = await limiter.acquire()
        granted.append(arrival)
        limiter.release(slot)

    async def main() -> None:
        held = await limiter.acquire()
        tasks = [asyncio.create_task(customer(a)) for a in arrivals]
        await asyncio.sleep(10.0)
        limiter.release(held)
        await asyncio.gather(*tasks)

    run_virtual(clock, main)
    assert granted == sorted(arrivals)


def test_try_acquire_does_not_jump_the_queue() -> None:
    clock = FakeClock()
    limiter = SlidingWindowLimiter(1, 1.0, clock=clock)

    async def main() -> tuple[Slot | None, Slot]:
        held = await limiter.acquire()
        waiter = asyncio.create_task(limiter.acquire())
        await asyncio.sleep(5.0)
        limiter.release(held)
        # Wakes when the window has passed, alongside the waiter, before it gets to run.
        await asyncio.sleep(limiter.window)
        return limiter.try_acquire(), await waiter

    jumper, slot = run_virtual(clock, main)
    assert jumper is None
    assert slot.acquired_at == pytest.approx(5.0 + limiter.window)


@settings(max_examples=150, deadline=None)
@given(
    limit=st.integers(1, 5),
    period=st.floats(0.1, 10.0),
    connections=st.integers(1, 6),
    replies=st.lists(
        st.tuples(st.floats(0.0, 5.0), st.integers(0, 9).map(lambda n: n == 9)),
        min_size=1,
        max_size=40,
    ),
)
def test_never_more_than_limit_in_any_window(
    limit: int, period: float, connections: int, replies: list[tuple[float, bool]]
) -> None:
    clock = FakeClock()
    limiter = SlidingWindowLimiter(limit, period, clock=clock)
    slots = simulate(limiter, clock, replies, connections)
    assert len(slots) == len(replies)
    assert most_in_any_window(slots, period) <= limit


# --- throttling and recovery ---------------------------------------------------------------


def granted(limiter: SlidingWindowLimiter, n: int, clock: FakeClock | None = None) -> list[Slot]:
    """``n`` slots at once; with ``clock``, each as soon as the even pace lets it (moving the clock)."""
    slots = []
    for _ in range(n):
        slot = limiter.try_acquire()
        if slot is None and clock is not None:
            clock.now += limiter.delay()
            slot = limiter.try_acquire()
        assert slot is not None
        slots.append(slot)
    return slots


def test_a_throttled_rate_drops_just_below_what_the_window_held() -> None:
    clock = FakeClock()
    limiter = SlidingWindowLimiter(30, 10.0, clock=clock)
    slots = granted(limiter, 20, clock)
    for slot in slots[:19]:
        limiter.release(slot)
    clock.now += 0.1
    limiter.throttled(slot=slots[19])
    limiter.release(slots[19], accepted=False)
    assert limiter.current_limit == 19  # the server took no more than 19 in its window
    assert limiter.paused_until == pytest.approx(clock.now + 11.0 / 19)


def test_a_throttled_rate_is_still_paced_evenly_at_its_lower_limit() -> None:
    clock = FakeClock()
    limiter = SlidingWindowLimiter(30, 10.0, clock=clock)
    slots = granted(limiter, 20, clock)
    for slot in slots[:19]:
        limiter.release(slot)
    limiter.throttled(slot=slots[19])
    limiter.release(slots[19], accepted=False)
    clock.now = limiter.paused_until + 11.05  # a quiet window later: the window is empty
    assert limiter.current_limit == 23  # on its way back to 30
    assert limiter.try_acquire() is not None
    assert limiter.try_acquire() is None  # no burst of the lower limit either
    assert limiter.delay() == pytest.approx(11.0 / 23)


def test_a_throttled_rate_is_back_to_the_users_within_three_quiet_windows() -> None:
    clock = FakeClock()
    limiter = SlidingWindowLimiter(30, 10.0, clock=clock)
    slot = granted(limiter, 1)[0]
    limiter.throttled(slot=slot)  # a server counting very differently: down to 1
    assert limiter.current_limit == 1
    resumed = limiter.paused_until
    clock.now = resumed + 11.0
    assert limiter.current_limit == 1 + 10  # ceil(29 / 3) per quiet window
    clock.now = resumed + 22.0
    assert limiter.current_limit == 21
    clock.now = resumed + 33.0
    assert limiter.current_limit == 30
    clock.now = resumed + 1000.0
    assert limiter.current_limit == 30 == limiter.configured_limit


def test_reports_of_the_same_overload_react_once() -> None:
    clock = FakeClock()
    limiter = SlidingWindowLimiter(8, 1.0, clock=clock)
    first, second = granted(limiter, 2, clock)
    clock.now += 0.01
    limiter.throttled(slot=first)
    assert limiter.current_limit == 1
    limiter.throttled(slot=second)  # sent before the first refusal: the same overload
    assert limiter.current_limit == 1
    assert first.throttled and second.throttled


def test_a_servers_retry_after_is_a_pause_with_an_end() -> None:
    clock = FakeClock(10.0)
    limiter = SlidingWindowLimiter(8, 1.0, clock=clock)
    slot = granted(limiter, 1)[0]
    limiter.throttled(pause=30.0, slot=slot)
    limiter.release(slot, accepted=False)
    assert limiter.paused_until == 40.0
    assert limiter.delay() == 30.0
    clock.now = 100.0
    slot = granted(limiter, 1)[0]
    limiter.throttled(pause=86400.0, slot=slot)
    assert limiter.paused_until == 100.0 + MAX_PAUSE


def test_limit_never_drops_below_one() -> None:
    clock = FakeClock()
    limiter = SlidingWindowLimiter(1, 1.0, clock=clock)
    limiter.throttled()
    assert limiter.current_limit == 1


def test_without_a_rate_a_throttle_starts_probing_one_message_at_a_time() -> None:
    clock = FakeClock()
    limiter = SlidingWindowLimiter(None, clock=clock)
    burst = granted(limiter, 31)
    for slot in burst[:30]:
        limiter.release(slot)
    clock.now = 0.4
    limiter.throttled(slot=burst[30])
    limiter.release(burst[30], accepted=False)
    assert limiter.learning and limiter.current_limit is None
    assert limiter.delay() == pytest.approx(0.25)  # the first probe's gap (it was the burst's age / 4)
    clock.now = 0.65
    probe = limiter.try_acquire()
    assert probe is not None and probe.probe
    assert limiter.try_acquire() is None and limiter.delay() == math.inf  # one probe at a time
    limiter.throttled(slot=probe)
    limiter.release(probe, accepted=False)
    clock.now = 10.5
    probe = limiter.try_acquire()
    assert probe is not None
    limiter.release(probe, accepted=False)  # no answer at all: that says nothing, probe again
    probe = limiter.try_acquire()
    assert probe is not None
    limiter.release(probe)  # accepted: the server's window is open again
    assert not limiter.learning
    # The first burst may have begun mid-window: the second, from this opening, is measured.
    assert limiter.current_limit is None
    second = granted(limiter, 26)
    for slot in second[:25]:
        limiter.release(slot)
    clock.now = 11.0
    limiter.throttled(slot=second[25])
    limiter.release(second[25], accepted=False)
    assert limiter.learning
    clock.now = 21.0
    probe = limiter.try_acquire()
    assert probe is not None
    limiter.release(probe)
    assert limiter.current_limit == 26  # the opening probe and the 25 after it
    assert limiter.period == pytest.approx(10.5)  # from one opening to the next
    # Measured from the server's own openings (Postfix's whole seconds are in it): half the margin.
    assert limiter.window == pytest.approx(10.5 * 1.05)


def learned(limit: int, period: float, clock: FakeClock) -> SlidingWindowLimiter:
    """A limiter without --rate that learned ``limit`` per ``period`` from a first burst."""
    limiter = SlidingWindowLimiter(None, clock=clock)
    for burst_size in (limit, limit - 1):  # the second begins with the probe that opened it
        start = clock.now
        burst = granted(limiter, burst_size + 1)
        for slot in burst[:burst_size]:
            limiter.release(slot)
        limiter.throttled(slot=burst[burst_size])
        limiter.release(burst[burst_size], accepted=False)
        clock.now = start + period
        probe = limiter.try_acquire()
        assert probe is not None
        limiter.release(probe)
    assert limiter.current_limit == limit
    return limiter


def test_a_refused_full_learned_window_widens_it() -> None:
    clock = FakeClock()
    limiter = learned(5, 1.0, clock)
    clock.now = 10.0
    window = limiter.window
    slots = granted(limiter, 5)
    limiter.throttled(slot=slots[-1])
    assert limiter.current_limit == 5
    assert limiter.window == pytest.approx(window + 0.5)  # half the period, at most a second


def test_a_refused_learned_window_not_full_lowers_the_limit() -> None:
    clock = FakeClock()
    limiter = learned(5, 1.0, clock)
    clock.now = 10.0
    slots = granted(limiter, 3)
    limiter.throttled(slot=slots[-1])
    assert limiter.current_limit == 2


def burst_refused_after(limiter: SlidingWindowLimiter, accepted: int) -> None:
    """A burst at once: ``accepted`` messages the server took, then one it refused."""
    burst = granted(limiter, accepted + 1)
    for slot in burst[:accepted]:
        limiter.release(slot)
    limiter.throttled(slot=burst[accepted])
    limiter.release(burst[accepted], accepted=False)


def test_the_next_probe_is_due_a_gap_after_the_last_went_out_not_after_its_reply() -> None:
    clock = FakeClock()
    limiter = SlidingWindowLimiter(None, clock=clock)
    burst_refused_after(limiter, 10)
    clock.now = 5.0
    probe = limiter.try_acquire()
    assert probe is not None
    clock.now = 8.0  # the server took 3 s to say "still closed"
    limiter.throttled(slot=probe)
    limiter.release(probe, accepted=False)
    assert limiter.delay() == 0  # due 0.25 s after it went out: long past
    clock.now = 8.1
    probe = limiter.try_acquire()
    assert probe is not None
    limiter.throttled(slot=probe)  # answered at once: due a gap after it went out
    limiter.release(probe, accepted=False)
    assert limiter.delay() == pytest.approx(0.5)  # the gap doubles with each refused probe


def test_a_late_refusal_of_a_probe_does_not_lengthen_the_learned_period() -> None:
    """Postfix answers a session that made many errors a second late per reply: the probe after
    such a refusal goes out late, but the window may have opened when it was due."""
    clock = FakeClock()
    limiter = SlidingWindowLimiter(None, clock=clock)
    burst_refused_after(limiter, 30)
    clock.now = 11.0
    probe = limiter.try_acquire()
    assert probe is not None
    limiter.release(probe)  # the server's window opened: the second burst begins
    burst_refused_after(limiter, 29)
    clock.now = 21.9
    probe = limiter.try_acquire()
    assert probe is not None
    clock.now = 25.9  # refused, 4 s late
    limiter.throttled(slot=probe)
    limiter.release(probe, accepted=False)
    probe = limiter.try_acquire()
    assert probe is not None  # at once: it was due at 21.9 + its gap
    limiter.release(probe)
    assert limiter.current_limit == 30
    # Near the expected opening probes are a twentieth of the shortest window apart (0.495 s).
    # From the opening at 11.0 to 22.395, when this probe was due: not to 25.9, its late start.
    assert limiter.period == pytest.approx(11.395)
    assert limiter.window == pytest.approx(11.395 * 1.05)


class PostfixAnvil:
    """Postfix's smtpd_client_message_rate_limit as anvil counts it: whole seconds, and a new
    window only at an event more than ``period`` after the window's start; refused MAILs count."""

    def __init__(self, limit: int, period: int) -> None:
        self.limit, self.period = limit, period
        self.start: int | None = None
        self.count = 0
        self.refused = 0

    def event(self, now: float) -> None:
        """A connect or a MAIL: it opens a new window if more than a period after the start."""
        second = math.floor(now)
        if self.start is None or self.start + self.period < second:
            self.start, self.count = second, 0

    def mail(self, now: float) -> bool:
        self.event(now)
        self.count += 1
        self.refused += self.count > self.limit
        return self.count <= self.limit


def send_to(
    limiter: SlidingWindowLimiter, clock: FakeClock, server: PostfixAnvil, n: int, connections: int
) -> float:
    """Send ``n`` messages (10 ms each) through the limiter; returns when the last was accepted."""
    left = n
    done_at = 0.0

    async def connection() -> None:
        nonlocal left, done_at
        while left > 0:
            left -= 1  # this connection takes the next message
            slot = await limiter.acquire()
            accepted = server.mail(clock.now)
            await asyncio.sleep(0.01)
            if accepted:
                done_at = clock.now
            else:
                left += 1  # back in the queue
                limiter.throttled(slot=slot)
            limiter.release(slot, accepted=accepted)

    async def main() -> None:
        await asyncio.gather(*(connection() for _ in range(connections)))

    run_virtual(clock, main)
    return done_at


@pytest.mark.parametrize("start", [0.0, 0.3, 0.99])
def test_a_rate_equal_to_postfixs_limit_draws_no_rejection(start: float) -> None:
    clock = FakeClock(start)
    server = PostfixAnvil(30, 10)
    seconds = send_to(SlidingWindowLimiter(30, 10.0, clock=clock), clock, server, 120, connections=3)
    assert server.refused == 0
    assert seconds - start <= 45  # 4 windows of 11 s: 33 s and a little


@pytest.mark.parametrize("start", [0.0, 0.5, 0.99])
def test_without_a_rate_postfixs_limit_is_learned_within_half_again_the_ideal_time(start: float) -> None:
    clock = FakeClock(start)
    server = PostfixAnvil(30, 10)
    limiter = SlidingWindowLimiter(None, clock=clock)
    seconds = send_to(limiter, clock, server, 120, connections=2)
    ideal = 3 * 11.0  # the server takes 30 per window, and its windows last up to 11 s
    assert seconds - start <= 1.5 * ideal
    assert limiter.current_limit == 30
    assert server.refused <= 30  # probes, growing apart, while the first two windows last


def test_once_learned_postfixs_limit_draws_no_more_rejections() -> None:
    clock = FakeClock()
    server = PostfixAnvil(30, 10)
    send_to(SlidingWindowLimiter(None, clock=clock), clock, server, 30 * 20, connections=3)
    assert server.refused <= 30  # nearly all while learning; then one per upward probe at most


def test_a_limit_is_learned_right_when_the_first_window_was_half_used_already() -> None:
    clock = FakeClock(0.2)
    server = PostfixAnvil(30, 10)
    for _ in range(25):  # a killed run's messages, moments before this run starts
        server.mail(0.0)
    limiter = SlidingWindowLimiter(None, clock=clock)
    seconds = send_to(limiter, clock, server, 120, connections=2)
    assert limiter.current_limit == 30  # not the 5 the first window had left
    assert seconds <= 1.5 * 4 * 11.0


SOFT_ERRORS, HARD_ERRORS, ERROR_SLEEP = 10, 20, 1.0  # Postfix's smtpd error limits, its defaults


def send_through_postfix(
    limiter: SlidingWindowLimiter,
    clock: FakeClock,
    server: PostfixAnvil,
    n: int,
    connections: int,
    *,
    replace_after: int | None = REFUSALS_PER_CONNECTION,
) -> tuple[float, int]:
    """Send ``n`` messages as the sender does, to Postfix's smtpd sessions.

    Each message is MAIL, RCPT and DATA in one write (RSET first after a refusal), then its
    content. Every refused command is an error of the session and a delivery forgives them:
    from 10 on every reply comes a second late, at 20 the session is dropped (and opened again
    a second later). The sender replaces a session after ``replace_after`` refusals since its
    last delivery. Returns when the last message was accepted, and the most errors a session
    had when a reply left.
    """
    left = n
    done_at = 0.0
    most_errors = 0

    async def connection() -> None:
        nonlocal left, done_at, most_errors
        errors, reset = 0, False
        server.event(clock.now)

        async def reply() -> None:
            nonlocal most_errors
            most_errors = max(most_errors, errors)
            await asyncio.sleep(0.001 + (ERROR_SLEEP if errors >= SOFT_ERRORS else 0.0))

        while left > 0:
            left -= 1
            slot = await limiter.acquire()
            if reset:
                await reply()  # RSET
            accepted = server.mail(clock.now)
            dropped = False
            for _ in ("MAIL", "RCPT", "DATA"):
                if errors >= HARD_ERRORS:
                    dropped = True  # 421 too many errors: a throttle, and the session is gone
                    break
                await reply()
                errors += not accepted
            if accepted:
                errors = 0
                await reply()  # the final "."
                done_at = clock.now
            else:
                left += 1  # back in the queue
                limiter.throttled(slot=slot)
            limiter.release(slot, accepted=accepted)
            reset = not accepted
            if dropped or (replace_after is not None and errors >= replace_after):
                errors, reset = 0, False
                await asyncio.sleep(1.0 if dropped else 0.01)
                server.event(clock.now)

    async def main() -> None:
        await asyncio.gather(*(connection() for _ in range(connections)))

    run_virtual(clock, main)
    return done_at, most_errors


@pytest.mark.parametrize("connections", [1, 2, 3])
@pytest.mark.parametrize("start", [0.0, 0.5, 0.99])
def test_against_postfixs_sessions_the_limit_is_learned_and_no_reply_is_slowed(
    start: float, connections: int
) -> None:
    clock = FakeClock(start)
    server = PostfixAnvil(30, 10)
    limiter = SlidingWindowLimiter(None, clock=clock)
    seconds, most_errors = send_through_postfix(limiter, clock, server, 120, connections)
    assert most_errors < SOFT_ERRORS  # sessions are replaced before Postfix slows them down
    assert limiter.current_limit == 30
    ideal = 3 * 11.0  # the fourth window's 30 go as it opens, 3 windows of up to 11 s after the first
    assert seconds - start <= 1.2 * ideal
    assert server.refused <= 35  # probes, growing apart, while the first two windows last


@pytest.mark.parametrize("connections", [1, 2, 3])
@pytest.mark.parametrize("start", [0.0, 0.5, 0.99])
def test_a_limit_is_learned_within_half_again_the_ideal_time_from_postfix_slowing_its_replies(
    start: float, connections: int
) -> None:
    clock = FakeClock(start)
    server = PostfixAnvil(30, 10)
    limiter = SlidingWindowLimiter(None, clock=clock)
    seconds, most_errors = send_through_postfix(limiter, clock, server, 120, connections, replace_after=None)
    # The server did slow its replies down (with 3 connections the refusals, fewer since probes
    # double their gaps, spread over the sessions: none reaches 10 errors any more).
    assert most_errors >= SOFT_ERRORS or connections == 3
    assert limiter.current_limit == 30
    assert seconds - start <= 1.5 * 3 * 11.0


# --- backoff -------------------------------------------------------------------------------


@given(attempt=st.integers(1, 10_000), seed=st.integers(0, 2**32))
def test_backoff_stays_within_the_full_jitter_bounds(attempt: int, seed: int) -> None:
    delay = backoff_delay(attempt, base=0.5, cap=30.0, rng=random.Random(seed))
    assert 0.0 <= delay <= min(30.0, 0.5 * 2 ** min(attempt - 1, 100))


def test_backoff_grows_exponentially_until_the_cap() -> None:
    rng = random.Random(7)
    for attempt, ceiling in [(1, 1.0), (2, 2.0), (3, 4.0), (6, 32.0), (7, 60.0), (50, 60.0)]:
        delays = [backoff_delay(attempt, rng=rng) for _ in range(200)]
        assert max(delays) <= ceiling
        assert max(delays) > ceiling * 0.9


def test_backoff_is_deterministic_given_an_rng() -> None:
    first = [backoff_delay(a, rng=random.Random(42)) for a in range(1, 10)]
    second = [backoff_delay(a, rng=random.Random(42)) for a in range(1, 10)]
    assert first == second


def test_backoff_attempts_start_at_one() -> None:
    with pytest.raises(ValueError):
        backoff_delay(0)

"""Tests for mailblast.ratelimit, all on fake time: nothing here really sleeps."""

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

from mailblast.ratelimit import PROBE_PERIODS, SlidingWindowLimiter, Slot, backoff_delay


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


def test_grants_up_to_the_limit_then_waits_for_the_window() -> None:
    clock = FakeClock()
    limiter = SlidingWindowLimiter(3, 1.0, clock=clock)
    slots = [limiter.try_acquire() for _ in range(3)]
    assert all(slots)
    assert limiter.try_acquire() is None
    for slot in slots:
        assert slot is not None
        limiter.release(slot)
    assert limiter.delay() == 1.0
    clock.now = 0.999
    assert limiter.try_acquire() is None
    clock.now = 1.0
    assert limiter.delay() == 0
    assert limiter.try_acquire() is not None


def test_a_released_slot_counts_until_release_time_plus_period() -> None:
    clock = FakeClock()
    limiter = SlidingWindowLimiter(1, 2.0, clock=clock)
    slot = limiter.try_acquire()
    assert slot is not None
    clock.now = 5.0
    limiter.release(slot)
    assert slot.released_at == 5.0
    clock.now = 6.5
    assert limiter.try_acquire() is None
    assert limiter.delay() == 0.5
    clock.now = 7.0
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
    for _ in range(2):
        slot = limiter.try_acquire()
        assert slot is not None
        limiter.release(slot)
    clock.now = 0.25
    slot = asyncio.run(limiter.acquire())
    assert clock.sleeps == [0.75]
    assert slot.acquired_at == 1.0


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
    assert slot.acquired_at == 31.0
    assert sleeps == [1.0]


def test_hold_releases_even_on_error() -> None:
    clock = FakeClock()
    limiter = SlidingWindowLimiter(1, 1.0, clock=clock)

    async def main() -> None:
        async with limiter.hold():
            clock.now = 3.0
            raise OSError("connection dropped")

    with pytest.raises(OSError):
        asyncio.run(main())
    clock.now = 4.0
    assert limiter.try_acquire() is not None


def test_instant_replies_reach_full_throughput() -> None:
    clock = FakeClock()
    limiter = SlidingWindowLimiter(3, 1.0, clock=clock)
    slots = simulate(limiter, clock, [(0.0, False)] * 300, connections=2)
    assert len(slots) == 300
    assert most_in_any_window(slots, 1.0) == 3
    # 100 windows of 3 messages: the last batch goes out at t=99.
    assert max(s.acquired_at for s in slots) == 99.0
    assert clock.now <= 100.0


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
        # Wakes at t=6 alongside the waiter, before it gets to run.
        await asyncio.sleep(1.0)
        return limiter.try_acquire(), await waiter

    jumper, slot = run_virtual(clock, main)
    assert jumper is None
    assert slot.acquired_at == 6.0


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


def test_throttled_pauses_and_halves() -> None:
    clock = FakeClock(10.0)
    limiter = SlidingWindowLimiter(8, 1.0, clock=clock)
    limiter.throttled()
    assert limiter.current_limit == 4
    assert limiter.paused_until == 11.0
    clock.now = 10.5
    assert limiter.try_acquire() is None
    assert limiter.delay() == 0.5
    clock.now = 11.0
    assert limiter.try_acquire() is not None

    clock.now = 20.0
    assert limiter.current_limit == 7  # recovered meanwhile, up to just below the refused 8
    limiter.throttled(pause=30.0)
    assert limiter.paused_until == 50.0
    assert limiter.current_limit == 3
    assert limiter.delay() == 30.0


def test_reports_during_a_pause_halve_only_once() -> None:
    clock = FakeClock()
    limiter = SlidingWindowLimiter(8, 1.0, clock=clock)
    limiter.throttled()
    clock.now = 0.5
    limiter.throttled(pause=5.0)
    assert limiter.current_limit == 4
    assert limiter.paused_until == 5.5


def test_limit_never_drops_below_one() -> None:
    clock = FakeClock()
    limiter = SlidingWindowLimiter(1, 1.0, clock=clock)
    limiter.throttled()
    assert limiter.current_limit == 1


def test_recovery_adds_one_per_quiet_period_up_to_the_ceiling() -> None:
    clock = FakeClock()
    limiter = SlidingWindowLimiter(8, 1.0, clock=clock)
    limiter.throttled()  # paused until 1.0; the first quiet period ends at 2.0
    assert limiter.current_limit == 4
    clock.now = 1.99
    assert limiter.current_limit == 4
    clock.now = 2.0
    assert limiter.current_limit == 5
    clock.now = 3.5
    assert limiter.current_limit == 6
    clock.now = 100.0
    assert limiter.current_limit == 8
    assert limiter.configured_limit == 8


def test_recovery_stops_below_the_refused_level_then_probes_slowly() -> None:
    clock = FakeClock()
    limiter = SlidingWindowLimiter(None, 1.0, clock=clock)
    for _ in range(4):  # the server refuses at 4 in a window, like Mailtrap at 3/s
        limiter.try_acquire()
    limiter.throttled()
    assert limiter.current_limit == 2
    clock.now = 2.0
    assert limiter.current_limit == 3  # one below the refused 4: the server's real limit
    clock.now = 2.0 + PROBE_PERIODS - 0.01
    assert limiter.current_limit == 3  # it stays there for a while
    clock.now = 2.0 + PROBE_PERIODS
    assert limiter.current_limit == 4  # then tries the refused level again
    limiter.throttled()
    assert limiter.current_limit == 2
    clock.now += 1.0 + 1.0 + PROBE_PERIODS * 5
    assert limiter.current_limit == 3 + 5  # the ceiling stays at 3; probing goes on above it


def test_delay_counts_on_the_next_recovery_step() -> None:
    clock = FakeClock()
    limiter = SlidingWindowLimiter(4, 1.0, clock=clock)
    limiter.throttled()
    clock.now = 1.0
    assert limiter.try_acquire() is not None
    assert limiter.try_acquire() is not None
    clock.now = 1.25
    # Both slots are still held: only the step to limit 3 at t=2 frees one.
    assert limiter.delay() == 0.75
    clock.now = 2.0
    assert limiter.try_acquire() is not None


def test_unknown_limit_becomes_half_of_what_was_observed() -> None:
    clock = FakeClock()
    limiter = SlidingWindowLimiter(None, 1.0, clock=clock)
    for _ in range(11):
        slot = limiter.try_acquire()
        assert slot is not None
        limiter.release(slot)
    clock.now = 0.5
    limiter.throttled()
    assert limiter.current_limit == 5
    assert limiter.configured_limit is None
    assert limiter.paused_until == 1.5
    clock.now = 1.5
    assert sum(1 for _ in range(10) if limiter.try_acquire()) == 5
    # Back to just below the refused 11 at one per period (10 at t=6.5), then probing:
    # one more every PROBE_PERIODS periods, with no configured ceiling to stop it.
    clock.now = 6.5
    assert limiter.current_limit == 10
    clock.now = 6.5 + 95.0
    assert limiter.current_limit == 10 + 95 // PROBE_PERIODS


def test_unknown_limit_throttled_when_idle_becomes_one() -> None:
    limiter = SlidingWindowLimiter(None, 1.0, clock=FakeClock())
    limiter.throttled()
    assert limiter.current_limit == 1


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

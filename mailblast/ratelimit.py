"""Keep a whole run inside the server's rate limit, and back off when told to.

A message holds a slot from just before its MAIL FROM until ``period`` seconds
after its final reply. Granting a slot only while fewer than ``limit`` slots are
still held that way means the server can never count more than ``limit`` messages
in any window of ``period`` seconds, whichever moment between MAIL FROM and reply
it counts.

When the server still says "too fast" (or no limit was given), every grant pauses
for at least a period and the limit halves; it then recovers by one per quiet
period up to just below the level the server refused, and only probes above that
level slowly. Without --rate, that is how the server's limit is found.
"""

from __future__ import annotations

import asyncio
import math
import random
import time
from collections import deque
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass


@dataclass(eq=False)
class Slot:
    """Permission to send one message, granted at ``acquired_at``."""

    acquired_at: float
    released_at: float | None = None


PROBE_PERIODS = 10  # above the learned ceiling, the limit rises by one every this many periods


class SlidingWindowLimiter:
    """At most ``limit`` messages in any sliding window of ``period`` seconds.

    ``limit=None`` means no known limit: every grant is immediate until the first
    :meth:`throttled`. One limiter is shared by all connections of a run.
    """

    def __init__(
        self,
        limit: int | None,
        period: float = 1.0,
        *,
        clock: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
    ) -> None:
        if limit is not None and limit < 1:
            raise ValueError(f"limit must be at least 1, not {limit}")
        if not period > 0:
            raise ValueError(f"period must be positive, not {period}")
        self._configured = limit
        self._limit = limit
        self._period = float(period)
        self._clock = clock
        self._sleep = sleep
        self._held: set[Slot] = set()
        self._released: deque[float] = deque()  # release times, oldest first
        self._paused_until = -math.inf
        self._recover_from: float | None = None  # start of the current quiet period
        self._ceiling = limit  # just below the lowest limit the server has refused (None: none yet)
        self._lock = asyncio.Lock()  # asyncio.Lock wakes waiters in FIFO order
        self._release_event = asyncio.Event()

    @property
    def configured_limit(self) -> int | None:
        """The limit given to the constructor (None: unknown)."""
        return self._configured

    @property
    def current_limit(self) -> int | None:
        """The limit in force now, after any throttling and recovery."""
        self._refresh(self._clock())
        return self._limit

    @property
    def period(self) -> float:
        """Length of the sliding window in seconds."""
        return self._period

    @property
    def paused_until(self) -> float:
        """Clock time before which nothing is granted (``-inf`` if never paused)."""
        return self._paused_until

    def delay(self) -> float:
        """Seconds until a slot could be granted: 0 if now, ``inf`` until a release."""
        now = self._clock()
        self._refresh(now)
        start = max(now, self._paused_until)
        if self._limit is None:
            return start - now
        expiries = [t + self._period for t in self._released if t + self._period > start]
        excess = len(self._held) + len(expiries) - self._limit + 1
        if excess <= 0:
            return start - now
        ready = expiries[excess - 1] if excess <= len(expiries) else math.inf
        if self._recover_from is not None:
            # The next recovery step raises the limit, which may free a slot sooner.
            ready = min(ready, self._recover_from + self._step())
        return max(start, ready) - now

    def try_acquire(self) -> Slot | None:
        """Take a slot if one is free now, else return None."""
        if self._lock.locked():
            return None  # tasks are queued in acquire(); do not jump the queue
        return self._grant()

    async def acquire(self) -> Slot:
        """Wait for a slot; concurrent callers are served first come, first served."""
        async with self._lock:
            while (slot := self._grant()) is None:
                wait = self.delay()
                if math.isinf(wait):
                    # Only a release can end this wait, and it sets the event.
                    self._release_event.clear()
                    await self._release_event.wait()
                else:
                    await self._sleep(wait)
            return slot

    def release(self, slot: Slot) -> None:
        """Record the message's final reply (or failure); releasing twice is harmless."""
        if slot not in self._held:
            return
        self._held.remove(slot)
        slot.released_at = self._clock()
        self._released.append(slot.released_at)
        self._release_event.set()

    @asynccontextmanager
    async def hold(self) -> AsyncIterator[Slot]:
        """``async with limiter.hold():`` acquire a slot and release it on exit."""
        slot = await self.acquire()
        try:
            yield slot
        finally:
            self.release(slot)

    def throttled(self, pause: float | None = None) -> None:
        """The server said we are too fast: pause all grants, halve the limit, learn the ceiling."""
        now = self._clock()
        self._refresh(now)
        # Concurrent connections report the same overload; halve once per pause.
        already_paused = now < self._paused_until
        self._paused_until = max(self._paused_until, now + max(self._period, pause or 0.0))
        self._recover_from = self._paused_until
        if already_paused:
            return
        refused = self._counted(now) if self._limit is None else self._limit
        # Remember where the server drew the line, so recovery stops short of it.
        self._ceiling = max(1, min(refused - 1, self._ceiling or refused))
        self._limit = max(1, refused // 2)

    def _grant(self) -> Slot | None:
        now = self._clock()
        self._refresh(now)
        if now < self._paused_until:
            return None
        if self._limit is not None and self._counted(now) >= self._limit:
            return None
        slot = Slot(acquired_at=now)
        self._held.add(slot)
        return slot

    def _counted(self, now: float) -> int:
        return len(self._held) + sum(1 for t in self._released if t + self._period > now)

    def _step(self) -> float:
        """Quiet time before the limit rises by one: a period below the ceiling, a probe above it."""
        below = self._ceiling is None or self._limit is None or self._limit < self._ceiling
        return self._period * (1 if below else PROBE_PERIODS)

    def _refresh(self, now: float) -> None:
        while self._released and self._released[0] + self._period <= now:
            self._released.popleft()
        if self._recover_from is None or self._limit is None:
            return
        while now >= self._recover_from + (step := self._step()):
            if self._ceiling is not None and self._limit >= self._ceiling:
                # Probing above the ceiling: the remaining steps all have this length.
                steps = max(1, math.floor((now - self._recover_from) / step))
            else:
                steps = 1
            self._limit += steps
            self._recover_from += steps * step
            if self._configured is not None and self._limit >= self._configured:
                self._limit = self._configured
                self._recover_from = None
                return


def backoff_delay(
    attempt: int, *, base: float = 1.0, cap: float = 60.0, rng: random.Random | None = None
) -> float:
    """Seconds to wait before retry ``attempt`` (1, 2, ...): full-jitter exponential backoff."""
    if attempt < 1:
        raise ValueError(f"attempt starts at 1, not {attempt}")
    # Clamp the exponent so that a huge attempt number cannot overflow a float.
    ceiling = min(cap, base * 2.0 ** min(attempt - 1, 1000))
    uniform = rng.uniform if rng is not None else random.uniform
    return uniform(0.0, ceiling)

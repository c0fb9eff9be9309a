"""Progress of a send: a rich bar on a terminal, plain periodic lines otherwise, or nothing.

It reads the sender's counts on a timer, so sending never waits for the display.
"""

from __future__ import annotations

import asyncio
import time
from collections import deque
from collections.abc import Callable
from types import TracebackType

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

from mailblast.smtp.outcomes import Counts

# Seconds over which messages/s and the time left are measured: long enough to hold several of the
# bursts a server's message limit makes (Postfix: 30 at once, then nothing for 10 s).
RATE_WINDOW = 60.0


class SendProgress:
    """``async with SendProgress(...)``: shows ``counts`` until the block ends."""

    def __init__(
        self,
        console: Console,
        counts: Counts,
        *,
        quiet: bool = False,
        plain_every: float = 5.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._console = console
        self._counts = counts
        self._quiet = quiet
        self._plain_every = plain_every
        self._clock = clock
        self._started = clock()
        self._samples: deque[tuple[float, int]] = deque([(self._started, self._delivered())])
        self._task: asyncio.Task[None] | None = None
        self._bar: Progress | None = None

    def _delivered(self) -> int:
        return self._counts.sent + self._counts.uncertain

    def rate(self) -> float:
        """Messages sent per second over the last minute (or since the start)."""
        now = self._clock()
        self._samples.append((now, self._delivered()))
        while len(self._samples) > 2 and now - self._samples[1][0] >= RATE_WINDOW:
            self._samples.popleft()
        (t0, n0), (t1, n1) = self._samples[0], self._samples[-1]
        return (n1 - n0) / (t1 - t0) if t1 > t0 else 0.0

    def line(self) -> str:
        c = self._counts
        rate = self.rate()
        left = c.total - c.done
        eta = f", about {_duration(left / rate)} left" if rate > 0 and left else ""
        return (
            f"{c.done:,}/{c.total:,} done: {c.sent:,} sent, {c.failed:,} failed, "
            f"{c.retrying:,} waiting to retry, {rate:.1f} msg/s{eta}"
        )

    async def __aenter__(self) -> SendProgress:
        if self._quiet:
            return self
        if self._console.is_terminal:
            self._bar = Progress(
                TextColumn("sending"),
                BarColumn(),
                MofNCompleteColumn(),
                TextColumn("{task.fields[detail]}"),
                TimeRemainingColumn(),
                console=self._console,
                transient=True,
            )
            self._bar.add_task("send", total=self._counts.total, detail="")
            self._bar.start()
        self._task = asyncio.create_task(self._tick())
        return self

    async def _tick(self) -> None:
        every = 0.25 if self._bar is not None else self._plain_every
        while True:
            await asyncio.sleep(every)
            self._show()

    def _show(self) -> None:
        if self._bar is not None:
            c = self._counts
            detail = f"sent {c.sent:,} · failed {c.failed:,} · waiting {c.retrying:,} · {self.rate():.1f}/s"
            self._bar.update(self._bar.task_ids[0], completed=c.done, detail=detail)
        else:
            self._console.print(self.line(), highlight=False, soft_wrap=True)  # one line, for grep

    async def __aexit__(
        self, kind: type[BaseException] | None, error: BaseException | None, tb: TracebackType | None
    ) -> None:
        if self._task is not None:
            self._task.cancel()
        if self._bar is not None:
            self._show()  # the bar ends on the last message, not on the last tick before it
            self._bar.stop()

    @property
    def elapsed(self) -> float:
        return self._clock() - self._started


def _duration(seconds: float) -> str:
    seconds = int(seconds)
    if seconds < 60:
        return f"{seconds}s"
    if seconds < 3600:
        return f"{seconds // 60}m{seconds % 60:02d}s"
    return f"{seconds // 3600}h{seconds % 3600 // 60:02d}m"

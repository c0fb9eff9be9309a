"""Compose ahead of the sender, in a second process for long runs.

Building MIME messages costs more CPU than sending them, so on a long run it happens
in worker processes, one per core, while the main process keeps the SMTP connections
busy; the check pass renders its rows there too. Short runs compose in-process:
starting a worker takes a few tenths of a second.
"""

from __future__ import annotations

import asyncio
import collections
import itertools
import multiprocessing
import multiprocessing.connection
import os
import threading
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import Future, ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from functools import partial
from pathlib import Path
from typing import Any, TypeVar

from mailblast.message.compose import CheckedRow, Composed, RowError, Template
from mailblast.message.recipients import Recipient

MAX_WORKERS = 4  # past this the main process, which sends, is the bottleneck
BATCH = 64  # recipients composed at a time
ATTACHING_BATCH = 4  # the same when messages may carry attachments: they are large
Checked = CheckedRow | RowError  # what checking a row gives, or why it cannot be sent
K = TypeVar("K")
T = TypeVar("T")

_worker_template: Template | None = None


def _start_worker(path: Path, options: dict[str, Any]) -> None:
    global _worker_template
    _worker_template = Template(path, **options)
    parent = multiprocessing.parent_process()
    if parent is not None:
        threading.Thread(target=_exit_with, args=(parent.sentinel,), daemon=True).start()


def _exit_with(parent_sentinel: int) -> None:
    """End this worker the moment its parent is gone, however it went (kill -9 too).

    Otherwise it waits for work forever, and keeps the resource tracker alive with it.
    """
    multiprocessing.connection.wait([parent_sentinel])
    os._exit(0)


def _each(make: Callable[[Recipient], T], recipients: list[Recipient]) -> list[T | RowError]:
    results: list[T | RowError] = []
    for recipient in recipients:
        try:
            results.append(make(recipient))
        except RowError as e:
            results.append(e)
    return results


def _compose_all(template: Template, recipients: list[Recipient], campaign: str = "") -> list[Composed]:
    return _each(partial(template.compose, campaign=campaign), recipients)


def _check_all(template: Template, recipients: list[Recipient]) -> list[Checked]:
    return _each(template.check, recipients)


def _compose_in_worker(recipients: list[Recipient], campaign: str = "") -> list[Composed]:
    assert _worker_template is not None
    return _compose_all(_worker_template, recipients, campaign)


def _check_in_worker(recipients: list[Recipient]) -> list[Checked]:
    assert _worker_template is not None
    return _check_all(_worker_template, recipients)


def batches(items: Iterable[T], size: int) -> Iterator[list[T]]:
    """``items`` in lists of ``size`` (the last may be shorter)."""
    it = iter(items)
    while batch := list(itertools.islice(it, size)):
        yield batch


def usable_cores() -> int:
    try:
        return len(os.sched_getaffinity(0))  # what this process may use (a container's share)
    except AttributeError:  # macOS, Windows
        return os.cpu_count() or 1


class ComposeWorker:
    """Turns batches of recipients into messages (or the RowError that stops each one).

    With ``in_worker``, batches (of ``batch`` recipients) go to one worker process per core, at
    most MAX_WORKERS, and ``parallel`` batches are worth having under way at once. Should the
    workers die (killed, out of memory), the work goes on in this process: slower, but sure.
    """

    def __init__(self, template: Template, *, in_worker: bool, processes: int | None = None) -> None:
        self._template = template
        self._pool: ProcessPoolExecutor | None = None
        self.parallel = 1
        self.batch = ATTACHING_BATCH if template.attaches else BATCH
        if in_worker:
            self.parallel = processes or min(MAX_WORKERS, usable_cores())
            # "spawn": a clean interpreter, safe whatever threads this process has running.
            self._pool = ProcessPoolExecutor(
                self.parallel,
                mp_context=multiprocessing.get_context("spawn"),
                initializer=_start_worker,
                initargs=(template.path, template.options),
            )
            for _ in range(self.parallel):
                self._pool.submit(int)  # start them now, while the caller does other work

    async def compose(self, recipients: list[Recipient], campaign: str = "") -> list[Composed]:
        """``campaign``: the campaign's identity, which its messages' Message-IDs carry."""
        future = self._submit(partial(_compose_in_worker, campaign=campaign), recipients)
        if future is not None:
            try:
                return await asyncio.wrap_future(future)
            except BrokenProcessPool:
                self._lost_pool()
        return _compose_all(self._template, recipients, campaign)

    def check_batches(
        self, batches: Iterable[tuple[K, list[Recipient]]]
    ) -> Iterator[tuple[K, list[Checked]]]:
        """Each batch's rows rendered and checked, not built, in order; ``K`` is the caller's tag."""
        return self._in_order(batches, _check_in_worker, _check_all)

    def compose_batches(
        self, batches: Iterable[tuple[K, list[Recipient]]]
    ) -> Iterator[tuple[K, list[Composed]]]:
        """Each batch's messages, in order, as compose() makes them."""
        return self._in_order(batches, _compose_in_worker, _compose_all)

    def _in_order(
        self,
        batches: Iterable[tuple[K, list[Recipient]]],
        in_worker: Callable[[list[Recipient]], list[T]],
        here: Callable[[Template, list[Recipient]], list[T]],
    ) -> Iterator[tuple[K, list[T]]]:
        under_way: collections.deque[tuple[K, list[Recipient], Future[list[T]] | None]]
        under_way = collections.deque()

        def result(key: K, recipients: list[Recipient], future: Future[list[T]] | None) -> tuple[K, list[T]]:
            if future is not None:
                try:
                    return key, future.result()
                except BrokenProcessPool:
                    self._lost_pool()
            return key, here(self._template, recipients)

        for key, recipients in batches:
            under_way.append((key, recipients, self._submit(in_worker, recipients)))
            if len(under_way) > self.parallel:
                yield result(*under_way.popleft())
        while under_way:
            yield result(*under_way.popleft())

    def _submit(self, work: Callable[[list[Recipient]], T], recipients: list[Recipient]) -> Future[T] | None:
        if self._pool is None:
            return None
        try:
            return self._pool.submit(work, recipients)
        except BrokenProcessPool:
            self._lost_pool()
            return None

    def _lost_pool(self) -> None:
        if self._pool is not None:
            self._pool.shutdown(wait=False)
            self._pool = None
            self.parallel = 1

    def close(self) -> None:
        if self._pool is not None:
            self._pool.shutdown(wait=False, cancel_futures=True)

    def __enter__(self) -> ComposeWorker:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

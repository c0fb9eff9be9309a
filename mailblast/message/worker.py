"""Compose ahead of the sender, in a second process for long runs.

Building MIME messages costs about as much CPU as sending them, so on a long run
it happens in a worker process on the other core while the main process keeps the
SMTP connections busy. Short runs compose in-process: starting a worker takes a
few tenths of a second.
"""

from __future__ import annotations

import asyncio
import multiprocessing
import multiprocessing.connection
import os
import threading
from concurrent.futures import ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from pathlib import Path
from typing import Any

from mailblast.message.compose import Composed, RowError, Template
from mailblast.message.recipients import Recipient

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


def _compose_all(template: Template, recipients: list[Recipient]) -> list[Composed]:
    results: list[Composed] = []
    for recipient in recipients:
        try:
            results.append(template.compose(recipient))
        except RowError as e:
            results.append(e)
    return results


def _compose_in_worker(recipients: list[Recipient]) -> list[Composed]:
    assert _worker_template is not None
    return _compose_all(_worker_template, recipients)


class ComposeWorker:
    """Turns batches of recipients into messages (or the RowError that stops each one)."""

    def __init__(self, template: Template, *, in_worker: bool) -> None:
        self._template = template
        self._pool: ProcessPoolExecutor | None = None
        if in_worker:
            # "spawn": a clean interpreter, safe whatever threads this process has running.
            self._pool = ProcessPoolExecutor(
                1,
                mp_context=multiprocessing.get_context("spawn"),
                initializer=_start_worker,
                initargs=(template.path, template.options),
            )
            self._pool.submit(int)  # start it now, while the caller does other work

    async def compose(self, recipients: list[Recipient]) -> list[Composed]:
        if self._pool is not None:
            try:
                return await asyncio.wrap_future(self._pool.submit(_compose_in_worker, recipients))
            except BrokenProcessPool:
                # The worker died (killed, out of memory): go on in this process, slower but sure.
                self._pool.shutdown(wait=False)
                self._pool = None
        return _compose_all(self._template, recipients)

    def close(self) -> None:
        if self._pool is not None:
            self._pool.shutdown(wait=False, cancel_futures=True)

"""Quotas that hold across runs: the pure rule, the shared database, the limiter, and real sends."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from mailblast.smtp.quota import QuotaBook, QuotaLimiter, account_of, is_quota, next_free, used
from mailblast.smtp.urls import Rate, parse_rate, parse_smtp_url
from tests.servers import SmtpServer
from tests.test_send_cli import campaign, mailblast

DAY = 86400.0


def test_the_window_counts_and_the_next_free_slot() -> None:
    sent = [100.0, 200.0, 300.0]
    assert used(sent, 1000, 1050) == 3
    assert used(sent, 1000, 1100) == 2  # 100 left the window (1100 - 1000, 1100]
    assert next_free(sent, 4, 1000, 400) == 400  # one free now
    assert next_free(sent, 3, 1000, 400) == 1100  # when the oldest leaves
    assert next_free(sent, 2, 1000, 400) == 1200  # two must leave
    assert next_free([], 1, 1000, 5) == 5
    assert next_free(sent, 3, 1000, 1100) == 1100  # exactly at its expiry, 100 no longer counts


def test_only_rates_over_a_minute_are_quotas() -> None:
    assert [is_quota(parse_rate(r)) for r in ("500/d", "2000/day", "100/h", "10/2min")] == [True] * 4
    assert [is_quota(parse_rate(r)) for r in ("3/s", "180/min")] == [False, False]
    assert not is_quota(None)


def test_an_account_is_the_login_at_the_host() -> None:
    assert account_of(parse_smtp_url("smtps://Me%40Example.com@SMTP.Gmail.com:465")) == (
        "me@example.com at smtp.gmail.com"  # one login, however it is written
    )
    assert account_of(parse_smtp_url("smtp://127.0.0.1:2525")) == "127.0.0.1"


def test_the_book_is_shared_by_every_process(tmp_path: Path) -> None:
    first, second = QuotaBook(tmp_path), QuotaBook(tmp_path)
    try:
        assert first.take("me@smtp.gmail.com", 2, DAY, 1000.0) is None
        assert second.take("me@smtp.gmail.com", 2, DAY, 1001.0) is None
        assert first.take("me@smtp.gmail.com", 2, DAY, 1002.0) == 1000.0 + DAY
        assert second.take("other@smtp.gmail.com", 2, DAY, 1002.0) is None  # accounts are apart
        assert first.times("me@smtp.gmail.com", DAY, 1003.0) == [1000.0, 1001.0]
    finally:
        first.close()
        second.close()


class FakeTime:
    def __init__(self, now: float) -> None:
        self.now = now
        self.slept: list[float] = []

    def clock(self) -> float:
        return self.now

    async def sleep(self, seconds: float) -> None:
        self.slept.append(seconds)
        self.now += seconds


def limiter(book: QuotaBook, fake: FakeTime, *, wait: bool, events: list) -> QuotaLimiter:
    stopped: list[float] = []
    return QuotaLimiter(
        book,
        "me@host",
        [Rate(2, 3600.0)],
        wait=wait,
        stopping=lambda: bool(stopped),
        on_exhausted=lambda at: (stopped.append(at), events.append(("exhausted", at))),
        on_wait=lambda at: events.append(("wait", at)),
        wall_clock=fake.clock,
        clock=fake.clock,
        sleep=fake.sleep,
    )


def test_a_slot_soon_free_is_waited_for_and_a_later_one_stops(tmp_path: Path) -> None:
    book = QuotaBook(tmp_path, clock=lambda: 10_000.0)
    fake, events = FakeTime(10_000.0), []
    gate = limiter(book, fake, wait=False, events=events)

    async def take(n: int) -> None:
        for _ in range(n):
            gate.release(await gate.acquire())

    book.take("me@host", 2, 3600.0, 10_000.0 - 3600.0 + 120.0)  # leaves the window in 120 s
    asyncio.run(take(2))  # one free now, the next in 120 s: waited for, in steps of a second
    assert events == [("wait", 10_120.0)] and sum(fake.slept) == pytest.approx(120.0)
    assert len(fake.slept) == 120
    asyncio.run(take(1))  # the next is an hour away: the run stops, and the slot is not taken
    assert events[1:] == [("exhausted", 10_000.0 + 3600.0)] and gate.exhausted_until == 13_600.0
    assert book.times("me@host", 3600.0, fake.now) == [10_000.0, 10_120.0]
    book.close()


def test_a_relay_that_can_give_way_hands_its_slot_back_rather_than_wait(tmp_path: Path) -> None:
    book = QuotaBook(tmp_path, clock=lambda: 10_000.0)
    fake, events, asked = FakeTime(10_000.0), [], []
    gate = QuotaLimiter(
        book,
        "me@host",
        [Rate(1, 3600.0)],
        wait=False,
        stopping=lambda: False,
        on_exhausted=lambda at: events.append(("exhausted", at)),
        on_wait=lambda at: events.append(("wait", at)),
        give_way=lambda seconds: asked.append(seconds) or True,  # another relay sends meanwhile
        wall_clock=fake.clock,
        clock=fake.clock,
        sleep=fake.sleep,
    )
    book.take("me@host", 1, 3600.0, 10_000.0 - 3600.0 + 120.0)  # leaves the window in 120 s
    slot = asyncio.run(gate.acquire())
    assert slot.refused and asked == [120.0]
    assert fake.slept == [] and events == []  # neither waited nor stopped
    assert book.times("me@host", 3600.0, fake.now) == [6520.0]  # and nothing was taken
    fake.now += 120.0
    slot = asyncio.run(gate.acquire())
    assert not slot.refused and book.times("me@host", 3600.0, fake.now) == [10_120.0]
    book.close()


def test_with_wait_even_an_hour_is_waited_for(tmp_path: Path) -> None:
    book = QuotaBook(tmp_path, clock=lambda: 0.0)
    fake, events = FakeTime(50_000.0), []
    gate = limiter(book, fake, wait=True, events=events)

    async def take(n: int) -> None:
        for _ in range(n):
            gate.release(await gate.acquire())

    asyncio.run(take(3))
    assert events == [("wait", 53_600.0)] and sum(fake.slept) == pytest.approx(3600.0)
    book.close()


def test_rate_5_per_day_sends_5_and_the_next_campaign_through_the_account_sends_nothing(
    tmp_path: Path, smtp_server: Callable[..., SmtpServer]
) -> None:
    server = smtp_server()
    env = {"MAILBLAST_STATE_DIR": str(tmp_path / "state")}
    first, second = tmp_path / "first", tmp_path / "second"
    first.mkdir()
    second.mkdir()
    campaign(first, 8)
    campaign(second, 3)
    args = ["send", "people.csv", "-t", "t.txt", "--smtp", server.url, "--rate", "5/d", "--connections", "2"]
    before = time.time()
    proc = mailblast(first, *args, env=env)
    assert proc.returncode == 3, proc.stderr
    assert len(server.received) == 5
    assert (
        "the quota of 5/d for 127.0.0.1 is used: 5 sent in this run, 3 left; the next may go at "
        in proc.stderr
    )
    assert "run the same command again then" in proc.stderr and "--wait" in proc.stderr
    assert "Traceback" not in proc.stderr

    connections = server.connections
    for folder, left in ((second, 3), (first, 3)):  # another campaign, and the first one resumed
        proc = mailblast(folder, *args, env=env)
        assert proc.returncode == 3, proc.stderr
        assert f"0 sent in this run, {left} left" in proc.stderr
    assert len(server.received) == 5 and server.connections == connections  # not even a connection

    status = mailblast(first, "status", "people.csv", "--smtp", server.url, "--rate", "5/d", env=env)
    assert status.returncode == 0, status.stderr
    assert "quota 5/d for 127.0.0.1: 5 used, 0 left; the next may go at" in status.stdout
    pending = [line.split() for line in status.stdout.splitlines() if line.strip().startswith("pending")]
    assert pending == [["pending", "3"]]
    assert time.time() - before < 60


def test_a_slot_free_within_minutes_is_waited_for(
    tmp_path: Path, smtp_server: Callable[..., SmtpServer]
) -> None:
    server = smtp_server()
    state = tmp_path / "state"
    book = QuotaBook(state)
    now, began = time.time(), time.monotonic()
    for _ in range(2):  # both leave the hour's window in 2 s
        assert book.take("127.0.0.1", 2, 3600.0, now - 3600.0 + 2.0) is None
    book.close()
    campaign(tmp_path, 1)
    args = ["send", "people.csv", "-t", "t.txt", "--smtp", server.url, "--rate", "2/h"]
    proc = mailblast(tmp_path, *args, env={"MAILBLAST_STATE_DIR": str(state)})
    assert proc.returncode == 0, proc.stderr
    assert "quota 2/h for 127.0.0.1: 2 used, 0 left" in proc.stderr
    assert "is used: waiting until" in proc.stderr
    assert server.recipients() == ["user0@example.com"]
    assert server.received[0].at - began >= 1.8  # sent only once the slot was free

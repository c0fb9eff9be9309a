"""Several limits at once (--rate 3/s --rate 500/d): parsed once into a Pace, and every one holds."""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from mailblast.config import load_settings
from mailblast.errors import ConfigError
from mailblast.smtp.quota import QuotaBook, QuotaLimiter
from mailblast.smtp.urls import Pace, Rate, parse_pace, parse_rate
from tests.servers import SmtpServer
from tests.test_ratelimit import FakeClock, run_virtual
from tests.test_send_cli import campaign, mailblast

Server = Callable[..., SmtpServer]
DAY = 86400.0


def test_a_pace_is_every_rate_given_split_into_pacing_and_quotas() -> None:
    pace = parse_pace(["3/s", "500/d", "3/s", "100/min"])
    assert pace.rates == (Rate(3, 1.0), Rate(500, DAY), Rate(100, 60.0))  # the same rate twice counts once
    assert pace.pacing == (Rate(3, 1.0), Rate(100, 60.0)) and pace.quotas == (Rate(500, DAY),)
    assert str(pace) == "3/s and 500/d and 100/min"
    assert parse_pace("3/s") == Pace((Rate(3, 1.0),)) and not parse_pace(None)


def test_the_file_takes_one_rate_or_a_list_and_the_flags_replace_it(tmp_path: Path) -> None:
    config = tmp_path / "mailblast.toml"
    config.write_text('[smtp]\nurl = "smtp://127.0.0.1:2525"\nrate = ["3/s", "500/d"]\n')
    assert load_settings(config, {}).rate == parse_pace(["3/s", "500/d"])
    assert load_settings(config, {"rate": ["2/s"]}).rate == parse_pace("2/s")
    relay = tmp_path / "relays.toml"
    relay.write_text('[[relay]]\nurl = "smtp://127.0.0.1:2525"\nrate = ["3/s", "500/d"]\n')
    (one,) = load_settings(relay, {}).relay_list()
    assert one.rate == parse_pace(["3/s", "500/d"])
    config.write_text('[smtp]\nrate = ["3/s", "banana"]\n')
    with pytest.raises(ConfigError, match=r"smtp.rate: invalid rate 'banana'"):
        load_settings(config, {})
    config.write_text("[smtp]\nrate = 3\n")
    with pytest.raises(ConfigError, match=r"smtp.rate should be a rate in quotes, or a list of them"):
        load_settings(config, {})


def test_one_server_is_a_one_entry_relay_list(tmp_path: Path) -> None:
    flags = {"smtp_url": "smtp://me@127.0.0.1:2525", "rate": ["3/s"], "connections": 3}
    settings = load_settings(None, flags)
    (one,) = settings.relay_list()
    assert (one.name, one.url, str(one.rate), one.connections) == ("", "smtp://me@127.0.0.1:2525", "3/s", 3)


def test_a_bad_rate_is_refused_before_anything_even_in_a_dry_run(tmp_path: Path) -> None:
    campaign(tmp_path, 2)
    proc = mailblast(tmp_path, "send", "people.csv", "-t", "t.txt", "--dry-run", "--rate", "banana")
    assert proc.returncode == 2 and "invalid rate 'banana'" in proc.stderr


def test_a_refused_message_gives_its_quota_back(tmp_path: Path) -> None:
    book = QuotaBook(tmp_path)
    clock = FakeClock()

    def limiter() -> QuotaLimiter:
        return QuotaLimiter(
            book,
            "me",
            [Rate(2, 3600.0), Rate(5, DAY)],
            pacing=Rate(3, 1.0),
            wait=False,
            stopping=lambda: False,
            on_exhausted=lambda _: None,
            on_wait=lambda _: None,
            clock=clock,
            sleep=clock.sleep,
        )

    async def main() -> None:
        gate = limiter()
        refused = await gate.acquire()
        gate.release(refused, accepted=False)  # the server said no: it used none of the quota
        lost = await gate.acquire()
        lost.maybe_delivered = True
        gate.release(lost, accepted=False)  # its reply was lost: it may have counted
        gate.release(await gate.acquire())
        assert gate.try_acquire() is None  # 2 per hour: the lost one and the accepted one
        assert (await gate.acquire()).refused

    run_virtual(clock, main)
    assert len(book.times("me", DAY, time.time())) == 2


def test_several_limits_hold_and_the_quota_counts_only_accepted_messages(
    tmp_path: Path, smtp_server: Server
) -> None:
    """Issue 15: --rate 3/s --rate 500/d against a server allowing 3/s draws no refusal."""
    server = smtp_server(rate=(3, 1.0))  # the rule `serve --rate 3/s` applies
    campaign(tmp_path, 15)
    env = {"MAILBLAST_STATE_DIR": str(tmp_path / "state")}
    args = ["send", "people.csv", "-t", "t.txt", "--smtp", server.url, "--rate", "3/s", "--rate", "500/d"]
    proc = mailblast(tmp_path, *args, env=env)
    assert proc.returncode == 0, proc.stderr
    assert len(server.received) == 15 and server.rejected == []
    assert server.max_in_window(1.0) <= 3
    assert "at most 3/s and 500/d" in proc.stderr
    assert "quota 500/d for 127.0.0.1: 0 used, 500 left" in proc.stderr
    status = mailblast(tmp_path, "status", "people.csv", "-t", "t.txt", *args[4:], env=env)
    out = status.stdout + status.stderr
    assert "limits: at most 3/s and 500/d" in out and "quota 500/d for 127.0.0.1: 15 used, 485 left" in out


def test_a_quota_does_not_count_the_attempts_a_server_refused(tmp_path: Path, smtp_server: Server) -> None:
    """With only --rate 500/d the per-second limit is found by being refused; refusals cost no quota."""
    server = smtp_server(rate=(3, 1.0))
    campaign(tmp_path, 12)
    env = {"MAILBLAST_STATE_DIR": str(tmp_path / "state")}
    proc = mailblast(
        tmp_path, "send", "people.csv", "-t", "t.txt", "--smtp", server.url, "--rate", "500/d", env=env
    )
    assert proc.returncode == 0, proc.stderr
    assert len(server.received) == 12 and server.rejected  # it was refused on the way
    book = QuotaBook(tmp_path / "state")
    assert len(book.times("127.0.0.1", DAY, time.time())) == 12


def test_without_a_rate_the_summary_says_what_was_learned_and_the_rate_to_pass(
    tmp_path: Path, smtp_server: Server
) -> None:
    server = smtp_server(rate=(5, 1.0))
    campaign(tmp_path, 30)
    proc = mailblast(tmp_path, "send", "people.csv", "-t", "t.txt", "--smtp", server.url, "--json")
    assert proc.returncode == 0, proc.stderr
    assert len(server.received) == 30
    (learned,) = json.loads(proc.stdout)["learned"]
    limit, suggested = parse_rate(learned["limit"]), parse_rate(learned["suggested_rate"])
    assert limit.count == 5 and 1.0 <= limit.period <= 2.0  # tenths of a second, rounded up
    assert suggested.count < limit.count and suggested.period == limit.period
    assert f"learned the server's limit, about {limit}: next time pass --rate {suggested}" in proc.stderr

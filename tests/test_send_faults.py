"""`mailblast send` against servers that behave like real ones at their limits, and faults (issue 8)."""

from __future__ import annotations

import signal
import time
from collections import Counter
from collections.abc import Callable
from pathlib import Path

from tests.servers import SmtpServer
from tests.test_resume import command, journal_states, people, run, start, wait_until, write_campaign


def test_too_many_connections_is_a_clear_error(tmp_path: Path) -> None:
    write_campaign(tmp_path, people(3))
    started = time.monotonic()
    result = run(tmp_path, command("smtp://127.0.0.1:1", "--connections", "10000000"))
    assert result.returncode == 2
    assert "connections must be at most 100, not 10,000,000" in result.stderr
    assert "Traceback" not in result.stderr and "Logging error" not in result.stderr
    assert time.monotonic() - started < 30


def test_a_server_refusing_every_greeting_is_given_up_on(
    tmp_path: Path, smtp_server: Callable[..., SmtpServer]
) -> None:
    server = smtp_server(greeting_reply="421 4.7.0 mx.example.com Error: too many connections from 127.0.0.1")
    write_campaign(tmp_path, people(4))
    result = run(tmp_path, command(server.url, "--retries", "2", "--report", "report.csv"))
    assert result.returncode == 3, result.stderr
    assert "stopped: 421 4.7.0" in result.stderr
    assert server.connections <= 3 * 2  # a try and two retries, on two connections
    report = (tmp_path / "report.csv").read_text().splitlines()
    assert len(report) == 1 + 4  # every recipient, with its real attempts
    assert all(",not attempted," in line for line in report[1:])
    attempts = [int(line.split(",")[-2]) for line in report[1:]]  # the last column is now campaign
    assert sum(attempts) == server.connections


def test_a_connection_cap_is_said_once_and_every_message_arrives_once(
    tmp_path: Path, smtp_server: Callable[..., SmtpServer]
) -> None:
    server = smtp_server(max_connections=2)
    write_campaign(tmp_path, people(30))
    result = run(tmp_path, command(server.url, "--connections", "5"))
    assert result.returncode == 0, result.stderr
    assert result.stderr.count("sending over 2 connection(s)") == 1
    assert sorted(server.recipients()) == sorted(a for a, _ in people(30))
    assert server.most_open <= 2


def test_kill_9_during_throttling_leaves_at_most_one_uncertain_per_connection(
    tmp_path: Path, smtp_server: Callable[..., SmtpServer]
) -> None:
    connections = 3
    # Postfix's message limit refuses at MAIL FROM: those refused are certainly not delivered,
    # and random 451s after DATA prove the same; a slow final reply keeps messages in flight.
    server = smtp_server(
        postfix_rate=(6, 1), fail_random=(0.3, "451 4.3.0 Temporary failure"), seed=3, data_latency=0.05
    )
    write_campaign(tmp_path, people(24))
    args = command(server.url, "--connections", str(connections), "--retries", "20")
    proc = start(tmp_path, args)
    wait_until(lambda: len(server.received) >= 7 and len(server.rejected) >= 4)
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=30)
    states = journal_states(tmp_path)
    assert states["sending"] <= connections  # only messages whose final "." may have been written
    again = run(tmp_path, [*args, "--skip-uncertain"])
    assert again.returncode in (0, 1), again.stderr
    received = Counter(server.recipients())
    assert all(n == 1 for n in received.values())
    # --skip-uncertain leaves out only what was in flight: never more than one per connection
    missing = {a for a, _ in people(24)} - set(received)
    assert len(missing) <= states["sending"]
    assert all(address in again.stderr for address in missing)  # named as left out


def test_a_lost_final_reply_then_a_stop_stays_in_flight_for_the_next_run(
    tmp_path: Path, smtp_server: Callable[..., SmtpServer]
) -> None:
    from tests.servers import DROP

    stages: Counter[str] = Counter()

    def hook(stage: str, envelope: object, accepted: int) -> str | None:
        stages[stage] += 1
        if stage == "data" and stages[stage] == 1:
            return DROP  # the final "." was written; its reply never comes
        if stage == "mail" and stages[stage] == 2:
            return "554 5.4.5 Daily sending quota exceeded"  # the resend's MAIL: the run stops
        return None

    server = smtp_server(reply_hook=hook)
    write_campaign(tmp_path, people(1))
    result = run(tmp_path, command(server.url, "--connections", "1", "--report", "report.csv"))
    assert result.returncode == 3, result.stderr
    report = (tmp_path / "report.csv").read_text().splitlines()
    assert len(report) == 2 and ",uncertain," in report[1], report
    assert "stopped before a resend" in report[1]
    assert journal_states(tmp_path) == Counter({"sending": 1})  # may have been delivered: said next time
    again = run(tmp_path, command(smtp_server().url))
    assert again.returncode == 0, again.stderr
    assert "possible duplicates: row 1 user0@example.com" in again.stderr

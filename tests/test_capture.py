"""The capture server (`mailblast serve`, and `send` with no server): rules, Maildir, the real sender."""

from __future__ import annotations

import mailbox
import random
import signal
import smtplib
import socket
import subprocess
import sys
import time
from datetime import datetime
from email.message import EmailMessage
from email.parser import BytesParser
from email.policy import default as default_policy
from pathlib import Path

import pytest

from mailblast.errors import ConfigError
from mailblast.server.capture import (
    MAILTRAP_THROTTLE_REPLY,
    RANDOM_FAILURE_REPLY,
    TOO_MANY_CONNECTIONS_REPLY,
    TOO_MANY_MESSAGES_REPLY,
    Captured,
    Event,
    Limits,
    ProviderRules,
    Refused,
    WindowCount,
    in_background,
    open_outbox,
)
from mailblast.smtp.replies import Kind, classify
from mailblast.smtp.urls import Rate
from tests.servers import max_in_window
from tests.test_send_cli import campaign, mailblast


class FakeClock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


# -- the rules, without a network ------------------------------------------------------------


def test_window_counts_the_half_open_window() -> None:
    window = WindowCount(1.0)
    window.add(10.0)
    window.add(10.5)
    assert window.count(10.9) == 2
    assert window.count(11.0) == 1  # exactly one period later, the first one is out
    assert window.count(11.5) == 0


def test_rate_answers_like_mailtrap_above_the_window() -> None:
    clock = FakeClock()
    rules = ProviderRules(Limits(rate=Rate(3, 1.0)), clock=clock)
    assert [rules.data() for _ in range(3)] == [None, None, None]
    assert rules.data() == MAILTRAP_THROTTLE_REPLY
    assert MAILTRAP_THROTTLE_REPLY == "550 5.7.0 Requested action not taken: too many emails per second"
    clock.now += 0.999
    assert rules.data() == MAILTRAP_THROTTLE_REPLY  # a refused message does not count
    clock.now += 0.001
    assert [rules.data() for _ in range(4)] == [None, None, None, MAILTRAP_THROTTLE_REPLY]


def test_connection_cap_and_messages_per_connection() -> None:
    rules = ProviderRules(Limits(max_connections=2, max_messages=3))
    assert rules.connect() is None and rules.connect() is None
    assert rules.connect() == TOO_MANY_CONNECTIONS_REPLY
    rules.disconnect()
    assert rules.connect() is None
    assert [rules.mail(n) for n in range(4)] == [None, None, None, TOO_MANY_MESSAGES_REPLY]


def test_fail_rate_is_random_451s_at_that_share() -> None:
    rules = ProviderRules(Limits(fail_rate=0.25), rng=random.Random(1))
    replies = [rules.data() for _ in range(2000)]
    assert set(replies) == {None, RANDOM_FAILURE_REPLY}
    assert 400 < replies.count(RANDOM_FAILURE_REPLY) < 600
    # a temporary failure of one message, retried; not a sign of sending too fast
    assert classify(451, RANDOM_FAILURE_REPLY[4:]).kind is Kind.TRANSIENT


def test_limits_are_checked() -> None:
    with pytest.raises(ConfigError, match="fail-rate"):
        Limits(fail_rate=1.5)
    with pytest.raises(ConfigError, match="max-connections"):
        Limits(max_connections=0)
    assert Limits().describe() == "no limits"
    assert Limits(Rate(3, 1.0), 2).describe() == "at most 3/s, 2 connection(s) at once"


def test_outbox_refuses_a_folder_that_is_not_a_maildir(tmp_path: Path) -> None:
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "000001-a@example.com.eml").write_text("x")
    with pytest.raises(ConfigError, match="not a Maildir"):
        open_outbox(tmp_path / "out")
    (tmp_path / "file").write_text("x")
    with pytest.raises(ConfigError, match="not a folder"):
        open_outbox(tmp_path / "file")
    (tmp_path / "empty").mkdir()
    assert isinstance(open_outbox(tmp_path / "empty"), mailbox.Maildir)
    assert (tmp_path / "empty" / "new").is_dir()


# -- on the wire -------------------------------------------------------------------------------


def message(to: str, subject: str = "Hi") -> EmailMessage:
    msg = EmailMessage()
    msg["From"] = "news@example.com"
    msg["To"] = to
    msg["Subject"] = subject
    msg.set_content("hello")
    return msg


def stored(outbox: Path) -> list[EmailMessage]:
    box = mailbox.Maildir(outbox, factory=lambda f: BytesParser(policy=default_policy).parse(f))
    return list(box.values())


def test_stores_each_message_with_its_envelope(tmp_path: Path) -> None:
    events: list[Event] = []
    to = ["ada@example.com", "bcc@x.org"]
    with in_background(tmp_path / "outbox", on_event=events.append) as server:
        smtplib.SMTP(server.host, server.port).send_message(message("ada@example.com", "Grüße"), to_addrs=to)
    [msg] = stored(tmp_path / "outbox")
    assert msg["Subject"] == "Grüße"
    assert msg["Envelope-to"] == "ada@example.com, bcc@x.org"
    assert msg["Return-path"] == "<news@example.com>"
    assert msg.get_content().strip() == "hello"
    [event] = events
    assert isinstance(event, Captured)
    assert event.line().endswith(
        "news@example.com -> ada@example.com, bcc@x.org  'Grüße'  " + f"{event.size} bytes"
    )


def test_greeting_is_a_421_above_the_connection_cap(tmp_path: Path) -> None:
    events: list[Event] = []
    with in_background(tmp_path / "outbox", Limits(max_connections=1), on_event=events.append) as server:
        with smtplib.SMTP(server.host, server.port) as first:
            first.noop()
            with pytest.raises(smtplib.SMTPConnectError) as refused:
                smtplib.SMTP(server.host, server.port)
            assert refused.value.smtp_code == 421
        deadline = time.monotonic() + 5
        while server.rules.connections and time.monotonic() < deadline:
            time.sleep(0.01)  # the server sees the first one close
        with smtplib.SMTP(server.host, server.port) as again:
            assert again.noop()[0] == 250
    assert [e.reply for e in events if isinstance(e, Refused)] == [TOO_MANY_CONNECTIONS_REPLY]


def test_any_login_is_accepted(tmp_path: Path) -> None:
    with in_background(tmp_path / "outbox") as server, smtplib.SMTP(server.host, server.port) as client:
        client.login("someone", "anything")
        client.send_message(message("ada@example.com"))
    assert len(stored(tmp_path / "outbox")) == 1


# -- driven by the real sender -------------------------------------------------------------------


def test_rate_rehearsal_delivers_every_message_within_the_window(tmp_path: Path) -> None:
    events: list[Event] = []
    outbox = tmp_path / "outbox"
    with in_background(outbox, Limits(rate=Rate(3, 1.0), max_connections=2), on_event=events.append) as srv:
        campaign(tmp_path, 9)
        proc = mailblast(tmp_path, "send", "people.csv", "-t", "t.txt", "--smtp", srv.url, "-q")
    assert proc.returncode == 0, proc.stderr
    delivered = sorted(str(m["Envelope-to"]) for m in stored(outbox))
    assert delivered == sorted(f"user{i}@example.com" for i in range(9))
    captured = [e.at.timestamp() for e in events if isinstance(e, Captured)]
    assert max_in_window(captured, 1.0) <= 3
    # without --rate, mailblast finds the limit from the 550s, retrying each refused message
    refusals = [e.reply for e in events if isinstance(e, Refused)]
    assert set(refusals) <= {MAILTRAP_THROTTLE_REPLY}


def test_connection_cap_and_reconnects_deliver_every_message(tmp_path: Path) -> None:
    outbox = tmp_path / "outbox"
    with in_background(outbox, Limits(max_connections=2, max_messages=4)) as srv:
        campaign(tmp_path, 20)
        proc = mailblast(
            tmp_path, "send", "people.csv", "-t", "t.txt", "--smtp", srv.url, "-q", "--max-messages", "4"
        )
        refused = srv.refused
    assert proc.returncode == 0, proc.stderr
    assert len(stored(outbox)) == 20
    assert refused == 0  # the sender reconnects before the server's cap: nothing is refused


def test_messages_per_connection_above_the_cap_still_arrive(tmp_path: Path) -> None:
    events: list[Event] = []
    outbox = tmp_path / "outbox"
    with in_background(outbox, Limits(max_messages=3), on_event=events.append) as srv:
        campaign(tmp_path, 8)
        proc = mailblast(tmp_path, "send", "people.csv", "-t", "t.txt", "--smtp", srv.url, "-q")
    assert proc.returncode == 0, proc.stderr
    assert len(stored(outbox)) == 8
    assert TOO_MANY_MESSAGES_REPLY in [e.reply for e in events if isinstance(e, Refused)]


def test_random_failures_are_retried_until_all_arrive(tmp_path: Path) -> None:
    events: list[Event] = []
    outbox = tmp_path / "outbox"
    limits = Limits(fail_rate=0.2)
    with in_background(outbox, limits, on_event=events.append, rng=random.Random(7)) as srv:
        campaign(tmp_path, 10)
        proc = mailblast(
            tmp_path, "send", "people.csv", "-t", "t.txt", "--smtp", srv.url, "-q", "--retries", "20"
        )
    assert proc.returncode == 0, proc.stderr
    assert sorted(str(m["Envelope-to"]) for m in stored(outbox)) == sorted(
        f"user{i}@example.com" for i in range(10)
    )
    assert RANDOM_FAILURE_REPLY in [e.reply for e in events if isinstance(e, Refused)]


# -- `mailblast serve` as a user runs it ---------------------------------------------------------


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_serve_prints_a_line_per_message_and_stops_on_ctrl_c(tmp_path: Path) -> None:
    port = free_port()
    serve = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "mailblast",
            "serve",
            "--port",
            str(port),
            "--rate",
            "3/s",
            "--max-connections",
            "2",
        ],
        cwd=tmp_path,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        first = serve.stdout.readline() if serve.stdout else ""
        assert f"capturing mail on smtp://127.0.0.1:{port} into outbox/" in first
        campaign(tmp_path, 9)
        # more connections than the rehearsed provider allows, and no --rate: every message arrives
        url = f"smtp://127.0.0.1:{port}"
        proc = mailblast(tmp_path, "send", "people.csv", "-t", "t.txt", "--smtp", url, "--connections", "3")
        assert proc.returncode == 0, proc.stderr
    finally:
        serve.send_signal(signal.SIGINT)
        out, err = serve.communicate(timeout=30)
    assert serve.returncode == 0, err
    lines = [line for line in out.splitlines() if "->" in line and "refused" not in line]
    assert len(lines) == 9
    datetime.strptime(lines[0][:8], "%H:%M:%S")
    assert "news@example.com -> user0@example.com  'Hi User 0'" in out
    assert "stopped: 9 message(s) captured in outbox/" in out
    assert err == ""
    assert sorted(str(m["Envelope-to"]) for m in stored(tmp_path / "outbox")) == sorted(
        f"user{i}@example.com" for i in range(9)
    )


def test_serve_on_a_port_in_use_says_so(tmp_path: Path) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        proc = mailblast(tmp_path, "serve", "--port", str(port))
    assert proc.returncode == 2
    assert proc.stderr.splitlines() == [
        f"error: port {port} on 127.0.0.1 is in use already",
        "hint: pick another one with --port",
    ]

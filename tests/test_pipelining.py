"""Pipelining (RFC 2920): one write per message, and every reply mapped to its own message."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest
from aiosmtpd.smtp import Envelope

from mailblast.smtp.outcomes import Status
from tests.servers import DROP, TEMP_FAILURE_REPLY, SmtpServer, Stage
from tests.test_sender import addresses, send, statuses

Server = Callable[..., SmtpServer]


def groups(server: SmtpServer) -> list[bytes]:
    """The chunks that carry a MAIL FROM: each one write of the client's."""
    return [c for c in server.chunks if b"MAIL FROM:" in c]


def test_the_next_envelope_rides_with_the_previous_content(tmp_path: Path, smtp_server: Server) -> None:
    server = smtp_server(record_chunks=True)
    _, outcomes = send(tmp_path, server.url, 20, connections=1, pipelining=True)
    assert statuses(outcomes) == {Status.SENT: 20}
    assert sorted(server.recipients()) == sorted(addresses(20))
    writes = groups(server)
    # MAIL, RCPT and DATA in one write, and from the second message on, after the content and "."
    assert all(b"RCPT TO:" in c and c.endswith(b"DATA\r\n") for c in writes)
    assert sum(b"\r\n.\r\nMAIL FROM:" in c for c in writes) >= 15
    assert len(writes) <= 20 and len(server.chunks) < 30  # about one write per message


def test_without_pipelining_each_command_waits_for_its_reply(tmp_path: Path, smtp_server: Server) -> None:
    for server, pipelining in (
        (smtp_server(record_chunks=True, pipelining=False), True),
        (smtp_server(record_chunks=True), False),
    ):
        _, outcomes = send(tmp_path, server.url, 5, connections=1, pipelining=pipelining)
        assert statuses(outcomes) == {Status.SENT: 5}
        assert groups(server) and all(not c.endswith(b"DATA\r\n") for c in groups(server))
        assert not any(b"RCPT TO:" in c and b"MAIL FROM:" in c for c in server.chunks)


@pytest.mark.parametrize("pipelining", [True, False])
def test_a_refusal_in_a_group_is_that_messages_own(
    tmp_path: Path, smtp_server: Server, pipelining: bool
) -> None:
    refused_mail: list[int] = []

    def refuse_in_the_middle(stage: Stage, envelope: Envelope, accepted: int) -> str | None:
        """The 4th MAIL gets a 451 (once), user5's RCPT a 550, user7's content a 554 after the '.'."""
        if stage == "mail" and accepted == 3 and not refused_mail:
            refused_mail.append(accepted)
            return TEMP_FAILURE_REPLY
        if stage == "rcpt" and envelope.rcpt_tos[-1] == "user5@example.com":
            return "550 5.1.1 <user5@example.com>: Recipient address rejected: User unknown"
        if stage == "data" and envelope.rcpt_tos == ["user7@example.com"]:
            return "554 5.7.1 Message rejected: spam"
        return None

    server = smtp_server(reply_hook=refuse_in_the_middle, record_chunks=True)
    _, outcomes = send(tmp_path, server.url, 10, connections=1, pipelining=pipelining)
    by_address = {o.recipient.address: o for o in outcomes}
    assert len(by_address) == len(outcomes) == 10
    assert by_address["user5@example.com"].status is Status.FAILED
    assert by_address["user5@example.com"].smtp_code == "550"
    assert by_address["user7@example.com"].status is Status.FAILED
    assert by_address["user7@example.com"].smtp_code == "554"
    retried = [o for o in outcomes if o.attempts == 2]
    assert len(retried) == 1 and retried[0].status is Status.SENT  # the 451 at MAIL, sent again
    assert statuses(outcomes) == {Status.SENT: 8, Status.FAILED: 2}
    refused = {"user5@example.com", "user7@example.com"}
    assert sorted(server.recipients()) == sorted(set(addresses(10)) - refused)
    assert (len(server.out_of_sequence) > 0) == pipelining  # the RCPT and DATA behind a refused MAIL


def test_a_421_in_a_group_closes_the_connection_and_loses_nothing(
    tmp_path: Path, smtp_server: Server
) -> None:
    closed: list[int] = []

    def closing(stage: Stage, envelope: Envelope, accepted: int) -> str | None:
        if stage == "mail" and accepted in (4, 9) and accepted not in closed:
            closed.append(accepted)
            return "421 4.7.0 Try again later, closing connection"
        return None

    server = smtp_server(reply_hook=closing)
    _, outcomes = send(tmp_path, server.url, 12, connections=1, pipelining=True)
    assert statuses(outcomes) == {Status.SENT: 12}
    assert sorted(server.recipients()) == sorted(addresses(12))
    assert server.connections == 3


def test_a_drop_at_mail_in_a_group_is_not_uncertain(tmp_path: Path, smtp_server: Server) -> None:
    dropped: list[int] = []

    def drop(stage: Stage, envelope: Envelope, accepted: int) -> str | None:
        if stage == "rcpt" and envelope.rcpt_tos == ["user4@example.com"] and not dropped:
            dropped.append(accepted)
            return DROP
        return None

    server = smtp_server(reply_hook=drop)
    _, outcomes = send(tmp_path, server.url, 8, connections=1, pipelining=True)
    # the previous message's reply came before the drop; user4 had not been sent
    assert statuses(outcomes) == {Status.SENT: 8}
    assert sorted(server.recipients()) == sorted(addresses(8))


def test_the_rate_limit_holds_with_pipelining(tmp_path: Path, smtp_server: Server) -> None:
    server = smtp_server(rate=(4, 1.0), throttle_at="mail", record_chunks=True)
    _, outcomes = send(tmp_path, server.url, 12, rate=(4, 1.0), connections=2, pipelining=True)
    assert statuses(outcomes) == {Status.SENT: 12}
    assert server.rejected == []
    assert server.max_in_window(1.0) <= 4


def test_no_pipelining_flag_sends_the_plain_sequence(tmp_path: Path, smtp_server: Server) -> None:
    server = smtp_server(record_chunks=True)
    (tmp_path / "r.csv").write_text("email\n" + "\n".join(addresses(4)) + "\n")
    (tmp_path / "t.txt").write_text("From: a@example.com\nSubject: s\n\nbody\n")
    command = [sys.executable, "-m", "mailblast", "send", "r.csv", "-t", "t.txt", "--smtp", server.url]
    done = subprocess.run([*command, "--no-pipelining", "-q"], cwd=tmp_path, capture_output=True, text=True)
    assert done.returncode == 0, done.stdout + done.stderr
    assert len(server.received) == 4
    assert not any(b"RCPT TO:" in c and b"MAIL FROM:" in c for c in server.chunks)

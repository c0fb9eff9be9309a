"""The sender against real in-process SMTP servers: assert on what the server received."""

from __future__ import annotations

import asyncio
import io
import itertools
import re
import ssl
from collections import Counter
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path

import pytest
from rich.console import Console

from mailblast.campaign.progress import SendProgress
from mailblast.config import pipelining_default
from mailblast.message.compose import RowError, Template
from mailblast.message.recipients import RecipientsFile
from mailblast.message.worker import ComposeWorker
from mailblast.smtp.connection import Connection
from mailblast.smtp.credentials import Credentials
from mailblast.smtp.outcomes import Counts, Outcome, Status
from mailblast.smtp.ratelimit import SlidingWindowLimiter
from mailblast.smtp.sender import Relay, Sender, SenderOptions
from mailblast.smtp.urls import parse_smtp_url
from tests.servers import POSTFIX_ERROR_LIMITS, SmtpServer

TEMPLATE = "From: Sender <sender@example.com>\nSubject: Hello {{ name }}\n\nHi {{ name }}!\n"


def addresses(n: int) -> list[str]:
    return [f"user{i}@example.com" for i in range(n)]


def send(
    tmp_path: Path,
    url: str,
    n: int = 10,
    *,
    rate: tuple[int, float] | None = None,
    password: str | None = None,
    user: str | None = None,
    tls_context: ssl.SSLContext | None = None,
    extra_rows: list[str] = (),  # type: ignore[assignment]
    notices: list[str] | None = None,
    limiter: SlidingWindowLimiter | None = None,
    pipelining: bool | None = None,  # None: as MAILBLAST_PIPELINING says
    **options: object,
) -> tuple[Sender, list[Outcome]]:
    csv_path = tmp_path / "r.csv"
    rows = [f"{a},User {i}" for i, a in enumerate(addresses(n))] + list(extra_rows)
    csv_path.write_text("email,name\n" + "\n".join(rows) + "\n", encoding="utf-8")
    template_path = tmp_path / "t.txt"
    template_path.write_text(TEMPLATE)
    recipients = RecipientsFile(csv_path)
    template = Template(template_path)
    target = parse_smtp_url(url.replace("://", f"://{user}@") if user else url)
    limiter = limiter or SlidingWindowLimiter(*(rate or (None, 1.0)))
    login = Credentials(target.username, password=password) if target.username else None
    pool = {k: options.pop(k) for k in ("connections", "max_messages") if k in options}
    opts = SenderOptions(**{"backoff_base": 0.01, "backoff_cap": 0.05, **options})  # type: ignore[arg-type]
    outcomes: list[Outcome] = []
    pipelines = pipelining_default() if pipelining is None else pipelining

    def connect() -> Connection:
        return Connection(target, login, timeout=5, tls_context=tls_context, pipelining=pipelines)

    sender = Sender(
        [Relay(connect, limiter, **pool)],  # type: ignore[arg-type]
        opts,
        outcomes.append,
        on_notice=notices.append if notices is not None else None,
    )
    people = (r.recipient for r in recipients.rows() if r.recipient is not None)
    asyncio.run(asyncio.wait_for(sender.run(people, ComposeWorker(template, in_worker=False).compose), 60))
    return sender, outcomes


def statuses(outcomes: list[Outcome]) -> Counter[Status]:
    return Counter(o.status for o in outcomes)


def test_every_recipient_exactly_once(tmp_path: Path, smtp_server: Callable[..., SmtpServer]) -> None:
    server = smtp_server()
    sender, outcomes = send(tmp_path, server.url, 50, connections=3)
    assert sorted(server.recipients()) == sorted(addresses(50))
    assert statuses(outcomes) == {Status.SENT: 50}
    assert sender.counts.sent == 50 and sender.counts.done == 50
    assert server.connections <= 3
    first = server.received[0]
    assert first.mail_from == "sender@example.com"
    assert first.message["Subject"].startswith("Hello User")
    sent = {o.recipient.address: o for o in outcomes}
    for received in server.received:
        assert received.message["Message-ID"] == sent[received.rcpt_tos[0]].message_id


def test_connections_are_recycled_after_max_messages(
    tmp_path: Path, smtp_server: Callable[..., SmtpServer]
) -> None:
    server = smtp_server()
    send(tmp_path, server.url, 10, connections=1, max_messages=3)
    assert len(server.received) == 10
    assert server.connections == 4  # 3 + 3 + 3 + 1


def test_rate_limit_is_never_exceeded(tmp_path: Path, smtp_server: Callable[..., SmtpServer]) -> None:
    server = smtp_server(rate=(3, 1.0))
    send(tmp_path, server.url, 10, rate=(3, 1.0), connections=4)
    assert server.rejected == []
    assert server.max_in_window(1.0) <= 3
    assert sorted(server.recipients()) == sorted(addresses(10))
    times = sorted(r.at for r in server.received)
    # 10 messages at 3/s need a bit over 3 s; far slower would mean the limiter wastes capacity
    assert 2.9 < times[-1] - times[0] < 6


@pytest.mark.parametrize(
    "reply",
    [
        "550 5.7.0 Requested action not taken: too many emails per second",
        "421 4.4.2 Message submission rate for this client has exceeded the configured limit",
        "454 Throttling failure: Maximum sending rate exceeded.",
    ],
)
def test_without_rate_throttling_slows_down_and_loses_nothing(
    tmp_path: Path, smtp_server: Callable[..., SmtpServer], reply: str
) -> None:
    server = smtp_server(rate=(3, 1.0), throttle_reply=reply)
    _, outcomes = send(tmp_path, server.url, 12, connections=3)
    assert server.rejected, "the server should have throttled an unlimited sender"
    assert sorted(server.recipients()) == sorted(addresses(12))  # every one, exactly once
    assert statuses(outcomes) == {Status.SENT: 12}


def test_random_temporary_failures_are_retried(
    tmp_path: Path, smtp_server: Callable[..., SmtpServer]
) -> None:
    server = smtp_server(fail_random=(0.3, "451 4.3.0 Temporary failure"), seed=7)
    _, outcomes = send(tmp_path, server.url, 30, retries=10)
    assert len(server.rejected) > 3
    assert sorted(server.recipients()) == sorted(addresses(30))
    assert statuses(outcomes) == {Status.SENT: 30}
    assert max(o.attempts for o in outcomes) > 1


def test_retries_run_out(tmp_path: Path, smtp_server: Callable[..., SmtpServer]) -> None:
    server = smtp_server(fail_random=(1.0, "451 4.3.0 Temporary failure"))
    _, outcomes = send(tmp_path, server.url, 3, retries=2)
    assert statuses(outcomes) == {Status.FAILED: 3}
    assert all(o.attempts == 3 and o.smtp_code == "451" and o.enhanced_code == "4.3.0" for o in outcomes)
    assert "gave up after 3 attempts" in outcomes[0].error


def test_connection_dropped_at_mail_is_retried_on_a_new_connection(
    tmp_path: Path, smtp_server: Callable[..., SmtpServer]
) -> None:
    server = smtp_server(drop_at_mail_every=4)
    _, outcomes = send(tmp_path, server.url, 20)
    assert sorted(server.recipients()) == sorted(addresses(20))
    assert statuses(outcomes) == {Status.SENT: 20}
    assert server.connections > 2


def test_reply_lost_after_data_is_sent_once_more_and_marked_uncertain(
    tmp_path: Path, smtp_server: Callable[..., SmtpServer]
) -> None:
    server = smtp_server(drop_after_data_every=5)
    _, outcomes = send(tmp_path, server.url, 20, connections=1)
    uncertain = [o for o in outcomes if o.status is Status.UNCERTAIN]
    # every recipient reached the server; the dropped ones were sent once more
    dropped = Counter(d.rcpt_tos[0] for d in server.dropped)
    received = server.recipients()
    assert sorted(set(received) | set(dropped)) == sorted(addresses(20))
    assert len(received) == len(set(received))  # none was accepted twice
    assert set(dropped) == {o.recipient.address for o in uncertain} and uncertain
    for o in uncertain:  # a resend dropped again (which message is the k-th depends on the order) is not
        assert ("may be a duplicate" in o.error) == (dropped[o.recipient.address] == 1)
    assert statuses(outcomes)[Status.SENT] == 20 - len(uncertain)


def test_permanent_rejections_fail_only_those_recipients(
    tmp_path: Path, smtp_server: Callable[..., SmtpServer]
) -> None:
    bad = {"user3@example.com", "user7@example.com"}
    server = smtp_server(reject_recipients=bad)
    _, outcomes = send(tmp_path, server.url, 10)
    failed = {o.recipient.address: o for o in outcomes if o.status is Status.FAILED}
    assert set(failed) == bad
    assert all(
        o.attempts == 1 and o.smtp_code == "550" and o.enhanced_code == "5.1.1" for o in failed.values()
    )
    assert sorted(server.recipients()) == sorted(set(addresses(10)) - bad)
    assert server.rejected and all(r.code == 550 for r in server.rejected)


def test_starttls_and_auth(tmp_path: Path, smtp_server: Callable[..., SmtpServer]) -> None:
    server = smtp_server(require_starttls=True, auth={"mailer": "s3cret"})
    _, outcomes = send(
        tmp_path, server.url, 5, user="mailer", password="s3cret", tls_context=server.client_context()
    )
    assert statuses(outcomes) == {Status.SENT: 5}
    assert all(r.tls and r.user == "mailer" for r in server.received)


def test_implicit_tls(tmp_path: Path, smtp_server: Callable[..., SmtpServer]) -> None:
    server = smtp_server(implicit_tls=True)
    assert server.url.startswith("smtps://")
    _, outcomes = send(tmp_path, server.url, 3, tls_context=server.client_context())
    assert statuses(outcomes) == {Status.SENT: 3} and all(r.tls for r in server.received)


def test_unverified_certificate_is_fatal(tmp_path: Path, smtp_server: Callable[..., SmtpServer]) -> None:
    server = smtp_server(implicit_tls=True)
    sender, outcomes = send(tmp_path, server.url, 3, tls_context=ssl.create_default_context())
    assert sender.stopped_by is not None and "TLS" in sender.stopped_by.describe()
    assert statuses(outcomes) == {Status.NOT_ATTEMPTED: 3}
    assert server.received == []


def test_wrong_password_stops_the_run(tmp_path: Path, smtp_server: Callable[..., SmtpServer]) -> None:
    server = smtp_server(require_starttls=True, auth={"mailer": "s3cret"})
    sender, outcomes = send(
        tmp_path, server.url, 6, user="mailer", password="wrong-horse", tls_context=server.client_context()
    )
    assert sender.stopped_by is not None and sender.stopped_by.code == 535
    assert statuses(outcomes) == {Status.NOT_ATTEMPTED: 6}
    assert server.received == []
    assert all("wrong-horse" not in f"{o.error} {o.reply}" for o in outcomes)


def test_starttls_required_but_not_offered_is_fatal(
    tmp_path: Path, smtp_server: Callable[..., SmtpServer]
) -> None:
    server = smtp_server()  # offers no STARTTLS
    sender, _ = send(tmp_path, server.url.replace("smtp://", "smtp+starttls://"), 2)
    assert sender.stopped_by is not None and "STARTTLS" in sender.stopped_by.describe()
    assert server.received == []


def test_nothing_listening_is_fatal(tmp_path: Path) -> None:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]  # closed again: nothing listens there
    sender, outcomes = send(tmp_path, f"smtp://127.0.0.1:{port}", 4)
    assert sender.stopped_by is not None and "cannot connect" in sender.stopped_by.describe()
    assert statuses(outcomes) == {Status.NOT_ATTEMPTED: 4}


def test_fatal_reply_mid_campaign_finishes_in_flight_and_marks_the_rest(
    tmp_path: Path, smtp_server: Callable[..., SmtpServer]
) -> None:
    server = smtp_server(reply_after=(5, "550 5.4.5 Daily user sending quota exceeded"))
    sender, outcomes = send(tmp_path, server.url, 20, connections=2)
    assert sender.stopped_by is not None and sender.stopped_by.enhanced_code == "5.4.5"
    counts = statuses(outcomes)
    # the message on the other connection may already have been past MAIL FROM: it finishes
    assert counts[Status.SENT] == len(server.received) in (5, 6)
    assert counts[Status.NOT_ATTEMPTED] == 20 - counts[Status.SENT]
    assert len(outcomes) == 20


def test_smtputf8_address(tmp_path: Path, smtp_server: Callable[..., SmtpServer]) -> None:
    server = smtp_server(smtputf8=True)
    _, outcomes = send(tmp_path, server.url, 1, extra_rows=["jösé@exämple.com,José"])
    assert statuses(outcomes) == {Status.SENT: 2}
    assert "jösé@exämple.com" in server.recipients()
    plain = smtp_server()
    _, outcomes = send(tmp_path, plain.url, 1, extra_rows=["jösé@exämple.com,José"])
    failed = [o for o in outcomes if o.status is Status.FAILED]
    assert len(failed) == 1 and "SMTPUTF8" in failed[0].error


def test_progress_plain_lines_when_not_a_terminal() -> None:
    out = io.StringIO()
    console = Console(file=out, force_terminal=False, width=200)
    counts = Counts(total=10)

    async def work() -> None:
        async with SendProgress(console, counts, plain_every=0.05):
            for _ in range(4):
                counts.sent += 2
                await asyncio.sleep(0.06)

    asyncio.run(work())
    lines = out.getvalue().splitlines()
    assert len(lines) >= 2  # periodic lines, no bar and no escape codes
    pattern = re.compile(
        r"^(\d+)/10 done: \1 sent, 0 failed, 0 waiting to retry, [\d.]+ msg/s(, about \d+s left)?$"
    )
    assert all(pattern.match(line) for line in lines), lines
    done = [int(line.split("/")[0]) for line in lines]
    assert done == sorted(done) and done[-1] > done[0]


def test_progress_is_steady_when_sending_comes_in_bursts() -> None:
    now = [0.0]
    counts = Counts(total=120)
    progress = SendProgress(Console(file=io.StringIO()), counts, clock=lambda: now[0])
    estimates = []
    for second in range(1, 45):  # 30 at once every 11 s, as Postfix's 30 per 10 s allows
        now[0] = float(second)
        if second % 11 == 1:
            counts.sent += 30
        counts.retrying = 3 if second % 11 == 2 else 0
        if second > 12 and counts.sent < 120:
            line = progress.line()
            estimates.append(int(re.search(r"about (\d+)s left", line).group(1)))  # type: ignore[union-attr]
    # the time left only goes down, never jumps up between bursts
    assert estimates and all(b <= a + 1 for a, b in itertools.pairwise(estimates))
    now[0] += 1
    counts.retrying = 7
    assert "7 waiting to retry" in progress.line()


def test_quiet_progress_prints_nothing() -> None:
    out = io.StringIO()

    async def work() -> None:
        async with SendProgress(Console(file=out), Counts(total=1), quiet=True, plain_every=0.01):
            await asyncio.sleep(0.05)

    asyncio.run(work())
    assert out.getvalue() == ""


def test_messages_with_attachments_are_composed_a_few_at_a_time(tmp_path: Path) -> None:
    (tmp_path / "t.txt").write_text("From: a@example.com\nAttachment: {{ doc }}\n\nHi\n")
    (tmp_path / "u.txt").write_text("From: a@example.com\n\nHi\n")
    assert ComposeWorker(Template(tmp_path / "t.txt"), in_worker=False).batch == 4  # memory stays bounded
    assert ComposeWorker(Template(tmp_path / "u.txt"), in_worker=False).batch == 64


def test_composing_in_a_worker_process_gives_the_same_messages(tmp_path: Path) -> None:
    (tmp_path / "t.md").write_text("From: a@example.com\nSubject: Hi {{ name }}\n\n# Hello {{ name }}\n")
    (tmp_path / "r.csv").write_text("email,name\n" + "".join(f"u{i}@example.com,U{i}\n" for i in range(5)))
    template = Template(tmp_path / "t.md")
    people = [r.recipient for r in RecipientsFile(tmp_path / "r.csv").rows() if r.recipient is not None]
    people.append(replace(people[0], fields={"email": "x@example.com"}, address="x@example.com"))  # no name
    here = asyncio.run(ComposeWorker(template, in_worker=False).compose(people))
    worker = ComposeWorker(template, in_worker=True, processes=2)
    try:
        there = asyncio.run(worker.compose(people))
        # checking: batches come back in order, each row with its sender or its error
        batches = [(n, people[n : n + 2]) for n in range(0, len(people), 2)]
        checked = [c for _, batch in worker.check_batches(batches) for c in batch]
        assert [c.sender for c in checked[:-1]] == ["a@example.com"] * (len(people) - 1)  # type: ignore[union-attr]
        assert isinstance(checked[-1], RowError) and 'uses "name"' in checked[-1].message
        # a worker that dies is replaced by composing in this process
        for process in list(worker._pool._processes.values()):  # type: ignore[union-attr]
            process.kill()
            process.join()
        after_death = asyncio.run(worker.compose(people))
    finally:
        worker.close()
    for results in (there, after_death):
        assert [getattr(r, "message_id", None) for r in results] == [
            getattr(r, "message_id", None) for r in here
        ]
        assert (
            isinstance(results[-1], RowError) and 'uses "name", which is not a column' in results[-1].message
        )


def test_no_password_over_plaintext_to_a_host_not_named_loopback(
    tmp_path: Path, smtp_server: Callable[..., SmtpServer]
) -> None:
    """The check is by name: a host name that is not localhost gets no password in the clear."""
    import socket

    name = socket.gethostname()
    try:
        if not socket.gethostbyname(name).startswith("127."):
            pytest.skip(f"{name} does not resolve to a loopback address on this machine")
    except OSError:
        pytest.skip(f"{name} does not resolve")
    server = smtp_server(auth={"mailer": "s3cret"})  # no STARTTLS offered
    url = server.url.replace("127.0.0.1", name)
    sender, outcomes = send(tmp_path, url, 2, user="mailer", password="s3cret")
    assert (
        sender.stopped_by is not None
        and "will not send a password unencrypted" in sender.stopped_by.describe()
    )
    assert server.auth_attempts == [] and server.received == []
    # to 127.0.0.1 itself (loopback by address), the same server is fine
    _, outcomes = send(tmp_path, server.url, 2, user="mailer", password="s3cret")
    assert statuses(outcomes) == {Status.SENT: 2}


# --- real servers' limits and faults (issue 8) ----------------------------------------------


@pytest.mark.parametrize(("allowed", "connections", "n"), [(1, 2, 10), (2, 5, 30), (3, 5, 30)])
def test_a_connection_cap_is_learned_not_hammered(
    tmp_path: Path, smtp_server: Callable[..., SmtpServer], allowed: int, connections: int, n: int
) -> None:
    server = smtp_server(max_connections=allowed)
    notices: list[str] = []
    sender, outcomes = send(tmp_path, server.url, n, connections=connections, notices=notices)
    assert sorted(server.recipients()) == sorted(addresses(n))  # every one, exactly once
    assert statuses(outcomes) == {Status.SENT: n}
    assert server.most_open <= allowed
    refused = [r for r in server.rejected if r.code == 421]
    assert all("too many connections" in r.text for r in refused)
    assert server.connections <= connections + 2  # no storm of connects
    assert sender.pool == allowed
    assert len(notices) == 1 and f"sending over {allowed} connection(s)" in notices[0]
    assert all(o.attempts >= 1 for o in outcomes)
    # the refused connects count as attempts of the messages they were for
    assert sum(o.attempts for o in outcomes) == n + len(refused)


def test_a_server_that_always_refuses_in_the_greeting_is_given_up_on(
    tmp_path: Path, smtp_server: Callable[..., SmtpServer]
) -> None:
    server = smtp_server(greeting_reply="421 4.7.0 mx.example.com Error: too many connections from you")
    sender, outcomes = send(tmp_path, server.url, 5, connections=2, retries=2)
    assert sender.stopped_by is not None and sender.stopped_by.code == 421
    assert statuses(outcomes) == {Status.NOT_ATTEMPTED: 5}
    assert server.received == []
    assert server.connections <= 3 * 2  # three rounds (a try and two retries) of two connects
    tried = [o for o in outcomes if o.attempts]
    assert tried and sum(o.attempts for o in outcomes) == server.connections


def test_a_full_mailbox_is_that_recipients_trouble_alone(
    tmp_path: Path, smtp_server: Callable[..., SmtpServer]
) -> None:
    full = "user7@example.com"
    tries: list[str] = []

    def mailbox_full(stage: str, envelope: object, accepted: int) -> str | None:
        rcpt = getattr(envelope, "rcpt_tos", [])
        if stage == "rcpt" and rcpt and rcpt[-1] == full:
            tries.append(full)
            return f"452 4.2.2 <{full}>: Recipient address rejected: Mailbox full"
        return None

    server = smtp_server(reply_hook=mailbox_full)
    limiter = SlidingWindowLimiter(None)
    _, outcomes = send(tmp_path, server.url, 20, retries=2, limiter=limiter)
    by_address = {o.recipient.address: o for o in outcomes}
    assert len(tries) == 3  # one try and two retries, as --retries 2 says
    assert by_address[full].status is Status.FAILED and by_address[full].attempts == 3
    assert "gave up after 3 attempts" in by_address[full].error and by_address[full].enhanced_code == "4.2.2"
    assert sorted(server.recipients()) == sorted(set(addresses(20)) - {full})
    assert limiter.current_limit is None and not limiter.learning  # the run was never slowed


def test_a_connection_dropped_before_the_final_dot_is_certainly_not_delivered(
    tmp_path: Path, smtp_server: Callable[..., SmtpServer]
) -> None:
    server = smtp_server(drop_at_data_every=3)
    _, outcomes = send(tmp_path, server.url, 12, connections=1)
    assert server.dropped and all(d.stage == "data" and d.data is None for d in server.dropped)
    assert sorted(server.recipients()) == sorted(addresses(12))  # each once: no resend "to be safe"
    assert statuses(outcomes) == {Status.SENT: 12}
    assert not any("final" in o.error for o in outcomes)
    assert sum(o.attempts for o in outcomes) == 12 + len(server.dropped)


def test_postfixs_message_limit_is_learned_without_a_rate(
    tmp_path: Path, smtp_server: Callable[..., SmtpServer]
) -> None:
    # 5 per whole-second window, which lasts until an event more than 1 s after its start
    server = smtp_server(postfix_rate=(5, 1))
    limiter = SlidingWindowLimiter(None)
    _, outcomes = send(tmp_path, server.url, 15, connections=2, limiter=limiter)
    assert sorted(server.recipients()) == sorted(addresses(15))
    assert statuses(outcomes) == {Status.SENT: 15}
    # 5 per learned period; a whole second of rounding may widen that period once or twice
    assert limiter.current_limit == 5
    assert all(r.code == 450 and "too much mail" in r.text for r in server.rejected)
    times = sorted(r.at for r in server.received)
    # three windows of up to 2 s each: ideally about 4 s from the first to the last
    assert times[-1] - times[0] <= 1.5 * 4 + 1


def test_a_connection_refused_often_is_replaced_before_postfix_slows_it_down(
    tmp_path: Path, smtp_server: Callable[..., SmtpServer]
) -> None:
    # Postfix counts every refused command as an error of the session (a refused pipelined
    # envelope makes 3), answers a second late from 10 on and drops the session at 20.
    server = smtp_server(postfix_rate=(5, 1), postfix_errors=POSTFIX_ERROR_LIMITS)
    limiter = SlidingWindowLimiter(None)
    _, outcomes = send(tmp_path, server.url, 15, connections=2, limiter=limiter)
    assert sorted(server.recipients()) == sorted(addresses(15))
    assert statuses(outcomes) == {Status.SENT: 15}
    assert server.most_errors < POSTFIX_ERROR_LIMITS[0]  # no reply was slowed down
    times = sorted(r.at for r in server.received)
    assert times[-1] - times[0] <= 1.5 * 4 + 1  # as quick as without the error limits


def test_a_throttle_under_a_given_rate_slows_down_only_as_needed(
    tmp_path: Path, smtp_server: Callable[..., SmtpServer]
) -> None:
    # --rate 5/s against a server that counts 5 per whole-second window: 5 per 2 s of real time
    server = smtp_server(postfix_rate=(5, 1))
    limiter = SlidingWindowLimiter(5, 1.0)
    _, outcomes = send(tmp_path, server.url, 15, connections=2, limiter=limiter)
    assert sorted(server.recipients()) == sorted(addresses(15))
    assert statuses(outcomes) == {Status.SENT: 15}
    times = sorted(r.at for r in server.received)
    assert times[-1] - times[0] <= 12  # not one message per period after each refusal

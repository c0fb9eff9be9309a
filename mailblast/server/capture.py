"""A local capture SMTP server: every message it accepts lands in a Maildir, nothing leaves the machine.

`mailblast serve` runs it in the foreground; `send` with no server configured runs it in a
background thread on a free loopback port. It can rehearse a provider's limits: a sliding-window
rate answered as Mailtrap does, a cap on connections (421 in the greeting), a cap on messages per
connection, and random temporary failures. :class:`ProviderRules` decides every reply and does no
I/O; the aiosmtpd glue below it only asks.
"""

from __future__ import annotations

import asyncio
import contextlib
import email.parser
import email.policy
import errno
import ipaddress
import logging
import mailbox
import os
import random
import signal
import threading
import time
from collections import deque
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

from aiosmtpd.smtp import SMTP, AuthResult, Envelope, Session
from rich.console import Console

from mailblast.display import human_size, print_warning, printable
from mailblast.errors import ConfigError
from mailblast.smtp.urls import Rate

LOOPBACK = "127.0.0.1"
DEFAULT_PORT = 2525
DEFAULT_OUTBOX = Path("outbox")
SERVER_NAME = "mailblast.server.capture"
# Said in the EHLO reply, so that a send can tell a rehearsal from a delivery (campaign/rehearsal.py).
CAPTURE_EXTENSION = "X-MAILBLAST-CAPTURE"

MAILTRAP_THROTTLE_REPLY = "550 5.7.0 Requested action not taken: too many emails per second"
TOO_MANY_CONNECTIONS_REPLY = "421 4.7.0 Too many connections, closing"
TOO_MANY_MESSAGES_REPLY = "421 4.7.0 Too many messages on this connection, closing"
RANDOM_FAILURE_REPLY = "451 4.3.0 Temporary failure, rehearsed by mailblast serve"
QUOTA_USED_REPLY = "550 5.4.5 Daily sending quota exceeded"
QUEUED_REPLY = "250 2.0.0 Ok: queued"
# RFC 3463's "mail system full": the client keeps the message and tries again later.
STORAGE_FAILED_REPLY = "452 4.3.1 Cannot store the message: {cause}"
# What a server holds in memory: each message is read whole before it is stored. So messages are
# at most 25 MiB (Gmail's limit; mailblast's own 10 MB of attachments, a third more in base64,
# fit), at most DATA_AT_ONCE of them are read at once (the others wait their turn at DATA), and
# idle connections are capped too.
DEFAULT_MAX_CONNECTIONS = 20
MAX_MESSAGE_BYTES = 25 * 1024 * 1024
DATA_AT_ONCE = 2


class WindowCount:
    """How many events fall in the sliding window ``(now - period, now]``: the rule providers apply."""

    def __init__(self, period: float) -> None:
        self.period = period
        self._times: deque[float] = deque()

    def count(self, now: float) -> int:
        while self._times and self._times[0] <= now - self.period:
            self._times.popleft()
        return len(self._times)

    def add(self, now: float) -> None:
        self._times.append(now)


@dataclass(frozen=True)
class Replies:
    """What the rehearsed server answers above each limit (a profile gives its provider's words)."""

    rate: str = MAILTRAP_THROTTLE_REPLY
    connections: str = TOO_MANY_CONNECTIONS_REPLY
    per_connection: str = TOO_MANY_MESSAGES_REPLY
    quota: str = QUOTA_USED_REPLY


@dataclass(frozen=True)
class Limits:
    """A provider's limits to rehearse; None (or 0) is no limit."""

    rate: Rate | None = None
    max_connections: int | None = None
    max_messages: int | None = None  # per connection
    fail_rate: float = 0.0
    quota: int | None = None  # messages accepted in all; then every MAIL FROM gets the quota reply
    replies: Replies = Replies()
    profile: str | None = None  # the provider rehearsed (serve --profile), for the banner

    def __post_init__(self) -> None:
        for name in ("max_connections", "max_messages", "quota"):
            value = getattr(self, name)
            if value is not None and value < 1:
                raise ConfigError(f"--{name.replace('_', '-')} must be at least 1, not {value}")
        if not 0.0 <= self.fail_rate <= 1.0:
            raise ConfigError(
                f"--fail-rate must be between 0 and 1, not {self.fail_rate}",
                "0.1 fails one message in ten with a 451",
            )

    def describe(self) -> str:
        parts = [f"at most {self.rate}" if self.rate else ""]
        parts.append(f"{self.max_connections} connection(s) at once" if self.max_connections else "")
        parts.append(f"{self.max_messages} message(s) per connection" if self.max_messages else "")
        parts.append(f"{self.fail_rate:.0%} random 451s" if self.fail_rate else "")
        parts.append(f"a quota of {self.quota:,} message(s)" if self.quota else "")
        text = ", ".join(p for p in parts if p) or "no limits"
        return f"{self.profile}'s limits: {text}" if self.profile else text


class ProviderRules:
    """Which reply the rehearsed provider gives at each step; time and chance are passed in."""

    def __init__(
        self,
        limits: Limits,
        *,
        clock: Callable[[], float] = time.monotonic,
        rng: random.Random | None = None,
        max_connections: int | None = None,
    ) -> None:
        self.limits = limits
        # the rehearsed provider's cap, else the server's own (what it may hold in memory)
        self.max_connections = limits.max_connections or max_connections
        self._clock = clock
        self._rng = rng or random.Random()
        self._window = WindowCount(limits.rate.period) if limits.rate else None
        self.connections = 0  # admitted and still open
        self.accepted = 0  # messages accepted in all: what a quota counts

    def connect(self) -> str | None:
        """A client connects: None admits it (call :meth:`disconnect` later), else the 421 to send."""
        cap = self.max_connections
        if cap is not None and self.connections >= cap:
            return self.limits.replies.connections
        self.connections += 1
        return None

    def disconnect(self) -> None:
        self.connections -= 1

    def mail(self, accepted_on_connection: int) -> str | None:
        """MAIL FROM, after this many messages were accepted on the same connection."""
        if self.limits.quota is not None and self.accepted >= self.limits.quota:
            return self.limits.replies.quota
        cap = self.limits.max_messages
        if cap is not None and accepted_on_connection >= cap:
            return self.limits.replies.per_connection
        return None

    def data(self) -> str | None:
        """The final dot: None accepts the message (and counts it), else the refusal."""
        if self.limits.quota is not None and self.accepted >= self.limits.quota:
            return self.limits.replies.quota  # spent by another connection since this one's MAIL
        now = self._clock()
        rate = self.limits.rate
        if self._window is not None and rate is not None and self._window.count(now) >= rate.count:
            return self.limits.replies.rate
        if self.limits.fail_rate and self._rng.random() < self.limits.fail_rate:
            return RANDOM_FAILURE_REPLY
        if self._window is not None:
            self._window.add(now)
        self.accepted += 1
        return None


# -- what the server saw ---------------------------------------------------------------------


@dataclass(frozen=True)
class Captured:
    """One accepted message, as stored."""

    at: datetime
    mail_from: str
    rcpt_tos: tuple[str, ...]
    subject: str
    size: int
    key: str  # its name in the Maildir

    def line(self) -> str:
        subject = " ".join(self.subject.split()) or "(no subject)"
        return (
            f"{self.at:%H:%M:%S}  {self.mail_from or '<>'} -> {', '.join(self.rcpt_tos)}  "
            f"{subject!r}  {human_size(self.size)}"
        )


@dataclass(frozen=True)
class Refused:
    """A message (or connection) the rehearsed provider turned away."""

    at: datetime
    reply: str
    rcpt_tos: tuple[str, ...]

    def line(self) -> str:
        to = f" -> {', '.join(self.rcpt_tos)}" if self.rcpt_tos else ""
        return f"{self.at:%H:%M:%S}  refused{to}: {self.reply}"


Event = Captured | Refused


def open_outbox(path: Path) -> mailbox.Maildir:
    """The Maildir at ``path``, created if missing; a folder that is something else is refused."""
    if path.exists() and not path.is_dir():
        raise ConfigError(f"--outbox {path}: not a folder", "name a folder (it becomes a Maildir)")
    if path.is_dir() and any(path.iterdir()) and not all((path / d).is_dir() for d in ("cur", "new", "tmp")):
        raise ConfigError(
            f"--outbox {path}: the folder holds other files and is not a Maildir",
            "name an empty or new folder, or an existing Maildir",
        )
    try:
        for folder in ("cur", "new", "tmp"):
            (path / folder).mkdir(parents=True, exist_ok=True)
        box = mailbox.Maildir(path, create=False)
    except OSError as e:
        raise ConfigError(f"--outbox {path}: cannot create the Maildir: {e.strerror}") from None
    check_writable(path)
    return box


def check_writable(path: Path) -> None:
    """Write (and remove) a small file where messages are written first: a read-only or full
    outbox is said before the server starts, not at the first message."""
    probe = path / "tmp" / f".mailblast-probe-{os.getpid()}-{threading.get_ident()}"
    try:
        with probe.open("wb") as f:
            f.write(b"x" * 4096)
            f.flush()
            os.fsync(f.fileno())
    except OSError as e:
        raise ConfigError(
            f"--outbox {path}: messages cannot be written there: {e.strerror}",
            "free some disk space, or make the folder writable (or pick another --outbox)",
        ) from None
    finally:
        with contextlib.suppress(OSError):
            probe.unlink()


def store(outbox: mailbox.Maildir, envelope: Envelope, at: datetime) -> Captured:
    """Write the message to the Maildir, with the envelope on top as a delivery agent would."""
    data = envelope.original_content or b""
    mail_from = envelope.mail_from or ""
    rcpt_tos = tuple(envelope.rcpt_tos)
    # Return-path and Envelope-to (as Exim writes them): the envelope is how Bcc and --test-to
    # recipients can be seen in the stored copy.
    top = f"Return-path: <{mail_from}>\nEnvelope-to: {', '.join(rcpt_tos)}\n".encode()
    # Stored with LF line ends, as Maildir readers expect (mutt shows ^M otherwise); SMTP's are CRLF.
    key = outbox.add(top + data.replace(b"\r\n", b"\n"))
    end = data.find(b"\r\n\r\n")
    head = data if end < 0 else data[:end]  # not the whole message (a copy of megabytes)
    headers = email.parser.BytesHeaderParser(policy=email.policy.default).parsebytes(head)
    return Captured(at, mail_from, rcpt_tos, str(headers.get("Subject", "")), len(data), key)


# -- aiosmtpd glue ---------------------------------------------------------------------------


class _Session(SMTP):
    """One client connection: asks the rules at the greeting, MAIL FROM and the final dot."""

    def __init__(self, server: CaptureServer, handler: _Handler, **kwargs: Any) -> None:
        self.server = server
        self.admitted = False
        self.accepted = 0
        super().__init__(handler, **kwargs)

    async def _handle_client(self) -> None:
        refusal = self.server.rules.connect()
        self.admitted = refusal is None
        if self.admitted:
            self.server.live.add(self)
            await super()._handle_client()
            return
        self.server.report(Refused(datetime.now(), refusal, ()))
        await self.push(refusal)
        if self.transport is not None:
            self.transport.close()

    def connection_lost(self, error: Exception | None) -> None:
        if self.admitted:
            self.admitted = False
            self.server.rules.disconnect()
            self.server.live.discard(self)
        super().connection_lost(error)

    async def smtp_DATA(self, arg: str) -> None:
        async with self.server.data_turns:  # bounds the messages held in memory at once
            await super().smtp_DATA(arg)

    async def push(self, status: str | bytes) -> None:
        await super().push(status)
        line = status if isinstance(status, str) else status.decode("utf-8", "replace")
        if line.startswith("421 ") and self.transport is not None:
            self.transport.close()  # 421 closes the channel, as real servers do


class _Handler:
    def __init__(self, server: CaptureServer) -> None:
        self.server = server

    async def handle_EHLO(
        self, server: SMTP, session: Session, envelope: Envelope, hostname: str, responses: list[str]
    ) -> list[str]:
        session.host_name = hostname  # the 5-argument hook must do this itself
        return [*responses[:-1], f"250-{CAPTURE_EXTENSION}", responses[-1]]

    async def handle_MAIL(
        self, server: SMTP, session: Session, envelope: Envelope, address: str, options: list[str]
    ) -> str:
        assert isinstance(server, _Session)
        refusal = self.server.rules.mail(server.accepted)
        if refusal is not None:
            self.server.report(Refused(datetime.now(), refusal, ()))
            return refusal
        envelope.mail_from = address
        envelope.mail_options.extend(options)
        return "250 OK"

    async def handle_DATA(self, server: SMTP, session: Session, envelope: Envelope) -> str:
        assert isinstance(server, _Session)
        at = datetime.now()  # when the rules count it, not when the disk is done
        refusal = self.server.rules.data()
        if refusal is not None:
            self.server.report(Refused(at, refusal, tuple(envelope.rcpt_tos)))
            return refusal
        try:
            captured = store(self.server.outbox, envelope, at)
        except OSError as e:
            # A full disk, a read-only folder: a 4xx that says why, and the session goes on (a
            # handler that raises leaves aiosmtpd's transaction open: every later MAIL gets 503).
            return self.server.storage_failed(e, tuple(envelope.rcpt_tos))
        server.accepted += 1
        self.server.report(captured)
        return QUEUED_REPLY

    async def handle_exception(self, error: Exception) -> str:
        # Anything else that went wrong in a session: the client should retry, the user should know.
        reply = f"451 4.3.0 Cannot store the message: {error}"
        self.server.report(Refused(datetime.now(), reply, ()))
        return reply


def _any_login(server: SMTP, session: Session, envelope: Envelope, mechanism: str, data: Any) -> AuthResult:
    # A rehearsal of a server that wants a login: any user name and password will do.
    return AuthResult(success=True)


class _PrintableLog(logging.Filter):
    """aiosmtpd logs what a client sent (an unknown command) as it came, to the terminal when
    logging is not set up: shown escaped, as everything mailblast prints."""

    def filter(self, record: logging.LogRecord) -> bool:
        record.msg, record.args = printable(record.getMessage()), None
        return True


_PRINTABLE_LOG = _PrintableLog()


class CaptureServer:
    """The capture server on the running event loop: ``await start()``, then ``await close()``."""

    def __init__(
        self,
        outbox: mailbox.Maildir,
        limits: Limits | None = None,
        *,
        on_event: Callable[[Event], None] | None = None,
        rng: random.Random | None = None,
        max_connections: int | None = DEFAULT_MAX_CONNECTIONS,
    ) -> None:
        self.outbox = outbox
        self.rules = ProviderRules(limits or Limits(), rng=rng, max_connections=max_connections)
        logging.getLogger("mail.log").addFilter(_PRINTABLE_LOG)  # once: the same filter is not added twice
        self.on_event = on_event
        self.captured = 0
        self.refused = 0
        self.live: set[_Session] = set()
        self.storage_error: str | None = None  # why a message could not be stored ("No space left")
        self.data_turns = asyncio.Semaphore(DATA_AT_ONCE)
        self.host = LOOPBACK
        self.port = 0
        self._server: asyncio.base_events.Server | None = None

    @property
    def url(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"smtp://{host}:{self.port}"

    def report(self, event: Event) -> None:
        if isinstance(event, Captured):
            self.captured += 1
        else:
            self.refused += 1
        if self.on_event is not None:
            self.on_event(event)

    def storage_failed(self, error: OSError, rcpt_tos: tuple[str, ...]) -> str:
        """A message that could not be stored: the reply that says why, and the event."""
        cause = error.strerror or str(error)
        self.storage_error = cause
        reply = STORAGE_FAILED_REPLY.format(cause=cause)
        self.report(Refused(datetime.now(), reply, rcpt_tos))
        return reply

    def _session(self) -> _Session:
        return _Session(
            self,
            _Handler(self),
            hostname=SERVER_NAME,
            ident="mailblast capture server",
            enable_SMTPUTF8=True,
            authenticator=_any_login,
            auth_require_tls=False,
            data_size_limit=MAX_MESSAGE_BYTES,
        )

    async def start(self, host: str = LOOPBACK, port: int = 0) -> None:
        """Listen on ``host:port`` (0: a free port, then read :attr:`port`)."""
        try:
            self._server = await asyncio.get_running_loop().create_server(self._session, host, port)
        except OSError as e:
            if e.errno == errno.EADDRINUSE:
                raise ConfigError(
                    f"port {port} on {host} is in use already", "pick another one with --port"
                ) from None
            raise ConfigError(f"cannot listen on {host}:{port}: {e.strerror}") from None
        self.host = host
        self.port = self._server.sockets[0].getsockname()[1]

    async def close(self) -> None:
        """Stop listening and drop every connection (an idle client would keep it open forever)."""
        if self._server is None:
            return
        self._server.close()
        for session in list(self.live):
            if session.transport is not None:
                session.transport.abort()
        await self._server.wait_closed()
        self._server = None


def is_loopback(host: str) -> bool:
    """Whether ``host`` is reachable from this machine only (127.0.0.1, ::1, localhost)."""
    if host.lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False  # a name: it may resolve to anything


@contextlib.contextmanager
def in_background(
    outbox: Path,
    limits: Limits | None = None,
    *,
    on_event: Callable[[Event], None] | None = None,
    rng: random.Random | None = None,
) -> Iterator[CaptureServer]:
    """A capture server on a free loopback port, in a thread of its own, for the life of the block."""
    # its one client is the send that started it, with its own cap on connections
    server = CaptureServer(open_outbox(outbox), limits, on_event=on_event, rng=rng, max_connections=None)
    loop = asyncio.new_event_loop()
    thread = threading.Thread(target=loop.run_forever, name="mailblast-capture", daemon=True)
    thread.start()
    try:
        asyncio.run_coroutine_threadsafe(server.start(), loop).result(timeout=30)
        yield server
    finally:
        with contextlib.suppress(Exception):  # stopping must not hide what happened in the block
            asyncio.run_coroutine_threadsafe(server.close(), loop).result(timeout=10)
        loop.call_soon_threadsafe(loop.stop)
        thread.join(timeout=10)
        if not thread.is_alive():
            loop.close()


def run_serve(host: str, port: int, outbox_path: Path, limits: Limits, console: Console) -> int:
    """`mailblast serve`: capture in the foreground, one line per message, until Ctrl-C."""
    if not 0 <= port <= 65535:
        raise ConfigError(f"--port {port}: a port is a number from 0 to 65535", "the default is 2525")
    outbox = open_outbox(outbox_path)
    if not is_loopback(host):
        print_warning(
            console,
            f"listening on {host}, not only on this machine: anyone who can reach it can store mail "
            f"in {outbox_path}/ (and fill its disk); --host {LOOPBACK} keeps it local",
        )

    def show(event: Event) -> None:
        console.print(event.line(), soft_wrap=True)

    server = CaptureServer(outbox, limits, on_event=show)

    async def serve() -> None:
        await server.start(host, port)
        console.print(
            f"capturing mail on {server.url} into {outbox_path}/ (a Maildir; {limits.describe()}); "
            "Ctrl-C stops",
            soft_wrap=True,
        )
        console.print(f"send to it with: mailblast send RECIPIENTS.csv --smtp {server.url}", soft_wrap=True)
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            with contextlib.suppress(NotImplementedError, RuntimeError):  # Windows has no signal handlers
                loop.add_signal_handler(sig, stop.set)
        try:
            await stop.wait()
        finally:
            await server.close()

    with contextlib.suppress(KeyboardInterrupt):  # where signal handlers are missing
        asyncio.run(serve())
    console.print(
        f"stopped: {server.captured:,} message(s) captured in {outbox_path}/, {server.refused:,} refused",
        soft_wrap=True,
    )
    return 0

"""Real, in-process SMTP servers for the test suite and the benchmarks.

Every server is an aiosmtpd ``Controller`` running its own event loop in a daemon
thread, listening on 127.0.0.1 with a port the OS chose.  In-process code and
subprocesses (the ``mailblast`` CLI) can both send to it.  Nothing is mocked: the
behaviours below answer on the wire exactly like a real provider would.

    with start_server(rate=(3, 1.0)) as server:
        subprocess.run(["mailblast", "send", "--smtp", server.url, ...])
        assert server.max_in_window(1.0) <= 3

Behaviours (keyword arguments of :func:`start_server`, freely combined):

* plain sink (no arguments): accepts everything.
* ``rate=(n, period)``: at most ``n`` accepted messages in any sliding window of
  ``period`` seconds (a message counts when its DATA is accepted); above that the
  server answers ``throttle_reply`` (Mailtrap's text by default) at stage
  ``throttle_at`` ("data" by default; "mail" or "rcpt" also possible).
* ``fail_random=(probability, reply)``: answer ``reply`` at stage ``fail_random_at``
  with the given probability, drawn from ``random.Random(seed)``.
* ``drop_after_data_every=k`` / ``drop_at_mail_every=k``: close the connection
  without any reply after the final dot of every k-th DATA / at every k-th MAIL FROM.
* ``reject_recipients``: a set of addresses (case-insensitive) or a predicate;
  those get ``550 5.1.1 <addr>: Recipient address rejected: User unknown``.
* ``tls`` / ``require_starttls`` / ``implicit_tls``: STARTTLS offered / required, or
  SMTPS, with a certificate from a process-wide trustme CA (``.ca_pem_path``).
* ``auth={"user": "password"}``: AUTH PLAIN/LOGIN required before MAIL FROM;
  ``fail_auth_after=k`` makes every AUTH fail once k messages were accepted.
* ``xoauth2=lambda user, token: bool``: AUTH XOAUTH2 offered and required (alone, unless
  ``auth`` is also given); a refused token gets Gmail's answer (a 334 JSON challenge, then
  535). ``token_messages=k``: a token expires once k messages were accepted on sessions it
  signed in, so that a client must fetch a new one for a later connection.
* ``basic_auth_disabled``: PLAIN and LOGIN are offered but always refused with Microsoft
  365's ``535 5.7.139 Authentication unsuccessful, basic authentication is disabled``.
* ``reply_after=(k, reply)``: once k messages were accepted, answer ``reply`` at
  stage ``reply_after_at`` ("mail" by default).
* ``reply_hook(stage, envelope, accepted_count) -> str | None``: answer anything at
  "mail" / "rcpt" / "data"; return :data:`DROP` to close the connection silently.
* ``data_latency``: seconds to wait after the final dot before answering.
* ``smtputf8``, ``data_size_limit``: forwarded to aiosmtpd.
* ``record_chunks``: keep every chunk of bytes as read from a client (``.chunks``), to see
  which commands came in one write.
* ``pipelining``: advertise PIPELINING (RFC 2920), as real providers do; on by default.
  aiosmtpd reads pipelined commands in order whether it advertises them or not.
* ``drop_at_data_every=k``: close the connection at every k-th DATA command, before
  the 354: the message was certainly not delivered.
* ``per_connection=k``: Exim's ``smtp_accept_max_per_connection``: the (k+1)-th MAIL of a
  session gets ``421 4.7.0 too many messages in this connection``, and the connection closes.

Postfix's limits, answered exactly as Postfix 3.7 does (``smtpd_client_*`` with anvil):

* ``greeting_reply``: answer every connection with this reply instead of 220.
* ``max_connections=k``: a client with k connections open gets
  ``421 4.7.0 <host> Error: too many connections from <ip>`` as its greeting
  (``smtpd_client_connection_count_limit``).
* ``postfix_rate=(n, period)``: anvil's message rate (``smtpd_client_message_rate_limit``
  with ``anvil_rate_time_unit``): time counts in whole seconds, a window opens at a
  client's connect or MAIL FROM and lasts until an event more than ``period`` seconds
  after its start; the (n+1)-th MAIL FROM of a window (refused ones count too) gets
  ``450 4.7.1 Error: too much mail from <ip>``.
* ``postfix_errors=(soft, hard, sleep)``: smtpd's error counting (``smtpd_soft_error_limit``,
  ``smtpd_hard_error_limit``, ``smtpd_error_sleep_time``; Postfix's defaults are
  :data:`POSTFIX_ERROR_LIMITS`): every reply that refuses a command, 503s to pipelined
  commands after a refused MAIL included, is an error of the session, and a delivered
  message forgives them all. From ``soft`` errors on, every reply waits ``sleep`` seconds;
  at ``hard`` the session gets ``421 4.7.0 <host> Error: too many errors`` and is closed.
"""

from __future__ import annotations

import asyncio
import atexit
import base64
import contextlib
import email
import email.message
import email.policy
import logging
import os
import random
import shutil
import socket
import ssl
import tempfile
import threading
import time
from collections.abc import Callable, Collection, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType
from typing import Any, Literal, NamedTuple, Self, cast

import trustme
from aiosmtpd.controller import Controller
from aiosmtpd.smtp import MISSING, SMTP, AuthResult, Envelope, LoginPassword, Session

from mailblast.server.capture import MAILTRAP_THROTTLE_REPLY, WindowCount

__all__ = [
    "AUTH_INVALID_REPLY",
    "AUTH_REQUIRED_REPLY",
    "BASIC_AUTH_DISABLED_REPLY",
    "DROP",
    "HOST",
    "MAILTRAP_THROTTLE_REPLY",
    "POSTFIX_ERROR_LIMITS",
    "SES_THROTTLE_REPLY",
    "TEMP_FAILURE_REPLY",
    "AuthAttempt",
    "Dropped",
    "LocalCA",
    "Received",
    "Rejection",
    "SmtpServer",
    "Stage",
    "child_environ",
    "local_ca",
    "max_in_window",
    "refuse_by_policy",
    "start_server",
    "too_many_connections_reply",
    "too_many_errors_reply",
    "too_much_mail_reply",
    "unknown_user_reply",
]

HOST = "127.0.0.1"
SERVER_NAME = "mx.mailblast.test"

SES_THROTTLE_REPLY = "454 Throttling failure: Maximum sending rate exceeded."
TEMP_FAILURE_REPLY = "451 4.3.0 Temporary failure"
PER_CONNECTION_REPLY = "421 4.7.0 too many messages in this connection"
AUTH_INVALID_REPLY = "535 5.7.8 Authentication credentials invalid"
AUTH_REQUIRED_REPLY = "530 5.7.0 Authentication required"
BASIC_AUTH_DISABLED_REPLY = "535 5.7.139 Authentication unsuccessful, basic authentication is disabled."
XOAUTH2_REFUSED_REPLY = "535 5.7.8 Username and Password not accepted. For more information, go to support"
XOAUTH2_CHALLENGE = '{"status":"401","schemes":"bearer","scope":"https://mail.google.com/"}'
OK_REPLY = "250 OK"
QUEUED_REPLY = "250 2.0.0 Ok: queued"

POSTFIX_ERROR_LIMITS = (10, 20, 1.0)  # Postfix 3.7's defaults: (soft, hard, seconds)

DROP = "DROP"
"""Return this from a ``reply_hook`` to close the connection without replying."""

Stage = Literal["mail", "rcpt", "data"]
ReplyHook = Callable[[Stage, Envelope, int], str | None]
_STAGES: tuple[Stage, ...] = ("mail", "rcpt", "data")


def child_environ() -> dict[str, str]:
    """This environment for a mailblast child, without the caller's MAILBLAST_ settings but
    MAILBLAST_PIPELINING: the suite runs with pipelining on and off."""
    kept = "MAILBLAST_PIPELINING"
    return {k: v for k, v in os.environ.items() if not k.startswith("MAILBLAST_") or k == kept}


def too_many_connections_reply(ip: str) -> str:
    return f"421 4.7.0 {SERVER_NAME} Error: too many connections from {ip}"


def too_much_mail_reply(ip: str) -> str:
    return f"450 4.7.1 Error: too much mail from {ip}"


def too_many_errors_reply() -> str:
    return f"421 4.7.0 {SERVER_NAME} Error: too many errors"


POLICY_REFUSAL_REPLY = "550 5.7.1 Message refused by policy"


def refuse_by_policy(refused: Collection[str] | Callable[[str], bool]) -> Callable[..., str | None]:
    """A ``reply_hook`` refusing these recipients for good, at RCPT, with a 5.7.1: a refusal that is
    not about the address, so it stays off the suppression list (a 5.1.1 goes on it) and a resend
    or --retry-failed reaches it again."""
    lowered = set() if callable(refused) else {a.lower() for a in refused}

    def wanted(address: str) -> bool:
        return refused(address) if callable(refused) else address.lower() in lowered

    def hook(stage: str, envelope: Envelope, accepted: int) -> str | None:
        return POLICY_REFUSAL_REPLY if stage == "rcpt" and wanted(envelope.rcpt_tos[-1]) else None

    return hook


def unknown_user_reply(address: str) -> str:
    return f"550 5.1.1 <{address}>: Recipient address rejected: User unknown"


# --------------------------------------------------------------------------- records


@dataclass
class Received:
    """One accepted message (its DATA got a 250)."""

    mail_from: str
    rcpt_tos: list[str]
    data: bytes
    at: float  # time.monotonic() when the message was counted (end of DATA)
    peer: Any  # (host, port) of the client
    mail_options: list[str] = field(default_factory=list)
    user: str | None = None  # AUTH login of the session, if any
    tls: bool = False  # sent over STARTTLS or implicit TLS

    @property
    def message(self) -> email.message.EmailMessage:
        msg = email.message_from_bytes(self.data, policy=email.policy.default)
        assert isinstance(msg, email.message.EmailMessage)
        return msg


@dataclass
class Dropped:
    """A transaction whose connection the server closed without replying."""

    stage: Stage  # "rcpt" only when a reply_hook returned DROP there
    mail_from: str
    rcpt_tos: list[str]
    data: bytes | None  # the full message for stage "data": the server did get it
    at: float
    peer: Any


class Rejection(NamedTuple):
    """A 4xx/5xx reply the server sent: ``(at, code, text)``; text excludes the code."""

    at: float
    code: int
    text: str


@dataclass(frozen=True)
class AuthAttempt:
    at: float
    username: str
    mechanism: str
    success: bool


def max_in_window(times: Iterable[float], period: float) -> int:
    """Most timestamps inside any half-open window ``(t - period, t]``.

    Two timestamps exactly ``period`` apart are never in the same window, matching
    the rule the throttling server enforces.
    """
    ordered = sorted(times)
    best = 0
    start = 0
    for end, t in enumerate(ordered):
        while t - ordered[start] >= period:
            start += 1
        best = max(best, end - start + 1)
    return best


# --------------------------------------------------------------------------- TLS


class LocalCA:
    """A trustme CA plus a server certificate for 127.0.0.1 and localhost."""

    def __init__(self) -> None:
        self.ca = trustme.CA()
        self.server_cert = self.ca.issue_cert(HOST, "localhost")
        self._dir = Path(tempfile.mkdtemp(prefix="mailblast-ca-"))
        atexit.register(shutil.rmtree, self._dir, ignore_errors=True)
        self.ca_pem_path = self._dir / "ca.pem"
        self.ca.cert_pem.write_to_path(str(self.ca_pem_path))

    def server_context(self) -> ssl.SSLContext:
        ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        self.server_cert.configure_cert(ctx)
        return ctx

    def client_context(self) -> ssl.SSLContext:
        """A verifying client context that trusts only this CA."""
        ctx = ssl.create_default_context()
        self.ca.configure_trust(ctx)
        return ctx


_ca_lock = threading.Lock()
_ca: LocalCA | None = None


def local_ca() -> LocalCA:
    """The process-wide CA shared by every TLS server (created on first use)."""
    global _ca
    with _ca_lock:
        if _ca is None:
            _ca = LocalCA()
        return _ca


# --------------------------------------------------------------------------- aiosmtpd glue


class _QuietLoginData(logging.Filter):
    """aiosmtpd logs a deprecation warning on every successful AUTH; hide it."""

    def filter(self, record: logging.LogRecord) -> bool:
        return "login_data is deprecated" not in record.getMessage()


logging.getLogger("mail.log").addFilter(_QuietLoginData())


def _check_reply(reply: str, what: str) -> str:
    code = reply[:3]
    if not (code.isdigit() and code[0] in "45" and reply[3:4] in (" ", "")):
        raise ValueError(f"{what} must be a 4xx/5xx SMTP reply, got {reply!r}")
    return reply


def _check_stage(stage: str, what: str) -> Stage:
    if stage not in _STAGES:
        raise ValueError(f"{what} must be one of {_STAGES}, got {stage!r}")
    return cast(Stage, stage)


def _check_every(k: int | None, what: str) -> int | None:
    if k is not None and k < 1:
        raise ValueError(f"{what} must be >= 1")
    return k


class _Protocol(SMTP):
    """aiosmtpd's SMTP session, instrumented for the owning :class:`SmtpServer`."""

    def __init__(self, owner: SmtpServer, *args: Any, **kwargs: Any) -> None:
        self.owner = owner  # before super(): aiosmtpd's __init__ inspects our members
        self.greeting: str | None = None  # replaces the 220 greeting (a refusal)
        self.counted_ip: str | None = None  # set while counted as an open client connection
        self.errors = 0  # Postfix's error count of this session (postfix_errors)
        self.in_data = False  # replies to DATA and its content: a 250 is a delivery
        super().__init__(*args, **kwargs)

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        first = self._original_transport is None  # called again after STARTTLS
        super().connection_made(transport)
        if first:
            # aiosmtpd writes a multi-line reply (EHLO) line by line; with Nagle's algorithm and
            # the client's delayed ACK that costs 40 ms per connection, which real servers do not.
            sock = transport.get_extra_info("socket")
            if sock is not None:
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            self.greeting = self.owner._connection_opened(self, transport.get_extra_info("peername"))

    def connection_lost(self, error: Exception | None) -> None:
        self.owner._connection_closed(self)
        super().connection_lost(error)

    async def push(self, status: str | bytes) -> None:
        if self.transport is None or self.transport.is_closing():
            return  # dropped on purpose: not a single byte more
        line = status.decode("utf-8", "replace") if isinstance(status, bytes) else status
        if line.startswith("220 ") and self.greeting is not None:
            line = status = self.greeting
        code = line[:3]
        last = line[3:4] in (" ", "")  # the last line of its reply
        refusal = code.isdigit() and code[0] in "45" and last
        limits = self.owner.postfix_errors
        if limits is not None and last:
            if self.in_data and code == "250":
                self.errors = 0  # a delivered message forgives the session's errors
            if self.errors >= limits[0]:
                await asyncio.sleep(limits[2])  # Postfix slows every reply of a session making errors
                if self.transport is None or self.transport.is_closing():
                    return
        if refusal:
            self.owner._record_rejection(int(code), line[4:])
        await super().push(status)
        if code == "421" and line[3:4] == " " and self.transport is not None:
            self.transport.close()  # 421: "closing transmission channel", like real servers
            return
        if limits is not None and refusal:
            self.errors += 1
            self.owner._session_errors(self.errors)
            if self.errors >= limits[1]:
                await self.push(too_many_errors_reply())

    def drop(self) -> None:
        if self.transport is not None:
            self.transport.abort()

    def data_received(self, data: bytes) -> None:
        if self.owner.record_chunks:
            with self.owner._cond:
                self.owner._chunks.append(data)
        super().data_received(data)

    async def smtp_DATA(self, arg: str) -> None:
        self.in_data = True
        try:
            await self._data(arg)
        finally:
            self.in_data = False

    async def _data(self, arg: str) -> None:
        owner = self.owner
        if owner.drop_at_data_every is not None and self.envelope is not None and self.envelope.rcpt_tos:
            owner._data_command_count += 1
            if owner._data_command_count % owner.drop_at_data_every == 0:
                assert self.session is not None
                owner._drop(self, self.session, self.envelope, "data")
                return
        await super().smtp_DATA(arg)

    @property
    def uses_tls(self) -> bool:
        return self._tls_protocol is not None or self.owner.implicit_tls


class _Controller(Controller):
    """Controller serving on a socket we bound ourselves (the real port is known)."""

    def __init__(self, owner: SmtpServer, sock: socket.socket, **kwargs: Any) -> None:
        super().__init__(owner._handler, hostname=HOST, port=sock.getsockname()[1], **kwargs)
        self.owner = owner
        self.sock = sock
        self.trigger_peer: tuple[str, int] | None = None

    def factory(self) -> SMTP:
        return _Protocol(self.owner, self.handler, **self.SMTP_kwargs)

    def _create_server(self) -> Any:
        return self.loop.create_server(self._factory_invoker, sock=self.sock, ssl=self.ssl_context)

    def _trigger_server(self) -> None:
        # Same as aiosmtpd's readiness probe, but from a known local address so that
        # the probe is not counted as a client connection.
        with contextlib.ExitStack() as stack:
            s = stack.enter_context(socket.socket(socket.AF_INET, socket.SOCK_STREAM))
            s.settimeout(2.0)
            s.bind((HOST, 0))
            self.trigger_peer = s.getsockname()
            s.connect((HOST, self.port))
            if self.ssl_context is not None:
                client = ssl.create_default_context()
                client.check_hostname = False
                client.verify_mode = ssl.CERT_NONE
                s = stack.enter_context(client.wrap_socket(s))
            s.recv(1024)


class _Handler:
    """aiosmtpd handler hooks; all state lives on the owning :class:`SmtpServer`."""

    def __init__(self, owner: SmtpServer) -> None:
        self.owner = owner

    async def handle_EHLO(
        self,
        server: SMTP,
        session: Session,
        envelope: Envelope,
        hostname: str,
        responses: list[str],
    ) -> list[str]:
        session.host_name = hostname  # the 5-argument hook must do this itself
        if self.owner.pipelining:
            responses.insert(1, "250-PIPELINING")
        if not self.owner._offers_auth:
            responses = [r for r in responses if not r[4:].upper().startswith("AUTH")]
        return responses

    async def handle_MAIL(
        self,
        server: SMTP,
        session: Session,
        envelope: Envelope,
        address: str,
        mail_options: list[str],
    ) -> str:
        owner = self.owner
        if owner._offers_auth and not session.authenticated:
            return AUTH_REQUIRED_REPLY
        owner._mail_count += 1
        mails = session.mails = getattr(session, "mails", 0) + 1  # type: ignore[attr-defined]
        if owner.per_connection is not None and mails > owner.per_connection:
            return PER_CONNECTION_REPLY  # Exim's smtp_accept_max_per_connection; 421 closes
        if (refusal := owner._postfix_mail(session.peer)) is not None:
            return refusal
        envelope.mail_from = address
        envelope.mail_options.extend(mail_options)
        if owner.drop_at_mail_every and owner._mail_count % owner.drop_at_mail_every == 0:
            return owner._drop(server, session, envelope, "mail")
        reply = owner._policy("mail", server, session, envelope)
        if reply is not None:
            envelope.mail_from = None
            envelope.mail_options.clear()
            return reply
        return OK_REPLY

    async def handle_RCPT(
        self,
        server: SMTP,
        session: Session,
        envelope: Envelope,
        address: str,
        rcpt_options: list[str],
    ) -> str:
        owner = self.owner
        if owner._rejects_recipient(address):
            return unknown_user_reply(address)
        envelope.rcpt_tos.append(address)
        reply = owner._policy("rcpt", server, session, envelope)
        if reply is not None:
            envelope.rcpt_tos.pop()
            return reply
        envelope.rcpt_options.extend(rcpt_options)
        return OK_REPLY

    async def handle_DATA(self, server: SMTP, session: Session, envelope: Envelope) -> str:
        owner = self.owner
        owner._data_count += 1
        if owner.drop_after_data_every and owner._data_count % owner.drop_after_data_every == 0:
            return owner._drop(server, session, envelope, "data")
        if owner.data_latency > 0:
            await asyncio.sleep(owner.data_latency)
        reply = owner._policy("data", server, session, envelope)
        if reply is not None:
            return reply
        owner._accept(server, session, envelope)
        return QUEUED_REPLY

    async def auth_XOAUTH2(self, server: SMTP, args: list[str]) -> AuthResult:
        """RFC-less but universal: base64("user=U^Aauth=Bearer TOKEN^A^A"), as Gmail and Microsoft take it."""
        owner = self.owner
        if len(args) == 1:
            blob: Any = await server.challenge_auth("")
            if blob is MISSING:
                return AuthResult(success=False, handled=True)
        else:
            try:
                blob = base64.b64decode(args[1], validate=True)
            except ValueError:
                await server.push("501 5.5.2 Cannot decode the response")
                return AuthResult(success=False, handled=True)
        fields = dict(
            part.split("=", 1) for part in blob.decode("utf-8", "replace").split("\x01") if "=" in part
        )
        user, token = fields.get("user", ""), fields.get("auth", "").removeprefix("Bearer ")
        assert owner.xoauth2 is not None
        with owner._cond:
            used = owner._token_uses.get(token, 0)
        expired = owner.token_messages is not None and used >= owner.token_messages
        ok = bool(user) and owner.xoauth2(user, token) and not expired
        with owner._cond:
            owner._auth_attempts.append(AuthAttempt(time.monotonic(), user, "XOAUTH2", ok))
        if not ok:
            await server.challenge_auth(XOAUTH2_CHALLENGE)  # the client answers with an empty line
            return AuthResult(success=False, handled=False, message=owner._xoauth2_refusal(blob, token))
        assert server.session is not None
        server.session.xoauth2_token = token  # type: ignore[attr-defined]
        with owner._cond:
            owner._token_uses.setdefault(token, 0)
        return AuthResult(success=True, auth_data=LoginPassword(user.encode(), b""))


class _Credentials:
    """Username -> password; never shows the passwords in a repr."""

    def __init__(self, users: dict[str, str]) -> None:
        self._users = dict(users)

    def check(self, username: str, password: str) -> bool:
        return username in self._users and self._users[username] == password

    def __repr__(self) -> str:
        return f"<credentials for {sorted(self._users)}>"


# --------------------------------------------------------------------------- the server


class SmtpServer:
    """A real SMTP server in a background thread.  Create it with :func:`start_server`."""

    def __init__(
        self,
        *,
        rate: tuple[int, float] | None = None,
        throttle_reply: str = MAILTRAP_THROTTLE_REPLY,
        throttle_at: Stage = "data",
        fail_random: tuple[float, str] | float | None = None,
        fail_random_at: Stage = "data",
        seed: int = 0,
        drop_after_data_every: int | None = None,
        drop_at_mail_every: int | None = None,
        reject_recipients: Collection[str] | Callable[[str], bool] | None = None,
        tls: bool = False,
        require_starttls: bool = False,
        implicit_tls: bool = False,
        auth: dict[str, str] | None = None,
        fail_auth_after: int | None = None,
        xoauth2: Callable[[str, str], bool] | None = None,
        token_messages: int | None = None,
        basic_auth_disabled: bool = False,
        reply_after: tuple[int, str] | None = None,
        reply_after_at: Stage = "mail",
        reply_hook: ReplyHook | None = None,
        data_latency: float = 0.0,
        smtputf8: bool = False,
        pipelining: bool = True,
        record_chunks: bool = False,
        data_size_limit: int = 50 * 1024 * 1024,
        drop_at_data_every: int | None = None,
        greeting_reply: str | None = None,
        max_connections: int | None = None,
        postfix_rate: tuple[int, int] | None = None,
        postfix_errors: tuple[int, int, float] | None = None,
        per_connection: int | None = None,
        ready_timeout: float = 10.0,
    ) -> None:
        if rate is not None and (rate[0] < 1 or rate[1] <= 0):
            raise ValueError("rate must be (n >= 1, period > 0)")
        if isinstance(fail_random, int | float):
            fail_random = (float(fail_random), TEMP_FAILURE_REPLY)
        if fail_random is not None:
            _check_reply(fail_random[1], "fail_random reply")
        if reply_after is not None:
            _check_reply(reply_after[1], "reply_after reply")
        if implicit_tls and (tls or require_starttls):
            raise ValueError("implicit_tls cannot be combined with STARTTLS options")
        if fail_auth_after is not None and auth is None:
            raise ValueError("fail_auth_after needs auth")
        if token_messages is not None and xoauth2 is None:
            raise ValueError("token_messages needs xoauth2")

        self.rate = rate
        self.throttle_reply = _check_reply(throttle_reply, "throttle_reply")
        self.throttle_at = _check_stage(throttle_at, "throttle_at")
        self.fail_random = fail_random
        self.fail_random_at = _check_stage(fail_random_at, "fail_random_at")
        self.seed = seed
        self.drop_after_data_every = _check_every(drop_after_data_every, "drop_after_data_every")
        self.drop_at_mail_every = _check_every(drop_at_mail_every, "drop_at_mail_every")
        self.reject_recipients = reject_recipients
        self.tls = tls or require_starttls
        self.require_starttls = require_starttls
        self.implicit_tls = implicit_tls
        self.fail_auth_after = fail_auth_after
        self.xoauth2 = xoauth2
        self.token_messages = token_messages
        self.basic_auth_disabled = basic_auth_disabled
        self.reply_after = reply_after
        self.reply_after_at = _check_stage(reply_after_at, "reply_after_at")
        self.reply_hook = reply_hook
        self.data_latency = data_latency
        self.smtputf8 = smtputf8
        self.pipelining = pipelining
        self.record_chunks = record_chunks
        self.data_size_limit = data_size_limit
        self.drop_at_data_every = _check_every(drop_at_data_every, "drop_at_data_every")
        if greeting_reply is not None:
            _check_reply(greeting_reply, "greeting_reply")
        self.greeting_reply = greeting_reply
        self.max_connections = _check_every(max_connections, "max_connections")
        if postfix_rate is not None and (postfix_rate[0] < 1 or postfix_rate[1] < 1):
            raise ValueError("postfix_rate must be (n >= 1, whole seconds >= 1)")
        self.postfix_rate = postfix_rate
        if postfix_errors is not None and not (1 <= postfix_errors[0] <= postfix_errors[1]):
            raise ValueError("postfix_errors must be (soft >= 1, hard >= soft, sleep seconds)")
        self.postfix_errors = postfix_errors
        self.per_connection = _check_every(per_connection, "per_connection")
        self.ready_timeout = ready_timeout

        if isinstance(reject_recipients, str):
            reject_recipients = {reject_recipients}
        self._credentials = _Credentials(auth) if auth is not None else None
        self._offers_auth = auth is not None or xoauth2 is not None or basic_auth_disabled
        self._token_uses: dict[str, int] = {}  # XOAUTH2 token -> messages accepted with it
        self._rejected_set = (
            {a.lower() for a in reject_recipients}
            if reject_recipients is not None and not callable(reject_recipients)
            else None
        )
        self._rng = random.Random(seed)
        self._handler = _Handler(self)
        self._cond = threading.Condition()
        self._received: list[Received] = []
        self._accepted_at: list[float] = []  # sorted, same order as _received
        self._window = WindowCount(rate[1]) if rate is not None else None  # the rule `serve --rate` applies
        self._rejected: list[Rejection] = []
        self._out_of_sequence: list[Rejection] = []  # 503 replies, kept apart from .rejected
        self._chunks: list[bytes] = []
        self._dropped: list[Dropped] = []
        self._auth_attempts: list[AuthAttempt] = []
        self._connections = 0
        self._live: set[_Protocol] = set()  # only touched in the server thread
        self._mail_count = 0
        self._data_count = 0
        self._data_command_count = 0
        self._open_clients: dict[str, int] = {}  # ip -> connections open now
        self._most_open = 0
        self._anvil: dict[str, list[int]] = {}  # ip -> [window start (whole seconds), messages]
        self._most_errors = 0
        self._controller: _Controller | None = None
        self.host = HOST
        self.port = 0

    # ----------------------------------------------------------------- lifecycle

    def start(self) -> Self:
        if self._controller is not None:
            raise RuntimeError("server already started")
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        try:
            sock.bind((HOST, 0))
            self.port = sock.getsockname()[1]
            kwargs: dict[str, Any] = {
                "server_hostname": SERVER_NAME,
                "ready_timeout": self.ready_timeout,
                "enable_SMTPUTF8": self.smtputf8,
                "data_size_limit": self.data_size_limit,
                # AUTH only after STARTTLS when STARTTLS is offered; on plain and on
                # implicit-TLS servers AUTH is offered right away (aiosmtpd does not
                # count implicit TLS as TLS for auth_require_tls).
                "auth_require_tls": self.tls,
            }
            if self._credentials is not None or self.basic_auth_disabled:
                kwargs["authenticator"] = self._authenticate
            excluded = [] if self.xoauth2 is not None else ["XOAUTH2"]
            if self._credentials is None and not self.basic_auth_disabled:
                excluded += ["PLAIN", "LOGIN"]
            kwargs["auth_exclude_mechanism"] = excluded
            if self.tls:
                kwargs["tls_context"] = local_ca().server_context()
                kwargs["require_starttls"] = self.require_starttls
            if self.implicit_tls:
                kwargs["ssl_context"] = local_ca().server_context()
            self._controller = _Controller(self, sock, **kwargs)
            self._controller.start()
        except BaseException:
            sock.close()
            if self._controller is not None and self._controller._thread is not None:
                self._controller.stop()
            self._controller = None
            raise
        return self

    def stop(self) -> None:
        """Abort every open connection and stop the server thread (idempotent)."""
        controller, self._controller = self._controller, None
        if controller is None:
            return
        if controller.loop.is_running():
            shutdown = self._shutdown(controller)
            future = asyncio.run_coroutine_threadsafe(shutdown, controller.loop)
            # stopping must never fail a test; the daemon thread dies anyway
            with contextlib.suppress(Exception):
                future.result(timeout=5.0)
        controller.stop(no_assert=True)

    async def _shutdown(self, controller: _Controller) -> None:
        # Python >= 3.12's Server.wait_closed() waits for every connection, so an
        # idle client would make aiosmtpd's Controller.stop() hang: abort them all.
        if controller.server is not None:
            controller.server.close()  # no new connections
        for proto in list(self._live):
            proto.drop()
        current = asyncio.current_task()
        tasks = [t for t in asyncio.all_tasks() if t is not current]
        for task in tasks:
            task.cancel()
        if tasks:
            await asyncio.wait(tasks, timeout=2.0)
        await asyncio.sleep(0)  # let connection_lost callbacks run

    def __enter__(self) -> Self:
        if self._controller is None:
            self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    def __repr__(self) -> str:
        state = "running" if self._controller is not None else "stopped"
        return f"<SmtpServer {self.url} {state} received={len(self._received)}>"

    # ----------------------------------------------------------------- public state

    @property
    def url(self) -> str:
        scheme = "smtps" if self.implicit_tls else "smtp"
        return f"{scheme}://{self.host}:{self.port}"

    @property
    def ca_pem_path(self) -> Path:
        """PEM file of the CA that signed this server's certificate."""
        return local_ca().ca_pem_path

    def client_context(self) -> ssl.SSLContext:
        """A verifying client SSL context that trusts this server's certificate."""
        return local_ca().client_context()

    @property
    def received(self) -> list[Received]:
        with self._cond:
            return list(self._received)

    @property
    def rejected(self) -> list[Rejection]:
        with self._cond:
            return list(self._rejected)

    @property
    def chunks(self) -> list[bytes]:
        """What clients sent, as read (``record_chunks``): one write arrives as one chunk on loopback."""
        with self._cond:
            return list(self._chunks)

    @property
    def out_of_sequence(self) -> list[Rejection]:
        """503 replies: a pipelining client's RCPT or DATA after its MAIL or every RCPT was refused."""
        with self._cond:
            return list(self._out_of_sequence)

    @property
    def dropped(self) -> list[Dropped]:
        with self._cond:
            return list(self._dropped)

    @property
    def auth_attempts(self) -> list[AuthAttempt]:
        with self._cond:
            return list(self._auth_attempts)

    @property
    def token_uses(self) -> dict[str, int]:
        """XOAUTH2 tokens that signed in, and how many messages each one's sessions sent."""
        with self._cond:
            return dict(self._token_uses)

    @property
    def connections(self) -> int:
        """Client connections opened so far (the startup probe is not counted)."""
        with self._cond:
            return self._connections

    def recipients(self) -> list[str]:
        return [rcpt for msg in self.received for rcpt in msg.rcpt_tos]

    def max_in_window(self, period: float) -> int:
        with self._cond:
            times = list(self._accepted_at)
        return max_in_window(times, period)

    def wait_for(self, count: int, timeout: float = 10.0) -> bool:
        """Wait until at least ``count`` messages were accepted; False on timeout."""
        with self._cond:
            return self._cond.wait_for(lambda: len(self._received) >= count, timeout)

    # ----------------------------------------------------------------- server thread

    @property
    def accepted_count(self) -> int:
        return len(self._received)

    @property
    def most_open(self) -> int:
        """The most client connections that were open (and greeted with 220) at once."""
        with self._cond:
            return self._most_open

    @property
    def most_errors(self) -> int:
        """The most errors one session had made (``postfix_errors``) since its last delivery."""
        with self._cond:
            return self._most_errors

    def _session_errors(self, errors: int) -> None:
        with self._cond:
            self._most_errors = max(self._most_errors, errors)

    def _connection_opened(self, proto: _Protocol, peer: Any) -> str | None:
        """Count a new connection; returns the refusal to greet it with, if any."""
        self._live.add(proto)
        controller = self._controller
        if controller is not None and controller.trigger_peer == peer:
            return None
        ip = peer[0]
        self._anvil_event(ip)
        with self._cond:
            self._connections += 1
            self._cond.notify_all()
            if self.greeting_reply is not None:
                return self.greeting_reply
            if self.max_connections is not None and self._open_clients.get(ip, 0) >= self.max_connections:
                return too_many_connections_reply(ip)
            proto.counted_ip = ip
            self._open_clients[ip] = self._open_clients.get(ip, 0) + 1
            self._most_open = max(self._most_open, sum(self._open_clients.values()))
        return None

    def _connection_closed(self, proto: _Protocol) -> None:
        self._live.discard(proto)
        ip, proto.counted_ip = proto.counted_ip, None
        if ip is not None:
            with self._cond:
                self._open_clients[ip] -= 1

    def _anvil_event(self, ip: str) -> list[int]:
        """Postfix's anvil: a window opens at an event more than a period after its start."""
        now = int(time.time())
        window = self._anvil.get(ip)
        if self.postfix_rate is not None and (window is None or window[0] + self.postfix_rate[1] < now):
            window = self._anvil[ip] = [now, 0]
        return window or [now, 0]

    def _postfix_mail(self, peer: Any) -> str | None:
        if self.postfix_rate is None:
            return None
        window = self._anvil_event(peer[0])
        window[1] += 1
        return too_much_mail_reply(peer[0]) if window[1] > self.postfix_rate[0] else None

    def _record_rejection(self, code: int, text: str) -> None:
        with self._cond:
            if code == 503:  # a pipelined command after a refusal: that refusal is the one that counts
                self._out_of_sequence.append(Rejection(time.monotonic(), code, text))
            else:
                self._rejected.append(Rejection(time.monotonic(), code, text))
            self._cond.notify_all()

    def _rejects_recipient(self, address: str) -> bool:
        if self._rejected_set is not None:
            return address.lower() in self._rejected_set
        if callable(self.reject_recipients):
            return bool(self.reject_recipients(address))
        return False

    def _window_full(self, now: float) -> bool:
        assert self.rate is not None and self._window is not None
        return self._window.count(now) >= self.rate[0]

    def _policy(self, stage: Stage, server: SMTP, session: Session, envelope: Envelope) -> str | None:
        """The configured answer for this stage, or None to carry on."""
        if self.reply_hook is not None:
            reply = self.reply_hook(stage, envelope, self.accepted_count)
            if reply == DROP:
                return self._drop(server, session, envelope, stage)
            if reply is not None:
                return reply
        if (
            self.reply_after is not None
            and stage == self.reply_after_at
            and self.accepted_count >= self.reply_after[0]
        ):
            return self.reply_after[1]
        if self.rate is not None and stage == self.throttle_at and self._window_full(time.monotonic()):
            return self.throttle_reply
        if (
            self.fail_random is not None
            and stage == self.fail_random_at
            and self._rng.random() < self.fail_random[0]
        ):
            return self.fail_random[1]
        return None

    def _drop(self, server: SMTP, session: Session, envelope: Envelope, stage: Stage) -> str:
        data = envelope.original_content if stage == "data" else None
        with self._cond:
            self._dropped.append(
                Dropped(
                    stage,
                    envelope.mail_from or "",
                    list(envelope.rcpt_tos),
                    data,
                    time.monotonic(),
                    session.peer,
                )
            )
            self._cond.notify_all()
        assert isinstance(server, _Protocol)
        server.drop()
        return OK_REPLY  # never sent: _Protocol.push() is silent once the transport closes

    def _accept(self, server: SMTP, session: Session, envelope: Envelope) -> None:
        assert isinstance(server, _Protocol)
        auth = session.auth_data
        user = auth.login.decode("utf-8", "replace") if isinstance(auth, LoginPassword) else None
        now = time.monotonic()
        message = Received(
            mail_from=envelope.mail_from or "",
            rcpt_tos=list(envelope.rcpt_tos),
            data=envelope.original_content or b"",
            at=now,
            peer=session.peer,
            mail_options=list(envelope.mail_options),
            user=user,
            tls=server.uses_tls,
        )
        token = getattr(session, "xoauth2_token", None)
        with self._cond:
            self._received.append(message)
            self._accepted_at.append(now)  # monotonic clock: stays sorted
            if token is not None:
                self._token_uses[token] += 1
            if self._window is not None:
                self._window.add(now)
            self._cond.notify_all()

    def _xoauth2_refusal(self, blob: bytes, token: str) -> str:
        """The reply to a refused XOAUTH2 token (a subclass may echo what it got)."""
        return XOAUTH2_REFUSED_REPLY

    def _authenticate(
        self, server: SMTP, session: Session, envelope: Envelope, mechanism: str, data: Any
    ) -> AuthResult:
        if not isinstance(data, LoginPassword):
            return AuthResult(success=False, handled=False)
        username = data.login.decode("utf-8", "replace")
        password = data.password.decode("utf-8", "replace")
        if self.basic_auth_disabled:
            with self._cond:
                self._auth_attempts.append(AuthAttempt(time.monotonic(), username, mechanism, False))
            return AuthResult(success=False, handled=False, message=BASIC_AUTH_DISABLED_REPLY)
        assert self._credentials is not None
        ok = self._credentials.check(username, password)
        if self.fail_auth_after is not None and self.accepted_count >= self.fail_auth_after:
            ok = False
        with self._cond:
            self._auth_attempts.append(AuthAttempt(time.monotonic(), username, mechanism, ok))
        if not ok:
            return AuthResult(success=False, handled=False, message=AUTH_INVALID_REPLY)
        # keep only the login around: auth_data ends up on the session
        return AuthResult(success=True, auth_data=LoginPassword(data.login, b""))


def start_server(**behaviour: Any) -> SmtpServer:
    """Start a :class:`SmtpServer` with the given behaviours (see the module docstring)."""
    return SmtpServer(**behaviour).start()

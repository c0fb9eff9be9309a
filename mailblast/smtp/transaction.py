"""MAIL, RCPT and DATA on an open connection, pipelined (RFC 2920) when the server offers it.

Pipelined, one write carries a message's content and final "." followed by the next
message's MAIL FROM, every RCPT TO and DATA: one round trip per message. Replies come
back in the order of the commands and are matched to them one by one. Without
PIPELINING each command waits for its reply (the plain sequence).

aiosmtplib (which connects, secures and logs in) keeps only one reply at a time, so
while transactions run the transport delivers to a reader of its own here.
"""

from __future__ import annotations

import asyncio
import contextlib
import re
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass

from mailblast.message.compose import ComposedMessage
from mailblast.smtp.replies import Kind, Verdict, classify, connection_lost

_LINE_ENDINGS = re.compile(rb"\r\n|\n|\r(?!\n)")
_LEADING_DOT = re.compile(rb"(?m)^\.")
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")
MAX_REPLY = 64 * 1024  # bytes of one reply, however many lines: a server streaming junk is dropped
Refusals = tuple[tuple[str, Verdict], ...]


class TransactionError(Exception):
    """A connection or message failed; ``uncertain`` when the reply to the final "." was lost.

    ``refused`` lists the other recipients (Cc, Bcc) refused for good in the same transaction.
    """

    def __init__(self, verdict: Verdict, *, uncertain: bool = False, refused: Refusals = ()) -> None:
        super().__init__(verdict.describe())
        self.verdict = verdict
        self.uncertain = uncertain
        self.refused = refused


@dataclass(frozen=True)
class Accepted:
    """The server took the message: its reply, and any recipients it refused for good."""

    reply: Verdict
    refused: Refusals = ()


@dataclass(frozen=True)
class Ready:
    """A message whose DATA got 354: its content goes out in the next write."""

    message: ComposedMessage
    refused: Refusals = ()


class _Lost(Exception):
    """The connection is gone, or no reply came in time; the text says which."""


class _Replies(asyncio.Protocol):
    """Every reply the server sends, kept in order; aiosmtplib's protocol hears of the connection's end."""

    def __init__(self, transport: asyncio.BaseTransport, protocol: asyncio.BaseProtocol) -> None:
        self.transport = transport
        self.protocol = protocol
        self._buffer = bytearray()
        self._replies: deque[tuple[int, str]] = deque()
        self._waiter: asyncio.Future[None] | None = None
        self.lost: str | None = None

    def data_received(self, data: bytes) -> None:
        self._buffer += data
        try:
            while (reply := self._parse()) is not None:
                self._replies.append(reply)
        except _Lost as e:
            self._lose(str(e))
        self._wake()

    def _parse(self) -> tuple[int, str] | None:
        lines, start = [], 0
        while (end := self._buffer.find(b"\n", start)) != -1:
            line = bytes(self._buffer[start:end]).rstrip(b"\r")
            start = end + 1
            if not line[:3].isdigit():
                raise _Lost(f"malformed reply {line[:80].decode('ascii', 'replace')!r}")
            lines.append(line[4:].strip().decode("utf-8", "surrogateescape"))
            if line[3:4] != b"-":
                del self._buffer[:start]
                return int(line[:3]), "\n".join(lines)
        if len(self._buffer) > MAX_REPLY:
            raise _Lost("reply too long")
        return None

    def _lose(self, reason: str) -> None:
        self.lost = self.lost or reason
        self.transport.close()

    def _wake(self) -> None:
        if self._waiter is not None and not self._waiter.done():
            self._waiter.set_result(None)

    async def read(self, timeout: float) -> tuple[int, str]:
        while not self._replies:
            if self.lost is not None:
                raise _Lost(self.lost)
            self._waiter = asyncio.get_running_loop().create_future()
            try:
                await asyncio.wait_for(self._waiter, timeout)
            except TimeoutError:
                self._lose(f"no reply within {timeout:g} s")
        return self._replies.popleft()

    def eof_received(self) -> bool:
        self.lost = self.lost or "the server closed the connection"
        self._wake()
        return False  # the transport closes

    def connection_lost(self, exc: Exception | None) -> None:
        self.lost = self.lost or (" ".join(str(exc).split()) if exc else "connection lost")
        self._wake()
        self.protocol.connection_lost(exc)

    def pause_writing(self) -> None:
        self.protocol.pause_writing()

    def resume_writing(self) -> None:
        self.protocol.resume_writing()


class Transactions:
    """Messages over one open connection; ``started`` counts the MAIL commands written.

    ``refusals`` counts the replies that refused a command since the last message was
    delivered: Postfix counts them as the session's errors, answers every command a second
    late from 10 on (smtpd_soft_error_limit) and drops the session at 20.
    """

    def __init__(
        self,
        transport: asyncio.BaseTransport,
        protocol: asyncio.BaseProtocol,
        *,
        pipelining: bool,
        smtputf8: bool,
        timeout: float,
        clean: Callable[[Verdict], Verdict] = lambda verdict: verdict,
    ) -> None:
        self._transport = transport
        self._clean = clean  # takes out any secret a server echoed
        self._replies = _Replies(transport, protocol)
        transport.set_protocol(self._replies)
        self.pipelining = pipelining
        self._smtputf8 = smtputf8
        self._timeout = timeout
        self._reset_first = False  # a refused envelope may have left the server mid-transaction
        self.started = 0
        self.refusals = 0

    def detach(self) -> None:
        """Give the transport back to aiosmtplib (for QUIT)."""
        if not self._transport.is_closing():
            self._transport.set_protocol(self._replies.protocol)

    async def step(
        self, content: Ready | None, envelope: ComposedMessage | None
    ) -> tuple[Accepted | TransactionError | None, Ready | TransactionError | None]:
        """Send ``content``'s message with its final ".", and begin ``envelope``'s transaction.

        Pipelined, both go out in one write. Returns the outcome of each (None for an
        argument that was None); nothing raises, and each failure is that message's own.
        """
        commands: list[tuple[str, bytes]] = []
        begun: Ready | TransactionError | None = None
        if envelope is not None:
            try:
                commands = self._envelope(envelope)
            except TransactionError as e:
                envelope, begun = None, e
        sent: Accepted | TransactionError | None = None
        pipelined = bool(commands) and self.pipelining
        if content is not None:
            sent, lost = await self._content(content, commands if pipelined else [])
            if lost is not None:
                if envelope is not None:
                    begun = TransactionError(connection_lost(f"connection lost at MAIL: {lost}"))
                return sent, begun
        if envelope is not None:
            begun = await self._begin(envelope, commands, written=pipelined and content is not None)
        return sent, begun

    async def send(self, message: ComposedMessage) -> Accepted:
        """One message on its own; raises TransactionError."""
        _, begun = await self.step(None, message)
        if isinstance(begun, TransactionError):
            raise begun
        sent, _ = await self.step(begun, None)
        if isinstance(sent, TransactionError):
            raise sent
        assert sent is not None
        return sent

    def _envelope(self, message: ComposedMessage) -> list[tuple[str, bytes]]:
        option, encoding = "", "ascii"
        if message.needs_smtputf8:
            if not self._smtputf8:
                address = message.recipient.address
                raise _refused(f"{address} needs SMTPUTF8, which the server does not offer")
            option, encoding = " SMTPUTF8", "utf-8"
        if any(_CONTROL.search(a) for a in (message.envelope_from, *message.envelope_to)):
            raise _refused("an envelope address contains a control character")
        commands = [("RSET", b"RSET\r\n")] if self._reset_first else []
        commands.append(("MAIL", f"MAIL FROM:<{message.envelope_from}>{option}\r\n".encode(encoding)))
        commands += [("RCPT", f"RCPT TO:<{a}>\r\n".encode(encoding)) for a in message.envelope_to]
        commands.append(("DATA", b"DATA\r\n"))
        return commands

    async def _content(
        self, ready: Ready, then: list[tuple[str, bytes]]
    ) -> tuple[Accepted | TransactionError, str | None]:
        """Write the content, its "." and ``then``; the reply to the "." (and why the connection is gone)."""
        body = _LEADING_DOT.sub(b"..", _LINE_ENDINGS.sub(b"\r\n", ready.message.data))
        if not body.endswith(b"\r\n"):
            body += b"\r\n"
        try:
            self._write(body + b".\r\n" + b"".join(command for _, command in then))
        except _Lost as e:
            return TransactionError(connection_lost(f"connection lost before the final '.': {e}")), str(e)
        try:
            code, text = await self._replies.read(self._timeout)
        except _Lost as e:
            # Only now, the final "." written and its reply unknown, may the server have the message.
            lost = connection_lost(f"connection lost after the final '.': {e}")
            return TransactionError(lost, uncertain=True), str(e)
        reply = self._classify(code, text)
        if reply.kind is not Kind.OK:
            self.refusals += 1
            return TransactionError(reply), None
        self.refusals = 0
        return Accepted(reply, ready.refused), None

    async def _begin(
        self, message: ComposedMessage, commands: list[tuple[str, bytes]], *, written: bool
    ) -> Ready | TransactionError:
        """Read the replies to the envelope (writing it first unless ``written``); Ready on 354."""
        if not written and self.pipelining:
            with contextlib.suppress(_Lost):  # a lost connection shows as a reply that never comes
                self._write(b"".join(command for _, command in commands))
            written = True
        own = message.recipient.address.casefold()
        if own not in (a.casefold() for a in message.envelope_to):
            own = message.own_address.casefold()  # in another form on the wire (IDN): validating costs
        accepted, refused = 0, []
        failure: Verdict | None = None  # the first refusal that fails the message
        own_failed = False  # the failure is the refusal of the row's own address (or of them all)
        targets = iter(message.envelope_to)
        stage = "MAIL"
        try:
            for stage, command in commands:
                if not written:
                    if failure is not None:
                        break  # the plain sequence stops at the first refusal
                    if stage == "DATA" and (failure := _own_refusal(refused, own, accepted)) is not None:
                        own_failed = True
                        break
                    self._write(command)
                if stage == "MAIL":
                    self.started += 1
                code, text = await self._replies.read(self._timeout)
                self.refusals += code >= 400
                if stage == "RSET":
                    self._reset_first = False
                elif stage == "MAIL" and code != 250:
                    failure = self._classify(code, text)
                elif stage == "RCPT" and failure is None:
                    address = next(targets)
                    if 200 <= code < 300:
                        accepted += 1
                        continue
                    verdict = self._classify(code, text, recipient=True)
                    if verdict.kind is Kind.PERMANENT:
                        refused.append((address, verdict))
                    else:
                        failure = verdict
                elif stage == "DATA":
                    if failure is None and (failure := _own_refusal(refused, own, accepted)) is not None:
                        own_failed = True
                    if code == 354 and failure is not None:
                        # Pipelined DATA was taken for a message that must not go: ending it with
                        # "." would deliver it to the recipients accepted, so drop the connection.
                        self._transport.close()
                    elif code == 354:
                        return Ready(message, tuple(refused))
                    else:
                        failure = failure or self._classify(code, text)
        except _Lost as e:
            self._transport.close()
            if failure is None:
                where = "before the final '.'" if stage == "DATA" else f"at {stage}"
                return TransactionError(connection_lost(f"connection lost {where}: {e}"))
        self._reset_first = True
        assert failure is not None
        copies = tuple((a, v) for a, v in refused if a.casefold() != own) if own_failed else ()
        return TransactionError(failure, refused=copies)

    def _classify(self, code: int, text: str, *, recipient: bool = False) -> Verdict:
        return self._clean(classify(code, text, recipient=recipient))

    def _write(self, data: bytes) -> None:
        if self._transport.is_closing() or self._replies.lost is not None:
            raise _Lost(self._replies.lost or "connection lost")
        self._transport.write(data)  # type: ignore[attr-defined]


def _own_refusal(refused: list[tuple[str, Verdict]], own: str, accepted: int) -> Verdict | None:
    """Delivery to the row's own address is what counts: refused, no copy goes out either."""
    for address, verdict in refused:
        if address.casefold() == own:
            return verdict
    return None if accepted else (refused[0][1] if refused else None)


def _refused(text: str) -> TransactionError:
    return TransactionError(Verdict(Kind.PERMANENT, None, None, None, text))

"""Which server a run delivers to, as the journal records it, and whether it is only a rehearsal.

A mailblast capture server (`mailblast serve`, or `send --outbox`) says so in its EHLO reply.
Its deliveries are rehearsals whatever journal records them: a later send to a real server
sends those recipients for real. A run learns it from its own connections (WatchedConnection);
it asks beforehand (is_capture_server, one more connection) only when the journal's earlier
deliveries make the answer matter before sending.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

from mailblast.server.capture import CAPTURE_EXTENSION
from mailblast.smtp.connection import Connection
from mailblast.smtp.transaction import TransactionError
from mailblast.smtp.urls import SmtpTarget

CAPTURE = "mailblast capture server"  # the journal's name for every capture server: the port varies
PROBE_TIMEOUT = 10.0  # seconds: a server that does not answer EHLO by then fails the send anyway


def server_name(target: SmtpTarget) -> str:
    """The name a delivery to ``target`` is recorded under: its host. Not the port: a provider
    takes mail on 465 and 587 alike, and a user may move from one to the other mid-campaign."""
    return target.host.lower().rstrip(".")


def is_capture_server(target: SmtpTarget, timeout: float) -> bool:
    """Whether ``target`` is a mailblast capture server, asked once with EHLO before the run.

    The capture server speaks plain SMTP only, so a TLS URL is a real server. A server that
    cannot be reached is taken as real: the send then says why it cannot connect.
    """
    if target.security != "starttls-if-offered":  # smtp://, which may be plain
        return False
    return asyncio.run(_probe(target, min(timeout, PROBE_TIMEOUT)))


async def _probe(target: SmtpTarget, timeout: float) -> bool:
    connection = Connection(target, None, timeout=timeout)
    try:
        await connection.open()
        return connection.offers(CAPTURE_EXTENSION)
    except TransactionError:
        return False
    finally:
        await connection.close()


class WatchedConnection(Connection):
    """A connection that calls ``on_capture`` when it finds a mailblast capture server."""

    def __init__(self, *args: Any, on_capture: Callable[[], None], **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._on_capture = on_capture

    async def open(self) -> None:
        await super().open()
        if self.offers(CAPTURE_EXTENSION):
            self._on_capture()

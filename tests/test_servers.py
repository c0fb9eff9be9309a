"""Self-tests of the in-process SMTP servers in tests/servers.py."""

from __future__ import annotations

import asyncio
import os
import smtplib
import socket
import subprocess
import sys
import textwrap
import time
from collections.abc import Callable
from email.message import EmailMessage
from typing import Any

import aiosmtplib
import pytest

from tests.servers import (
    AUTH_INVALID_REPLY,
    DROP,
    MAILTRAP_THROTTLE_REPLY,
    SES_THROTTLE_REPLY,
    LocalCA,
    SmtpServer,
    max_in_window,
    too_many_errors_reply,
    unknown_user_reply,
)

Make = Callable[..., SmtpServer]
SENDER = "sender@example.com"


def make_message(n: int = 0, to: str = "rcpt@example.com") -> EmailMessage:
    msg = EmailMessage()
    msg["From"] = SENDER
    msg["To"] = to
    msg["Subject"] = f"message {n}"
    msg.set_content(f"body {n}\n")
    return msg


async def send_each(client: aiosmtplib.SMTP, count: int) -> list[int]:
    """Send ``count`` messages on one connection; the reply code of each DATA."""
    codes = []
    for n in range(count):
        try:
            await client.send_message(make_message(n))
            codes.append(250)
        except aiosmtplib.SMTPResponseException as exc:
            codes.append(exc.code)
        except aiosmtplib.SMTPRecipientsRefused as exc:
            codes.append(exc.recipients[0].code)
    return codes


def client_for(server: SmtpServer, **kwargs: Any) -> aiosmtplib.SMTP:
    return aiosmtplib.SMTP(hostname=server.host, port=server.port, timeout=10, **kwargs)


def read_reply(sock: socket.socket) -> bytes:
    """One complete (possibly multi-line) reply; b"" when the server hung up."""
    data = b""
    while True:
        chunk = sock.recv(4096)
        data += chunk
        last = data.rstrip(b"\r\n").rpartition(b"\r\n")[2]
        if not chunk or (data.endswith(b"\r\n") and last[3:4] == b" "):
            return data


def converse(sock: socket.socket, line: bytes) -> bytes:
    sock.sendall(line + b"\r\n")
    return read_reply(sock)


def test_sink_records_envelope_and_data(smtp_server: Make) -> None:
    server = smtp_server()
    assert server.url == f"smtp://127.0.0.1:{server.port}"
    assert server.port > 0
    assert server.connections == 0  # aiosmtpd's startup probe is not counted

    msg = make_message(1)
    asyncio.run(
        aiosmtplib.send(
            msg,
            hostname=server.host,
            port=server.port,
            recipients=["a@example.com", "b@example.org"],
        )
    )

    (received,) = server.received
    assert received.mail_from == SENDER
    assert received.rcpt_tos == ["a@example.com", "b@example.org"]
    assert received.message["Subject"] == "message 1"
    assert received.message.get_content() == "body 1\r\n"  # wire format: CRLF
    assert received.peer[0] == "127.0.0.1"
    assert received.user is None and received.tls is False
    assert server.recipients() == ["a@example.com", "b@example.org"]
    assert server.connections == 1
    assert server.rejected == [] and server.dropped == []


def test_start_and_stop_are_quick(smtp_server: Make) -> None:
    started = time.monotonic()
    server = smtp_server()
    assert time.monotonic() - started < 1.0
    # an idle client must not hold up stop() (Python >= 3.12 waits for connections)
    idle = socket.create_connection((server.host, server.port))
    assert idle.recv(1024).startswith(b"220 ")
    started = time.monotonic()
    server.stop()
    assert time.monotonic() - started < 1.0
    assert idle.recv(1024) == b""  # the server closed it
    idle.close()
    server.stop()  # idempotent


def test_throttle_rejects_fourth_message_within_a_second(smtp_server: Make) -> None:
    server = smtp_server(rate=(3, 1.0))

    async def main() -> list[int]:
        async with client_for(server) as client:
            return await send_each(client, 4)

    assert asyncio.run(main()) == [250, 250, 250, 550]
    assert len(server.received) == 3
    ((_, code, text),) = server.rejected
    assert f"{code} {text}" == MAILTRAP_THROTTLE_REPLY
    assert server.max_in_window(1.0) == 3
    assert server.max_in_window(1e-9) == 1


def test_throttle_window_slides(smtp_server: Make) -> None:
    server = smtp_server(rate=(1, 0.5))

    async def main() -> list[int]:
        async with client_for(server) as client:
            first = await send_each(client, 2)
            await asyncio.sleep(0.55)
            return first + await send_each(client, 1)

    assert asyncio.run(main()) == [250, 550, 250]
    assert server.max_in_window(0.5) == 1


def test_throttle_at_mail_with_custom_reply(smtp_server: Make) -> None:
    server = smtp_server(rate=(1, 1.0), throttle_at="mail", throttle_reply=SES_THROTTLE_REPLY)

    async def main() -> None:
        async with client_for(server) as client:
            await client.send_message(make_message())
            with pytest.raises(aiosmtplib.SMTPSenderRefused) as refused:
                await client.send_message(make_message())
            assert refused.value.code == 454

    asyncio.run(main())
    assert [(r.code, r.text) for r in server.rejected] == [
        (454, "Throttling failure: Maximum sending rate exceeded.")
    ]


def test_421_closes_the_connection(smtp_server: Make) -> None:
    server = smtp_server(rate=(1, 5.0), throttle_at="mail", throttle_reply="421 4.4.2 Slow down")
    with socket.create_connection((server.host, server.port), timeout=5) as sock:
        assert read_reply(sock).startswith(b"220 ")
        assert converse(sock, b"EHLO client").startswith(b"250")
        assert converse(sock, b"MAIL FROM:<s@example.com>").startswith(b"250")
        assert converse(sock, b"RCPT TO:<r@example.com>").startswith(b"250")
        assert converse(sock, b"DATA").startswith(b"354")
        assert converse(sock, b"hi\r\n.").startswith(b"250")
        assert converse(sock, b"MAIL FROM:<s@example.com>") == b"421 4.4.2 Slow down\r\n"
        assert sock.recv(1024) == b""
    assert server.rejected[0][1:] == (421, "4.4.2 Slow down")


def test_postfix_errors_slow_a_session_down_and_then_drop_it(smtp_server: Make) -> None:
    server = smtp_server(postfix_errors=(2, 4, 0.3))

    def timed(sock: socket.socket, line: bytes) -> tuple[bytes, float]:
        started = time.monotonic()
        reply = converse(sock, line)
        return reply, time.monotonic() - started

    with socket.create_connection((server.host, server.port), timeout=5) as sock:
        assert read_reply(sock).startswith(b"220 ")
        assert converse(sock, b"EHLO client").startswith(b"250")
        assert converse(sock, b"RCPT TO:<r@example.com>").startswith(b"503")  # error 1
        assert converse(sock, b"DATA").startswith(b"503")  # error 2: the soft limit
        for line, code in ((b"MAIL FROM:<s@example.com>", b"250"), (b"RCPT TO:<r@example.com>", b"250")):
            reply, seconds = timed(sock, line)
            assert reply.startswith(code) and seconds >= 0.3  # every reply, refusal or not, waits
        assert timed(sock, b"DATA")[1] >= 0.3
        assert converse(sock, b"hi\r\n.").startswith(b"250")  # delivered: the errors are forgiven
        assert server.most_errors == 2
        for _ in range(3):
            assert converse(sock, b"DATA").startswith(b"503")
        # the fourth error since the delivery: the hard limit
        reply = converse(sock, b"DATA")
        if reply.count(b"\r\n") == 1:
            reply += read_reply(sock)
        assert reply.endswith((too_many_errors_reply() + "\r\n").encode())
        assert sock.recv(1024) == b""
    assert server.most_errors == 4
    assert len(server.received) == 1


def test_max_in_window_is_exact() -> None:
    times = [0.0, 0.1, 0.5, 0.99, 1.0, 1.05, 3.0]
    assert max_in_window(times, 1.0) == 5  # 0.1 .. 1.05 (0.0 and 1.0 are 1.0 apart)
    assert max_in_window(times, 0.5) == 3  # 0.99, 1.0, 1.05
    assert max_in_window(times, 10.0) == 7
    assert max_in_window([], 1.0) == 0


def test_random_failures_are_seeded(smtp_server: Make) -> None:
    def outcomes(seed: int) -> list[int]:
        server = smtp_server(fail_random=(0.5, "451 4.3.0 Temporary failure"), seed=seed)

        async def main() -> list[int]:
            async with client_for(server) as client:
                return await send_each(client, 12)

        codes = asyncio.run(main())
        assert len(server.received) == codes.count(250)
        assert {(r.code, r.text) for r in server.rejected} <= {(451, "4.3.0 Temporary failure")}
        return codes

    first = outcomes(seed=7)
    assert first == outcomes(seed=7)
    assert set(first) == {250, 451}


def test_drop_after_data_closes_without_reply(smtp_server: Make) -> None:
    server = smtp_server(drop_after_data_every=2)

    async def main() -> None:
        async with client_for(server) as client:
            await client.send_message(make_message(1))
            with pytest.raises(aiosmtplib.SMTPServerDisconnected):
                await client.send_message(make_message(2))

    asyncio.run(main())
    assert [m.message["Subject"] for m in server.received] == ["message 1"]
    (dropped,) = server.dropped
    assert dropped.stage == "data" and dropped.data is not None
    assert b"Subject: message 2" in dropped.data
    assert server.rejected == []

    # On the wire: the final dot is followed by EOF, not by a reply.
    with socket.create_connection((server.host, server.port), timeout=5) as sock:
        assert read_reply(sock).startswith(b"220 ")
        assert converse(sock, b"EHLO client").startswith(b"250")
        assert converse(sock, b"MAIL FROM:<s@example.com>").startswith(b"250")
        assert converse(sock, b"RCPT TO:<r@example.com>").startswith(b"250")
        assert converse(sock, b"DATA").startswith(b"354")
        assert converse(sock, b"Subject: message 3\r\n\r\nhi\r\n.").startswith(b"250")
        assert converse(sock, b"MAIL FROM:<s@example.com>").startswith(b"250")
        assert converse(sock, b"RCPT TO:<r@example.com>").startswith(b"250")
        assert converse(sock, b"DATA").startswith(b"354")
        assert converse(sock, b"Subject: message 4\r\n\r\nhi\r\n.") == b""
    assert len(server.received) == 2 and len(server.dropped) == 2


def test_drop_at_mail(smtp_server: Make) -> None:
    server = smtp_server(drop_at_mail_every=1)

    async def main() -> None:
        async with client_for(server) as client:
            with pytest.raises(aiosmtplib.SMTPServerDisconnected):
                await client.send_message(make_message())

    asyncio.run(main())
    assert server.received == []
    ((stage, mail_from, data),) = [(d.stage, d.mail_from, d.data) for d in server.dropped]
    assert (stage, mail_from, data) == ("mail", SENDER, None)


def test_recipient_rejection(smtp_server: Make) -> None:
    server = smtp_server(reject_recipients={"Nobody@example.com"})
    errors, _ = asyncio.run(
        aiosmtplib.send(
            make_message(),
            hostname=server.host,
            port=server.port,
            recipients=["ok@example.com", "nobody@example.com"],
        )
    )
    assert errors["nobody@example.com"].code == 550
    assert server.recipients() == ["ok@example.com"]
    ((_, code, text),) = server.rejected
    assert f"{code} {text}" == unknown_user_reply("nobody@example.com")
    assert text == "5.1.1 <nobody@example.com>: Recipient address rejected: User unknown"

    picky = smtp_server(reject_recipients=lambda addr: addr.startswith("bounce"))
    with smtplib.SMTP(picky.host, picky.port, timeout=10) as client:
        refused = client.sendmail(SENDER, ["bounce1@example.com", "x@example.com"], b"hi\r\n")
    assert refused == {"bounce1@example.com": (550, unknown_user_reply("bounce1@example.com")[4:].encode())}
    assert picky.recipients() == ["x@example.com"]


def test_starttls_and_auth(smtp_server: Make, tls_ca: LocalCA) -> None:
    server = smtp_server(tls=True, require_starttls=True, auth={"alice": "s3cret"})
    assert server.ca_pem_path == tls_ca.ca_pem_path and server.ca_pem_path.is_file()

    async def main() -> None:
        # everything but EHLO/STARTTLS is refused before TLS
        async with client_for(server, start_tls=False) as client:
            with pytest.raises(aiosmtplib.SMTPSenderRefused) as refused:
                await client.send_message(make_message())
            assert refused.value.code == 530
        async with client_for(server, tls_context=tls_ca.client_context()) as client:
            with pytest.raises(aiosmtplib.SMTPSenderRefused) as refused:  # no AUTH yet
                await client.send_message(make_message())
            assert refused.value.code == 530
            with pytest.raises(aiosmtplib.SMTPAuthenticationError) as denied:
                await client.login("alice", "wrong")
            assert denied.value.code == 535
            await client.login("alice", "s3cret")
            await client.send_message(make_message(1))

    asyncio.run(main())
    (received,) = server.received
    assert received.user == "alice" and received.tls is True
    # aiosmtplib tries every offered mechanism before giving up on the wrong password
    attempts = server.auth_attempts
    assert {a.username for a in attempts} == {"alice"}
    assert [a.success for a in attempts] == [False] * (len(attempts) - 1) + [True]
    assert {a.mechanism for a in attempts} == {"PLAIN", "LOGIN"}
    assert f"535 {server.rejected[-1].text}" == AUTH_INVALID_REPLY
    assert "s3cret" not in repr(server) + repr(server.auth_attempts) + repr(server.received)


def test_auth_login_on_plain_server_and_revocation(smtp_server: Make) -> None:
    server = smtp_server(auth={"bob": "pw"}, fail_auth_after=1)

    async def main() -> None:
        async with client_for(server, username="bob", password="pw") as client:
            assert client.supports_extension("auth")
            await client.send_message(make_message(1))
        with pytest.raises(aiosmtplib.SMTPAuthenticationError) as denied:
            async with client_for(server, username="bob", password="pw"):
                pass
        assert denied.value.code == 535

    asyncio.run(main())
    assert len(server.received) == 1
    attempts = server.auth_attempts
    assert attempts[0].success and not any(a.success for a in attempts[1:])

    # smtplib prefers a different mechanism order; make sure LOGIN works as well
    other = smtp_server(auth={"bob": "pw"})
    with smtplib.SMTP(other.host, other.port, timeout=10) as client:
        client.ehlo()
        client.user, client.password = "bob", "pw"
        assert client.auth("LOGIN", client.auth_login)[0] == 235
        client.sendmail(SENDER, ["r@example.com"], b"hi\r\n")
    assert other.auth_attempts[0].mechanism == "LOGIN"
    assert other.received[0].user == "bob"


def test_implicit_tls(smtp_server: Make, tls_ca: LocalCA) -> None:
    server = smtp_server(implicit_tls=True, auth={"carol": "pw"})
    assert server.url.startswith("smtps://127.0.0.1:")
    asyncio.run(
        aiosmtplib.send(
            make_message(),
            hostname=server.host,
            port=server.port,
            use_tls=True,
            tls_context=tls_ca.client_context(),
            username="carol",
            password="pw",
        )
    )
    (received,) = server.received
    assert received.tls is True and received.user == "carol"


def test_reply_after_and_reply_hook(smtp_server: Make) -> None:
    revoked = "535 5.7.8 Authentication credentials revoked"
    server = smtp_server(reply_after=(2, revoked))

    async def main(target: SmtpServer, count: int) -> list[int]:
        async with client_for(target) as client:
            return await send_each(client, count)

    assert asyncio.run(main(server, 3)) == [250, 250, 535]

    stages: list[tuple[str, int]] = []

    def hook(stage: str, envelope: Any, accepted: int) -> str | None:
        stages.append((stage, accepted))
        if stage == "rcpt" and ("rcpt", 1) not in stages[:-1] and accepted == 1:
            return "452 4.5.3 Too many recipients"  # once, after the first message
        if stage == "data" and accepted == 1:
            return DROP
        return None

    hooked = smtp_server(reply_hook=hook)
    with pytest.raises(aiosmtplib.SMTPServerDisconnected):
        asyncio.run(main(hooked, 3))
    assert [r.code for r in hooked.rejected] == [452]
    assert len(hooked.received) == 1 and hooked.dropped[0].stage == "data"
    assert stages == [
        ("mail", 0),
        ("rcpt", 0),
        ("data", 0),  # accepted
        ("mail", 1),
        ("rcpt", 1),  # 452
        ("mail", 1),
        ("rcpt", 1),
        ("data", 1),  # dropped
    ]
    assert hooked.dropped[0].rcpt_tos == ["rcpt@example.com"]


def test_smtputf8(smtp_server: Make) -> None:
    plain, utf8 = smtp_server(), smtp_server(smtputf8=True)

    async def main() -> None:
        async with client_for(plain) as client:
            assert not client.supports_extension("smtputf8")
        await aiosmtplib.send(
            make_message(),
            hostname=utf8.host,
            port=utf8.port,
            sender="expéditeur@example.com",
            recipients=["用户@例子.广告"],
        )

    asyncio.run(main())
    (received,) = utf8.received
    assert received.rcpt_tos == ["用户@例子.广告"]
    assert "SMTPUTF8" in received.mail_options


def test_subprocess_can_send_with_ssl_cert_file(smtp_server: Make, tls_ca: LocalCA) -> None:
    server = smtp_server(tls=True)
    script = textwrap.dedent(f"""
        import smtplib, ssl
        with smtplib.SMTP("{server.host}", {server.port}, timeout=10) as client:
            client.starttls(context=ssl.create_default_context())  # trusts SSL_CERT_FILE
            client.sendmail("s@example.com", ["r@example.com"], b"Subject: sub\\r\\n\\r\\nx\\r\\n")
    """)
    env = {**os.environ, "SSL_CERT_FILE": str(tls_ca.ca_pem_path)}
    subprocess.run([sys.executable, "-c", script], env=env, check=True, timeout=30)
    assert server.wait_for(1, timeout=5)
    assert server.received[0].message["Subject"] == "sub" and server.received[0].tls

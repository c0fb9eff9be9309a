"""DKIM: every message the server received verifies with dkimpy against a stub DNS lookup."""

from __future__ import annotations

import asyncio
import re
from collections.abc import Callable
from pathlib import Path

import dkim
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa

from mailblast.errors import ConfigError
from mailblast.message.compose import Template
from mailblast.message.dkim_sign import KeyType, dns_record, load_key, new_key
from mailblast.message.recipients import RecipientsFile
from mailblast.message.worker import ComposeWorker
from tests.servers import SmtpServer
from tests.test_send_cli import mailblast

TEMPLATE = (
    "From: News <news@example.com>\n"
    "Cc: archive@example.com\n"
    "Reply-To: help@example.com\n"
    "Subject: Hello {{ name }}\n\n"
    "Hi {{ name }}, unsubscribe here: {{ unsubscribe_url }}\n"
)


def make_key(folder: Path, key_type: KeyType, domain: str = "example.com") -> Callable[..., bytes]:
    """Write a key to folder/dkim.pem; the DNS lookup that publishes its record."""
    pem, public = new_key(key_type)
    (folder / "dkim.pem").write_bytes(pem)
    name, value = dns_record(domain, "mb2026", key_type, public)

    def lookup(qname: bytes, timeout: int = 5) -> bytes | None:
        return value.encode() if qname.decode().rstrip(".") == name else None

    return lookup


def campaign(folder: Path, n: int, *, from_domain: str = "example.com") -> None:
    (folder / "t.txt").write_text(TEMPLATE.replace("example.com", from_domain, 1))
    rows = "".join(f"user{i}@example.org,User {i}\n" for i in range(n))
    (folder / "people.csv").write_text("email,name\n" + rows)
    (folder / "mailblast.toml").write_text(
        'template = "t.txt"\n\n'
        '[unsubscribe]\nurl = "https://example.com/u?e={{ email | urlencode }}"\n\n'
        '[dkim]\ndomain = "example.com"\nselector = "mb2026"\nprivate_key = "dkim.pem"\n'
    )


def signed_headers(data: bytes) -> list[str]:
    value = re.search(rb"DKIM-Signature:(.*?)\r?\n(?! )(?!\t)", data, re.S)
    assert value is not None
    tags = dict(
        t.strip().split("=", 1) for t in value.group(1).decode().replace("\r\n", "").split(";") if "=" in t
    )
    return [h.strip() for h in tags["h"].split(":")]


@pytest.mark.parametrize(("key_type", "algorithm"), [("rsa", "rsa-sha256"), ("ed25519", "ed25519-sha256")])
def test_every_message_received_verifies(
    tmp_path: Path, smtp_server: Callable[..., SmtpServer], key_type: KeyType, algorithm: str
) -> None:
    lookup = make_key(tmp_path, key_type)
    campaign(tmp_path, 6)
    server = smtp_server()
    proc = mailblast(tmp_path, "send", "people.csv", "--smtp", server.url)
    assert proc.returncode == 0, proc.stderr
    assert len(server.received) == 6
    for received in server.received:
        assert f"a={algorithm}".encode() in received.data
        assert dkim.verify(received.data, dnsfunc=lookup)
        assert signed_headers(received.data) == [
            "from", "to", "cc", "reply-to", "subject", "date", "message-id", "mime-version",
            "content-type", "list-unsubscribe", "list-unsubscribe-post",
            "from", "subject", "list-unsubscribe", "list-unsubscribe-post",  # oversigned
        ]  # fmt: skip
        message = received.message
        assert message["List-Unsubscribe-Post"] == "List-Unsubscribe=One-Click"
    tampered = server.received[0].data.replace(b"Subject: Hello", b"Subject: Hullo")
    assert not dkim.verify(tampered, dnsfunc=lookup)


def test_the_worker_process_signs_too(tmp_path: Path) -> None:
    lookup = make_key(tmp_path, "rsa")
    campaign(tmp_path, 3)
    template = Template(
        tmp_path / "t.txt",
        unsubscribe_mailto="mailto:u@example.com?subject={{ email }}",
        dkim=load_key("example.com", "mb2026", tmp_path / "dkim.pem"),
    )
    recipients = [r.recipient for r in RecipientsFile(tmp_path / "people.csv").rows() if r.recipient]
    worker = ComposeWorker(template, in_worker=True)
    try:
        messages = asyncio.run(worker.compose(recipients))
    finally:
        worker.close()
    assert len(messages) == 3
    for message in messages:
        assert not isinstance(message, Exception)
        assert dkim.verify(message.data, dnsfunc=lookup)
        assert "list-unsubscribe" in signed_headers(message.data)


def test_check_loads_the_key_and_warns_when_from_does_not_align(tmp_path: Path) -> None:
    make_key(tmp_path, "ed25519")
    campaign(tmp_path, 3, from_domain="news.example.com")  # a subdomain aligns
    proc = mailblast(tmp_path, "check", "people.csv")
    assert proc.returncode == 0, proc.stderr
    assert "DKIM: signing for example.com with selector mb2026 (ed25519-sha256" in proc.stdout
    assert "align" not in proc.stdout + proc.stderr
    campaign(tmp_path, 3, from_domain="elsewhere.net")
    proc = mailblast(tmp_path, "check", "people.csv")
    assert proc.returncode == 0, proc.stderr
    output = proc.stdout + proc.stderr
    assert "3 message(s) from elsewhere.net (the first in row 1) are signed for example.com" in output
    assert "does not align" in output


def write_pem(path: Path, key: object, password: bytes | None = None) -> None:
    encryption = serialization.BestAvailableEncryption(password) if password else serialization.NoEncryption()
    path.write_bytes(
        key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, encryption)  # type: ignore[attr-defined]
    )


@pytest.mark.parametrize(
    ("make", "says"),
    [
        (lambda p: None, "no such file"),
        (lambda p: p.write_text("v=DKIM1; k=rsa; p=MIIB"), "not a PEM private key"),
        (lambda p: write_pem(p, rsa.generate_private_key(65537, 2048), b"pw"), "has a passphrase"),
        (lambda p: write_pem(p, ec.generate_private_key(ec.SECP256R1())), "RSA or Ed25519"),
    ],
)
def test_a_bad_key_stops_before_anything_is_sent(
    tmp_path: Path, smtp_server: Callable[..., SmtpServer], make: Callable[[Path], None], says: str
) -> None:
    campaign(tmp_path, 2)
    make(tmp_path / "dkim.pem")
    server = smtp_server()
    proc = mailblast(tmp_path, "send", "people.csv", "--smtp", server.url)
    assert proc.returncode == 2, proc.stderr
    assert "error: [dkim] private_key dkim.pem: " in proc.stderr and says in proc.stderr
    assert server.connections == 0


def test_dkim_needs_all_three_settings_and_sane_names(tmp_path: Path) -> None:
    make_key(tmp_path, "rsa")
    with pytest.raises(ConfigError, match="selector 'bad selector' is not a DNS label"):
        load_key("example.com", "bad selector", tmp_path / "dkim.pem")
    with pytest.raises(ConfigError, match="domain 'example' is not a domain name"):
        load_key("example", "s1", tmp_path / "dkim.pem")
    campaign(tmp_path, 1)
    toml = (tmp_path / "mailblast.toml").read_text().replace('selector = "mb2026"\n', "")
    (tmp_path / "mailblast.toml").write_text(toml)
    proc = mailblast(tmp_path, "check", "people.csv")
    assert proc.returncode == 2
    assert "[dkim] needs domain, selector and private_key; selector is missing" in proc.stderr


@pytest.mark.parametrize("key_type", ["rsa", "ed25519"])
def test_keygen_writes_a_key_whose_printed_record_verifies_what_is_sent(
    tmp_path: Path, smtp_server: Callable[..., SmtpServer], key_type: str
) -> None:
    proc = mailblast(
        tmp_path, "dkim-keygen", "example.com", "mb2026", "--type", key_type, "--out", "dkim.pem"
    )
    assert proc.returncode == 0, proc.stderr
    assert (tmp_path / "dkim.pem").stat().st_mode & 0o777 == 0o600
    lines = proc.stdout.splitlines()
    at = lines.index("publish this TXT record at mb2026._domainkey.example.com:")
    record = lines[at + 2]
    assert record.startswith(f"v=DKIM1; k={key_type}; p=")
    assert 'private_key = "dkim.pem"' in proc.stdout
    campaign(tmp_path, 2)
    server = smtp_server()
    sent = mailblast(tmp_path, "send", "people.csv", "--smtp", server.url)
    assert sent.returncode == 0, sent.stderr

    def lookup(qname: bytes, timeout: int = 5) -> bytes | None:
        return record.encode() if qname.decode().rstrip(".") == "mb2026._domainkey.example.com" else None

    assert len(server.received) == 2
    assert all(dkim.verify(r.data, dnsfunc=lookup) for r in server.received)
    again = mailblast(tmp_path, "dkim-keygen", "example.com", "mb2026", "--out", "dkim.pem")
    assert again.returncode == 2 and "dkim.pem exists already; nothing was written" in again.stderr


def test_an_smtputf8_message_verifies(tmp_path: Path) -> None:
    lookup = make_key(tmp_path, "ed25519")
    campaign(tmp_path, 0)
    (tmp_path / "people.csv").write_text("email,name\nzoë@exämple.org,Zoë Ünïcode\n", encoding="utf-8")
    template = Template(
        tmp_path / "t.txt",
        unsubscribe_mailto="mailto:u@example.com",
        dkim=load_key("example.com", "mb2026", tmp_path / "dkim.pem"),
    )
    (recipient,) = [r.recipient for r in RecipientsFile(tmp_path / "people.csv").rows() if r.recipient]
    message = template.compose(recipient)
    assert message.needs_smtputf8 and "zoë".encode() in message.data
    assert dkim.verify(message.data, dnsfunc=lookup)

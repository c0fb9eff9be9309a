"""`mailblast unsubscribe-server`, run for real and called with a real HTTP client."""

from __future__ import annotations

import base64
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from mailblast.message.unsubscribe import Signing, read_unsubscribe_token, unsubscribe_token
from tests.servers import SmtpServer, child_environ
from tests.test_send_cli import campaign, mailblast

TOML = '[unsubscribe]\nurl = "https://news.example.com/unsubscribe/{{ unsubscribe_token }}"\n'


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def endpoint(tmp_path: Path) -> Iterator[Callable[[], str]]:
    """Starts `mailblast unsubscribe-server` (once a key exists); returns its base URL."""
    started: list[subprocess.Popen[str]] = []

    def start() -> str:
        port = free_port()
        proc = subprocess.Popen(
            [sys.executable, "-m", "mailblast", "unsubscribe-server", "--port", str(port)],
            cwd=tmp_path, env=child_environ(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        )  # fmt: skip
        started.append(proc)
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            assert proc.poll() is None, proc.communicate()
            with socket.socket() as s:
                if s.connect_ex(("127.0.0.1", port)) == 0:
                    return f"http://127.0.0.1:{port}"
            time.sleep(0.05)
        raise AssertionError("the endpoint did not start")

    yield start
    for proc in started:
        proc.terminate()
        proc.communicate(timeout=10)


def request(url: str, method: str = "GET", body: bytes | None = None) -> tuple[int, str]:
    req = urllib.request.Request(url, data=body, method=method)
    if body is not None:
        req.add_header("Content-Type", "application/x-www-form-urlencoded")
    try:
        with urllib.request.urlopen(req, timeout=30) as response:
            return response.status, response.read().decode()
    except urllib.error.HTTPError as e:
        return e.code, e.read().decode()


def one_click(url: str) -> tuple[int, str]:
    """What Gmail and Yahoo send (RFC 8058)."""
    return request(url, "POST", b"List-Unsubscribe=One-Click")


def suppressed(folder: Path) -> str:
    return mailblast(folder, "suppress", "list").stdout


def test_one_click_post_unsubscribes_and_get_or_a_tampered_token_does_not(
    tmp_path: Path, smtp_server: Callable[..., SmtpServer], endpoint: Callable[[], str]
) -> None:
    server = smtp_server()
    campaign(tmp_path, 3)
    (tmp_path / "mailblast.toml").write_text(TOML)
    first = mailblast(tmp_path, "send", "people.csv", "-t", "t.txt", "--smtp", server.url)
    assert first.returncode == 0, first.stderr
    links = {}
    for received in server.received:
        message = received.message
        assert message["List-Unsubscribe-Post"] == "List-Unsubscribe=One-Click"
        links[received.rcpt_tos[0]] = message["List-Unsubscribe"].strip("<>")
    assert all(link.startswith("https://news.example.com/unsubscribe/") for link in links.values())
    base = endpoint()

    def local(link: str) -> str:
        return link.replace("https://news.example.com", base)

    # a GET (a scanner following the link) shows the button, and unsubscribes no one
    status, text = request(local(links["user1@example.com"]))
    assert status == 200 and '<form method="post">' in text and "user1@example.com" in text
    assert "user1@example.com" not in suppressed(tmp_path)

    # a tampered token: 4xx, no one
    token = links["user1@example.com"].rpartition("/")[2]
    payload, _, mac = token.partition(".")
    other = (
        base64.urlsafe_b64encode(base64.urlsafe_b64decode(payload + "==").replace(b"user1", b"user2"))
        .rstrip(b"=")
        .decode()
    )
    flipped = ("A" if mac[0] != "A" else "B") + mac[1:]
    unused_bits = mac[:-1] + "ABCDEFGHIJKLMNOP"[("ABCDEFGHIJKLMNOP".find(mac[-1]) + 1) % 16]
    for bad in (
        f"{other}.{mac}",
        f"{payload}.{flipped}",
        f"{payload}.{unused_bits}",
        payload,
        "",
        "x" * 5000,
    ):
        status, text = one_click(f"{base}/unsubscribe/{bad}")
        assert 400 <= status < 500, (bad, status)
        assert "user" not in text  # says nothing about anyone
    assert "example.com" not in suppressed(tmp_path)

    # the genuine one-click POST: 200, at once
    status, text = one_click(local(links["user1@example.com"]))
    assert status == 200 and "unsubscribed" in text
    listed = suppressed(tmp_path)
    assert "user1@example.com  unsubscribe, " in listed and "campaign " in listed
    status, _ = request(
        local(links["user2@example.com"]).replace("/unsubscribe/", "/unsubscribe?t="), "POST", b""
    )
    assert status == 200  # the confirmation page's button: the token in ?t= works too
    # the next send leaves them out
    (tmp_path / "next.txt").write_text("From: news@example.com\nSubject: Next\n\nNext\n")
    healthy = smtp_server()
    again = mailblast(
        tmp_path, "send", "people.csv", "-t", "next.txt", "--smtp", healthy.url, "--campaign", "next"
    )
    assert again.returncode == 0, again.stderr
    assert healthy.recipients() == ["user0@example.com"]


def test_a_test_copys_link_cannot_unsubscribe_the_real_recipient(
    tmp_path: Path, smtp_server: Callable[..., SmtpServer], endpoint: Callable[[], str]
) -> None:
    server = smtp_server()
    campaign(tmp_path, 2)
    (tmp_path / "mailblast.toml").write_text(TOML)
    args = ["send", "people.csv", "-t", "t.txt", "--smtp", server.url, "--test-to", "me@example.org"]
    proc = mailblast(tmp_path, *args)
    assert proc.returncode == 0, proc.stderr
    link = server.received[0].message["List-Unsubscribe"].strip("<>")
    status, _ = one_click(link.replace("https://news.example.com", endpoint()))
    assert status == 200
    listed = suppressed(tmp_path)
    assert "me@example.org" in listed and "user0@example.com" not in listed


@settings(max_examples=200)
@given(st.text(max_size=200))
def test_no_made_up_token_is_read_as_genuine(token: str) -> None:
    assert read_unsubscribe_token(b"k" * 32, token) is None


@given(st.emails(), st.text("0123456789abcdef", min_size=8, max_size=8))
def test_a_token_reads_back_only_with_its_key(address: str, campaign: str) -> None:
    token = unsubscribe_token(Signing(b"k" * 32, campaign), address)
    assert read_unsubscribe_token(b"k" * 32, token) == (campaign, address)
    assert read_unsubscribe_token(b"j" * 32, token) is None
    assert all(c.isalnum() or c in "-_." for c in token)  # unreserved: safe in any URL

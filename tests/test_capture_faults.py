"""The capture server fails like a server (issue 16): a message it cannot store gets a 4xx that
says why and the session goes on; it checks its outbox first, caps what it holds, warns when it
listens beyond this machine; and `send` into its own outbox stops cleanly when the disk fills."""

from __future__ import annotations

import csv
import mailbox
import signal
import smtplib
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from mailblast.server.capture import DEFAULT_MAX_CONNECTIONS, MAX_MESSAGE_BYTES
from tests.disk import file_size_cap, mailblast_capped
from tests.servers import child_environ
from tests.test_capture import free_port
from tests.test_send_cli import mailblast

CAP = 256 * 1024  # no file the child writes may grow past this: a "full disk" for big messages


def big(size: int) -> bytes:
    return b"Subject: big\r\n\r\n" + (b"x" * 76 + b"\r\n") * (size // 78)


def start_serve(cwd: Path, *args: str, cap: int | None = None) -> tuple[subprocess.Popen[str], int]:
    port = free_port()
    serve = subprocess.Popen(
        [sys.executable, "-m", "mailblast", "serve", "--port", str(port), *args],
        cwd=cwd,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=child_environ(),
        preexec_fn=file_size_cap(cap) if cap else None,
    )
    assert serve.stdout is not None
    seen = ""
    while "capturing mail" not in seen:
        line = serve.stdout.readline()
        assert line, (seen, serve.stderr.read() if serve.stderr else "")
        seen += line
    serve.seen = seen  # type: ignore[attr-defined]
    return serve, port


def stop(serve: subprocess.Popen[str]) -> tuple[str, str]:
    """What it printed, from the start."""
    serve.send_signal(signal.SIGINT)
    out, err = serve.communicate(timeout=30)
    return serve.seen + out, err  # type: ignore[attr-defined]


@pytest.fixture
def served(tmp_path: Path) -> Iterator[tuple[subprocess.Popen[str], int]]:
    serve, port = start_serve(tmp_path, cap=CAP)
    yield serve, port
    if serve.poll() is None:
        stop(serve)


def test_a_message_that_cannot_be_stored_gets_a_4xx_and_the_session_goes_on(
    tmp_path: Path, served: tuple[subprocess.Popen[str], int]
) -> None:
    serve, port = served
    with smtplib.SMTP("127.0.0.1", port, timeout=30) as client:
        with pytest.raises(smtplib.SMTPDataError) as refused:
            client.sendmail("a@example.com", ["b@example.com"], big(CAP + 10_000))
        assert refused.value.smtp_code == 452
        assert refused.value.smtp_error.decode() == "4.3.1 Cannot store the message: File too large"
        # the same connection, the next message: no "503 nested MAIL command"
        assert client.sendmail("a@example.com", ["c@example.com"], b"Subject: small\r\n\r\nhi\r\n") == {}
    out, err = stop(serve)
    assert "refused -> b@example.com: 452 4.3.1 Cannot store the message: File too large" in out
    assert "stopped: 1 message(s) captured" in out and "Traceback" not in err
    box = mailbox.Maildir(tmp_path / "outbox")
    assert [str(m["Subject"]) for m in box] == ["small"]
    assert not list((tmp_path / "outbox" / "tmp").iterdir())  # no half-written file left


def test_serve_checks_the_outbox_can_be_written_before_it_starts(tmp_path: Path) -> None:
    proc = mailblast_capped(tmp_path, 1000, "serve", "--port", str(free_port()))
    assert proc.returncode == 2, proc.stderr
    assert "error: --outbox outbox: messages cannot be written there: File too large" in proc.stderr
    assert "Traceback" not in proc.stderr


def test_serve_caps_connections_and_message_size_by_default(tmp_path: Path) -> None:
    serve, port = start_serve(tmp_path)
    clients = []
    try:
        for _ in range(DEFAULT_MAX_CONNECTIONS):
            client = smtplib.SMTP("127.0.0.1", port, timeout=30)
            clients.append(client)
        code, features = clients[0].ehlo()
        assert code == 250 and f"SIZE {MAX_MESSAGE_BYTES}".encode() in features
        with pytest.raises(smtplib.SMTPConnectError) as refused:
            smtplib.SMTP("127.0.0.1", port, timeout=30)
        assert refused.value.smtp_code == 421
    finally:
        for client in clients:
            client.close()
        out, _ = stop(serve)
    assert "refused: 421 4.7.0 Too many connections, closing" in out


def test_serve_warns_when_it_listens_beyond_this_machine(tmp_path: Path) -> None:
    serve, _ = start_serve(tmp_path, "--host", "0.0.0.0")
    out, err = stop(serve)
    assert "warning: listening on 0.0.0.0, not only on this machine" in out + err
    serve, _ = start_serve(tmp_path)
    out, err = stop(serve)
    assert "warning" not in out + err


@pytest.mark.parametrize("port", ["70000", "-1"])
def test_serve_on_a_port_out_of_range_is_a_clean_error(tmp_path: Path, port: str) -> None:
    proc = mailblast(tmp_path, "serve", "--port", port)
    assert proc.returncode == 2
    assert f"error: --port {port}: a port is a number from 0 to 65535" in proc.stderr
    assert "Traceback" not in proc.stderr


def test_send_into_a_full_outbox_stops_like_a_full_journal(tmp_path: Path) -> None:
    (tmp_path / "t.txt").write_text("From: news@example.com\nSubject: Hi\n\n{{ 'word ' * (words | int) }}\n")
    with (tmp_path / "people.csv").open("w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["email", "words"])
        writer.writerow(["small@example.com", "1"])
        for i in range(5):
            writer.writerow([f"user{i}@example.com", "60000"])  # 300 kB: past the cap
    started = time.monotonic()
    proc = mailblast_capped(tmp_path, CAP, "send", "people.csv", "-t", "t.txt", "--report", "left.csv")
    assert time.monotonic() - started < 60  # stopped, not retried for minutes
    assert proc.returncode == 3, proc.stderr
    assert "error: stopped: the outbox outbox/ cannot be written: File too large" in proc.stderr
    assert "none marked failed" in proc.stderr and "Traceback" not in proc.stderr
    with (tmp_path / "left.csv").open() as f:
        left = list(csv.DictReader(f))
    assert sorted(row["email"] for row in left) == [f"user{i}@example.com" for i in range(5)]
    assert {row["status"] for row in left} == {"not attempted"}
    assert [str(m["To"]) for m in mailbox.Maildir(tmp_path / "outbox")] == ["small@example.com"]
    # the same command resumes once there is room
    again = mailblast(tmp_path, "send", "people.csv", "-t", "t.txt")
    assert again.returncode == 0, again.stderr
    assert len(mailbox.Maildir(tmp_path / "outbox")) == 6


def test_send_into_a_full_outbox_without_retries_marks_nobody_failed(tmp_path: Path) -> None:
    """With --retries 0 the outbox's refusal is the message's last try: it is still the outbox's
    fault, not the recipient's, so the run stops and the message stays pending for the next run."""
    (tmp_path / "t.txt").write_text("From: news@example.com\nSubject: Hi\n\n{{ 'word ' * (words | int) }}\n")
    with (tmp_path / "people.csv").open("w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["email", "words"])
        writer.writerow(["small@example.com", "1"])
        writer.writerow(["big@example.com", "60000"])  # 300 kB: past the cap
        writer.writerow(["after@example.com", "1"])
    args = ("send", "people.csv", "-t", "t.txt", "--retries", "0", "--connections", "1")
    proc = mailblast_capped(tmp_path, CAP, *args, "--report", "left.csv")
    assert proc.returncode == 3, proc.stderr
    assert "error: stopped: the outbox outbox/ cannot be written: File too large" in proc.stderr
    assert "none marked failed" in proc.stderr and "Traceback" not in proc.stderr
    with (tmp_path / "left.csv").open() as f:
        left = {row["email"]: row for row in csv.DictReader(f)}
    assert sorted(left) == ["after@example.com", "big@example.com"]
    assert {row["status"] for row in left.values()} == {"not attempted"}
    assert "File too large" in left["big@example.com"]["error"]
    # the next run sends both: nobody was marked failed or suppressed
    again = mailblast(tmp_path, "send", *args[1:])
    assert again.returncode == 0, again.stderr
    got = sorted(str(m["To"]) for m in mailbox.Maildir(tmp_path / "outbox"))
    assert got == ["after@example.com", "big@example.com", "small@example.com"]

"""The terminal gets text, never control sequences (issue 16): whatever a row, a CSV header, a
client or a server says, every command shows C0 and C1 controls and bidi overrides escaped."""

from __future__ import annotations

import json
import os
import re
import signal
import smtplib
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

from mailblast.display import printable
from tests.servers import SmtpServer
from tests.test_capture import free_port
from tests.test_send_cli import mailblast

CLEAR = "\x1b[2J"  # clear the screen
TITLE = "\x1b]0;pwned\x07"  # set the window title
CSI = "\x9b31m"  # C1: the one-byte CSI
RLO = "\u202e"  # right-to-left override
# what a terminal acts on, written out apart from printable(), which it checks
TERMINAL_ACTS_ON = re.compile(
    "[\x00-\x08\x0b\x0c\x0e-\x1f\x7f-\x9f\u061c\u200e\u200f\u202a-\u202e\u2066-\u2069]"
)


def raw(text: str) -> bool:
    """Whether ``text`` holds anything a terminal would act on (CR only in CRLF, a line end)."""
    return bool(TERMINAL_ACTS_ON.search(text.replace("\r\n", "\n"))) or "\r" in text.replace("\r\n", "")


def test_printable_escapes_every_control_and_bidi_override() -> None:
    for code in [*range(0x00, 0x09), *range(0x0B, 0x20), *range(0x7F, 0xA0)]:
        assert printable(chr(code)) == f"\\x{code:02x}"
    for char in "\u202a\u202b\u202c\u202d\u202e\u2066\u2067\u2068\u2069\u200e\u200f\u061c":
        assert printable(char) == f"\\u{ord(char):04x}"
    assert printable("Zoë\tÅgren 🎉\nnext") == "Zoë\tÅgren 🎉\nnext"


def test_check_shows_csv_column_names_escaped(tmp_path: Path) -> None:
    (tmp_path / "t.txt").write_text("From: a@example.com\nSubject: s\n\nHi {{ name }}\n")
    (tmp_path / "people.csv").write_text(f"mail{CLEAR},name{TITLE},x{CSI}{RLO}\nann@example.com,Ann,1\n")
    proc = mailblast(tmp_path, "check", "people.csv", "-t", "t.txt")
    assert proc.returncode == 2
    assert "mail\\x1b[2J" in proc.stderr and "name\\x1b]0;pwned\\x07" in proc.stderr
    assert not raw(proc.stdout + proc.stderr), proc.stderr


def test_preview_shows_values_escaped(tmp_path: Path) -> None:
    (tmp_path / "t.txt").write_text("From: a@example.com\nSubject: Hi {{ name }}\n\nHello {{ body }}\n")
    (tmp_path / "people.csv").write_text(
        f"email,name,body\nann@example.com,Ann{CSI}{RLO},x{CLEAR}{TITLE}\n", encoding="utf-8"
    )
    proc = mailblast(tmp_path, "preview", "people.csv", "-t", "t.txt")
    assert proc.returncode == 0, proc.stderr
    assert "Hello x\\x1b[2J\\x1b]0;pwned\\x07" in proc.stdout
    assert "Ann\\x9b31m\\u202e" in proc.stdout
    assert not raw(proc.stdout + proc.stderr)


def test_server_reply_text_is_escaped_in_the_summary_the_report_and_json(
    tmp_path: Path, smtp_server: Callable[..., SmtpServer]
) -> None:
    reply = f"550 5.1.1 no such user {CLEAR}{TITLE}"
    server = smtp_server(reply_hook=lambda stage, envelope, n: reply if stage == "rcpt" else None)
    (tmp_path / "t.txt").write_text("From: a@example.com\nSubject: s\n\nHi\n")
    (tmp_path / "people.csv").write_text("email\nann@example.com\n")
    proc = mailblast(tmp_path, "send", "people.csv", "-t", "t.txt", "--smtp", server.url, "--json")
    assert proc.returncode == 1, proc.stderr
    assert "no such user \\x1b[2J\\x1b]0;pwned\\x07" in proc.stderr  # failures by reason
    assert not raw(proc.stderr), proc.stderr
    facts = json.loads(proc.stdout)
    report = Path(tmp_path / facts["report"]).read_text(encoding="utf-8-sig")
    assert "no such user \\x1b[2J" in report and not raw(report), report
    status = mailblast(tmp_path, "status", "people.csv", "-t", "t.txt")
    assert "no such user \\x1b[2J" in status.stdout and not raw(status.stdout + status.stderr)


def test_serve_shows_envelope_addresses_escaped(tmp_path: Path) -> None:
    port = free_port()
    serve = subprocess.Popen(
        [sys.executable, "-m", "mailblast", "serve", "--port", str(port)],
        cwd=tmp_path,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        assert serve.stdout is not None and "capturing mail" in serve.stdout.readline()
        with smtplib.SMTP("127.0.0.1", port) as client:
            client.ehlo()
            client.command_encoding = "utf-8"
            # aiosmtpd refuses [ and ] in an address, not ESC: "ESC c" resets the terminal
            for sender, to, utf8 in (("a\x1bc", "b\x07", ""), (f"c{RLO}", f"d{CSI}", " SMTPUTF8")):
                assert client.docmd(f"MAIL FROM:<{sender}@x.example>{utf8}")[0] == 250
                assert client.docmd(f"RCPT TO:<{to}@x.example>")[0] == 250
                assert client.data(b"Subject: s\r\n\r\nhi\r\n")[0] == 250
            assert client.docmd(TITLE)[0] == 500  # an unknown command, which aiosmtpd logs
    finally:
        serve.send_signal(signal.SIGINT)
        out, err = serve.communicate(timeout=30)
    assert "a\\x1bc@x.example -> b\\x07@x.example" in out
    assert "c\\u202e@x.example -> d\\x9b31m@x.example" in out
    assert "unrecognised: \\x1b]0;PWNED\\x07" in err
    assert not raw(out + err), out


def test_check_json_with_a_latin1_file_name_is_valid_utf8(tmp_path: Path) -> None:
    name = b"caf\xe9.csv"
    (tmp_path / "t.txt").write_text("From: a@example.com\nSubject: s\n\nHi\n")
    with open(os.fsencode(tmp_path) + b"/" + name, "w") as f:
        f.write("email\nann@example.com\n")
    proc = subprocess.run(
        [sys.executable, "-m", "mailblast", "check", name, "-t", "t.txt", "--json"],
        cwd=tmp_path,
        capture_output=True,
        timeout=60,
    )
    assert proc.returncode == 0, proc.stderr
    facts = json.loads(proc.stdout.decode("utf-8"))  # strict: raises on invalid UTF-8
    assert facts["recipients_file"].startswith("caf") and facts["exit_code"] == 0

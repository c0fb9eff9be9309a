"""One-click unsubscribe: List-Unsubscribe and List-Unsubscribe-Post, rendered per row from the config."""

from __future__ import annotations

import csv
import re
from collections.abc import Callable
from pathlib import Path
from urllib.parse import parse_qs, quote, unquote, urlsplit

import pytest

from mailblast.message import unsubscribe as unsub
from tests.servers import SmtpServer
from tests.test_send_cli import mailblast

TEMPLATE = (
    "From: news@example.com\nSubject: Hi {{ name }}\n\n"
    "Hello {{ name }}\n\nUnsubscribe: {{ unsubscribe_url }}\n"
)
HOSTILE_IDS = [
    "7",
    "1>, <https://evil.example/steal",  # would close the <...> and add a link
    "2\r\nBcc: victim@example.com",  # would add a header
    "50% off & more=yes",
    "ünïcode",
]


def write_campaign(folder: Path, config: str, template: str = TEMPLATE) -> None:
    (folder / "t.txt").write_text(template)
    with (folder / "people.csv").open("w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["email", "name", "id"])
        for i, ident in enumerate(HOSTILE_IDS):
            writer.writerow([f"user{i}+tag@example.com", f"User {i}", ident])
    (folder / "mailblast.toml").write_text('template = "t.txt"\n' + config)


CONFIG = """
[unsubscribe]
url = "https://example.com/u?e={{ email | urlencode }}&id={{ id }}"
mailto = "unsubscribe+{{ id }}@example.com"
"""


def test_every_message_carries_its_own_one_click_headers(
    tmp_path: Path, smtp_server: Callable[..., SmtpServer]
) -> None:
    server = smtp_server()
    write_campaign(tmp_path, CONFIG)
    proc = mailblast(tmp_path, "send", "people.csv", "--smtp", server.url)
    assert proc.returncode == 0, proc.stderr
    assert "List-Unsubscribe" not in proc.stderr  # no warning: the campaign has one-click unsubscribe
    by_address = {m.rcpt_tos[0]: m for m in server.received}
    assert len(by_address) == len(HOSTILE_IDS)
    assert all(len(m.rcpt_tos) == 1 for m in server.received)  # no value added a recipient
    for i, ident in enumerate(HOSTILE_IDS):
        address = f"user{i}+tag@example.com"
        message = by_address[address].message
        encoded = quote(ident, safe="")
        url = f"https://example.com/u?e={quote(address, safe='')}&id={encoded}"
        mailto = f"mailto:unsubscribe+{encoded}@example.com"
        assert message.get_all("List-Unsubscribe") == [f"<{mailto}>, <{url}>"]
        assert message.get_all("List-Unsubscribe-Post") == ["List-Unsubscribe=One-Click"]
        assert message["Bcc"] is None
        body = message.get_body(("plain",))
        assert body is not None and f"Unsubscribe: {url}" in body.get_content()
        for link in message["List-Unsubscribe"].split(", "):
            assert (
                link.startswith("<")
                and link.endswith(">")
                and "<" not in link[1:-1]
                and ">" not in link[1:-1]
            )


def test_an_http_url_or_a_mailto_alone_has_no_post_header(
    tmp_path: Path, smtp_server: Callable[..., SmtpServer]
) -> None:
    server = smtp_server()
    write_campaign(tmp_path, '[unsubscribe]\nmailto = "mailto:leave@example.com?subject={{ id }}"\n')
    proc = mailblast(tmp_path, "send", "people.csv", "--smtp", server.url)
    assert proc.returncode == 0, proc.stderr
    assert "no one-click unsubscribe" in proc.stderr  # the warning check gives, at the start of send
    message = server.received[0].message
    assert message["List-Unsubscribe"] == "<mailto:leave@example.com?subject=7>"
    assert message["List-Unsubscribe-Post"] is None
    assert "Unsubscribe: mailto:leave@example.com?subject=7" in message.get_body(("plain",)).get_content()


@pytest.mark.parametrize(
    ("template_headers", "config", "warning"),
    [
        ("", "", "no List-Unsubscribe header"),
        ("List-Unsubscribe: <mailto:leave@example.com>\n", "", "no one-click unsubscribe"),
        ("List-Unsubscribe: <https://example.com/u?e={{ email }}>\n", "", "no List-Unsubscribe-Post"),
        ("", '[unsubscribe]\nurl = "http://example.com/u"\n', "no one-click unsubscribe"),
    ],
)
def test_check_warns_without_one_click_unsubscribe(
    tmp_path: Path, template_headers: str, config: str, warning: str
) -> None:
    write_campaign(
        tmp_path,
        config,
        f"From: a@example.com\nSubject: Hi\n{template_headers}\nHello\n",
    )
    proc = mailblast(tmp_path, "check", "people.csv")
    assert proc.returncode == 0, proc.stderr
    assert warning in proc.stdout + proc.stderr


def test_check_is_quiet_about_a_template_with_both_headers(tmp_path: Path) -> None:
    headers = "List-Unsubscribe: <https://example.com/u>\nList-Unsubscribe-Post: List-Unsubscribe=One-Click\n"
    write_campaign(tmp_path, "", f"From: a@example.com\nSubject: Hi\n{headers}\nHello\n")
    proc = mailblast(tmp_path, "check", "people.csv")
    assert proc.returncode == 0, proc.stderr
    assert "Unsubscribe" not in proc.stdout + proc.stderr


@pytest.mark.parametrize(
    ("template", "config", "message"),
    [
        (
            "From: a@example.com\nList-Unsubscribe: <https://example.com/u>\n\nHi\n",
            CONFIG,
            "sets List-Unsubscribe itself, and mailblast.toml has [unsubscribe] too",
        ),
        (
            "From: a@example.com\n\nHi\n",
            '[unsubscribe]\nurl = "ftp://example.com/u"\n',
            "must start with https://",
        ),
        ("From: a@example.com\n\nHi {{ unsubscribe_url }}\n", "", "mailblast.toml has no [unsubscribe] url"),
        (
            "From: a@example.com\n\nHi\n",
            '[unsubscribe]\nurl = "https://example.com/u?id={{ idd }}"\n',
            '"idd"',
        ),
        (
            "From: a@example.com\n\nHi\n",
            '[unsubscribe]\nurl = "https://x.example/{{ id "\n',
            "[unsubscribe] url",
        ),
        (
            "From: a@example.com\n\nHi\n",
            "[unsubscribe]\nurl = \"{{ 'javascript:1' }}\"\n",
            "not an https:// URL",
        ),
    ],
)
def test_mistakes_are_one_error_and_nothing_is_sent(
    tmp_path: Path, smtp_server: Callable[..., SmtpServer], template: str, config: str, message: str
) -> None:
    server = smtp_server()
    write_campaign(tmp_path, config, template)
    proc = mailblast(tmp_path, "send", "people.csv", "--smtp", server.url)
    assert proc.returncode == 2
    assert message in proc.stderr
    assert proc.stderr.count(message) == 1  # once, not once per row
    assert server.received == []


def test_values_are_percent_encoded_but_for_unreserved_characters() -> None:
    assert unsub.escape_value("a b>c,d\r\n") == "a%20b%3Ec%2Cd%0D%0A"
    assert unsub.escape_value("user%40example.com") == "user%2540example.com"
    assert unsub.escape_value("A-z_0.9~&=?#@()/") == "A-z_0.9~%26%3D%3F%23%40%28%29%2F"
    assert unsub.escape_value(unsub.urlencode_once({"a b": "c&d", "e": 1})) == "a%20b=c%26d&e=1"
    assert unsub.escape_value("50% off") == "50%25%20off"
    assert unsub.escape_value("é") == "%C3%A9"
    assert unsub.headers("http://example.com/u", None) == [("List-Unsubscribe", "<http://example.com/u>")]
    with pytest.raises(unsub.BadLink):
        unsub.check_link("url", "https://example.com/a b")


# -- issue 16: a row value stays one value, however the template writes it -----------------------

ATTACKS = {
    "param": "1002&id=1001#",  # another parameter, and the signature cut off
    "mailto": "unsub+x@evil.example?cc=victim@example.com",  # the mailto sent elsewhere
    "paren": "7) [click](https://evil.example",  # the Markdown link ended early
    "pct": "%26id%3D1",  # an escape made in advance is still the row's text
}


@pytest.mark.parametrize("filtered", [False, True], ids=["plain", "urlencode"])
@pytest.mark.parametrize("attack", list(ATTACKS))
def test_a_row_value_cannot_change_the_links_structure(
    tmp_path: Path, smtp_server: Callable[..., SmtpServer], attack: str, filtered: bool
) -> None:
    value = ATTACKS[attack]
    pipe = " | urlencode" if filtered else ""
    (tmp_path / "t.md").write_text(
        "From: news@example.com\nSubject: Hi\n\nHello\n\n[Unsubscribe]({{ unsubscribe_url }}) here\n"
    )
    (tmp_path / "people.csv").write_text(f'email,id\nuser@example.com,"{value}"\n')
    (tmp_path / "mailblast.toml").write_text(
        'template = "t.md"\n[unsubscribe]\n'
        f'url = "https://example.com/u?id={{{{ id{pipe} }}}}&sig=SIG"\n'
        f'mailto = "{{{{ id{pipe} }}}}@unsub.example.com"\n'
    )
    server = smtp_server()
    proc = mailblast(tmp_path, "send", "people.csv", "--smtp", server.url, "--no-journal")
    assert proc.returncode == 0, proc.stderr
    message = server.received[0].message
    mailto, url = (link.strip(" <>") for link in message["List-Unsubscribe"].split(","))
    parsed = urlsplit(url)
    assert parse_qs(parsed.query) == {"id": [value], "sig": ["SIG"]} and not parsed.fragment
    address, _, query = mailto.removeprefix("mailto:").partition("?")
    assert not query and address.count("@") == 1 and address.endswith("@unsub.example.com")
    assert unquote(address.partition("@")[0]) == value
    html = message.get_body(("html",)).get_content()
    # the Markdown default style is inlined, so the <a> carries a style="..." after its href
    assert re.search(f'<a href="{re.escape(url.replace("&", "&amp;"))}"[^>]*>Unsubscribe</a> here', html)
    assert "evil.example" not in html.replace(quote(value, safe=""), "")


def test_a_test_copy_cannot_unsubscribe_the_recipient(
    tmp_path: Path, smtp_server: Callable[..., SmtpServer]
) -> None:
    server = smtp_server()
    write_campaign(tmp_path, CONFIG)
    proc = mailblast(
        tmp_path, "send", "people.csv", "--smtp", server.url, "--test-to", "me@example.org", "--row", "1"
    )
    assert proc.returncode == 0, proc.stderr
    (received,) = server.received
    assert received.rcpt_tos == ["me@example.org"]
    message = received.message
    links = message["List-Unsubscribe"]
    assert "user0" not in links and "id=7" not in links and "unsubscribe+7@" not in links
    assert "me%40example.org" in links and "mailblast-test-copy" in links
    body = message.get_body(("plain",)).get_content()
    assert "Hello User 0" in body  # the copy reads as the recipient's
    assert "user0" not in body.partition("Unsubscribe:")[2]

"""Rendering messages from templates; every message is parsed back with the email package."""

from __future__ import annotations

import re
import tempfile
from email.message import EmailMessage
from pathlib import Path

import pytest

from mailblast.errors import TemplateError
from mailblast.message.compose import (
    ComposedMessage,
    RowError,
    Template,
    body_kind,
    compose_rows,
    in_order,
)
from mailblast.message.recipients import Recipient, RecipientsFile


def make_template(tmp_path: Path, text: str, name: str = "t.txt", **kwargs) -> Template:
    path = tmp_path / name
    path.write_text(text, encoding="utf-8")
    return Template(path, **kwargs)


def person(address: str = "ann@example.com", row: int = 1, **fields: str) -> Recipient:
    return Recipient(row=row, line=row + 1, fields={"email": address, **fields}, address=address)


def parse(composed: ComposedMessage) -> EmailMessage:
    return composed.parsed()


SIMPLE = "From: Team <team@example.com>\nSubject: Hello {{ name }}\n\nHi {{ name }},\nbye\n"


def test_plain_text_message_structure(tmp_path: Path) -> None:
    composed = make_template(tmp_path, SIMPLE).compose(person(name="Ann"))
    msg = parse(composed)
    assert msg["Subject"] == "Hello Ann"
    assert msg["To"] == "ann@example.com"  # To defaults to the row's address
    assert msg["From"].addresses[0].addr_spec == "team@example.com"
    assert msg.get_content_type() == "text/plain"
    assert msg.get_content() == "Hi Ann,\nbye\n"
    assert msg["Date"] and msg["Message-ID"] == composed.message_id
    assert composed.envelope_from == "team@example.com"
    assert composed.envelope_to == ["ann@example.com"]
    assert b"\r\n" in composed.data and b"\n\n" not in composed.data.replace(b"\r\n", b"")


def test_emoji_and_non_ascii_names_are_encoded(tmp_path: Path) -> None:
    template = make_template(
        tmp_path,
        "From: Zoë Ågren <zoe@example.com>\nTo: {{ name }} <{{ email }}>\n"
        "Subject: 🎉 Grüße, {{ name }}!\n\nHallo {{ name }} 🎉 — schön!\n",
    )
    composed = template.compose(person(name="Jürgen Strauß"))
    raw_headers = composed.data.split(b"\r\n\r\n", 1)[0]
    assert raw_headers.isascii()  # RFC 2047 encoded words, not raw UTF-8
    assert b"=?utf-8?" in raw_headers
    msg = parse(composed)
    assert msg["Subject"] == "🎉 Grüße, Jürgen Strauß!"
    assert msg["To"].addresses[0].display_name == "Jürgen Strauß"
    assert msg["From"].addresses[0].display_name == "Zoë Ågren"
    assert msg.get_content_charset() == "utf-8"
    assert msg.get_content() == "Hallo Jürgen Strauß 🎉 — schön!\n"


def test_non_ascii_local_part_needs_smtputf8(tmp_path: Path) -> None:
    template = make_template(tmp_path, SIMPLE)
    recipient = Recipient(1, 2, {"email": "jösé@exämple.com", "name": "J"}, "jösé@exämple.com", True)
    composed = template.compose(recipient)
    assert composed.needs_smtputf8
    assert parse(composed)["To"].addresses[0].addr_spec == "jösé@exämple.com"


def test_idn_domain_goes_out_as_ascii(tmp_path: Path) -> None:
    composed = make_template(tmp_path, SIMPLE).compose(person("ann@exämple.com", name="Ann"))
    assert composed.envelope_to == ["ann@xn--exmple-cua.com"]
    assert not composed.needs_smtputf8


def test_html_body_autoescapes_and_derives_plain_text(tmp_path: Path) -> None:
    template = make_template(
        tmp_path,
        "From: t@example.com\nSubject: Hi {{ name }}\n\n<p>Hello <b>{{ name }}</b></p>\n",
        "invite.html.j2",
    )
    composed = template.compose(person(name="<script>x</script> & Co"))
    msg = parse(composed)
    assert msg.get_content_type() == "multipart/alternative"
    html = msg.get_body(("html",)).get_content()
    assert "&lt;script&gt;x&lt;/script&gt; &amp; Co" in html and "<script>" not in html
    plain = msg.get_body(("plain",)).get_content()
    assert plain == "Hello <script>x</script> & Co\n"  # text: nothing to escape, no Markdown
    assert msg["Subject"] == "Hi <script>x</script> & Co"  # headers are not HTML


def test_text_body_is_not_escaped(tmp_path: Path) -> None:
    composed = make_template(tmp_path, SIMPLE).compose(person(name="Tom & <Jerry>"))
    assert "Hi Tom & <Jerry>," in parse(composed).get_content()


def test_markdown_body_sends_html_and_text_made_from_it(tmp_path: Path) -> None:
    source = "# Hi {{ name }}\n\n- **bold** item\n"
    template = make_template(tmp_path, "From: t@example.com\nSubject: s\n\n" + source, "news.md")
    msg = parse(template.compose(person(name="Ann")))
    assert msg.get_body(("plain",)).get_content() == "Hi Ann\n======\n\n- bold item\n"
    html = msg.get_body(("html",)).get_content()
    assert "Hi Ann</h1>" in html and "<strong>bold</strong>" in html


def test_markdown_does_not_pass_raw_html_from_rows(tmp_path: Path) -> None:
    template = make_template(tmp_path, "From: t@example.com\nSubject: s\n\nHi {{ name }}\n", "n.md")
    html = parse(template.compose(person(name="<img src=x onerror=alert(1)>"))).get_body(("html",))
    assert "<img" not in html.get_content()


@pytest.mark.parametrize(
    ("name", "kind"),
    [
        ("a.txt", "text"),
        ("a.html", "html"),
        ("a.html.j2", "html"),
        ("a.md.jinja", "markdown"),
        ("a.markdown", "markdown"),
        ("a.htm.j2", "html"),
        ("a.j2", "text"),
    ],
)
def test_body_kind_from_file_name(name: str, kind: str) -> None:
    assert body_kind(Path(name)) == kind


def test_headers_cc_bcc_reply_to_and_custom(tmp_path: Path) -> None:
    template = make_template(
        tmp_path,
        "From: t@example.com\nTo: {{ email }}\nCc: boss@example.com\n"
        "Bcc: archive@example.com, audit@example.com\n"
        "Reply-To: help@example.com\nX-Campaign: {{ campaign }}\nList-Unsubscribe: <mailto:u@example.com>\n"
        "\nbody\n",
    )
    composed = template.compose(person(campaign="winter"))
    msg = parse(composed)
    assert msg["Cc"] == "boss@example.com"
    assert msg["Reply-To"] == "help@example.com"
    assert msg["X-Campaign"] == "winter"
    assert msg["List-Unsubscribe"] == "<mailto:u@example.com>"
    assert "Bcc" not in msg and b"archive@example.com" not in composed.data
    assert composed.envelope_to == [
        "ann@example.com",
        "boss@example.com",
        "archive@example.com",
        "audit@example.com",
    ]


def test_from_comes_from_config_and_header_wins(tmp_path: Path) -> None:
    template = make_template(tmp_path, "Subject: s\n\nb\n", default_from="Cfg <cfg@example.com>")
    assert template.compose(person()).envelope_from == "cfg@example.com"
    template = make_template(tmp_path, SIMPLE, default_from="cfg@example.com")
    assert template.compose(person(name="x")).envelope_from == "team@example.com"
    with pytest.raises(RowError, match="no sender"):
        make_template(tmp_path, "Subject: s\n\nb\n").compose(person())


def test_folded_and_conditional_headers(tmp_path: Path) -> None:
    template = make_template(
        tmp_path,
        "From: t@example.com\nSubject: a very long subject\n  continued here\n"
        "{% if vip %}X-Priority: 1{% endif %}\n\nbody\n",
    )
    msg = parse(template.compose(person(vip="")))
    assert msg["Subject"] == "a very long subject continued here"
    assert "X-Priority" not in msg
    assert parse(template.compose(person(vip="yes")))["X-Priority"] == "1"


def test_newline_from_a_row_cannot_add_a_header(tmp_path: Path) -> None:
    template = make_template(tmp_path, SIMPLE)
    for evil in ("Ann\nBcc: victim@example.com", "Ann\r\nX-Evil: 1", "Ann\rX"):
        with pytest.raises(RowError, match="line break would reach a header"):
            template.compose(person(name=evil))
    # a newline in the body is fine
    body = make_template(tmp_path, "From: t@example.com\nSubject: s\n\n{{ name }}\n", "b.txt")
    assert "line1\nline2" in parse(body.compose(person(name="line1\nline2"))).get_content()


def test_undefined_variable_names_the_variable(tmp_path: Path) -> None:
    template = make_template(tmp_path, "From: t@example.com\nSubject: {{ nmae }}\n\nx\n")
    with pytest.raises(
        RowError, match='uses "nmae", which is not a column.*did you mean "name".*columns are: email, name'
    ):
        template.compose(person(name="Ann"))


def test_columns_with_spaces_via_row(tmp_path: Path) -> None:
    template = make_template(tmp_path, "From: t@example.com\nSubject: {{ row['First Name'] }}\n\nx\n")
    assert parse(template.compose(person(**{"First Name": "Ann"})))["Subject"] == "Ann"


@pytest.mark.parametrize(
    ("text", "line"),
    [
        ("From: t@example.com\nSubject: {{ name \n\nbody\n", 2),
        ("From: t@example.com\nSubject: x\n\nline 4\nline 5 {% if %}\n", 5),
        ("From: t@example.com\nSubject: x\n\n{% for x in y %}\nnever closed\n", 4),
    ],
)
def test_syntax_errors_name_file_and_line(tmp_path: Path, text: str, line: int) -> None:
    with pytest.raises(TemplateError, match=rf"t\.txt, line {line}:"):
        make_template(tmp_path, text)


@pytest.mark.parametrize(
    ("text", "message"),
    [("", "empty"), ("   \n\n", "empty"), ("Subject: no body or blank line", "no blank line")],
)
def test_bad_template_files(tmp_path: Path, text: str, message: str) -> None:
    with pytest.raises(TemplateError, match=message):
        make_template(tmp_path, text)


def test_missing_and_undecodable_template(tmp_path: Path) -> None:
    with pytest.raises(TemplateError, match="no such template"):
        Template(tmp_path / "nope.txt")
    bad = tmp_path / "bad.txt"
    bad.write_bytes(b"Subject: \xff\n\nx")
    with pytest.raises(TemplateError, match="not UTF-8"):
        Template(bad)


def test_header_block_lines_must_be_headers(tmp_path: Path) -> None:
    template = make_template(tmp_path, "From: t@example.com\nthis is not a header\n\nbody\n")
    with pytest.raises(RowError, match="not a header"):
        template.compose(person())


def test_reserved_and_repeated_headers_are_refused(tmp_path: Path) -> None:
    with pytest.raises(RowError, match="Message-ID"):
        make_template(tmp_path, "From: t@example.com\nMessage-ID: <x@y>\n\nb\n").compose(person())
    with pytest.raises(RowError, match="Subject twice"):
        make_template(tmp_path, "From: t@example.com\nSubject: a\nSubject: b\n\nb\n").compose(person())


def test_bad_address_in_a_header(tmp_path: Path) -> None:
    template = make_template(tmp_path, "From: t@example.com\nCc: {{ boss }}\n\nb\n")
    with pytest.raises(RowError, match="Cc: 'nobody@' is not"):
        template.compose(person(boss="nobody@"))


def test_attachments_per_recipient_relative_to_template(tmp_path: Path) -> None:
    (tmp_path / "files").mkdir()
    (tmp_path / "files" / "ann.pdf").write_bytes(b"%PDF-1.4 ann")
    (tmp_path / "files" / "terms.txt").write_text("terms")
    template = make_template(
        tmp_path,
        "From: t@example.com\nSubject: s\nAttachment: files/{{ file }}\n"
        "Attachment: files/terms.txt\n\nsee attached\n",
    )
    composed = template.compose(person(file="ann.pdf"))
    msg = parse(composed)
    assert msg.get_content_type() == "multipart/mixed"
    parts = list(msg.iter_attachments())
    assert [(p.get_filename(), p.get_content_type()) for p in parts] == [
        ("ann.pdf", "application/pdf"),
        ("terms.txt", "text/plain"),
    ]
    assert parts[0].get_content() == b"%PDF-1.4 ann"
    assert [(a.filename, a.size) for a in composed.attachments] == [("ann.pdf", 12), ("terms.txt", 5)]
    assert msg.get_body(("plain",)).get_content() == "see attached\n"
    with pytest.raises(RowError, match="attachment 'files/bob.pdf' not found"):
        template.compose(person(file="bob.pdf"))


def test_message_id_is_stable_per_row_and_unique_across_rows(tmp_path: Path) -> None:
    template = make_template(tmp_path, SIMPLE)
    first = template.compose(person(name="Ann"))
    again = make_template(tmp_path, SIMPLE).compose(person(name="Ann"))
    other = template.compose(person("bob@example.com", row=2, name="Bob"))
    assert first.message_id == again.message_id
    assert first.message_id != other.message_id
    assert first.message_id.endswith("@example.com>")


def test_compose_rows_collects_row_problems(tmp_path: Path) -> None:
    csv_path = tmp_path / "r.csv"
    csv_path.write_text('email,name\na@example.com,Ann\nb@example.com,"Bob\nSmith"\nbad,Bad\n')
    template = make_template(tmp_path, SIMPLE)
    prepared = list(compose_rows(RecipientsFile(csv_path), template))
    assert prepared[0].message is not None
    assert prepared[1].message is None
    assert "row 2 (line 3)" in str(prepared[1].row.problems[0])
    assert "line break" in str(prepared[1].row.problems[0])
    assert prepared[2].message is None and "not a valid address" in str(prepared[2].row.problems[0])


# -- text-part messages are put together without the email package's generator ------------------

_WIRE_TEMPLATES = {
    "t.txt": "From: Zoë <team@example.com>\nTo: {{ mailbox(name, email) }}\nSubject: Hi {{ name }}\n\n"
    "Hello {{ name }},\n.a line with a dot\n{{ note }}\n",
    "t.md": "From: team@example.com\nReply-To: {{ email }}\nSubject: {{ note }}\n\n# Hi {{ name }}\n\n"
    "- {{ note }}\n- **bold**\n",
    "t.html": "From: team@example.com\nSubject: News for {{ name }}\n\n<p>Hi {{ name }}</p><p>{{ note }}</p>",
    # an image to embed, styles to inline, a preheader, lines long enough to need encoding
    "i.html": "From: team@example.com\nPreheader: For {{ name }}\nList-Id: <news.example.com>\n\n"
    "<style>p{color:#333}</style><p><img src='logo.png' alt='Logo'> Hi {{ name }}</p>\n"
    "<p>{{ note }}{{ note }}{{ note }}{{ note }}</p>",
    "i.md": "From: team@example.com\nSubject: {{ name }}\n\n![logo](logo.png)\n\n{{ note }}\n",
}


@pytest.mark.parametrize("name", sorted(_WIRE_TEMPLATES))
def test_wire_bytes_are_those_of_the_email_package(tmp_path: Path, name: str) -> None:
    from hypothesis import given, settings
    from hypothesis import strategies as st

    (tmp_path / "logo.png").write_bytes(b"\x89PNG\r\n\x1a\n" + bytes(range(256)))
    template = make_template(tmp_path, _WIRE_TEMPLATES[name], name)
    one_line = st.text(st.characters(blacklist_categories=("Cs", "Cc", "Zl", "Zp")), max_size=120)

    @settings(max_examples=60, deadline=None)
    @given(display=one_line, note=st.text(max_size=300))
    def same(display: str, note: str) -> None:
        try:
            rendered = template.render(person(name=display, note=note))
        except RowError:
            return  # refused: nothing is built
        dated = [*rendered.headers, ("Date", "Thu, 01 Jan 2026 00:00:00 +0000"), ("Message-ID", "<x@y>")]
        headers = in_order(dated)
        assert not rendered.needs_smtputf8 and not rendered.attachments
        assert bool(rendered.images) == name.startswith("i.")
        content = template.content(rendered)
        direct = template._build_wire(rendered, content, headers)
        assert direct == template._build_mime(rendered, content, headers)[0]

    same()


def test_a_body_without_row_values_is_built_once(tmp_path: Path) -> None:
    text = "From: a@example.com\nSubject: Hi {{ name }}\n\n# The same for all\n"
    template = make_template(tmp_path, text, "t.md")
    first, second = (template.compose(person(f"u{i}@example.com", name=f"U{i}")) for i in range(2))
    assert parse(first)["Subject"] == "Hi U0" and parse(second)["Subject"] == "Hi U1"
    assert template._content.cache_info().hits == 1
    html = parse(second).get_body(("html",))
    assert html is not None and "<h1>The same for all</h1>" in html.get_content()


# -- a Markdown body's values are text: they cannot make links or images --------------------------

_MARKDOWN_TEMPLATE = (
    "From: team@example.com\nSubject: Hi\n\nHi {{ name }}!\n\n"
    "[Your page](https://example.com/u/{{ slug }}) and <https://example.com/{{ slug }}>\n"
)


@pytest.mark.parametrize(
    "value",
    [
        "[Reset your password](https://evil.example/x)",
        "![](https://tracker.example/pixel.gif)",
        "<https://evil.example>",
        "<ann@evil.example>",
        "[ref]\n\n[ref]: https://evil.example",
        "\\[x](https://evil.example)",
        "<a href='https://evil.example'>x</a>",
    ],
)
def test_a_markdown_value_cannot_make_a_link_or_an_image(tmp_path: Path, value: str) -> None:
    template = make_template(tmp_path, _MARKDOWN_TEMPLATE, "t.md")
    msg = parse(template.compose(person(name=value, slug="a-b.c_d")))
    html = msg.get_body(("html",)).get_content()
    assert not re.search(r'(href|src)="[^"]*evil', html)  # the value shows as text, if at all
    assert html.count("<a ") == 2 and "<img" not in html  # the template's own two links
    assert 'href="https://example.com/u/a-b.c_d"' in html and 'href="https://example.com/a-b.c_d"' in html
    assert value in msg.get_body(("plain",)).get_content()  # the plain part has it as written


def test_any_markdown_value_stays_text() -> None:
    from hypothesis import given, settings
    from hypothesis import strategies as st

    with tempfile.TemporaryDirectory() as folder:
        template = make_template(Path(folder), _MARKDOWN_TEMPLATE, "t.md")

        @settings(max_examples=200, deadline=None)
        @given(value=st.text(alphabet=st.sampled_from("[]()<>!\\:*_`#-@ \nahttps/.exmpl"), max_size=60))
        def stays_text(value: str) -> None:
            html = parse(template.compose(person(name=value, slug="x"))).get_body(("html",)).get_content()
            assert html.count("<a ") == 2 and "<img" not in html

        stays_text()

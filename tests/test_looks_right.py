"""What the reader gets: images embedded, styles inlined, MJML made HTML, a text part that reads
as text, the headers careful senders write. Messages are read back with the email package."""

from __future__ import annotations

import email
import email.policy
import importlib.metadata
import re
import sqlite3
from collections.abc import Callable
from email.message import EmailMessage
from pathlib import Path

import dkim
import pytest

from mailblast.message import compose
from mailblast.message.compose import Template
from mailblast.message.plaintext import html_to_text
from mailblast.message.recipients import Recipient
from tests.servers import SmtpServer
from tests.test_cli import run
from tests.test_dkim import make_key, signed_headers

ROOT = Path(__file__).resolve().parent.parent
PNG = b"\x89PNG\r\n\x1a\n" + bytes(range(200))
LONG_URL = (
    "https://greenleaf-books.com/unsubscribe-from-the-weekly-newsletter?e=ann%40example.com&t=a-b-c-d-e"
)
OTHER_URL = "https://greenleaf-books.com/books/the-long-way-to-a-small-angry-planet?utm_source=news-letter"

TEMPLATES = {
    "news.md": "From: Greenleaf <news@greenleaf-books.com>\nSubject: Points for {{ name }}\n\n"
    "![logo](logo.png)\n\n# Hello {{ name }}\n\nYou have **1240 points**.\n\n"
    "| Book | Points |\n| --- | --- |\n| Dune | 120 |\n\n"
    f"- Read [the long way]({OTHER_URL})\n- Two\n\n[Unsubscribe]({LONG_URL})\n",
    "news.html": "From: Greenleaf <news@greenleaf-books.com>\nSubject: Points for {{ name }}\n\n"
    "<html><head><style>.button{background:#f60} @media (max-width:600px){.button{padding:4px}}</style>"
    '</head><body><img src="img/logo.png" alt="Greenleaf Books"><h1>Hello {{ name }}</h1>'
    "<p>You have <b>1240 points</b>.</p><table><tr><th>Book</th><th>Points</th></tr>"
    "<tr><td>Dune</td><td>120</td></tr></table>"
    f'<ul><li><a class="button" href="{OTHER_URL}">the long way</a></li></ul>'
    f'<p><a href="{LONG_URL}">Unsubscribe</a></p><img src="https://example.com/pixel.png" alt="">'
    '<img src="cid:kept@example.com" alt=""></body></html>\n',
    "news.mjml": "From: Greenleaf <news@greenleaf-books.com>\nSubject: Points for {{ name }}\n\n"
    "<mjml><mj-body><mj-section><mj-column>"
    '<mj-image src="img/logo.png" alt="Greenleaf Books" width="160px" />'
    "<mj-text><h1>Hello {{ name }}</h1>You have <b>1240 points</b>.</mj-text>"
    f'<mj-button href="{OTHER_URL}">The long way</mj-button>'
    f'<mj-text><a href="{LONG_URL}">Unsubscribe</a></mj-text>'
    "</mj-column></mj-section></mj-body></mjml>\n",
}


def folder_with_images(tmp_path: Path) -> Path:
    (tmp_path / "img").mkdir(exist_ok=True)
    (tmp_path / "img" / "logo.png").write_bytes(PNG)
    (tmp_path / "logo.png").write_bytes(PNG)
    (tmp_path / "people.csv").write_text("email,name\nann@example.com,Ann\nbob@example.com,Bob\n")
    for name, text in TEMPLATES.items():
        (tmp_path / name).write_text(text)
    return tmp_path


def dry_run(folder: Path, template: str, *extra: str) -> list[EmailMessage]:
    out = folder / f"eml-{template}"
    code, output = run("send", "people.csv", "-t", template, "--dry-run", "--out", out, *extra, cwd=folder)
    assert code == 0, output
    return [
        email.message_from_bytes(p.read_bytes(), policy=email.policy.default)  # type: ignore[misc]
        for p in sorted(out.iterdir())
    ]


def person(name: str = "Ann", address: str = "ann@example.com", row: int = 1) -> Recipient:
    return Recipient(row=row, line=row + 1, fields={"email": address, "name": name}, address=address)


@pytest.mark.parametrize("template", sorted(TEMPLATES))
def test_each_kind_embeds_its_image_and_its_text_part_reads_as_text(tmp_path: Path, template: str) -> None:
    folder = folder_with_images(tmp_path)
    message = dry_run(folder, template)[0]
    related = next(p for p in message.walk() if p.get_content_type() == "multipart/related")
    html_part, image = related.get_payload()  # type: ignore[misc]
    html = html_part.get_content()
    assert image.get_content_type() == "image/png" and image.get_content() == PNG
    cid = image["Content-ID"].strip("<>")
    assert f'src="cid:{cid}"' in html
    assert image["Content-Disposition"].startswith("inline")
    if template.endswith(".html"):  # addresses are left as written
        assert 'src="https://example.com/pixel.png"' in html and 'src="cid:kept@example.com"' in html
    if template.endswith(".mjml"):
        assert "<table" in html and 'role="presentation"' in html  # MJML's responsive layout
    plain = message.get_body(("plain",)).get_content()  # type: ignore[union-attr]
    lines = plain.splitlines()
    for url in re.findall(r"https://[^\s\"'<>]+", html):
        url = url.replace("&amp;", "&")
        if "pixel" in url:
            continue  # an image without alt text: nothing to read
        assert any(url in line for line in lines), (url, plain)  # whole, on one line
    assert LONG_URL in plain and OTHER_URL in plain
    assert not any(line.startswith("#") for line in lines)
    for markdown in ("**", "![", "](", "|---", "| ---"):
        assert markdown not in plain, plain
    assert "Hello Ann" in plain
    assert "You have 1240 points." in plain
    assert ("logo" if template == "news.md" else "Greenleaf Books") in lines  # the image's alt text


def test_styles_are_inlined_and_media_rules_kept(tmp_path: Path) -> None:
    folder = folder_with_images(tmp_path)
    html = dry_run(folder, "news.html")[0].get_body(("html",)).get_content()  # type: ignore[union-attr]
    button = re.search(r"<a [^>]*class=\"button\"[^>]*>", html)
    assert button is not None and re.search(r'style="[^"]*background: ?#f60', button.group())
    assert "@media (max-width:600px)" in html  # cannot be inlined: kept for the clients that read it
    (folder / "mailblast.toml").write_text("inline_css = false\n")
    html = dry_run(folder, "news.html")[0].get_body(("html",)).get_content()  # type: ignore[union-attr]
    assert '<a class="button" href' in html and "background: #f60" not in html


def test_headers_in_order_mime_version_once_and_ascii_text_is_7bit(tmp_path: Path) -> None:
    folder = folder_with_images(tmp_path)
    (folder / "report.txt").write_text("a,b\n1,2\n")
    (folder / "übersicht.pdf").write_bytes(b"%PDF-1.4\n\xff\xfe")
    (folder / "news.txt").write_text(
        "Subject: Hi {{ name }}\nReply-To: help@greenleaf-books.com\nCc: archive@greenleaf-books.com\n"
        "From: Greenleaf <news@greenleaf-books.com>\nX-Campaign: 7\nList-Id: <news.greenleaf-books.com>\n\n"
        "Hello {{ name }}, see https://example.com/a?b=c&d=e\n"
    )
    message = dry_run(folder, "news.txt")[0]
    data = bytes(message)
    names = [name.lower() for name in message]
    expected = ["from", "to", "cc", "reply-to", "subject", "date", "message-id", "list-id", "x-campaign"]
    assert names == [*expected, "mime-version", "content-type", "content-transfer-encoding"]
    assert data.count(b"MIME-Version") == 1
    assert message["Content-Transfer-Encoding"] == "7bit" and b"b=c&d=e" in data  # no =3D
    # attachments: 7bit text, name= and RFC 2231 for a name that is not ASCII
    (folder / "news.txt").write_text(
        "From: news@greenleaf-books.com\nAttachment: report.txt\nAttachment: übersicht.pdf\n\nHi\n"
    )
    message = dry_run(folder, "news.txt")[0]
    data = message.as_bytes()
    assert data.count(b"MIME-Version") == 1
    text, pdf = message.iter_attachments()
    assert text["Content-Type"].params["name"] == "report.txt"
    assert text["Content-Transfer-Encoding"] == "7bit"
    assert pdf["Content-Transfer-Encoding"] == "base64" and pdf.get_filename() == "übersicht.pdf"
    assert b"name*=utf-8''%C3%BCbersicht.pdf" in data and b"filename*=utf-8''%C3%BCbersicht.pdf" in data
    assert message.get_body(("plain",))["Content-Transfer-Encoding"] == "7bit"  # type: ignore[index]
    # a part that is not ASCII, or has a line over 998 characters, is quoted-printable
    (folder / "news.txt").write_text("From: news@greenleaf-books.com\n\nGrüße\n" + "x" * 999 + "\n")
    message = dry_run(folder, "news.txt")[0]
    assert message["Content-Transfer-Encoding"] == "quoted-printable"


def test_list_id_and_feedback_id_are_added_signed_and_from_oversigned(
    tmp_path: Path, smtp_server: Callable[..., SmtpServer]
) -> None:
    lookup = make_key(tmp_path, "rsa")
    (tmp_path / "people.csv").write_text("email,name\nann@example.org,Ann\nbob@example.org,Bob\n")
    (tmp_path / "t.md").write_text("From: news@example.com\nSubject: Hi {{ name }}\n\n# Hi\n")
    (tmp_path / "mailblast.toml").write_text(
        'template = "t.md"\nlist_id = "Greenleaf news <news.greenleaf-books.com>"\n'
        'feedback_id = "2026-12:news:greenleaf"\n\n'
        '[dkim]\ndomain = "example.com"\nselector = "mb2026"\nprivate_key = "dkim.pem"\n'
    )
    server = smtp_server()
    code, output = run("send", "people.csv", "--smtp", server.url, cwd=tmp_path)
    assert code == 0, output
    assert len(server.received) == 2
    for received in server.received:
        assert received.message["List-Id"] == "Greenleaf news <news.greenleaf-books.com>"
        assert received.message["Feedback-ID"] == "2026-12:news:greenleaf"
        signed = signed_headers(received.data)
        assert "list-id" in signed and "feedback-id" in signed
        assert signed.count("from") == 2 and signed.count("subject") == 2
        assert dkim.verify(received.data, dnsfunc=lookup)
        # oversigned: a second Subject added on the way breaks the signature
        added = received.data.replace(b"Subject:", b"Subject: Win a prize\r\nSubject:", 1)
        assert not dkim.verify(added, dnsfunc=lookup)


def test_a_template_may_set_its_own_list_id(tmp_path: Path) -> None:
    (tmp_path / "t.txt").write_text("From: a@example.com\nList-Id: Own <own.example.com>\n\nHi\n")
    template = Template(tmp_path / "t.txt", list_id="<config.example.com>", feedback_id="f:1")
    message = template.compose(person()).parsed()
    assert message.get_all("List-Id") == ["Own <own.example.com>"] and message["Feedback-ID"] == "f:1"


def test_a_bad_list_id_is_one_clear_error(tmp_path: Path) -> None:
    folder = folder_with_images(tmp_path)
    (folder / "mailblast.toml").write_text('list_id = "no list here"\n')
    code, output = run("check", "people.csv", "-t", "news.md", cwd=folder)
    assert code == 2 and "list_id 'no list here' does not name a list" in output


def test_message_ids_stay_within_a_campaign_and_differ_between_campaigns(tmp_path: Path) -> None:
    folder = folder_with_images(tmp_path)

    def message_ids(*extra: str) -> dict[str, str]:
        outbox = folder / "outbox"
        code, output = run("send", "people.csv", "-t", "news.md", "--outbox", outbox, *extra, cwd=folder)
        assert code == 0, output
        found = {}
        for path in (outbox / "new").iterdir():
            message = email.message_from_bytes(path.read_bytes(), policy=email.policy.default)
            found[str(message["To"])] = str(message["Message-ID"])
            path.unlink()
        return found

    first = message_ids()
    assert len(set(first.values())) == 2
    journal = next(folder.glob("outbox*.sqlite")) if list(folder.glob("outbox*.sqlite")) else None
    journal = journal or next(p for p in (folder / "outbox").rglob("*.sqlite"))
    with sqlite3.connect(journal) as db:  # the ids the journal recorded are the ones sent
        recorded = {address: mid for address, mid in db.execute("SELECT address, message_id FROM recipients")}
    assert set(recorded.values()) == set(first.values())
    with sqlite3.connect(journal) as db:  # as if both were lost: the next run sends them again
        db.execute("UPDATE recipients SET state = 'pending'")
    assert message_ids() == first  # a re-run of the same campaign: the same Message-IDs
    restarted = message_ids("--restart")
    assert set(restarted) == set(first) and not set(restarted.values()) & set(first.values())


def test_outbox_files_have_lf_line_ends(tmp_path: Path) -> None:
    folder = folder_with_images(tmp_path)
    code, output = run("send", "people.csv", "-t", "news.html", "--outbox", folder / "outbox", cwd=folder)
    assert code == 0, output
    stored = list((folder / "outbox" / "new").iterdir())
    assert len(stored) == 2
    for path in stored:
        data = path.read_bytes()
        assert b"\r" not in data and data.startswith(b"Return-path: <news@greenleaf-books.com>\nEnvelope-to:")


def test_preheader_is_hidden_text_not_a_header(tmp_path: Path) -> None:
    folder = folder_with_images(tmp_path)
    (folder / "p.md").write_text("From: a@example.com\nPreheader: Your points <inside>, {{ name }}\n\n# Hi\n")
    message = dry_run(folder, "p.md")[0]
    assert "Preheader" not in message
    html = message.get_body(("html",)).get_content()  # type: ignore[union-attr]
    body = html[html.index("<body") :]
    assert re.match(r'<body[^>]*><div style="display:none[^"]*">Your points &lt;inside&gt;, Ann</div>', body)
    assert "Your points" not in message.get_body(("plain",)).get_content()  # type: ignore[union-attr]
    (folder / "p.txt").write_text("From: a@example.com\nPreheader: Hi\n\nHi\n")
    code, output = run("check", "people.csv", "-t", "p.txt", cwd=folder)
    assert code == 0 and "p.txt: Preheader: is hidden text at the top of an HTML part" in output


def test_a_template_may_bring_its_own_text_part(tmp_path: Path) -> None:
    folder = folder_with_images(tmp_path)
    (folder / "news.txt.j2").write_text(
        "Subject: ignored\nTo: nobody@example.com\n\nDear {{ name }}, in text.\n"
    )
    code, output = run("check", "people.csv", "-t", "news.mjml", cwd=folder)
    assert code == 0 and "text part: news.txt.j2 (beside the template)" in output, output
    message = dry_run(folder, "news.mjml")[0]
    plain = message.get_body(("plain",)).get_content()  # type: ignore[union-attr]
    assert plain.replace("\r\n", "\n") == "Dear Ann, in text.\n"
    assert message["To"] == "ann@example.com" and message["Subject"] == "Points for Ann"
    code, output = run("preview", "people.csv", "-t", "news.mjml", cwd=folder)
    assert code == 0 and "plain text: news.txt.j2 (beside the template)" in output, output
    assert re.search(r"row 1 · ann@example.com · [0-9.]+ KiB, of which HTML [0-9.]+ KiB", output)
    (folder / "news.txt.j2").unlink()
    code, output = run("check", "people.csv", "-t", "news.mjml", cwd=folder)
    assert "text part: made from the HTML part" in output


def test_a_missing_or_refused_image_is_a_check_error(tmp_path: Path) -> None:
    folder = folder_with_images(tmp_path)
    (folder / "people.csv").write_text(
        "email,name,photo\nann@example.com,Ann,logo.png\nbob@example.com,Bob,gone.png\n"
    )
    (folder / "p.html").write_text('From: a@example.com\n\n<img src="{{ photo }}" alt="photo">\n')
    code, output = run("check", "people.csv", "-t", "p.html", cwd=folder)
    assert code == 2 and "1 invalid row" in output
    assert re.search(r"row 2 .*photo.*the image 'gone.png' not found", output), output
    (folder / "p.html").write_text('From: a@example.com\n\n<img src="../secret.png"><img src="/etc/x.png">\n')
    code, output = run("check", "people.csv", "-t", "p.html", cwd=folder)
    assert code == 2 and "p.html: the image '../secret.png': '..' is refused" in output, output


def test_an_image_file_is_read_once_a_run(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    folder = folder_with_images(tmp_path)
    reads: list[Path] = []
    read_file = compose._read_file

    def counted(written: str, path: Path, max_bytes: int, what: str = "attachment") -> bytes:
        reads.append(path)
        return read_file(written, path, max_bytes, what)

    monkeypatch.setattr(compose, "_read_file", counted)
    template = Template(folder / "news.html")
    messages = [template.compose(person(f"P{i}", f"p{i}@example.com", i)).parsed() for i in range(1, 6)]
    assert reads == [(folder / "img" / "logo.png").resolve()]
    assert all(m.get_body(("html",)) is not None for m in messages)


def test_check_warns_of_an_html_part_gmail_clips(tmp_path: Path) -> None:
    folder = folder_with_images(tmp_path)
    (folder / "big.html").write_text(
        "From: a@example.com\n\n<p>{{ name }}</p>" + "<p>filler text</p>\n" * 7000
    )
    code, output = run("check", "people.csv", "-t", "big.html", cwd=folder)
    assert code == 0
    assert "2 message(s) have an HTML part over 102 KB (the first, row 1," in output


def test_plain_text_of_html() -> None:
    text = html_to_text(
        "<head><title>T</title><style>p{}</style></head><h2>Books</h2><p>Read <a href='https://x.org/a'>this</a>"
        ", or <a href='https://x.org/b'>https://x.org/b</a> or <a href='mailto:a@b.org'>a@b.org</a>"
        " or <a href='#top'>top</a>.</p><ol><li>one</li><li>two<ul><li>inner</li></ul></li></ol>"
        "<blockquote><p>quoted</p></blockquote><p>a<br>b</p>"
        f"<p>{'word ' * 30}<a href='{LONG_URL}'>end</a></p>"
    )
    assert text.startswith(
        "Books\n-----\n\nRead this (https://x.org/a), or https://x.org/b or a@b.org or top.\n"
    )
    assert "1. one\n2. two\n   - inner\n" in text
    assert "> quoted\n" in text and "\na\nb\n" in text
    assert f"({LONG_URL})" in text.splitlines()
    assert all(len(line) <= 76 for line in text.splitlines() if "https://" not in line)


def test_no_gpl_runtime_dependency_and_a_licence() -> None:
    assert (ROOT / "LICENSE").read_text().startswith("MIT License")
    pyproject = (ROOT / "pyproject.toml").read_text()
    assert 'license-files = ["LICENSE"]' in pyproject and "html2text" not in pyproject
    seen: set[str] = set()
    todo = ["mailblast"]
    while todo:
        name = todo.pop()
        if name in seen:
            continue
        seen.add(name)
        try:
            dist = importlib.metadata.distribution(name)
        except importlib.metadata.PackageNotFoundError:
            try:
                dist = importlib.metadata.distribution(name.replace("-", "_"))
            except importlib.metadata.PackageNotFoundError:
                continue  # not for this Python or platform (a marker): not installed, so not run
        meta = dist.metadata
        licence = " ".join(
            [meta.get("License") or "", meta.get("License-Expression") or "", *meta.get_all("Classifier", [])]
        )
        licence_files = [f for f in dist.files or [] if re.search(r"LICEN[CS]E|COPYING", f.name, re.I)]
        texts = " ".join(f.read_text() or "" for f in licence_files if f.locate().is_file())
        assert not re.search(r"(?<![LA])GPL", licence), (name, licence)
        assert "GNU GENERAL PUBLIC LICENSE" not in texts.upper().replace("LESSER ", "L "), name
        for requirement in dist.requires or []:
            if "extra ==" in requirement:
                continue  # test tools and optional extras are not installed with mailblast
            todo.append(re.split(r"[\s<>=!~;\[(]", requirement, maxsplit=1)[0].lower())
    assert {"css-inline", "mrml", "jinja2"} <= seen and "html2text" not in seen


def test_markdown_images_written_out_or_made_by_jinja(tmp_path: Path) -> None:
    folder = folder_with_images(tmp_path)
    (folder / "logö.png").write_bytes(PNG + b"o")
    (folder / "my logo.png").write_bytes(PNG + b"m")
    (folder / "m.md").write_text(
        'From: a@example.com\n\n![o](logö.png) ![m](my%20logo.png "title") ![j]({{ "img/" + "logo.png" }})\n'
    )
    message = Template(folder / "m.md").compose(person()).parsed()
    cids = re.findall(r'src="cid:([^"]+)"', message.get_body(("html",)).get_content())  # type: ignore[union-attr]
    parts = {p["Content-ID"].strip("<>"): p.get_content() for p in message.walk() if p["Content-ID"]}
    assert len(cids) == 3 and set(cids) == set(parts)
    assert sorted(parts.values()) == sorted([PNG, PNG + b"o", PNG + b"m"])


def test_any_html_gives_text_and_a_link_stays_whole() -> None:
    from hypothesis import given, settings
    from hypothesis import strategies as st

    path = st.text(st.sampled_from("abcdefghij-_./?=&%~"), min_size=1, max_size=200)
    prose = st.characters(blacklist_categories=("Cs",), blacklist_characters="<&")  # text, not markup
    words = st.lists(st.text(prose, max_size=30), max_size=40)

    @settings(max_examples=150, deadline=None)
    @given(before=words, after=words, path=path, junk=st.text(max_size=200))
    def whole(before: list[str], after: list[str], path: str, junk: str) -> None:
        html_to_text(junk)  # anything at all: text, never an exception
        url = f"https://example.com/{path}"
        escaped = url.replace("&", "&amp;")
        text = html_to_text(
            f"<p>{' '.join(before)}<ul><li><a href='{escaped}'>link</a></li></ul>{' '.join(after)}</p>"
        )
        assert any(url in line for line in text.splitlines()), text

    whole()

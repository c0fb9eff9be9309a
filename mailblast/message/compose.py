"""Compose: render one recipient's message from the template, as bytes ready to send.

A template is one Jinja file shaped like an email: a block of headers, a blank
line, then the body. The two parts are compiled apart so that a value from the
CSV stays data: it can never add a header, a recipient or a file (see headers.py
for the header block, and the attachment checks below).
"""

from __future__ import annotations

import binascii
import email
import hashlib
import mimetypes
import os
import re
import sqlite3
import stat
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from email import policy
from email.charset import BASE64, Charset
from email.encoders import encode_base64
from email.header import Header
from email.message import EmailMessage, Message
from email.mime.base import MIMEBase
from email.mime.multipart import MIMEMultipart
from email.mime.nonmultipart import MIMENonMultipart
from email.policy import Compat32
from email.utils import format_datetime, formataddr, quote
from functools import lru_cache, partial
from html import unescape
from pathlib import Path
from typing import TYPE_CHECKING, Any, NamedTuple, TypeVar
from urllib.parse import unquote

import jinja2
import jinja2.meta
from email_validator import EmailNotValidError, validate_email
from jinja2.sandbox import SecurityError
from markdown_it import MarkdownIt

from mailblast.errors import ConfigError, TemplateError, did_you_mean
from mailblast.message import headers as hdr
from mailblast.message import htmlbody, verp
from mailblast.message import unsubscribe as unsub
from mailblast.message.plaintext import html_to_text
from mailblast.message.recipients import Recipient, RecipientsFile, RowProblem, RowResult
from mailblast.message.sandbox import RenderLimit, make_environment, render_bounded

if TYPE_CHECKING:
    from mailblast.message.dkim_sign import DkimKey

ADDRESS_HEADERS = ("from", "to", "cc", "bcc", "reply-to")
SINGLE_HEADERS = {"from", "to", "cc", "bcc", "reply-to", "subject"}
RESERVED_HEADERS = {
    "date": "mailblast sets Date when the message is made",
    "message-id": "mailblast sets a Message-ID that stays the same when a row is sent again",
    "mime-version": "mailblast builds the MIME structure from the template's file type",
    "content-type": "mailblast picks the content type from the template's file name",
    "content-transfer-encoding": "mailblast picks the transfer encoding",
}
BODY_KINDS = {
    ".txt": "text",
    ".text": "text",
    ".html": "html",
    ".htm": "html",
    ".md": "markdown",
    ".markdown": "markdown",
    ".mjml": "mjml",
}
TEXT_COMPANIONS = (".txt.j2", ".txt")  # news.html.j2's own text part: news.txt.j2 beside it
# The usual order, as careful senders write it; headers not named here follow the List-* ones.
HEADER_ORDER = {
    name: rank for rank, name in enumerate(["from", "to", "cc", "reply-to", "subject", "date", "message-id"])
}
GMAIL_CLIPS_AT = 102 * 1024  # Gmail shows "[Message clipped]" past this much HTML
# Markdown shorter than this cannot make that much HTML: a table cell's "x |" (3 characters) grows
# the most, into <td style="..."> with the default style inlined (some 60).
MARKDOWN_SHORT = GMAIL_CLIPS_AT // 32
SEVEN_BIT_LINE = 998  # RFC 5322: the longest line, in characters, that needs no encoding
# The legacy (compat32) email API: the same MIME, several times faster to build than EmailMessage.
# Base64 encoded words: binascii does them in C, where "shortest" measures both ways in Python.
UTF8 = Charset("utf-8")
UTF8.header_encoding = BASE64


class _WirePolicy(Compat32):
    """compat32 with CRLF that skips re-folding short ASCII headers, the common case.

    A value that looks like an RFC 2047 encoded word ("=?utf-8?q?...?=") is encoded itself,
    so that a mail client shows the text the row held, not what it would decode to.
    """

    def fold_binary(self, name: str, value: Any) -> bytes:
        if isinstance(value, str):
            lookalike = "=?" in value and name.lower() not in ADDRESS_HEADERS  # ours are encoded already
            if value.isascii() and not lookalike and len(name) + len(value) + 2 <= 78:
                return f"{name}: {value}{self.linesep}".encode("ascii")
            if name.lower() == "list-unsubscribe":  # ASCII by construction: one <link> a line
                return f"{name}: {value.replace(', <', f',{self.linesep} <')}{self.linesep}".encode("ascii")
            if not value.isascii() or lookalike or hdr.too_long_to_fold(name, value):
                value = Header(value, UTF8, header_name=name)
        return super().fold_binary(name, value)


WIRE = _WirePolicy(linesep="\r\n")


class _AsWritten(str):
    """A header value for an SMTPUTF8 message that holds an encoded-word lookalike. That policy
    would decode "=?utf-8?q?x?=" and write "x"; this writes the value encoded, to read as written."""

    name: str

    def __new__(cls, name: str, value: str) -> _AsWritten:
        self = super().__new__(cls, value)
        self.name = name
        return self

    def fold(self, *, policy: Any) -> str:
        text = str(self)
        if self.name.lower() in ADDRESS_HEADERS:  # address values come encoded already
            return hdr.fold_words(self.name, text, policy.linesep)
        text = Header(text, UTF8, header_name=self.name).encode(linesep=policy.linesep)
        return f"{self.name}: {text}{policy.linesep}"


T = TypeVar("T")
# Small and safe for mail clients: readable line length and spacing, nothing that needs a network.
MARKDOWN_STYLE = (
    "<style>body{font-family:-apple-system,'Segoe UI',Helvetica,Arial,sans-serif;font-size:16px;"
    "line-height:1.5;color:#222;max-width:40em;margin:0 auto;padding:1em}"
    "a{color:#0b57d0}img{max-width:100%}table{border-collapse:collapse}"
    "th,td{border:1px solid #ccc;padding:.3em .6em}blockquote{color:#555;border-left:3px solid #ccc;"
    "margin-left:0;padding-left:1em}</style>"
)
JINJA_SUFFIXES = (".j2", ".jinja", ".jinja2")
DEFAULT_MAX_ATTACHMENTS_MB = 10.0  # all of one message's attachments together
MAX_HEADER_CHARS = 100_000  # one row's rendered header block
MAX_BODY_CHARS = 10_000_000  # one row's rendered body
SYNTAX_HINT = "fix the template; Jinja's syntax is described at https://jinja.palletsprojects.com/templates/"


class RowError(Exception):
    """This row cannot become a message; ``column`` names the CSV column when one is to blame.

    ``template`` names the template file when the text at fault is written there (or in the
    config), not taken from the row: every row fails the same way, so it is reported once.
    ``more`` holds the row's other problems, found in the same pass: check names them all at once.
    """

    def __init__(
        self,
        message: str,
        column: str | None = None,
        template: str | None = None,
        more: tuple[RowError, ...] = (),
    ) -> None:
        super().__init__(message, column, template, more)  # all in args, so it survives pickling
        self.message = message
        self.column = column
        self.template = template
        self.more = more

    @classmethod
    def of(cls, found: list[RowError]) -> RowError:
        """One error for all of ``found`` (the first, with the others in ``more``), each said once."""
        unique = list({(e.message, e.column, e.template): e for e in found}.values())
        first = unique[0]
        return cls(first.message, first.column, first.template, tuple(unique[1:]))

    def each(self) -> list[RowError]:
        """This problem and the others found with it."""
        return [self, *self.more]

    def __str__(self) -> str:
        return self.message


@dataclass(frozen=True)
class Attachment:
    filename: str
    content_type: str
    size: int


@dataclass
class Rendered:
    """A row's message before MIME: its checked headers, body text and attachment paths."""

    recipient: Recipient
    envelope_from: str
    envelope_to: list[str]
    headers: list[tuple[str, str]]
    body: str
    attachments: list[tuple[str, Path]]
    needs_smtputf8: bool
    digest: str  # of everything that makes the message: its Message-ID and MIME boundaries
    context: dict[str, Any] = field(default_factory=dict)  # what the body was rendered with
    html: str | None = None  # the HTML part as rendered, before styles are inlined
    text: str | None = None  # the template's own text part, when it has one beside it
    images: tuple[tuple[str, Path], ...] = ()  # to embed: (<img src> as written, the file)
    preheader: str = ""  # the hidden preview text at the top of the HTML
    dropped: tuple[str, ...] = ()  # suppressed addresses taken out of To, Cc and Bcc


@dataclass(frozen=True)
class CheckedRow:
    """A row that can become a message: its sender, and the size of its HTML part."""

    sender: str
    html_bytes: int
    dropped: tuple[str, ...] = ()  # suppressed addresses taken out of To, Cc and Bcc


@dataclass
class ComposedMessage:
    """One message, ready for the sender: the envelope and the bytes to transmit."""

    recipient: Recipient
    envelope_from: str
    envelope_to: list[str]
    data: bytes
    message_id: str
    needs_smtputf8: bool
    attachments: list[Attachment] = field(default_factory=list)
    html_bytes: int = 0  # the HTML part's size, as Gmail measures it for clipping
    dropped: tuple[str, ...] = ()  # suppressed addresses taken out of To, Cc and Bcc

    @property
    def own_address(self) -> str:
        """The row's own address as it goes in the envelope: the one whose delivery counts."""
        return _check_address(self.recipient.address)[0]

    def parsed(self) -> EmailMessage:
        """The message as a mail client reads it."""
        data = self.data.replace(b"\r\n", b"\n")
        if self.needs_smtputf8:
            return email.message_from_string(data.decode(), policy=policy.default)  # type: ignore[return-value]
        return email.message_from_bytes(data, policy=policy.default)  # type: ignore[return-value]


def body_kind(path: Path) -> str:
    name = path.name.lower()
    for suffix in JINJA_SUFFIXES:
        if name.endswith(suffix):
            name = name[: -len(suffix)]
    return BODY_KINDS.get(Path(name).suffix, "text")


@lru_cache(maxsize=4096)
def _check_address(addr_spec: str) -> tuple[str, bool]:
    """Validated address in the form to put on the wire, and whether it needs SMTPUTF8."""
    checked = validate_email(addr_spec, check_deliverability=False)
    return checked.ascii_email or checked.normalized, bool(checked.smtputf8)


def unknown_name_text(name: str, columns: list[str]) -> str:
    guess = did_you_mean(name, [*columns, "email"])
    hint = f'; did you mean "{guess}"?' if guess else ""
    return (
        f'the template uses "{name}", which is not a column of the recipients file{hint} '
        f"(the columns are: {', '.join(columns)})"
    )


class _UnknownName(jinja2.UndefinedError):
    def __init__(self, name: str, message: str | None = None) -> None:
        super().__init__(message)
        self.name = name


class _Missing(jinja2.StrictUndefined):
    """StrictUndefined that names a missing variable, so the error can be said in the user's terms."""

    __slots__ = ()

    def __init__(
        self,
        hint: str | None = None,
        obj: Any = jinja2.utils.missing,
        name: str | None = None,
        exc: type[jinja2.UndefinedError] = jinja2.UndefinedError,
    ) -> None:
        super().__init__(hint, obj, name, exc)
        if hint is None and name is not None and (obj is jinja2.utils.missing or isinstance(obj, dict)):
            self._undefined_exception = partial(_UnknownName, str(name))


_JINJA = re.compile(r"\{[{%#]")


_HEADER_LIKE = re.compile(r"[!-9;-~]+[ \t]*:|[ \t]")  # a header line, or its continuation
_ATTACHMENT_LINE = re.compile(r"^\s*attachment\s*:", re.IGNORECASE | re.MULTILINE)


NO_SENDER = (
    "the message has no sender: add a From: header to the template, "
    "or set from in mailblast.toml (or pass --from)"
)


def _sets_reserved(name: str) -> str:
    return f"the template sets {name}, but {RESERVED_HEADERS[name.lower()]}"


def _sets_twice(name: str) -> str:
    return f"the template sets {name} twice"


def _literal_headers(source: str) -> frozenset[str]:
    """Names of the headers written as plain text: their values are the template's on every row."""
    literal, dynamic = set(), set()
    name = None
    for line in hdr.HEADER_LINES.split(source):
        if line[:1] in (" ", "\t") and name is not None:  # a continuation line
            if _JINJA.search(line):
                dynamic.add(name)
            continue
        head, sep, _ = line.partition(":")
        name = head.strip().lower() if sep and not _JINJA.search(head) else None
        if name is not None:
            (dynamic if _JINJA.search(line) else literal).add(name)
    return frozenset(literal - dynamic)


def check_address_header(name: str, value: str) -> None:
    """Raise RowError unless ``value`` is a valid address list for header ``name``."""
    try:
        _addresses(name, value, checked="")
    except hdr.BadValue as e:
        raise RowError(e.message) from None


class Template:
    """A compiled message template."""

    def __init__(
        self,
        path: Path | str,
        *,
        default_from: str | None = None,
        attachments_dir: Path | str | None = None,
        max_attachments_mb: float = DEFAULT_MAX_ATTACHMENTS_MB,
        sandbox: bool = True,
        unsubscribe_url: str | None = None,
        unsubscribe_mailto: str | None = None,
        dkim: DkimKey | None = None,
        inline_css: bool = True,
        list_id: str | None = None,
        feedback_id: str | None = None,
        kept: Mapping[Path, str] | None = None,
        test_to: str | None = None,
        signing: unsub.Signing | None = None,
        return_path: str | None = None,
        suppressed: Path | None = None,
    ) -> None:
        self.path = Path(path)
        self.name = str(path)
        self.kind = body_kind(self.path)
        self.default_from = default_from
        # what a worker process needs to compile the same template again
        self.options: dict[str, Any] = {
            "default_from": default_from,
            "attachments_dir": attachments_dir,
            "max_attachments_mb": max_attachments_mb,
            "sandbox": sandbox,
            "unsubscribe_url": unsubscribe_url,
            "unsubscribe_mailto": unsubscribe_mailto,
            "dkim": dkim,
            "inline_css": inline_css,
            "list_id": list_id,
            "feedback_id": feedback_id,
            "kept": kept,
            "test_to": test_to,
            "signing": signing,
            "return_path": return_path,
            "suppressed": suppressed,
        }
        # what mailblast.toml adds unless the template sets it
        self._list_headers = [(n, v) for n, v in (("List-Id", list_id), ("Feedback-ID", feedback_id)) if v]
        self.test_to = test_to  # --test-to: the copies' unsubscribe links must not reach the recipient
        self.dkim = dkim
        # files mailblast keeps for itself (resolved path -> what it is): never attached
        self.kept = {p.resolve(): what for p, what in (kept or {}).items()}
        if dkim is not None:
            self.kept.setdefault(dkim.path.resolve(), "the DKIM private key")
        self.signing = signing  # signs {{ unsubscribe_token }} and the VERP return path
        self.return_path = return_path
        # the suppression list's SQLite file (suppress.py): a Cc or Bcc on it is dropped
        self._suppressed = _SuppressedAddresses(suppressed) if suppressed is not None else None
        self._signer = None
        self._signing_error: type[Exception] = RowError
        if dkim is not None:
            # only then: dkimpy takes a while to import
            from mailblast.message.dkim_sign import Signer, SigningError

            self._signer = Signer(dkim)
            self._signing_error = SigningError
        self.attachments_root = _attachments_root(self.path.parent, attachments_dir)
        self.max_attachment_bytes = int(max_attachments_mb * 1_000_000)
        source = self._read()
        lines = hdr.HEADER_LINES.split(source)
        blank = next((i for i, line in enumerate(lines) if not line.strip()), None)
        if blank is None:
            raise TemplateError(
                f"{self.path}: no blank line between the headers and the body",
                "start the template with headers such as 'Subject: Hello', then a blank line, then the body",
            )
        for number, line in enumerate(lines[:blank], start=1):
            if hdr.FORBIDDEN.search(line):
                kind, code = hdr.describe_forbidden(line)
                raise TemplateError(
                    f"{self.path}, line {number}: {kind} ({code}) in a header",
                    "remove it: only tab is allowed in headers",
                )
        header_source = "\n".join(lines[:blank])
        self.source_sha = hashlib.sha256(source.encode()).hexdigest()

        def environment(**options: Any) -> jinja2.Environment:
            made = make_environment(self.path.parent, sandbox=sandbox, undefined=_Missing, **options)
            made.globals["mailbox"] = hdr.mailbox
            return made

        header_env = environment(finalize=hdr.Marker(), autoescape=False)
        body_env = environment(autoescape=self.kind in ("html", "mjml"))
        self._unsubscribe = self._compile_unsubscribe(
            header_source, sandbox, {"url": unsubscribe_url, "mailto": unsubscribe_mailto}
        )
        # a column with one of these names is reached as row["name"]
        self.builtin_names = frozenset(
            {
                "email",
                "row",
                *header_env.globals,
                *(["unsubscribe_url"] if self._unsubscribe else []),
                *(["unsubscribe_token"] if signing is not None else []),
            }
        )
        self.header_source = header_source  # as written, for check's warnings
        self.body_source = "\n".join(lines[blank + 1 :])
        self.body_line = blank + 2  # the body's first line in the file
        self._literal = _literal_headers(header_source)
        self.attaches = _ATTACHMENT_LINE.search(header_source) is not None  # some rows may attach files
        self._headers = self._compile(header_env, header_source, 0)
        self._body = self._compile(body_env, self.body_source, blank + 1)
        # Markdown's HTML part is rendered from a copy whose values cannot make links or images.
        self._body_markdown = None
        if self.kind == "markdown":
            markdown_env = environment(finalize=markdown_literal, autoescape=False)
            self._body_markdown = self._compile(markdown_env, self.body_source, blank + 1)
        # breaks: a single line break stays one ("See you soon,\nThe team"), as the author sees it
        self._markdown = MarkdownIt("commonmark", {"html": False, "breaks": True}).enable("table")
        # a body with no row values: made HTML, inlined and built once
        self._markdown_html = lru_cache(maxsize=4)(self._markdown_page)
        self._mjml_html = lru_cache(maxsize=4)(self._mjml_page)
        self._content = lru_cache(maxsize=4)(self._text_parts)
        self._final_html = lru_cache(maxsize=4)(self._inlined)
        # A Markdown body's images are the template's own (a value cannot make one): when their paths
        # are written out, they are known without rendering the Markdown, which is slow.
        self._markdown_images = None
        if self.kind == "markdown" and (literal := _literal_markdown_images(self.body_source)) is not None:
            # as markdown-it writes them in the HTML (percent-encoded), for their cid: to be found
            self._markdown_images = [self._markdown.normalizeLink(src) for src in literal]
        self._inline_css = htmlbody.CssInliner() if inline_css and self.kind != "text" else None
        self.text_companion = self._companion() if self.kind != "text" else None
        self._text_body = None
        if self.text_companion is not None:
            self._text_body = self._compile_companion(environment(autoescape=False), self.text_companion)
        self._image_paths: dict[str, Path] = {}  # an <img src> as written -> the file, checked
        self._image_parts: dict[Path, tuple[str, Message, bytes]] = {}  # read once a run

    def _compile_unsubscribe(
        self, header_source: str, sandbox: bool, written: dict[str, str | None]
    ) -> list[tuple[str, jinja2.Template]]:
        """[unsubscribe] url and mailto, compiled where the template is, with row values URL-encoded."""
        given = {key: text for key, text in written.items() if text is not None}
        if not given:
            return []
        if unsub.own_headers(header_source):
            raise ConfigError(
                f"{self.path} sets List-Unsubscribe itself, and mailblast.toml has [unsubscribe] too",
                "keep one: remove the header from the template (the body can use {{ unsubscribe_url }})",
            )
        env = make_environment(
            self.path.parent,
            sandbox=sandbox,
            undefined=_Missing,
            finalize=unsub.escape_value,
            autoescape=False,
        )
        env.filters["urlencode"] = unsub.urlencode_once
        compiled = []
        for key, text in given.items():
            problem = unsub.check_written(key, text)
            if problem is not None:
                raise ConfigError(problem, "fix [unsubscribe] in mailblast.toml")
            try:
                compiled.append((key, env.from_string(text.strip())))
            except jinja2.TemplateSyntaxError as e:
                raise ConfigError(f"[unsubscribe] {key}: {e.message}", SYNTAX_HINT) from None
        return compiled

    def _unsubscribe_links(self, context: dict[str, Any], found: list[RowError]) -> dict[str, str]:
        """This row's url and mailto, rendered and checked; their faults (the config's) go to ``found``."""
        links = {}
        if self.test_to is not None:
            context = unsub.test_copy_context(context, self.test_to)
        for key, compiled in self._unsubscribe:
            try:
                text = self._render(compiled, context, MAX_HEADER_CHARS).strip()
                links[key] = unsub.check_link(key, unsub.mailto_link(text) if key == "mailto" else text)
            except RowError as e:
                found.append(RowError(e.message, template=f"[unsubscribe] {key}"))
            except unsub.LinkTooLong as e:
                fields = context["row"]
                found.append(RowError(str(e), max(fields, key=lambda c: len(fields[c]), default=None)))
            except unsub.BadLink as e:
                found.append(RowError(str(e), template=f"[unsubscribe] {key}"))
        return links

    def _test_copy_unsubscribe(
        self, headers: list[tuple[str, str]], context: dict[str, Any], test_to: str
    ) -> list[tuple[str, str]]:
        """A --test-to copy's List-Unsubscribe headers as the template writes them, rendered with the
        test copy's values (as [unsubscribe]'s links are), so that the tester's click can never
        unsubscribe the real recipient; every other header stays the recipient's."""
        copy_text = self._render(self._headers, unsub.test_copy_context(context, test_to), MAX_HEADER_CHARS)
        harmless = [(n, v) for n, v in self._parse_headers(copy_text) if n.lower() in unsub.HEADER_NAMES]
        at = next(i for i, (name, _) in enumerate(headers) if name.lower() in unsub.HEADER_NAMES)
        kept = [(n, v) for n, v in headers if n.lower() not in unsub.HEADER_NAMES]
        return kept[:at] + harmless + kept[at:]

    def written_faults(self) -> list[str]:
        """The faults its headers show as written, whatever the row (a reserved header, one set
        twice, no sender), in the words a row's error uses: check names those no row reached (in a
        branch no row took, or behind a fault that stops rendering)."""
        faults, seen = [], set()
        for line in hdr.HEADER_LINES.split(self.header_source):
            head, sep, _ = line.partition(":")
            if not sep or line[:1] in (" ", "\t") or _JINJA.search(head):
                continue
            name = head.strip()
            key = name.lower()
            if key in RESERVED_HEADERS:
                faults.append(_sets_reserved(name))
            elif key in SINGLE_HEADERS and key in seen:
                faults.append(_sets_twice(name))
            seen.add(key)
        if not self.default_from and "from" not in self.header_source.lower():
            faults.append(NO_SENDER)
        return faults

    def names_not_in(self, header: tuple[str, ...]) -> list[str]:
        """The names the template reads that are neither a column nor built in. Rendering a row
        stops at the first; check names every one at once."""
        env = jinja2.Environment()
        names: list[str] = []
        for source in (self.header_source, self.body_source):
            try:
                names += sorted(jinja2.meta.find_undeclared_variables(env.parse(source)))
            except jinja2.TemplateSyntaxError:  # compiled already: cannot happen
                return []
        known = {*header, *self.builtin_names}
        return [name for name in dict.fromkeys(names) if name not in known]

    def shadowed_columns(self, header: tuple[str, ...], address_column: str) -> list[str]:
        """Columns whose name is a built-in one, so that only row["..."] reaches them."""
        return [c for c in header if c in self.builtin_names and not (c == "email" == address_column)]

    def _read(self) -> str:
        try:
            source = self.path.read_text(encoding="utf-8")
        except FileNotFoundError:
            raise TemplateError(f"{self.path}: no such template", "check the --template path") from None
        except IsADirectoryError:
            raise TemplateError(f"{self.path}: is a folder, not a template file") from None
        except UnicodeDecodeError:
            raise TemplateError(f"{self.path}: the template is not UTF-8 text", "save it as UTF-8") from None
        if not source.strip():
            raise TemplateError(f"{self.path}: the template is empty", "see the template format in README.md")
        return source

    def _compile(self, env: jinja2.Environment, source: str, line_offset: int) -> jinja2.Template:
        try:
            return env.from_string(source)
        except jinja2.TemplateSyntaxError as e:
            line = (e.lineno or 1) + line_offset if e.name is None else e.lineno
            where = f"{self.path}, line {line}" if e.name is None else f"{e.name}, line {e.lineno}"
            raise TemplateError(f"{where}: {e.message}", SYNTAX_HINT) from None

    def _companion(self) -> Path | None:
        """news.txt.j2 (or news.txt) beside news.html.j2, news.md or news.mjml: its own text part."""
        name = self.path.name
        for suffix in JINJA_SUFFIXES:
            if name.lower().endswith(suffix):
                name = name[: -len(suffix)]
        stem = name[: -len(Path(name).suffix)] if Path(name).suffix else name
        for suffix in TEXT_COMPANIONS:
            candidate = self.path.with_name(stem + suffix)
            if candidate.is_file():
                return candidate
        return None

    def _compile_companion(self, env: jinja2.Environment, path: Path) -> jinja2.Template:
        """The text part's template; a header block it has is the main template's to give: ignored."""
        try:
            source = path.read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as e:
            raise TemplateError(f"{path}: the text part cannot be read: {e}", "save it as UTF-8") from None
        lines = hdr.HEADER_LINES.split(source)
        skip = 0
        blank = next((i for i, line in enumerate(lines) if not line.strip()), None)
        if blank and all(_HEADER_LIKE.match(line) for line in lines[:blank]):
            skip = blank + 1
        try:
            return env.from_string("\n".join(lines[skip:]))
        except jinja2.TemplateSyntaxError as e:
            raise TemplateError(f"{path}, line {(e.lineno or 1) + skip}: {e.message}", SYNTAX_HINT) from None

    @property
    def text_part(self) -> str:
        """Where the plain-text part comes from, to say in check and preview."""
        if self.kind == "text":
            return "the template itself"
        if self.text_companion is not None:
            return f"{self.text_companion} (beside the template)"
        return "made from the HTML part"

    def _markdown_page(self, markdown: str) -> str:
        return (
            f'<!DOCTYPE html>\n<html><head><meta charset="utf-8">{MARKDOWN_STYLE}</head><body>\n'
            f"{self._markdown.render(markdown)}</body></html>\n"
        )

    def _mjml_page(self, source: str) -> str:
        try:
            return htmlbody.mjml_to_html(source)
        except htmlbody.MjmlError as e:
            raise RowError(f"the MJML cannot be made HTML: {e}", template=self.name) from None

    def compose(
        self, recipient: Recipient, *, date: datetime | None = None, campaign: str = ""
    ) -> ComposedMessage:
        """Render and build one recipient's message; raises RowError when the row cannot become one.

        ``campaign`` identifies the campaign: its messages' Message-IDs are its own."""
        return self.build(self.render(recipient, campaign), date=date, campaign=campaign)

    def render(self, recipient: Recipient, campaign: str = "") -> Rendered:
        """Everything about a row that can be wrong, checked without building the MIME message;
        ``campaign`` (its identity) is what {{ unsubscribe_token }} and VERP tokens name."""
        found: list[RowError] = []  # every problem of the row, not only the first
        try:
            rendered = self._render_row(recipient, campaign, found)
        except (RowError, hdr.BadValue) as e:
            found.append(self._row_error(e, recipient.fields))
        if found:
            raise RowError.of(found)
        return rendered

    @staticmethod
    def _row_error(error: RowError | hdr.BadValue, fields: dict[str, str]) -> RowError:
        """A row's problem as a RowError, with the column its value came from."""
        if isinstance(error, hdr.BadValue):
            return RowError(error.message, _column_of(fields, error.value))
        return error

    def _collect(
        self, found: list[RowError], fields: dict[str, str], key: str, check: Callable[..., T], *args: Any
    ) -> T | None:
        """``self._checked(key, check, *args)``, or None with its problem added to ``found``: the row
        goes on being checked."""
        try:
            return self._checked(key, check, *args)
        except (RowError, hdr.BadValue) as e:
            found.append(self._row_error(e, fields))
            return None

    def _signing_for(self, campaign: str) -> unsub.Signing | None:
        if self.signing is None or not campaign:
            return self.signing
        return replace(self.signing, campaign=unsub.campaign_tag(campaign))

    def _render_row(self, recipient: Recipient, campaign: str, found: list[RowError]) -> Rendered:
        """The row rendered and checked; a problem that leaves the rest checkable goes to ``found``
        (each address header, attachment, image and unsubscribe link), any other is raised."""
        context = dict(recipient.fields)
        if not self.builtin_names.isdisjoint(context):
            for name in self.builtin_names:
                context.pop(name, None)
        context["email"] = recipient.address
        context["row"] = recipient.fields
        if (signing := self._signing_for(campaign)) is not None:
            context["unsubscribe_token"] = unsub.unsubscribe_token(signing, recipient.address)
        links = self._unsubscribe_links(context, found) if self._unsubscribe else {}
        if self._unsubscribe:  # the footer's link is the header's (none when both are at fault)
            context["unsubscribe_url"] = links.get("url") or links.get("mailto", "")
        header_text = self._render(self._headers, context, MAX_HEADER_CHARS)
        body = self._render(self._body, context, MAX_BODY_CHARS)
        headers = self._parse_headers(header_text)
        if self.test_to is not None and any(name.lower() in unsub.HEADER_NAMES for name, _ in headers):
            headers = self._test_copy_unsubscribe(headers, context, self.test_to)
        names = {name.lower() for name, _ in headers}
        if "to" not in names:
            headers.insert(0, ("To", recipient.address))
        if "from" not in names:
            if not self.default_from:
                found.append(RowError(NO_SENDER, template=self.name))
            else:
                headers.insert(0, ("From", self.default_from))
        envelope_from = ""
        envelope_to: list[str] = []
        attachments: list[tuple[str, Path]] = []
        attached_bytes = 0
        needs_utf8 = recipient.needs_smtputf8
        preheader = ""
        seen: set[str] = set()
        out: list[tuple[str, str]] = []
        dropped: list[str] = []
        fields = recipient.fields
        for name, marked in headers:
            key = name.lower()
            if key in RESERVED_HEADERS:
                found.append(RowError(_sets_reserved(name), template=self.name))
                continue
            if key in SINGLE_HEADERS and key in seen:
                found.append(RowError(_sets_twice(name), template=self.name))
                continue
            seen.add(key)
            if key in ADDRESS_HEADERS:
                checked = self._collect(found, fields, key, _addresses, name, marked, recipient.address)
                if checked is None:
                    continue
                addresses, utf8 = checked
                if key in ("to", "cc", "bcc") and self._suppressed is not None:
                    addresses = self._suppressed.without(addresses, recipient.address, name, dropped)
                needs_utf8 |= utf8
                if key == "from":
                    envelope_from = addresses[0][1]
                if key in ("to", "cc", "bcc"):
                    envelope_to.extend(addr for _, addr in addresses)
                if key != "bcc" and addresses:
                    out.append((name, ", ".join(_format_address(*a) for a in addresses)))
                continue
            value = hdr.unmark(marked).strip()
            try:
                hdr.check_value(value)  # also what a {% filter %} block made of the template's own text
            except hdr.BadValue as e:
                found.append(self._row_error(e, fields))
                continue
            if not value:
                continue
            if key == "preheader":  # not a header: the hidden preview text at the top of the HTML
                preheader = value
            elif key == "attachment":
                file = self._collect(found, fields, key, self._attachment_path, value)
                if file is None:
                    continue
                path, size = file
                attached_bytes += size
                if attached_bytes > self.max_attachment_bytes >= attached_bytes - size:  # said once
                    found.append(
                        RowError(
                            f"the attachments add up to {attached_bytes / 1e6:.1f} MB, over the limit of "
                            f"{self.max_attachment_bytes / 1e6:g} MB a message (attachments_max_mb)",
                            _column_of(fields, value),
                        )
                    )
                attachments.append((value, path))
            else:
                out.append((name, value))
        if not envelope_to and not found:  # else a bad To is the reason, already said
            raise RowError("the message has no recipient: To, Cc and Bcc are all empty")
        out.extend(unsub.headers(links.get("url"), links.get("mailto")))
        out.extend((name, value) for name, value in self._list_headers if name.lower() not in seen)
        # A Markdown body is made HTML when the message is built (the check pass stays fast), unless
        # its images can only be known from the HTML.
        if self.kind == "markdown" and self._markdown_images is not None:
            html, images = None, self._images_of(self._markdown_images, fields, found)
        else:
            html = self._html_of(body, context)
            images = [] if html is None else self._images_of(htmlbody.image_sources(html), fields, found)
        text = None if self._text_body is None else self._render(self._text_body, context, MAX_BODY_CHARS)
        digest = hashlib.sha256(
            "\0".join(
                [*envelope_to, hdr.unmark(header_text), body, text or "", *(str(p) for _, p in attachments)]
            ).encode()
        ).hexdigest()[:32]
        return Rendered(
            recipient,
            envelope_from,
            envelope_to,
            out,
            body,
            attachments,
            needs_utf8,
            digest,
            context,
            html=html,
            text=text,
            images=tuple(images),
            preheader=preheader,
            dropped=tuple(dropped),
        )

    def _html_of(self, body: str, context: dict[str, Any]) -> str | None:
        """The HTML part as rendered, before styles are inlined (None for a text message)."""
        if self.kind == "markdown":
            assert self._body_markdown is not None  # rendered again, its values made literal
            return self._markdown_html(self._render(self._body_markdown, context, MAX_BODY_CHARS))
        if self.kind == "mjml":
            return self._mjml_html(body)
        return body if self.kind == "html" else None

    def _images_of(
        self, sources: list[str], fields: dict[str, str], found: list[RowError]
    ) -> list[tuple[str, Path]]:
        """The images to embed, each (src as written, file); a missing or refused one stops the row
        (its problem goes to ``found``), by the attachment rules: only inside the template's folder
        or attachments_dir."""
        images = []
        for src in sources:
            path = self._image_paths.get(src)
            if path is None:
                written = unquote(src)  # a URL: "my%20logo.png" is the file my logo.png
                try:
                    path, _ = self._attachment_path(written)
                except hdr.BadValue as e:
                    message = e.message.replace(f"attachment {written!r}", f"the image {written!r}", 1)
                    if written in self.body_source:  # written in the template: every row fails the same
                        found.append(RowError(message, template=self.name))
                    else:
                        found.append(RowError(message, _column_of(fields, written)))
                    continue
                self._image_paths[src] = path
            images.append((src, path))
        return images

    def _attachment_path(self, written: str) -> tuple[Path, int]:
        """The file an Attachment: header names, and its size; only inside the attachments root."""
        root = self.attachments_root
        relative = Path(written)
        if relative.is_absolute() or written.startswith("~"):
            raise hdr.BadValue(
                f"attachment {written!r}: an absolute path is refused; paths are taken from {root}", written
            )
        if ".." in relative.parts:
            raise hdr.BadValue(
                f"attachment {written!r}: '..' is refused; paths are taken from {root}", written
            )
        path = (root / relative).resolve()
        if not path.is_relative_to(root):
            raise hdr.BadValue(f"attachment {written!r} leads outside {root} (through a symlink)", written)
        try:
            info = path.stat()
        except FileNotFoundError:
            raise hdr.BadValue(f"attachment {written!r} not found (looked for {path})", written) from None
        except OSError as e:
            raise hdr.BadValue(f"attachment {written!r} cannot be read: {e.strerror}", written) from None
        if stat.S_ISDIR(info.st_mode):
            raise hdr.BadValue(f"attachment {written!r} is a folder, not a file", written)
        if not stat.S_ISREG(info.st_mode):
            raise hdr.BadValue(f"attachment {written!r} is not a regular file (a device or a pipe?)", written)
        what = kept_for_mailblast(path, self.kept, info)
        if what is not None:
            raise hdr.BadValue(f"attachment {written!r} is {what}: mailblast never mails it", written)
        return path, info.st_size

    def _checked(self, key: str, check: Callable[..., T], *args: Any, **kwargs: Any) -> T:
        """``check(...)``; its error is the template's fault when the header is written out in it."""
        try:
            return check(*args, **kwargs)
        except (RowError, hdr.BadValue) as e:
            if key in self._literal:
                raise RowError(e.message, None, self.name) from None
            raise

    def build(
        self, rendered: Rendered, *, date: datetime | None = None, campaign: str = ""
    ) -> ComposedMessage:
        """The message's bytes, as they go on the wire."""
        digest = rendered.digest
        domain = rendered.envelope_from.rpartition("@")[2] or "mailblast.invalid"
        message_id = f"<{message_id_of(digest, campaign)}@{domain}>"
        headers = in_order(
            [
                *rendered.headers,
                ("Date", format_datetime(date or datetime.now(UTC).astimezone())),
                ("Message-ID", message_id),
            ]
        )
        parts: list[Attachment] = []
        content = self.content(rendered)
        if rendered.attachments or rendered.needs_smtputf8:
            data, parts = self._build_mime(rendered, content, headers)
        else:
            data = self._build_wire(rendered, content, headers)
        if self._signer is not None:
            try:
                data = self._signer.sign(data)
            except self._signing_error as e:
                raise RowError(str(e)) from None
        envelope_from = rendered.envelope_from
        if self.return_path is not None:  # VERP: bounces come back to an address naming the row
            signing = self._signing_for(campaign)
            envelope_from = verp.return_path(self.return_path, signing, rendered.recipient.address)
        return ComposedMessage(
            rendered.recipient,
            envelope_from,
            rendered.envelope_to,
            data,
            message_id,
            rendered.needs_smtputf8,
            parts,
            0 if content.html is None else len(content.html.encode()),
            rendered.dropped,
        )

    def check(self, recipient: Recipient) -> CheckedRow:
        """What the check pass needs of a row: everything checked, as for sending, but no MIME built
        and no text part made. The HTML part is made and measured (its images read, so that one that
        cannot be stops the row), unless it is Markdown too short to reach Gmail's limit even with
        its styles inlined; then its images were only found where the attachment rules allow."""
        rendered = self.render(recipient)
        if self.kind == "text" or (rendered.html is None and len(rendered.body) < MARKDOWN_SHORT):
            return CheckedRow(rendered.envelope_from, 0, rendered.dropped)
        page = self._final_html(self.page(rendered), rendered.preheader, rendered.images)
        return CheckedRow(rendered.envelope_from, len(page.encode()), rendered.dropped)

    def page(self, rendered: Rendered) -> str | None:
        """The row's HTML as rendered, before styles are inlined (None for a text message)."""
        if rendered.html is None and self.kind == "markdown":
            rendered.html = self._html_of(rendered.body, rendered.context)
        return rendered.html

    def content(self, rendered: Rendered) -> Content:
        """The row's text part and HTML part (None for a text message), as they are sent."""
        html = self.page(rendered)
        if html is None:
            return self._content(None, rendered.body, "", ())
        return self._content(html, rendered.text, rendered.preheader, rendered.images)

    def _build_mime(
        self, rendered: Rendered, content: Content, headers: list[tuple[str, str]]
    ) -> tuple[bytes, list[Attachment]]:
        """Built with the email package: any message (attachments, SMTPUTF8)."""
        # A boundary with "=_" can never occur in quoted-printable or base64 content.
        msg = _text_part(content.plain, "plain")
        if content.html is not None:
            html = _text_part(content.html, "html")
            if rendered.images:
                images = [self._image(path)[1] for path in dict.fromkeys(p for _, p in rendered.images)]
                html = _multipart("related", f"=_{rendered.digest}_r", [html, *images])
            msg = _multipart("alternative", f"=_{rendered.digest}_a", [msg, html])
        parts = []
        if rendered.attachments:
            files = [
                _attachment(written, path, self.max_attachment_bytes)
                for written, path in rendered.attachments
            ]
            msg = _multipart("mixed", f"=_{rendered.digest}_m", [msg, *(part for part, _ in files)])
            parts = [info for _, info in files]
        mime = msg.items()  # after the message's own headers, with MIME-Version at their head
        for name in {name for name, _ in mime}:
            del msg[name]
        for name, value in [*headers, ("MIME-Version", "1.0"), *mime]:
            as_written = "=?" in value or hdr.too_long_to_fold(name, value)
            msg[name] = _AsWritten(name, value) if rendered.needs_smtputf8 and as_written else value
        return msg.as_bytes(policy=policy.SMTPUTF8 if rendered.needs_smtputf8 else WIRE), parts

    def _build_wire(self, rendered: Rendered, content: Content, headers: list[tuple[str, str]]) -> bytes:
        """The bytes _build_mime makes of a message without attachments, put together directly: the
        email package's generator costs as much as rendering, and the part headers never vary."""
        head = b"".join([*(WIRE.fold_binary(name, value) for name, value in headers), _MIME_1])
        if content.html is None:
            return head + content.plain_part
        html = content.html_part
        if rendered.images:
            images = [self._image(path)[2] for path in dict.fromkeys(p for _, p in rendered.images)]
            html = _multipart_bytes("related", f"=_{rendered.digest}_r", [html, *images])
        return head + _multipart_bytes("alternative", f"=_{rendered.digest}_a", [content.plain_part, html])

    def _text_parts(
        self, html: str | None, text: str | None, preheader: str, images: tuple[tuple[str, Path], ...]
    ) -> Content:
        """The text and the HTML of a message, each also as a part, headers and all. Cached: a body
        without row values is made once. ``text`` is the text part (None: made from the HTML)."""
        if html is None:
            assert text is not None
            return Content(text, None, _part_bytes("plain", text), b"")
        plain = html_to_text(html) if text is None else text
        page = self._final_html(html, preheader, images)
        return Content(plain, page, _part_bytes("plain", plain), _part_bytes("html", page))

    def _inlined(self, html: str, preheader: str, images: tuple[tuple[str, Path], ...]) -> str:
        """The HTML as sent: styles inlined, the preheader at the top, images referred to by cid:."""
        page = html if self._inline_css is None else self._inline_css(html)
        if preheader:
            page = htmlbody.with_preheader(page, preheader)
        if images:
            cids = {src: self._image(path)[0] for src, path in images}
            page = htmlbody.with_cids(page, cids.get)
        return page

    def _image(self, path: Path) -> tuple[str, Message, bytes]:
        """An image to embed: its Content-ID, its part, and the part's bytes; read once a run."""
        cached = self._image_parts.get(path)
        if cached is None:
            content = _read_file(path.name, path, self.max_attachment_bytes, "image")
            digest = hashlib.sha256(str(path).encode() + b"\0" + content).hexdigest()
            cid = f"{digest[:20]}@mailblast"  # one a file: two files alike are still two parts
            part = _file_part(path.name, content, "inline", cid)
            cached = self._image_parts[path] = (cid, part, part.as_bytes(policy=WIRE))
        return cached

    def _render(self, template: jinja2.Template, context: dict[str, Any], max_chars: int) -> str:
        try:
            return render_bounded(template, context, max_chars)
        except _UnknownName as e:
            if e.name == "unsubscribe_url":
                raise RowError(
                    'the template uses "unsubscribe_url", but mailblast.toml has no [unsubscribe] url '
                    "(or mailto) to give it",
                    template=self.name,
                ) from None
            raise RowError(unknown_name_text(e.name, list(context["row"])), template=self.name) from None
        except jinja2.UndefinedError as e:
            raise RowError(
                f"the template uses a variable this row does not have: {e.message} "
                f"(the columns are: {', '.join(context['row'])})"
            ) from None
        except (SecurityError, jinja2.TemplateNotFound) as e:  # written in the template: said once
            raise RowError(f"the template is refused: {e}", template=self.name) from None
        except jinja2.TemplateError as e:
            raise RowError(f"the template failed for this row: {e}") from None
        except RenderLimit as e:
            raise RowError(str(e)) from None
        except (RowError, hdr.BadValue):
            raise
        except RecursionError:
            raise RowError("the template failed for this row: it calls itself without end") from None
        except Exception as e:  # a filter or test raising on this row's values
            raise RowError(f"the template failed for this row: {type(e).__name__}: {e}") from None

    def _parse_headers(self, text: str) -> list[tuple[str, str]]:
        """(name, marked value) pairs; only CR LF, LF and CR end a line."""
        headers: list[tuple[str, str]] = []
        for line in hdr.HEADER_LINES.split(text):
            if hdr.is_blank(line):
                continue  # an {% if %} that rendered to nothing
            if line[0] in " \t" and headers:
                name, value = headers[-1]
                headers[-1] = (name, f"{value} {line.strip()}")
                continue
            name, sep, value = line.partition(":")
            if hdr.marked_name(name):
                raise hdr.BadValue(
                    f"a value would become (part of) a header's name: {hdr.unmark(line)!r}", hdr.unmark(line)
                )
            if not sep or not name or not all(33 <= ord(c) <= 126 for c in name):
                raise RowError(f"the header block has a line that is not a header: {line!r}")
            if not hdr.is_blank(value):
                headers.append((name, value.strip()))
        return headers


_MARKDOWN_IMAGE = re.compile(r"!\[[^\]\n]*\]\(\s*<?([^)\s>]*)>?(?:\s+[\"'(][^)]*)?\)")


def _literal_markdown_images(source: str) -> list[str] | None:
    """The local images of a Markdown body, when each is an inline image with its path written out
    (``![logo](img/logo.png)``); None when some can only be known by rendering (Jinja in a path, a
    reference-style image)."""
    found = _MARKDOWN_IMAGE.findall(source)
    if source.count("![") != len(found) or any(_JINJA.search(src) or "\\" in src for src in found):
        return None
    return list(dict.fromkeys(unescape(src) for src in found if htmlbody.local_image(src)))


def _column_of(fields: dict[str, str], text: str) -> str | None:
    """The column a value came from, when one can tell."""
    for column, value in fields.items():
        if value and value == text:
            return column
    best = [c for c, v in fields.items() if v and (v in text or text in v)]
    return max(best, key=lambda c: len(fields[c]), default=None)


# Files mailblast writes or reads for itself, known by name wherever they are.
_KEPT_NAMES = (
    (re.compile(r"mailblast\.toml\Z", re.IGNORECASE), "a mailblast settings file (mailblast.toml)"),
    (re.compile(r"\.mailblast\.sqlite", re.IGNORECASE), "a campaign journal"),
    (re.compile(r"quota\.sqlite", re.IGNORECASE), "mailblast's quota state"),
    (re.compile(r"\.not-sent\.csv\Z", re.IGNORECASE), "a report of recipients not sent"),
)
_PRIVATE_KEY = re.compile(rb"-----BEGIN [A-Z0-9 ]*PRIVATE KEY-----")
_KEY_SCAN_CHUNK = 1 << 20


def kept_for_mailblast(path: Path, kept: Mapping[Path, str], info: os.stat_result) -> str | None:
    """What ``path`` is when mailblast keeps it for itself (a key, its settings, the recipients,
    a journal, report or suppression list), else None. The one check every file a row names
    (attachments, inline images) goes through."""
    what = kept.get(path)
    if what is not None:
        return what
    for pattern, named in _KEPT_NAMES:
        if pattern.search(path.name):
            return named
    if _holds_private_key(path, info.st_mtime_ns, info.st_size):
        return "a file holding a PEM private key"
    return None


@lru_cache(maxsize=256)
def _holds_private_key(path: Path, mtime_ns: int, size: int) -> bool:
    """Whether the file holds "-----BEGIN ... PRIVATE KEY-----" (cached while it is unchanged)."""
    tail = b""
    try:
        with path.open("rb") as f:
            while chunk := f.read(_KEY_SCAN_CHUNK):
                if _PRIVATE_KEY.search(tail + chunk):
                    return True
                tail = chunk[-64:]
    except OSError:
        return False  # reading it for the message fails later, with its own error
    return False


def _attachments_root(template_folder: Path, attachments_dir: Path | str | None) -> Path:
    if attachments_dir is None:
        return template_folder.resolve()
    root = Path(attachments_dir).resolve()
    if not root.is_dir():
        raise ConfigError(
            f"attachments_dir {attachments_dir}: no such folder",
            "pass --attachments-dir with the folder that holds the attachments",
        )
    return root


def _addresses(name: str, marked: str, checked: str) -> tuple[list[tuple[str, str]], bool]:
    """(display name, address) pairs of an address header, each validated (``checked`` already was)."""
    parsed = hdr.split_address_header(name, marked)
    if not parsed and (name.lower() == "from" or not hdr.unmark(marked).strip()):
        raise RowError(f"{name}: {hdr.unmark(marked)!r} is not an address or a list of addresses")
    result, needs_utf8 = [], False
    for display_name, addr_spec in parsed:
        if addr_spec == checked and addr_spec.isascii():
            result.append((display_name, addr_spec))
            continue
        try:
            wire, utf8 = _check_address(addr_spec)
        except EmailNotValidError as e:
            raise hdr.BadValue(f"{name}: {addr_spec!r} is not a valid address: {e}", addr_spec) from None
        needs_utf8 |= utf8
        result.append((display_name, wire))
    return result, needs_utf8


_MIME_1 = b"MIME-Version: 1.0\r\n"
_QP = b"Content-Transfer-Encoding: quoted-printable\r\n"
_7BIT = b"Content-Transfer-Encoding: 7bit\r\n"
_LINE_BREAK = re.compile(rb"\r\n|\r|\n")  # what the email package's generator takes for one
_LINE_BREAK_TEXT = re.compile(r"\r\n|\r|\n")


class Content(NamedTuple):
    """A message's text, and its HTML as sent (None for a text message); each also as a MIME part."""

    plain: str
    html: str | None
    plain_part: bytes
    html_part: bytes


def message_id_of(digest: str, campaign: str) -> str:
    """The left part of a Message-ID: the same for a row in every run of a campaign, and another in
    another campaign (Gmail drops a message whose Message-ID it has seen, even months later)."""
    if not campaign:
        return digest
    return hashlib.sha256(f"{campaign}\0{digest}".encode()).hexdigest()[:32]


def in_order(headers: list[tuple[str, str]]) -> list[tuple[str, str]]:
    """From, To, Cc, Reply-To, Subject, Date, Message-ID, the List-* headers, then the others."""

    def rank(header: tuple[str, str]) -> int:
        name = header[0].lower()
        return HEADER_ORDER.get(name, len(HEADER_ORDER) + (not name.startswith("list-")))

    return sorted(headers, key=rank)


def seven_bit(text: str) -> bool:
    """Whether ``text`` can go as it is (7bit): ASCII, no NUL, no line over 998 characters."""
    return (
        text.isascii()
        and "\0" not in text
        and (len(text) <= SEVEN_BIT_LINE or max(map(len, _LINE_BREAK_TEXT.split(text))) <= SEVEN_BIT_LINE)
    )


def _multipart(subtype: str, boundary: str, parts: list[Message]) -> Message:
    msg = MIMEMultipart(subtype, boundary, parts)
    del msg["MIME-Version"]  # the message's own header, not each part's
    return msg


def _multipart_bytes(subtype: str, boundary: str, parts: list[bytes]) -> bytes:
    """A multipart part, headers and all, as the email package's generator writes _multipart's."""
    head = WIRE.fold_binary("Content-Type", f'multipart/{subtype}; boundary="{boundary}"')
    delimiter = f"--{boundary}".encode("ascii")
    between = b"\r\n" + delimiter + b"\r\n"
    return b"".join([head, b"\r\n", delimiter, b"\r\n", between.join(parts), b"\r\n", delimiter, b"--\r\n"])


_MARKDOWN_SYNTAX = re.compile(r"[\\\[\]<>]")  # what makes links, images and autolinks, and escapes


def markdown_literal(value: Any) -> str:
    """The finalize of a Markdown body's HTML rendering: a value reads as written and cannot make a
    link, an image or an autolink (a row may come from a web form), for "[" "]" "<" ">" are
    escaped. Emphasis and the like stay as they are: they cannot take the reader anywhere."""
    return _MARKDOWN_SYNTAX.sub(r"\\\g<0>", str(value))


def _qp_lines(text: str) -> bytes:
    return _LINE_BREAK.sub(b"\r\n", binascii.b2a_qp(text.encode("utf-8")))


def _part_bytes(subtype: str, text: str) -> bytes:
    """A text part, headers and all, as _text_part's is written."""
    head = f'Content-Type: text/{subtype}; charset="utf-8"\r\n'.encode("ascii")
    if seven_bit(text):
        return head + _7BIT + b"\r\n" + _LINE_BREAK.sub(b"\r\n", text.encode("ascii"))
    return head + _QP + b"\r\n" + _qp_lines(text)


def _text_part(text: str, subtype: str) -> Message:
    part = MIMENonMultipart("text", subtype, charset="utf-8")
    del part["MIME-Version"]
    if seven_bit(text):  # pure ASCII reads as written in the source, "=" and all
        part["Content-Transfer-Encoding"] = "7bit"
        part.set_payload(text)
    else:  # binascii's quoted-printable is C; email.quoprimime's is much slower pure Python.
        part["Content-Transfer-Encoding"] = "quoted-printable"
        part.set_payload(binascii.b2a_qp(text.encode("utf-8")).decode("ascii"))
    return part


def _format_address(display_name: str, address: str) -> str:
    # An encoded word lookalike: encoded, it reads as written. A name too long for any line:
    # encoded words, which split anywhere (formataddr would make it one word as long).
    if "=?" in display_name or hdr.too_long_to_fold("Reply-To", display_name, len(address) + 5):
        return f"{Header(display_name, UTF8).encode(linesep=' ')} <{address}>"
    if address.isascii():
        return formataddr((display_name, address), charset=UTF8)
    # Only in an SMTPUTF8 message, where raw UTF-8 is allowed in every header.
    return f'"{quote(display_name)}" <{address}>' if display_name else address


def _read_file(written: str, path: Path, max_bytes: int, what: str = "attachment") -> bytes:
    try:
        # O_NOFOLLOW and the checks again: the file checked at render time may have been swapped since
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK)
        with open(fd, "rb") as f:
            if not stat.S_ISREG(os.fstat(fd).st_mode):
                raise RowError(f"{what} {written!r} is not a regular file")
            content = f.read(max_bytes + 1)
    except FileNotFoundError:
        raise RowError(f"{what} {written!r} not found (looked for {path})") from None
    except OSError as e:
        raise RowError(f"{what} {written!r} cannot be read: {e.strerror}") from None
    if len(content) > max_bytes:
        raise RowError(f"{what} {written!r} is over the limit of {max_bytes / 1e6:g} MB a message")
    return content


def _file_part(filename: str, content: bytes, disposition: str, cid: str | None = None) -> Message:
    """A file's part: its type and name (name= for older clients, RFC 2231 when not ASCII)."""
    content_type = mimetypes.guess_type(filename)[0] or "application/octet-stream"
    maintype, subtype = content_type.split("/", 1)
    part = MIMEBase(maintype, subtype)
    del part["MIME-Version"]
    name = filename if filename.isascii() else ("utf-8", "", filename)
    part.set_param("name", name)
    if maintype == "text" and content.isascii() and seven_bit(content.decode("ascii")):
        part["Content-Transfer-Encoding"] = "7bit"
        part.set_payload(content.decode("ascii"))
    else:
        part.set_payload(content)
        encode_base64(part)
    if cid is not None:
        part["Content-ID"] = f"<{cid}>"
    part.add_header("Content-Disposition", disposition, filename=name)
    return part


def _attachment(written: str, path: Path, max_bytes: int) -> tuple[Message, Attachment]:
    content = _read_file(written, path, max_bytes)
    part = _file_part(path.name, content, "attachment")
    return part, Attachment(path.name, part.get_content_type(), len(content))


Composed = ComposedMessage | RowError  # a message, or why a row cannot become one


class _SuppressedAddresses:
    """The suppression list's file, looked up from this process (a compose worker, or the main one)."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._db: sqlite3.Connection | None = None

    def __contains__(self, address: str) -> bool:
        if self._db is None:
            self._db = sqlite3.connect(f"{self.path.as_uri()}?mode=ro", uri=True, check_same_thread=False)
        key = address.casefold()
        return self._db.execute("SELECT 1 FROM seen WHERE address = ?", (key,)).fetchone() is not None

    def without(
        self, addresses: list[tuple[str, str]], own: str, header: str, dropped: list[str]
    ) -> list[tuple[str, str]]:
        """``addresses`` without the suppressed ones (other than the row's own), which go to ``dropped``."""
        kept = []
        for name, address in addresses:
            if address.casefold() != own.casefold() and address in self:
                dropped.append(f"{address} ({header})")
            else:
                kept.append((name, address))
        return kept

    def __getstate__(self) -> dict[str, Any]:
        return {"path": self.path, "_db": None}


@dataclass
class Prepared:
    """A row after reading and rendering: a message, or the problems that stopped it."""

    row: RowResult
    message: ComposedMessage | None  # None when only checked
    ok: bool  # the row can become a message
    sender: str = ""  # the From address, when it can
    html_bytes: int = 0  # its HTML part's size


def compose_rows(
    recipients: RecipientsFile, template: Template, *, allow_duplicates: bool = False, build: bool = True
) -> Iterator[Prepared]:
    """Read and render every row in file order; ``build=False`` only checks (no MIME, much faster)."""
    for result in recipients.rows(allow_duplicates=allow_duplicates):
        yield prepare(recipients.name, result, template, build=build)


def prepare(file: str, result: RowResult, template: Template, *, build: bool = True) -> Prepared:
    """Render one row read from ``file``; a row that cannot become a message gets its problem."""
    if result.recipient is None:
        return Prepared(result, None, False)
    checked: CheckedRow | ComposedMessage | RowError
    try:
        recipient = result.recipient
        checked = template.compose(recipient) if build else template.check(recipient)
    except RowError as e:
        checked = e
    return settle(file, result, checked)


def settle(file: str, result: RowResult, checked: CheckedRow | ComposedMessage | RowError) -> Prepared:
    """A row whose check gave ``checked``: what was checked (or its message), or the RowError (with
    the row's other problems) that stops it. Suppressed addresses dropped from the message are a
    warning of the row."""
    dropped = checked.dropped if isinstance(checked, CheckedRow | ComposedMessage) else ()
    if dropped:
        text = f"suppressed, so not mailed with this row: {', '.join(dropped)}"
        result.problems.append(RowProblem(file, result.row, result.line, None, text, is_error=False))
    if isinstance(checked, ComposedMessage):
        return Prepared(result, checked, True, checked.envelope_from, checked.html_bytes)
    if isinstance(checked, RowError):
        for error in checked.each():  # every problem the row has, each its own line
            problem = RowProblem(
                file, result.row, result.line, error.column, error.message, template=error.template
            )
            result.problems.append(problem)
        return Prepared(result, None, False)
    return Prepared(result, None, True, checked.sender, checked.html_bytes)

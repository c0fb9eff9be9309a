"""Terminal output with rich: problems, summaries and the message preview.

Nothing here decides anything; it only shows what the other stages produced.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable, Iterator, Mapping
from contextlib import contextmanager
from email.message import EmailMessage, MIMEPart
from typing import Any

from rich.console import Console, Group
from rich.panel import Panel
from rich.progress import BarColumn, Progress, TaskProgressColumn, TextColumn, TimeRemainingColumn
from rich.segment import Segment
from rich.syntax import Syntax
from rich.table import Table
from rich.text import Text

from mailblast.message.compose import ComposedMessage
from mailblast.message.recipients import RowProblem

# What a terminal would act on rather than show: C0 controls but tab and line feed, DEL, C1
# controls (U+0080-U+009F: U+009B is CSI on some terminals), and the bidi overrides and isolates
# that make text read in another order than it is (Trojan Source, CVE-2021-42574).
_CONTROL = re.compile("[\x00-\x08\x0b-\x1f\x7f-\x9f\u061c\u200e\u200f\u202a-\u202e\u2066-\u2069]")


def _escaped(m: re.Match[str]) -> str:
    code = ord(m.group())
    return f"\\x{code:02x}" if code < 0x100 else f"\\u{code:04x}"


def printable(text: str) -> str:
    """``text`` with every character a terminal would act on shown escaped: ESC as ``\\x1b``,
    U+202E as ``\\u202e``. The one escaping function for everything mailblast prints."""
    return _CONTROL.sub(_escaped, text)


class SafeConsole(Console):
    """A rich Console that shows control characters in what it prints escaped (``printable``),
    wherever the text came from (a CSV column name, a server's reply, an envelope address), in
    tables, panels and progress bars alike. Rich's own cursor and style codes, kept apart from
    the text as control segments and styles, pass as they are."""

    def render_str(self, text: str, **options: Any) -> Text:
        # Before rich's Text drops some controls (BEL, CR) unseen, and before the layout measures it.
        return super().render_str(printable(text), **options)

    def _render_buffer(self, buffer: Iterable[Segment]) -> str:
        return super()._render_buffer(
            segment if segment.control else Segment(printable(segment.text), segment.style, None)
            for segment in buffer
        )


def make_console(**options: Any) -> SafeConsole:
    """The console every command prints with: no markup, emoji or highlighting (paths, addresses
    and server replies may hold [brackets] of their own), control characters escaped, and lines
    never wrapped where the output is not a terminal (a line stays one line in a log, for grep)."""
    console = SafeConsole(highlight=False, markup=False, emoji=False, **options)
    console.soft_wrap = not console.is_terminal
    return console


_JSON_UNSAFE = re.compile("[\x7f-\x9f\u061c\u200e\u200f\u202a-\u202e\u2066-\u2069\ud800-\udfff]")


def json_text(document: object) -> str:
    """``document`` as one line of JSON, readable UTF-8: what a terminal would act on, and a file
    name's undecodable bytes (lone surrogates, which no UTF-8 can hold), as \\u escapes."""
    text = json.dumps(document, ensure_ascii=False)
    return _JSON_UNSAFE.sub(lambda m: f"\\u{ord(m.group()):04x}", text)


def print_problem(console: Console, problem: RowProblem) -> None:
    label, style = ("error", "red") if problem.is_error else ("warning", "yellow")
    console.print(Text.assemble((f"{label}: ", f"bold {style}"), printable(str(problem))), soft_wrap=True)


def print_template_fault(console: Console, problem: RowProblem, count: int, rows: int) -> None:
    """A problem written in the template, once, with how many rows it stopped."""
    if count == 1:
        where = f"row {problem.row}"
    elif count == rows:
        where = f"all {rows:,} rows"
    else:
        where = f"{count:,} rows, the first is row {problem.row}"
    console.print(Text.assemble(("error: ", "bold red"), printable(f"{problem} ({where})")), soft_wrap=True)


def print_warning(console: Console, text: str) -> None:
    console.print(Text.assemble(("warning: ", "bold yellow"), printable(text)), soft_wrap=True)


def print_counts(console: Console, title: str, counts: Mapping[str, object]) -> None:
    console.print(Text(printable(title), style="bold"))
    table = Table(show_header=False, box=None, padding=(0, 2))
    table.add_column(style="bold")
    table.add_column(justify="right")
    for name, value in counts.items():
        table.add_row(
            name, f"{value:,}" if isinstance(value, int) and not isinstance(value, bool) else str(value)
        )
    console.print(table)


def print_reasons(console: Console, title: str, lines: list[tuple[str, int]], limit: int = 5) -> None:
    """Failures by reason (outcomes.Reasons.lines), the first ``limit`` of them."""
    console.print(Text(printable(title), style="bold"))
    for text, n in lines[:limit]:
        console.print(f"  {n:,} × {text}", highlight=False, soft_wrap=True)
    if len(lines) > limit:
        more = sum(n for _, n in lines[limit:])
        console.print(
            f"  and {len(lines) - limit:,} more reason(s), {more:,} recipient(s): the report lists each",
            highlight=False,
        )


@contextmanager
def file_progress(
    console: Console, description: str, total: int, *, quiet: bool = False
) -> Iterator[Progress | None]:
    """A progress bar over a file's bytes, only on a terminal (plain output stays plain)."""
    if quiet or not console.is_terminal:
        yield None
        return
    progress = Progress(
        TextColumn("{task.description}"),
        BarColumn(),
        TaskProgressColumn(),
        TimeRemainingColumn(),
        console=console,
        transient=True,
    )
    with progress:
        progress.add_task(description, total=total)
        yield progress


def _part_text(part: MIMEPart) -> str:
    content = part.get_content()
    return content if isinstance(content, str) else f"<{len(content)} bytes>"


def show_message(console: Console, composed: ComposedMessage, text_part: str = "") -> None:
    """Headers, plain-text body, HTML body and attachments of one message; ``text_part`` says where
    the plain text comes from."""
    msg = composed.parsed()
    headers = Table(show_header=False, box=None, padding=(0, 1))
    headers.add_column(style="bold cyan", no_wrap=True)
    headers.add_column(overflow="fold")
    # The ones a reader looks for first, then the rest as they stand in the message.
    first = ("from", "to", "cc", "reply-to", "subject")
    items = sorted(
        msg.items(), key=lambda item: first.index(k) if (k := item[0].lower()) in first else len(first)
    )
    for name, value in items:
        headers.add_row(f"{name}:", str(value))
    bcc = sorted(set(composed.envelope_to) - {a.addr_spec for h in ("To", "Cc") for a in _addrs(msg, h)})
    if bcc:
        headers.add_row("Bcc (envelope only):", ", ".join(bcc))
    size = human_size(len(composed.data))
    if composed.html_bytes:
        size += f", of which HTML {human_size(composed.html_bytes)}"
    title = f"row {composed.recipient.row} · {composed.recipient.address} · {size}"
    console.print(Panel(headers, title=Text(printable(title)), title_align="left"))
    plain = msg.get_body(("plain",))
    html = msg.get_body(("html",))
    if plain is not None:
        title = f"plain text: {text_part}" if text_part else "plain text"
        body = Text(printable(_part_text(plain)))
        console.print(Panel(body, title=Text(printable(title)), title_align="left"))
    if html is not None:
        syntax = Syntax(_part_text(html), "html", word_wrap=True, background_color="default")
        console.print(Panel(syntax, title="HTML", title_align="left"))
    images = [p for p in msg.walk() if p.get("Content-ID") and p.get_content_maintype() == "image"]
    if images:
        rows = [
            Text(printable(f"{p.get_filename()}  {p['Content-ID']}  {human_size(len(p.get_content()))}"))
            for p in images
        ]
        console.print(Panel(Group(*rows), title="images in the HTML", title_align="left"))
    if composed.attachments:
        rows = [
            Text(printable(f"{a.filename}  {a.content_type}  {human_size(a.size)}"))
            for a in composed.attachments
        ]
        console.print(Panel(Group(*rows), title="attachments", title_align="left"))
    if composed.needs_smtputf8:
        print_warning(console, "this message has a non-ASCII address: the server must support SMTPUTF8")


def _addrs(msg: EmailMessage, name: str) -> tuple:
    header = msg.get(name)
    return header.addresses if header is not None else ()


def human_size(n: int) -> str:
    """A size as a person reads it: bytes, KiB or MiB."""
    if n < 1024:
        return f"{n:,} bytes"
    if n < 1024 * 1024:
        return f"{n / 1024:,.1f} KiB"
    return f"{n / 1024 / 1024:,.1f} MiB"

"""The plain-text part of an HTML message, as a plain-text mail client shows it.

Over the standard library's html.parser (a real, forgiving HTML tokenizer), so that no
GPL code is needed (html2text, used before, is GPL-3.0). What a reader of the text needs:

- a link reads ``text (url)``, or just the URL when that is its text;
- a URL is never wrapped or broken, whatever its length: a plain-text client links a URL
  only as far as the line goes, and half an unsubscribe link is worse than none;
- headings, lists and tables read as text (no Markdown: no ``#``, ``**``, ``|---|``);
- an image is its alt text; what is hidden (a preheader, <head>, <style>) is left out.
"""

from __future__ import annotations

import re
import textwrap
from html.parser import HTMLParser

WIDTH = 76  # for prose; a long word or URL is never broken to fit
_SKIPPED = {"head", "style", "script", "title", "template", "noscript"}
_VOID = {"area", "base", "br", "col", "embed", "hr", "img", "input", "link", "meta", "source", "track", "wbr"}
_BLOCKS = {
    "p", "div", "section", "article", "header", "footer", "main", "nav", "aside", "center", "figure",
    "figcaption", "address", "dl", "dt", "dd", "form", "fieldset", "details", "summary", "body", "html",
    "h1", "h2", "h3", "h4", "h5", "h6", "ul", "ol", "li", "blockquote", "pre", "table", "tr", "hr",
}  # fmt: skip
_HIDDEN = re.compile(r"display\s*:\s*none|visibility\s*:\s*hidden|mso-hide\s*:\s*all", re.IGNORECASE)
_SPACE = re.compile(r"[ \t\n\r\f\v]+")
_ITEM = "\x00"  # starts a paragraph that is a list item
_LINKED = re.compile(r"(?:https?|mailto|tel|sms|ftp):", re.IGNORECASE)


def html_to_text(html: str) -> str:
    """The text of ``html``, lines ending in \\n."""
    parser = _Converter()
    parser.feed(html)
    parser.close()
    return parser.text()


class _Block:
    """Text being gathered: finished paragraphs, and the words of the one under way."""

    def __init__(self) -> None:
        self.paragraphs: list[str] = []  # each one or more lines, already laid out
        self.words: list[str] = []  # of the paragraph under way, with "\n" for a <br>
        self.space = False  # a space is due before the next word

    def add(self, text: str) -> None:
        if not text:
            return
        if text[0] in " \t\n\r\f\v":
            self.space = True
        for i, word in enumerate(_SPACE.split(text.strip())):
            if not word:
                continue
            if i or self.space or not self.words:
                self.words.append(word)
            else:
                self.words[-1] += word  # "<b>bold</b>ly": one word
            self.space = False
        if text[-1] in " \t\n\r\f\v":
            self.space = True

    def add_word(self, word: str) -> None:
        """A word that is never joined to its neighbours (a link's URL)."""
        self.words.append(word)
        self.space = False  # "(url)." keeps its full stop

    def line_break(self) -> None:
        self.words.append("\n")
        self.space = False

    def end_paragraph(self, width: int) -> None:
        lines, words = [], []
        for word in [*self.words, "\n"]:
            if word == "\n":
                if words:
                    lines.append(_wrap(" ".join(words), width))
                words = []
            else:
                words.append(word)
        text = "\n".join(lines).strip("\n")
        if text.strip():
            self.paragraphs.append(text)
        self.words, self.space = [], False

    def add_paragraph(self, text: str) -> None:
        if text.strip():
            self.paragraphs.append(text)

    def text(self, width: int) -> str:
        """The paragraphs, a blank line apart; a list's items (marked with \\x00) a line apart."""
        self.end_paragraph(width)
        out = ""
        for paragraph in self.paragraphs:
            if paragraph.startswith(_ITEM):
                out += ("\n" if out else "") + paragraph[1:]
            else:
                out += ("\n\n" if out else "") + paragraph
        return out


def _wrap(text: str, width: int) -> str:
    if len(text) <= width:
        return text
    return "\n".join(
        textwrap.wrap(text, max(width, 20), break_long_words=False, break_on_hyphens=False)
    )  # a URL is one word


class _Converter(HTMLParser):
    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self._stack: list[_Block] = [_Block()]  # a table cell or a list item gathers its own text
        self._open: list[tuple[str, bool]] = []  # (tag, hides its content)
        self._hidden = 0  # how many open elements hide what they hold
        self._lists: list[list[int]] = []  # per list: [next number or -1 for bullets, items so far]
        self._links: list[tuple[str | None, int]] = []  # (href, words before the link)
        self._tables: list[list[list[str]]] = []  # rows of cells
        self._pre = 0
        self._quote = 0

    @property
    def _block(self) -> _Block:
        return self._stack[-1]

    def _width(self) -> int:
        return WIDTH - 2 * len(self._lists) - 2 * self._quote

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        attributes = dict(attrs)
        style = attributes.get("style") or ""
        hides = tag in _SKIPPED or "hidden" in attributes or bool(_HIDDEN.search(style))
        if tag not in _VOID:
            self._open.append((tag, hides))
            self._hidden += hides
        if self._hidden or hides:
            return
        block = self._block
        if tag == "br":
            block.line_break()
        elif tag == "img":
            alt = (attributes.get("alt") or "").strip()
            if alt:
                block.add(alt)
                block.space = True
        elif tag == "hr":
            block.end_paragraph(self._width())
            block.add_paragraph("-" * 20)
        elif tag == "a":
            self._links.append((attributes.get("href"), len(block.words)))
        elif tag in ("ul", "ol"):
            block.end_paragraph(self._width())
            self._lists.append([1 if tag == "ol" else -1, 0])
        elif tag in ("li", "td", "th", "blockquote", "pre", "h1", "h2"):
            block.end_paragraph(self._width())
            if tag == "blockquote":
                self._quote += 1
            if tag == "pre":
                self._pre += 1
            self._stack.append(_Block())
        elif tag == "table":
            block.end_paragraph(self._width())
            self._tables.append([])
        elif tag == "tr":
            if self._tables:
                self._tables[-1].append([])
        elif tag in _BLOCKS:
            block.end_paragraph(self._width())

    def handle_endtag(self, tag: str) -> None:
        if tag in _VOID or not any(name == tag for name, _ in self._open):
            return  # a stray end tag
        while self._open:  # close what was left open inside it, as a browser does
            name, hides = self._open.pop()
            self._hidden -= hides
            if not self._hidden and not hides:
                self._close(name)
            if name == tag:
                break

    def _close(self, tag: str) -> None:
        if tag == "a":
            self._end_link()
        elif tag in ("ul", "ol"):
            if self._lists:
                self._lists.pop()
        elif tag == "li":
            self._end_item()
        elif tag in ("td", "th"):
            text = self._pop_block()
            if self._tables and self._tables[-1]:
                self._tables[-1][-1].append(text)
            else:
                self._block.add_paragraph(text)
        elif tag == "table":
            if self._tables:
                self._block.add_paragraph(_table_text(self._tables.pop()))
        elif tag in ("h1", "h2"):  # underlined, as in a plain-text letter
            text = self._pop_block()
            rule = ("=" if tag == "h1" else "-") * min(max(map(len, text.split("\n")), default=0), WIDTH)
            self._block.add_paragraph(f"{text}\n{rule}")
        elif tag == "blockquote":
            self._quote -= 1
            text = self._pop_block(self._width() - 2)
            self._block.add_paragraph("\n".join(f"> {line}".rstrip() for line in text.split("\n")))
        elif tag == "pre":
            self._pre -= 1
            block = self._stack.pop()
            block.end_paragraph(10**6)
            self._block.add_paragraph("\n".join(p for p in block.paragraphs))
        elif tag in _BLOCKS:
            self._block.end_paragraph(self._width())

    def _pop_block(self, width: int | None = None) -> str:
        if len(self._stack) == 1:
            return ""
        return self._stack.pop().text(self._width() if width is None else width)

    def _end_item(self) -> None:
        text = self._pop_block()
        numbering = self._lists[-1] if self._lists else [-1, 0]
        marker = "-" if numbering[0] < 0 else f"{numbering[0]}."
        if numbering[0] > 0:
            numbering[0] += 1
        numbering[1] += 1
        pad = " " * (len(marker) + 1)
        lines = text.split("\n") if text else [""]
        item = "\n".join([f"{marker} {lines[0]}", *(f"{pad}{line}" if line else "" for line in lines[1:])])
        # the items of one list are lines, not paragraphs
        first = numbering[1] == 1 and len(self._lists) <= 1  # a list in a list item follows its text
        self._block.add_paragraph(item if first else _ITEM + item)

    def _end_link(self) -> None:
        if not self._links:
            return
        href, start = self._links.pop()
        block = self._block
        href = (href or "").strip()
        if not _LINKED.match(href):
            return  # "#top", a relative link: nowhere a text reader can go
        shown = href[7:] if href.lower().startswith("mailto:") else href
        text = " ".join(w for w in block.words[start:] if w != "\n")
        if text.strip() in (href, shown, ""):
            del block.words[start:]
            block.space = bool(block.words)
            block.add_word(shown)
        else:
            block.add_word(f"({shown})")

    def handle_data(self, data: str) -> None:
        if self._hidden:
            return
        data = data.replace(_ITEM, "")
        if self._pre:
            for i, line in enumerate(data.split("\n")):
                if i:
                    self._block.line_break()
                if line:
                    self._block.words.append(line)
            return
        self._block.add(data)

    def text(self) -> str:
        while len(self._stack) > 1:  # elements never closed
            self._block.end_paragraph(self._width())
            text = self._stack.pop().text(self._width())
            self._block.add_paragraph(text)
        for table in self._tables:
            self._block.add_paragraph(_table_text(table))
        self._tables = []
        text = re.sub(r"\n{3,}", "\n\n", self._block.text(self._width()).strip("\n"))
        return "\n".join(line.rstrip() for line in text.split("\n")) + "\n" if text else ""


def _table_text(rows: list[list[str]]) -> str:
    """A table: a data table's cells in aligned columns; a layout table's cells one after another."""
    rows = [[cell for cell in row] for row in rows if any(cell.strip() for cell in row)]
    if not rows:
        return ""
    flat = all("\n" not in cell and len(cell) <= 40 for row in rows for cell in row)
    if not flat or max(len(row) for row in rows) == 1:
        return "\n\n".join(cell for row in rows for cell in row if cell.strip())
    widths = [0] * max(len(row) for row in rows)
    for row in rows:
        for i, cell in enumerate(row):
            widths[i] = max(widths[i], len(cell))
    return "\n".join("  ".join(cell.ljust(widths[i]) for i, cell in enumerate(row)).rstrip() for row in rows)

"""Header values from untrusted rows: marked while rendering, so they stay data afterwards.

Every ``{{ ... }}`` in the header block is wrapped in control characters carrying a random
token as it is rendered (a value may hold no control character, so one that tries to forge a
mark is refused). After rendering, the marks say which text came from the template and
which from values:

- a value may hold no line break of any kind and no control character but tab;
- a value cannot be or make a header name;
- in an address header the template's literal text decides how many addresses there are
  and where each value goes. A value in a display name is data and may not hold the
  characters that would make more addresses; a value standing alone (``Cc: {{ manager }}``)
  must be exactly one address; ``mailbox(name, address)`` gives a display name that is
  always safe, however it is spelled.
"""

from __future__ import annotations

import re
import secrets
from email.utils import getaddresses
from functools import lru_cache
from typing import Any

# str.splitlines() breaks on \n \r \v \f \x1c \x1d \x1e \x85 \u2028 \u2029; with NUL and the
# other C0 controls (not tab), none of them may reach a header from a value.
FORBIDDEN = re.compile("[\x00-\x08\x0a-\x1f\x85\u2028\u2029]")
HEADER_LINES = re.compile(r"\r\n|\r|\n")  # the only line breaks of the header block

_OPEN, _CLOSE = "\x02", "\x03"  # around a value: \x02 TOKEN text \x03
_MAILBOX, _SEP = "\x01", "\x1f"  # around a mailbox(): \x01 TOKEN display \x1f address \x03
_TOKEN_CHARS = "".join(map(chr, [*range(0x04, 0x09), *range(0x0E, 0x1A)]))  # of a Marker's random token
_TOKEN = "\x04-\x08\x0e-\x19"  # the same, for a character class
_SPAN = re.compile(
    f"\x02[{_TOKEN}]*([^\x01-\x03]*)\x03|\x01[{_TOKEN}]*([^\x01-\x03\x1f]*)\x1f([^\x01-\x03]*)\x03"
)
_ANY_MARK = re.compile(f"[\x01-\x03\x1f{_TOKEN}]")
_DROP_MARKS = dict.fromkeys(map(ord, "\x02\x03\x1f" + _TOKEN_CHARS))
_BLANK = re.compile(f"[\\s\x01-\x03\x1f{_TOKEN}]*")
# In a display name written as {{ name }} <{{ email }}>, these would change the addresses.
_ADDRESS_SPECIALS = re.compile(r'[,;:<>@"()\[\]\\]')
# the common case, known without parsing
_BARE_ADDRESS = re.compile(r'[^\s,;:<>"()\[\]\\]+@[^\s,;:<>"()\[\]\\@]+')


# RFC 5322 2.1.1: a line is at most 998 octets. Folding happens only at white space, so a header
# line stays within it when no unbroken run of text (with the header's name before it) is longer.
MAX_LINE = 998
FOLD_AT = 78  # where lines are folded when they can be (RFC 5322's "SHOULD")


def too_long_to_fold(name: str, text: str, room: int = 0) -> bool:
    """Whether ``text`` holds a run without white space that no folding could fit within a line
    after ``Name: `` (less ``room`` octets more, e.g. for an address after a display name). Such
    a value is written as RFC 2047 encoded words instead, which split anywhere."""
    limit = MAX_LINE - len(name) - 2 - room
    return len(text.encode()) > limit and any(len(word.encode()) > limit for word in text.split())


def fold_words(name: str, text: str, linesep: str) -> str:
    """``Name: text`` folded before its spaces into lines of about 78 characters (each run of text
    kept whole; unfolding gives ``text`` back exactly): for a value written out as it is."""
    lines = [f"{name}:"]
    for piece in _PIECES.findall(" " + text):
        if len(lines[-1]) + len(piece) > FOLD_AT and len(lines[-1]) > len(name) + 1:
            lines.append("")
        lines[-1] += piece
    return linesep.join(lines) + linesep


_PIECES = re.compile(" [^ ]*")


class BadValue(Exception):
    """A rendered value cannot go into a header; ``value`` is the text, for finding its column."""

    def __init__(self, message: str, value: str) -> None:
        super().__init__(message, value)
        self.message = message
        self.value = value


def describe_forbidden(text: str) -> tuple[str, str]:
    """What the first forbidden character of ``text`` is: ("a line break", "U+2028")."""
    char = FORBIDDEN.search(text)
    assert char is not None
    kind = "a line break" if char.group().splitlines() == [""] else "a control character"
    return kind, f"U+{ord(char.group()):04X}"


def _short(text: str) -> str:
    return repr(text if len(text) <= 80 else text[:77] + "...")


def check_value(text: str) -> None:
    if FORBIDDEN.search(text):
        raise BadValue(
            "a value with {} would reach a header ({}): ".format(*describe_forbidden(text)) + _short(text),
            text,
        )


class Mailbox(str):
    """What ``mailbox(name, address)`` gives: ``"Name" <address>`` as text, and its two parts."""

    display: str
    address: str

    def __new__(cls, display: str, address: str) -> Mailbox:
        quoted = display.replace("\\", "\\\\").replace('"', '\\"')
        self = super().__new__(cls, f'"{quoted}" <{address}>' if display else address)
        self.display, self.address = display, address
        return self


def mailbox(name: Any, address: Any) -> Mailbox:
    """The Jinja global ``mailbox(name, email)``: one address with a display name, quoted per RFC 5322."""
    display, addr = str(name).strip(), str(address).strip()
    check_value(display)
    check_value(addr)
    return Mailbox(display, addr)


class Marker:
    """The header environment's ``finalize``: checks a value and wraps it in marks.

    The marks carry a random token, so that marks a row value holds itself are refused like any
    control character, never taken for ours (only a macro's output holds ours).
    """

    def __init__(self) -> None:
        token = "".join(secrets.choice(_TOKEN_CHARS) for _ in range(8))
        self._open, self._mailbox = _OPEN + token, _MAILBOX + token
        value, mailbox = "[^\x01-\x03]*\x03", "[^\x01-\x03\x1f]*\x1f[^\x01-\x03]*\x03"
        self._ours = re.compile(f"{re.escape(self._open)}{value}|{re.escape(self._mailbox)}{mailbox}")

    def __call__(self, value: Any) -> str:
        if isinstance(value, Mailbox):
            return f"{self._mailbox}{value.display}{_SEP}{value.address}{_CLOSE}"
        text = str(value)
        if _ANY_MARK.search(text):  # a macro's output, with its values marked inside; or forged
            check_value(self._ours.sub("", text))
            text = unmark(text)
        check_value(text)
        return f"{self._open}{text}{_CLOSE}"


def unmark(text: str) -> str:
    """The text as it reads, without marks."""
    if _MAILBOX not in text:
        return text.translate(_DROP_MARKS)  # the common case, several times faster than the regex
    return _ANY_MARK.sub("", _SPAN.sub(_span_text, text))


def is_blank(text: str) -> bool:
    """Whether ``text`` reads as nothing but white space."""
    return _BLANK.fullmatch(text) is not None


def _span_text(m: re.Match[str]) -> str:
    return m.group(1) if m.group(2) is None else str(Mailbox(m.group(2), m.group(3)))


def marked_name(name: str) -> bool:
    return bool(_ANY_MARK.search(name))


def _placeholder(i: int) -> str:
    return f"mailblastslot{i}x"


_PLACEHOLDER = re.compile(r"mailblastslot([0-9]+)x")


@lru_cache(maxsize=1024)
def parse_addresses(value: str) -> tuple[tuple[str, str], ...]:
    # Cached: From and Cc are usually the same on every row, and parsing them is not cheap.
    return tuple((n, a) for n, a in getaddresses([value]) if a)


def split_address_header(header: str, marked: str) -> list[tuple[str, str]]:
    """(display name, address) pairs the template means; raises BadValue when a value would
    change them. Addresses are not validated here."""
    if not _ANY_MARK.search(marked):
        return list(parse_addresses(marked.strip()))
    spans: list[tuple[str | None, str]] = []  # (display or None for a plain value, text or address)

    def slot(m: re.Match[str]) -> str:
        if m.group(2) is None:
            spans.append((None, m.group(1)))
        else:
            spans.append((m.group(2), m.group(3)))
        return _placeholder(len(spans) - 1)

    skeleton = _ANY_MARK.sub("", _SPAN.sub(slot, marked)).strip()
    result: list[tuple[str, str]] = []
    for display, address in parse_addresses(skeleton):
        whole = _PLACEHOLDER.fullmatch(address)
        if whole and not display:
            result.extend(_whole(header, spans[int(whole.group(1))]))
            continue
        result.append((_fill(header, display, spans, in_display=True), _fill(header, address, spans)))
    return result


def _whole(header: str, span: tuple[str | None, str]) -> list[tuple[str, str]]:
    """A value standing alone where the template has room for one address."""
    display, text = span
    if display is not None:
        return [(display, text)]  # mailbox(): already structured
    text = text.strip()
    found = (("", text),) if _BARE_ADDRESS.fullmatch(text) else parse_addresses(text)
    if len(found) > 1:
        raise BadValue(
            f"{header}: the value {_short(text)} holds {len(found)} addresses where the template has room "
            "for one",
            text,
        )
    if not found:
        if not text:
            return []  # an empty optional value, e.g. Cc: {{ manager }}
        raise BadValue(f"{header}: {_short(text)} is not an address", text)
    return list(found)


def _fill(
    header: str, template_part: str, spans: list[tuple[str | None, str]], *, in_display: bool = False
) -> str:
    def value(m: re.Match[str]) -> str:
        display, text = spans[int(m.group(1))]
        if display is not None:
            text = str(Mailbox(display, text))
        special = _ADDRESS_SPECIALS.search(text) if in_display else None
        if special:
            raise BadValue(
                f"{header}: the value {_short(text)} would change the addresses (it holds "
                f"{special.group()!r}); build the address with {{{{ mailbox(name, email) }}}}",
                text,
            )
        return text

    return _PLACEHOLDER.sub(value, template_part)

"""The HTML part as mail clients need it: MJML made HTML, styles inlined, images referred to by cid:.

Pure functions over strings; reading image files is compose's (through the attachment rules).

- Outlook desktop, and Gmail in some views, drop <head> styles: css-inline (Rust, MIT) copies
  each rule into the style attribute of what it matches. @media rules cannot be inlined and
  stay in a <style>, for the clients that read them. Remote stylesheets are never fetched.
- A relative <img src> points nowhere in a mail client: the image goes in a multipart/related
  part, and src becomes "cid:" and its Content-ID (RFC 2392).
"""

from __future__ import annotations

import html
import re
from collections.abc import Callable

_IMG_SRC = re.compile(r"""(<img\b[^>]*?\bsrc\s*=\s*)(?:"([^"]*)"|'([^']*)'|([^\s"'>]+))""", re.IGNORECASE)
_SCHEME = re.compile(r"[A-Za-z][A-Za-z0-9+.-]*:")  # http:, https:, cid:, data: ...
_BODY = re.compile(r"<body\b[^>]*>", re.IGNORECASE)
# Hidden in every client that shows HTML, yet the first text of the body: what the inbox previews.
_PREHEADER = (
    '<div style="display:none;font-size:1px;color:#ffffff;line-height:1px;max-height:0;max-width:0;'
    'opacity:0;overflow:hidden;mso-hide:all">{}</div>'
)


def local_image(src: str) -> bool:
    """Whether an <img src> names a file to embed: not a URL (http:, https:, cid:, data:...)."""
    return bool(src) and not _SCHEME.match(src) and not src.startswith(("//", "#"))


def image_sources(markup: str) -> list[str]:
    """The sources of the images to embed, each once, in the order they first appear."""
    found: dict[str, None] = {}
    for m in _IMG_SRC.finditer(markup):
        src = html.unescape(next(g for g in m.groups()[1:] if g is not None)).strip()
        if local_image(src):
            found[src] = None
    return list(found)


def with_cids(markup: str, cid_of: Callable[[str], str | None]) -> str:
    """``markup`` with each embedded image's src made "cid:" + its Content-ID."""

    def replace(m: re.Match[str]) -> str:
        src = html.unescape(next(g for g in m.groups()[1:] if g is not None)).strip()
        cid = cid_of(src) if local_image(src) else None
        return m.group(0) if cid is None else f'{m.group(1)}"cid:{html.escape(cid)}"'

    return _IMG_SRC.sub(replace, markup)


def with_preheader(markup: str, text: str) -> str:
    """``markup`` with ``text`` hidden at the top of its body, as the inbox's preview text."""
    div = _PREHEADER.format(html.escape(text, quote=False))
    body = _BODY.search(markup)
    if body is None:
        return div + markup
    return markup[: body.end()] + div + markup[body.end() :]


class CssInliner:
    """<style> rules made style attributes; @media rules kept in a <style>."""

    def __init__(self) -> None:
        import css_inline  # only for HTML templates: it takes a moment to load

        self._inliner = css_inline.CSSInliner(
            keep_at_rules=True, keep_link_tags=True, load_remote_stylesheets=False
        )

    def __call__(self, markup: str) -> str:
        return self._inliner.inline(markup)


class MjmlError(Exception):
    """mrml could not make HTML of the rendered MJML."""


def mjml_to_html(source: str) -> str:
    """Responsive HTML of an MJML document, by mrml (the Rust port of MJML, MIT).

    No <mj-include> is read and no web font is linked: a message needs nothing from the network.
    """
    import mrml

    try:
        return str(
            mrml.to_html(
                source,
                parser_options=mrml.ParserOptions(include_loader=mrml.noop_loader()),
                render_options=mrml.RenderOptions(fonts={}),
            ).content
        )
    except Exception as e:  # mrml raises OSError (and may raise others) for MJML it cannot read
        raise MjmlError(str(e) or type(e).__name__) from None

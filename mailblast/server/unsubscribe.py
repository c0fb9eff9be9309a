"""`mailblast unsubscribe-server`: the one-click unsubscribe endpoint (RFC 8058), behind a reverse proxy.

- ``POST`` with a genuine token (``List-Unsubscribe=One-Click``, as Gmail and Yahoo send it, or
  the confirmation page's button) records the unsubscribe at once and answers 200.
- ``GET`` shows a small page with a button that POSTs. It never unsubscribes by itself: mail
  scanners and link previews fetch every URL in a message.
- A token that is not genuine (tampered, made up, cut short) gets 400 and the same page
  whatever it holds, so nothing can be learnt about who is on a list.

The token is the last path segment (``https://example.com/unsubscribe/TOKEN``) or the ``t``
parameter, as ``[unsubscribe] url`` puts ``{{ unsubscribe_token }}`` in it.

Built on the standard library's ``http.server`` (a thread per request): two routes, no
templates, no new dependency. TLS, HTTP/2 and the public address are the proxy's job.
"""

from __future__ import annotations

import contextlib
import html
import threading
from collections.abc import Callable, Iterator
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, unquote, urlsplit

from mailblast.message.unsubscribe import ONE_CLICK, read_unsubscribe_token

DEFAULT_PORT = 8025
MAX_BODY = 4096  # a one-click POST body is 26 bytes
Record = Callable[[str, str], None]  # (campaign, address): into the suppression list

_HEADERS = {
    "Content-Type": "text/html; charset=utf-8",
    "Cache-Control": "no-store",
    "Content-Security-Policy": "default-src 'none'; style-src 'unsafe-inline'; form-action 'self'",
    "X-Frame-Options": "DENY",
    "Referrer-Policy": "no-referrer",
    "X-Content-Type-Options": "nosniff",
}
_PAGE = """<!doctype html><html lang="en"><head><meta charset="utf-8">
<meta name="viewport" content="width=device-width,initial-scale=1"><meta name="robots" content="noindex">
<title>{title}</title><style>body{{font:16px/1.5 system-ui,sans-serif;max-width:32em;margin:3em auto;
padding:0 1em}}button{{font:inherit;padding:.5em 1.2em}}</style></head>
<body><h1>{title}</h1>{body}</body></html>
"""
INVALID = "This unsubscribe link is not valid. Use the link in the most recent message you received."


def token_of(path: str) -> str:
    """The token in a request's path: ``?t=TOKEN``, or the last path segment."""
    parts = urlsplit(path)
    query = parse_qs(parts.query)
    for name in ("t", "token"):
        if query.get(name):
            return query[name][0]
    return unquote(parts.path.rstrip("/").rpartition("/")[2])


def page(title: str, body: str) -> bytes:
    return _PAGE.format(title=html.escape(title), body=body).encode()


class _Handler(BaseHTTPRequestHandler):
    server: UnsubscribeServer
    protocol_version = "HTTP/1.1"
    server_version = "mailblast-unsubscribe"
    sys_version = ""

    def do_GET(self) -> None:
        found = read_unsubscribe_token(self.server.key, token_of(self.path))
        if found is None:
            self._answer(HTTPStatus.BAD_REQUEST, page("Unsubscribe", f"<p>{INVALID}</p>"))
            return
        _, address = found
        form = (
            f"<p>Unsubscribe <b>{html.escape(address)}</b>? You will get no more of these messages.</p>"
            '<form method="post"><input type="hidden" name="List-Unsubscribe" value="One-Click">'
            "<button type=submit>Unsubscribe</button></form>"
        )
        self._answer(HTTPStatus.OK, page("Unsubscribe", form))

    def do_HEAD(self) -> None:  # link checkers: nothing happens
        self._answer(HTTPStatus.OK, b"", body=False)

    def do_POST(self) -> None:
        try:
            length = int(self.headers.get("Content-Length") or 0)
        except ValueError:
            length = -1
        if not 0 <= length <= MAX_BODY:
            self._answer(
                HTTPStatus.REQUEST_ENTITY_TOO_LARGE, page("Unsubscribe", "<p>Request too large.</p>")
            )
            return
        self.rfile.read(length)  # RFC 8058's body (List-Unsubscribe=One-Click): the token is what counts
        found = read_unsubscribe_token(self.server.key, token_of(self.path))
        if found is None:
            self._answer(HTTPStatus.BAD_REQUEST, page("Unsubscribe", f"<p>{INVALID}</p>"))
            return
        campaign, address = found
        try:
            self.server.record(campaign, address)
        except Exception as e:  # the list cannot be written: say so, so the client tries again
            self.server.log(f"error: cannot record the unsubscribe of {address}: {e}")
            self._answer(
                HTTPStatus.SERVICE_UNAVAILABLE, page("Unsubscribe", "<p>Please try again later.</p>")
            )
            return
        self.server.log(f"unsubscribed {address} (campaign {campaign})")
        done = f"<p>{html.escape(address)} is unsubscribed. You will get no more of these messages.</p>"
        self._answer(HTTPStatus.OK, page("Unsubscribed", done))

    def _answer(self, status: HTTPStatus, content: bytes, *, body: bool = True) -> None:
        self.send_response(status)
        for name, value in _HEADERS.items():
            self.send_header(name, value)
        self.send_header("Content-Length", str(len(content)))
        self.end_headers()
        if body:
            self.wfile.write(content)

    def log_message(self, format: str, *args: object) -> None:  # the base class names it format
        pass  # request lines hold tokens: only what happened is logged, by the handlers


class UnsubscribeServer(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(
        self, host: str, port: int, key: bytes, record: Record, log: Callable[[str], None] = lambda _: None
    ) -> None:
        self.key = key
        self.record = record
        self.log = log
        super().__init__((host, port), _Handler)

    @property
    def url(self) -> str:
        host, port = self.server_address[:2]
        return f"http://{host}:{port}"


@contextlib.contextmanager
def in_background(host: str, port: int, key: bytes, record: Record) -> Iterator[UnsubscribeServer]:
    server = UnsubscribeServer(host, port, key, record)
    thread = threading.Thread(target=server.serve_forever, name="mailblast-unsubscribe", daemon=True)
    thread.start()
    try:
        yield server
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=10)


__all__ = ["DEFAULT_PORT", "ONE_CLICK", "UnsubscribeServer", "in_background", "token_of"]

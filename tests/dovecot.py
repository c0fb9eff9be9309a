"""A private Dovecot IMAP server for the tests: its own config, on a free loopback port, with TLS.

Dovecot is installable with ``apt-get install dovecot-imapd``; without it the tests that need
it are skipped. Nothing of the system's Dovecot is used or touched: base_dir, state, logs and
mail all live in a temporary folder, and it listens on 127.0.0.1 only.
"""

from __future__ import annotations

import grp
import http.server
import json
import os
import pwd
import shutil
import socket
import subprocess
import tempfile
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import trustme

DOVECOT = shutil.which("dovecot") or ("/usr/sbin/dovecot" if Path("/usr/sbin/dovecot").exists() else None)


TOKEN = "good-oauth2-token"  # the one OAuth2 access token the server's introspection accepts


@dataclass
class Dovecot:
    port: int
    user: str
    password: str
    ca_pem: Path
    log: Path
    token: str = TOKEN

    def url(self, folder: str) -> str:
        return f"imaps://{self.user.replace('@', '%40')}@127.0.0.1:{self.port}/{folder}"


class _Introspection(http.server.BaseHTTPRequestHandler):
    """OAuth2 token introspection (RFC 7662) for Dovecot's oauth2 passdb: only TOKEN is active."""

    user = ""

    def _answer(self) -> None:
        body = self.rfile.read(int(self.headers.get("Content-Length") or 0)).decode()
        active = TOKEN in body or TOKEN in self.path
        data = json.dumps({"active": True, "username": self.user} if active else {"active": False}).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    do_GET = do_POST = _answer

    def log_message(self, format: str, *args: object) -> None:
        pass


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _accounts(folder: Path) -> tuple[str, str, str, int, int]:
    """(internal user, its group, login user, mail uid, mail gid): Dovecot refuses root for the
    login and mail processes, so as root it uses the users its package made."""
    if os.getuid() == 0:
        internal, login = pwd.getpwnam("dovecot"), pwd.getpwnam("dovenull")
        group = grp.getgrgid(internal.pw_gid).gr_name
        return internal.pw_name, group, login.pw_name, internal.pw_uid, internal.pw_gid
    me = pwd.getpwuid(os.getuid())
    return me.pw_name, grp.getgrgid(os.getgid()).gr_name, me.pw_name, os.getuid(), os.getgid()


def start() -> Iterator[Dovecot]:
    """A running Dovecot for the life of the generator. Its folder is outside pytest's (0700)
    temporary folders: the mail and auth processes run as Dovecot's own users."""
    assert DOVECOT is not None
    folder = Path(tempfile.mkdtemp(prefix="mailblast-dovecot-"))
    try:
        yield from _run(folder)
    finally:
        shutil.rmtree(folder, ignore_errors=True)


def _run(folder: Path) -> Iterator[Dovecot]:
    assert DOVECOT is not None
    folder.chmod(0o755)
    internal, group, login, uid, gid = _accounts(folder)
    ca = trustme.CA()
    cert = ca.issue_cert("127.0.0.1", "localhost")
    cert.cert_chain_pems[0].write_to_path(str(folder / "cert.pem"))
    cert.private_key_pem.write_to_path(str(folder / "key.pem"))
    ca.cert_pem.write_to_path(str(folder / "ca.pem"))
    user, password = "bob@example.com", "secret-imap-pw"
    (folder / "passwd").write_text(f"{user}:{{PLAIN}}{password}::::::\n")
    home = folder / "home"
    home.mkdir()
    os.chown(home, uid, gid)
    port = _free_port()
    _Introspection.user = user
    tokens = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Introspection)
    threading.Thread(target=tokens.serve_forever, daemon=True).start()
    introspect = f"http://127.0.0.1:{tokens.server_address[1]}"
    (folder / "oauth2.conf.ext").write_text(
        f"introspection_mode = post\nintrospection_url = {introspect}/introspect\n"
        f"tokeninfo_url = {introspect}/tokeninfo?access_token=\nusername_attribute = username\n"
        "active_attribute = active\nactive_value = true\nforce_introspection = yes\n"
    )
    log = folder / "dovecot.log"
    config = folder / "dovecot.conf"
    config.write_text(f"""
base_dir = {folder}/run
state_dir = {folder}/state
log_path = {log}
protocols = imap
listen = 127.0.0.1
ssl = required
ssl_cert = <{folder}/cert.pem
ssl_key = <{folder}/key.pem
default_internal_user = {internal}
default_internal_group = {group}
default_login_user = {login}
first_valid_uid = {uid}
first_valid_gid = {gid}
auth_mechanisms = plain login xoauth2 oauthbearer
mail_location = maildir:~/Maildir
service imap-login {{
  chroot =
  inet_listener imap {{
    port = 0
  }}
  inet_listener imaps {{
    address = 127.0.0.1
    port = {port}
    ssl = yes
  }}
}}
service anvil {{
  chroot =
}}
service stats {{
  unix_listener stats-reader {{
    user = {internal}
  }}
  unix_listener stats-writer {{
    user = {internal}
  }}
}}
passdb {{
  driver = oauth2
  mechanisms = xoauth2 oauthbearer
  args = {folder}/oauth2.conf.ext
}}
passdb {{
  driver = passwd-file
  args = scheme=PLAIN username_format=%u {folder}/passwd
}}
userdb {{
  driver = static
  args = uid={uid} gid={gid} home={home}/%u
}}
""")
    proc = subprocess.Popen(
        [DOVECOT, "-F", "-c", str(config)], stdout=subprocess.PIPE, stderr=subprocess.STDOUT
    )
    try:
        deadline = time.monotonic() + 30
        while True:
            with socket.socket() as s:
                if s.connect_ex(("127.0.0.1", port)) == 0:
                    break
            if proc.poll() is not None or time.monotonic() > deadline:
                out = proc.stdout.read().decode() if proc.stdout else ""
                raise RuntimeError(f"dovecot did not start: {out} {log.read_text() if log.exists() else ''}")
            time.sleep(0.05)
        yield Dovecot(port, user, password, folder / "ca.pem", log)
    finally:
        tokens.shutdown()
        tokens.server_close()
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()

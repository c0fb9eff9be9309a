"""Benchmark: `mailblast send` against a real Postfix with an ordinary server's limits (issue 8).

    python bench/bench_postfix.py            # the four cases: Postfix (if installed), then the test servers
    python bench/bench_postfix.py --servers  # only the test servers (no Postfix needed)
    python bench/bench_postfix.py --case 3 --repeat 5  # one case (1-4), five times on each server

Postfix is configured for the run exactly as in the issue and restored afterwards:
smtpd_client_message_rate_limit = 30, anvil_rate_time_unit = 10s (30 messages per 10 s per
client), smtpd_client_connection_count_limit = 3, smtpd_client_event_limit_exceptions empty
(so 127.0.0.1 is not exempt). It listens on 127.0.0.1 only and hands every message to the
discard transport; what it delivered is read from its log. Needs root (it starts Postfix):
apt-get install postfix (debconf "No configuration") brings it.

The test servers' figures come from tests/servers.py: one aiosmtpd server that refuses a 4th
connection (max_connections=3), counts messages like anvil (postfix_rate=(30, 10)) and
errors like smtpd (postfix_errors: slow replies from 10 errors on, dropped at 20).

Cases, 120 recipients each: --connections 5 without --rate; --rate 30/10s over 3 connections;
no --rate over 2 connections; kill -9 after 14 s, then the same command again.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from bench_render import TEMPLATE, make_csv  # noqa: E402 - the same message as the other benchmarks

from tests.servers import POSTFIX_ERROR_LIMITS, start_server  # noqa: E402

RECIPIENTS = 120
PORT = 2525
CONFIG = Path("/etc/postfix")
LOG = Path("/var/log/mailblast-bench-postfix.log")  # maillog_file_prefixes allows /var/log and /dev/stdout
QUIET_BETWEEN = 12.0  # seconds: anvil's windows (10 s, in whole seconds) of the last case are over
KILL_AFTER = 14.0

MAIN_CF = f"""\
compatibility_level = 3.6
myhostname = mailblast-bench.localdomain
mydestination =
inet_interfaces = loopback-only
inet_protocols = ipv4
mynetworks = 127.0.0.0/8
relay_domains = example.com
smtpd_relay_restrictions = permit_mynetworks, reject
default_transport = discard:mailblast bench
relay_transport = discard:mailblast bench
alias_maps =
alias_database =
maillog_file = {LOG}
"""
LIMITS_CF = """\
smtpd_client_message_rate_limit = 30
anvil_rate_time_unit = 10s
smtpd_client_connection_count_limit = 3
smtpd_client_event_limit_exceptions =
"""
MASTER_CF = """\
127.0.0.1:{port} inet n - n - - smtpd
pickup    unix  n       -       n       60      1       pickup
cleanup   unix  n       -       n       -       0       cleanup
qmgr      unix  n       -       n       300     1       qmgr
rewrite   unix  -       -       n       -       -       trivial-rewrite
bounce    unix  -       -       n       -       0       bounce
defer     unix  -       -       n       -       0       bounce
trace     unix  -       -       n       -       0       bounce
verify    unix  -       -       n       -       1       verify
flush     unix  n       -       n       1000?   0       flush
proxymap  unix  -       -       n       -       -       proxymap
showq     unix  n       -       n       -       -       showq
error     unix  -       -       n       -       -       error
retry     unix  -       -       n       -       -       error
discard   unix  -       -       n       -       -       discard
anvil     unix  -       -       n       -       1       anvil
scache    unix  -       -       n       -       1       scache
postlog   unix-dgram n  -       n       -       1       postlogd
"""

CASES: tuple[tuple[str, list[str]], ...] = (
    ("--connections 5, no --rate", ["--connections", "5"]),
    ("--rate 30/10s, 3 connections", ["--rate", "30/10s", "--connections", "3"]),
    ("no --rate, 2 connections", ["--connections", "2"]),
    ("kill -9 after 14 s, then again", ["--connections", "2"]),
)


@dataclass
class Result:
    delivered: int
    duplicates: int
    rejections: int  # messages refused (450 too much mail)
    refused_connects: int  # connections refused (421 too many connections)
    seconds: float
    codes: str
    uncertain: int = 0  # after the kill: in flight, reported as possible duplicates
    missing: int = 0

    def cells(self) -> list[str]:
        return [
            f"{self.delivered}/{RECIPIENTS}", str(self.duplicates), str(self.rejections),
            str(self.refused_connects), f"{self.seconds:.1f}", self.codes, str(self.uncertain),
            str(self.missing),
        ]  # fmt: skip


class Server:
    """What a case needs of a server: a URL, and afterwards what it delivered and refused."""

    url: str

    def mark(self) -> None: ...
    def delivered(self) -> Counter[str]: ...
    def rejections(self) -> tuple[int, int]: ...


class TestServer(Server):
    def __init__(self) -> None:
        self._server = start_server(
            max_connections=3, postfix_rate=(30, 10), postfix_errors=POSTFIX_ERROR_LIMITS
        )
        self.url = self._server.url
        self._from = 0
        self._rejected_from = 0

    def mark(self) -> None:
        self._from = len(self._server.received)
        self._rejected_from = len(self._server.rejected)

    def delivered(self) -> Counter[str]:
        return Counter(r for m in self._server.received[self._from :] for r in m.rcpt_tos)

    def rejections(self) -> tuple[int, int]:
        rejected = self._server.rejected[self._rejected_from :]
        return sum(r.code == 450 for r in rejected), sum(r.code == 421 for r in rejected)

    def stop(self) -> None:
        self._server.stop()


_SENT = re.compile(r"\bto=<([^>]+)>.*\bstatus=sent\b")


class Postfix(Server):
    def __init__(self, port: int = PORT) -> None:
        self.url = f"smtp://127.0.0.1:{port}"
        self._offset = 0

    def mark(self) -> None:
        self._offset = LOG.stat().st_size if LOG.exists() else 0

    def _lines(self) -> list[str]:
        with LOG.open("r", encoding="utf-8", errors="replace") as f:
            f.seek(self._offset)
            return f.read().splitlines()

    def delivered(self) -> Counter[str]:
        # The queue manager hands messages to discard a moment after they are accepted.
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline and _queue_size() > 0:
            time.sleep(0.5)
        return Counter(m.group(1) for line in self._lines() if (m := _SENT.search(line)))

    def rejections(self) -> tuple[int, int]:
        lines = self._lines()
        return (
            sum("Message delivery request rate limit exceeded" in line for line in lines),
            sum("Connection concurrency limit exceeded" in line for line in lines),
        )


def _queue_size() -> int:
    out = subprocess.run(["postqueue", "-j"], capture_output=True, text=True, check=False).stdout
    return len(out.splitlines())


@contextlib.contextmanager
def postfix_configured(limits: bool = True, port: int = PORT) -> Iterator[Postfix]:
    """Postfix with the issue's limits (or none) on ``port``; the earlier configuration is back afterwards."""
    saved = {
        name: (CONFIG / name).read_bytes() if (CONFIG / name).exists() else None
        for name in ("main.cf", "master.cf")
    }
    was_running = subprocess.run(["postfix", "status"], capture_output=True, check=False).returncode == 0
    try:
        (CONFIG / "main.cf").write_text(MAIN_CF + (LIMITS_CF if limits else ""))
        (CONFIG / "master.cf").write_text(MASTER_CF.format(port=port))
        LOG.unlink(missing_ok=True)
        subprocess.run(["postfix", "stop"], capture_output=True, check=False)
        subprocess.run(["postfix", "start"], capture_output=True, check=True)
        time.sleep(1.0)
        yield Postfix(port)
    finally:
        subprocess.run(["postfix", "stop"], capture_output=True, check=False)
        for name, content in saved.items():
            if content is None:
                (CONFIG / name).unlink(missing_ok=True)
            else:
                (CONFIG / name).write_bytes(content)
        if was_running:
            subprocess.run(["postfix", "start"], capture_output=True, check=False)


def mailblast(csv_path: Path, url: str, extra: list[str]) -> list[str]:
    return [
        sys.executable, "-m", "mailblast", "send", str(csv_path), "--smtp", url,
        "--template", str(csv_path.parent / "news.md"), "--quiet",
        "--report", str(csv_path.parent / "report.csv"), *extra,
    ]  # fmt: skip


def run_case(server: Server, work: Path, index: int, extra: list[str], kill: bool) -> Result:
    folder = work / f"case{index}-{time.monotonic_ns()}"
    folder.mkdir()
    csv_path = folder / "recipients.csv"
    make_csv(csv_path, RECIPIENTS)
    (folder / "news.md").write_text(TEMPLATE, encoding="utf-8")
    server.mark()
    args = mailblast(csv_path, server.url, extra)
    started = time.monotonic()
    codes = []
    uncertain = 0
    with (folder / "stderr.txt").open("w") as err:
        proc = subprocess.Popen(args, cwd=folder, stdout=subprocess.DEVNULL, stderr=err)
        try:
            codes.append(proc.wait(timeout=KILL_AFTER if kill else 600))
        except subprocess.TimeoutExpired:
            proc.send_signal(signal.SIGKILL if kill else signal.SIGTERM)
            codes.append(proc.wait())
        if kill:
            again = subprocess.run(
                args, cwd=folder, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True
            )
            codes.append(again.returncode)
            err.write(again.stderr)
            listed = re.search(r"in flight when the last run stopped, [^:]*: (.*)", again.stderr)
            uncertain = listed.group(1).count("row ") if listed else 0
    seconds = time.monotonic() - started
    delivered = server.delivered()
    expected = {f"user{i}@example.com" for i in range(RECIPIENTS)}
    rejections, refused = server.rejections()
    return Result(
        len(expected & delivered.keys()), sum(n - 1 for n in delivered.values() if n > 1),
        rejections, refused, seconds, "+".join(str(c) for c in codes), uncertain,
        len(expected - delivered.keys()),
    )  # fmt: skip


def run_all(
    make: Callable[[], contextlib.AbstractContextManager[Server]], work: Path, runs: list[int]
) -> list[Result]:
    """Run the cases ``runs`` (indexes into CASES, in order) on one server."""
    results = []
    with make() as server:
        for number, index in enumerate(runs):
            if number:
                time.sleep(QUIET_BETWEEN)
            results.append(run_case(server, work, index, CASES[index][1], kill=index == 3))
    return results


@contextlib.contextmanager
def test_server() -> Iterator[Server]:
    server = TestServer()
    try:
        yield server
    finally:
        server.stop()


HEADER = ["delivered", "dup", "rejected", "refused conns", "seconds", "exit", "uncertain", "missing"]
DONE_WHEN = [
    "all 120 once, <= 75 s",
    "0 rejections, <= 45 s",
    "<= 60 s",
    "none missing, <= 1 uncertain per conn",
]


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--servers", action="store_true", help="only the test servers, not Postfix")
    parser.add_argument(
        "--case", type=int, action="append", choices=range(1, len(CASES) + 1), metavar="N",
        help=f"run only case N (1-{len(CASES)}, in the order above); may be given more than once",
    )  # fmt: skip
    parser.add_argument("--repeat", type=int, default=1, metavar="K", help="run each case K times")
    options = parser.parse_args()
    if options.repeat < 1:
        parser.error("--repeat must be at least 1")
    chosen = [n - 1 for n in options.case] if options.case else list(range(len(CASES)))
    runs = [index for index in chosen for _ in range(options.repeat)]
    with tempfile.TemporaryDirectory(prefix="mailblast-bench-") as tmp:
        work = Path(tmp)
        columns: list[tuple[str, list[Result]]] = []
        if not options.servers:
            if shutil.which("postfix") is None or os.geteuid() != 0:
                print(
                    "Postfix is not installed (or not root): only the test servers' figures", file=sys.stderr
                )
            else:
                columns.append(("Postfix", run_all(postfix_configured, work, runs)))
        columns.append(("test server", run_all(test_server, work, runs)))
    print(f"| case ({RECIPIENTS} recipients) | server | " + " | ".join(HEADER) + " | done when |")
    print("|---" * (len(HEADER) + 3) + "|")
    for number, index in enumerate(runs):
        for server_name, results in columns:
            print(
                f"| {CASES[index][0]} | {server_name} | "
                + " | ".join(results[number].cells())
                + f" | {DONE_WHEN[index]} |"
            )


if __name__ == "__main__":
    main()

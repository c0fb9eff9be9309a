"""Benchmark: `mailblast send` against real servers' limits, each case beside --rate set right (issue 17).

    python bench/bench_servers.py                 # every case: Exim, Postfix, the sink, the profiles
    python bench/bench_servers.py --only exim     # the cases whose name starts with "exim"

Servers, all on 127.0.0.1 only, on ports of their own:
- Exim 4, run privately: `apt-get download exim4-daemon-light exim4-base exim4-config` and `dpkg -x`
  into --exim-cache (see /work/shared/notes/private-exim.md); it needs libidn12. Each case gets a
  fresh spool (the ratelimit database starts empty) and delivers into a Maildir of its own.
- Postfix, installed (apt-get install postfix), configured by bench_postfix.py's postfix_configured:
  anvil at 30 messages per 10 s, 3 connections per client, the discard transport.
- `mailblast serve`: a 3-per-sliding-second sink, and each `--profile` with its quota scaled down.
Needs root (Postfix, and Exim's namespace). Missing servers are skipped with a line saying so.

Cases, 120 recipients unless said; the second line of each is the same with --rate (or
--max-messages) set right, for comparison:
- Exim `ratelimit = 30 / 10s / per_mail / strict` (a moving average that counts refused attempts)
- the same limit answering only "451 Try again later" (no word of rate)
- Exim `smtp_accept_max_per_connection = 10`, 200 messages
- Postfix anvil 30/10s, 3 connections
- `serve --rate 3/s` (a sliding window), 300 messages
- each `serve --profile NAME --quota 10`: its quota reply stops the run with exit 3 and a reset hint
"""

from __future__ import annotations

import argparse
import contextlib
import mailbox
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from bench_postfix import Postfix, postfix_configured  # noqa: E402 - its setup, not a copy
from bench_render import TEMPLATE, make_csv  # noqa: E402 - the same message as the other benchmarks

from mailblast.server.profiles import PROFILES  # noqa: E402

POSTFIX_PORT = 2617
EXIM_PORT = 2618
EXIM_USER = "Debian-exim"
EXIM_UID = 64917  # only inside Exim's own mount namespace
QUIET_BETWEEN = 12.0  # seconds: Postfix's anvil windows of the last case are over
PROFILE_QUOTA = 10
SEND_TIMEOUT = 300.0  # seconds: a run still going then is interrupted (its exit is then 3)


@dataclass
class Result:
    delivered: int
    expected: int
    duplicates: int
    refusals: int  # messages or recipients refused (rate, per-connection cap, quota)
    refused_connections: int
    seconds: float
    exit: str
    note: str = ""

    def cells(self) -> list[str]:
        rate = self.delivered / self.seconds if self.seconds else 0.0
        return [
            f"{self.delivered}/{self.expected}", str(self.duplicates), str(self.refusals),
            str(self.refused_connections), f"{self.seconds:.1f}", f"{rate:.2f}", self.exit, self.note,
        ]  # fmt: skip


@dataclass
class Case:
    name: str
    server: str
    target: str
    runs: list[tuple[str, list[str]]]  # (label, extra send options)
    messages: int = 120
    setup: dict[str, str] = field(default_factory=dict)


# -- running mailblast --------------------------------------------------------------------------------


def send(folder: Path, url: str, messages: int, extra: list[str]) -> tuple[int, float, str]:
    folder.mkdir(parents=True)
    csv_path = folder / "recipients.csv"
    make_csv(csv_path, messages)
    (folder / "news.md").write_text(TEMPLATE, encoding="utf-8")
    args = [
        sys.executable, "-m", "mailblast", "send", str(csv_path), "--smtp", url, "--template",
        str(folder / "news.md"), "--quiet", "--report", str(folder / "report.csv"), *extra,
    ]  # fmt: skip
    env = {k: v for k, v in os.environ.items() if not k.startswith("MAILBLAST_")}
    started = time.monotonic()
    with (folder / "stderr.txt").open("w+") as err:
        proc = subprocess.Popen(args, cwd=folder, stdout=subprocess.DEVNULL, stderr=err, text=True, env=env)
        try:
            code = proc.wait(timeout=SEND_TIMEOUT)
        except subprocess.TimeoutExpired:  # interrupted as Ctrl-C would: the figures show how far it got
            proc.send_signal(signal.SIGINT)
            code = proc.wait()
        seconds = time.monotonic() - started
        err.seek(0)
        return code, seconds, err.read()


def maildir_counts(path: Path) -> Counter[str]:
    """How many copies of each recipient's message the Maildir holds (from Envelope-to)."""
    counts: Counter[str] = Counter()
    if not path.exists():
        return counts
    for message in mailbox.Maildir(path, create=False):
        for address in str(message.get("Envelope-to", "")).split(","):
            if address.strip():
                counts[address.strip().casefold()] += 1
    return counts


def tally(counts: Counter[str], messages: int) -> tuple[int, int]:
    expected = {f"user{i}@example.com" for i in range(messages)}
    return len(expected & counts.keys()), sum(n - 1 for n in counts.values() if n > 1)


# -- Exim, run privately --------------------------------------------------------------------------


EXIM_CONF = """\
primary_hostname = mailblast-bench.localdomain
exim_path = {binary}
spool_directory = {run}/spool
log_file_path = {run}/log/%slog
pid_file_path = {run}/exim.pid
local_interfaces = 127.0.0.1
daemon_smtp_ports = {port}
tls_advertise_hosts =
host_lookup =
rfc1413_hosts =
keep_environment =
never_users = root
exim_user = {user}
exim_group = {user}
domainlist local_domains = example.com
acl_smtp_rcpt = acl_check_rcpt
smtp_accept_max = 20
smtp_accept_max_per_connection = {per_connection}
log_selector = +smtp_connection

begin acl

acl_check_rcpt:
{acl}
  accept

begin routers

local:
  driver = accept
  domains = +local_domains
  transport = maildir

begin transports

maildir:
  driver = appendfile
  directory = {run}/mail/Maildir
  maildir_format
  envelope_to_add
  return_path_add
  user = {user}
  group = {user}
  mode = 0644

begin retry

*  *  F,1h,1m
"""

RATELIMIT_ACL = """\
  defer ratelimit = 30 / 10s / per_mail / strict
        message = {message}
"""


class Exim:
    """One private Exim daemon for one case: a fresh run folder, spool and Maildir."""

    def __init__(self, binary: Path, run: Path, *, acl: str = "", per_connection: int = 1000) -> None:
        self.binary = binary
        self.run = run
        self.url = f"smtp://127.0.0.1:{EXIM_PORT}"
        for sub in ("spool", "log", "mail", "etc"):
            (run / sub).mkdir(parents=True, exist_ok=True)
        run.chmod(0o755)
        (run / "exim.conf").write_text(
            EXIM_CONF.format(
                binary=binary, run=run, port=EXIM_PORT, user=EXIM_USER, acl=acl, per_connection=per_connection
            )
        )
        passwd = Path("/etc/passwd").read_text() + f"{EXIM_USER}:x:{EXIM_UID}:{EXIM_UID}::{run}:/bin/false\n"
        group = Path("/etc/group").read_text() + f"{EXIM_USER}:x:{EXIM_UID}:\n"
        (run / "etc" / "passwd").write_text(passwd)
        (run / "etc" / "group").write_text(group)
        for sub in ("spool", "log", "mail"):
            os.chown(run / sub, EXIM_UID, EXIM_UID)
        self._proc: subprocess.Popen[bytes] | None = None

    def __enter__(self) -> Exim:
        # The daemon drops to Debian-exim, a user that exists only in this namespace's /etc/passwd.
        script = 'mount --bind "$1" /etc/passwd && mount --bind "$2" /etc/group && shift 2 && exec "$@"'
        self._proc = subprocess.Popen(
            [
                "unshare", "-m", "--propagation", "private", "sh", "-c", script, "x",
                str(self.run / "etc" / "passwd"), str(self.run / "etc" / "group"),
                str(self.binary), "-C", str(self.run / "exim.conf"), "-bdf", "-q5s",
            ],
            stdout=subprocess.DEVNULL, stderr=(self.run / "daemon.err").open("wb"), start_new_session=True,
        )  # fmt: skip
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", EXIM_PORT), 1) as s:
                if s.recv(100).startswith(b"220"):
                    return self
            time.sleep(0.2)
        self.__exit__()
        raise RuntimeError(f"Exim did not start: {(self.run / 'daemon.err').read_text()}")

    def __exit__(self, *_: object) -> None:
        if self._proc is not None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self._proc.pid, signal.SIGTERM)
            self._proc.wait(timeout=20)
            self._proc = None

    def log(self) -> str:
        path = self.run / "log" / "mainlog"
        return path.read_text(errors="replace") if path.exists() else ""

    def result(self, messages: int, code: int, seconds: float) -> Result:
        deadline = time.monotonic() + 30  # deliveries finish a moment after the send
        while time.monotonic() < deadline and list((self.run / "spool" / "input").glob("*-D")):
            time.sleep(0.5)
        delivered, duplicates = tally(maildir_counts(self.run / "mail" / "Maildir"), messages)
        log = self.log()
        refusals = log.count("temporarily rejected RCPT") + log.count("too many messages in one connection")
        refused = len(re.findall(r"Connection from .* refused: too many connections", log))
        return Result(delivered, messages, duplicates, refusals, refused, seconds, str(code))


def exim_binary(cache: Path) -> Path | None:
    binary = cache / "root" / "usr" / "sbin" / "exim4"
    return binary if binary.exists() and shutil.which("unshare") else None


# -- mailblast serve (the sink and the profiles) -------------------------------------------------------


class Serve:
    """`mailblast serve ARGS` on a free port, its Maildir, and the refusals it printed."""

    def __init__(self, folder: Path, args: list[str]) -> None:
        self.folder = folder
        folder.mkdir(parents=True)
        self._proc = subprocess.Popen(
            [sys.executable, "-m", "mailblast", "serve", "--port", "0", "--outbox", "captured", *args],
            cwd=folder, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        )  # fmt: skip
        banner = self._proc.stdout.readline() if self._proc.stdout else ""
        found = re.search(r"smtp://127\.0\.0\.1:\d+", banner)
        if not found:
            self._proc.kill()
            raise RuntimeError(f"serve did not start: {banner}")
        self.url = found.group(0)

    def stop(self) -> list[str]:
        self._proc.send_signal(signal.SIGINT)
        out, _ = self._proc.communicate(timeout=30)
        return out.splitlines()

    def result(self, messages: int, code: int, seconds: float, note: str = "") -> Result:
        lines = [line for line in self.stop() if " refused" in line]
        refused = sum(": 421" in line and "connection" in line.lower() for line in lines)
        delivered, duplicates = tally(maildir_counts(self.folder / "captured"), messages)
        return Result(
            delivered, messages, duplicates, len(lines) - refused, refused, seconds, str(code), note
        )


# -- the cases -------------------------------------------------------------------------------------------


def exim_cases() -> list[Case]:
    return [
        Case(
            "exim ratelimit 30/10s strict", "Exim", "<= 50 s, <= 12 refusals",
            [("no --rate", []), ("--rate 3/s", ["--rate", "3/s"])],
            setup={"acl": RATELIMIT_ACL.format(message="Sending rate over limit; try again later")},
        ),
        Case(
            "exim ratelimit, '451 Try again later'", "Exim", "120/120, <= 50 s, 0 refused conns",
            [("no --rate", []), ("--rate 3/s", ["--rate", "3/s"])],
            setup={"acl": RATELIMIT_ACL.format(message="Try again later")},
        ),
        Case(
            "exim per-connection cap 10", "Exim", "<= 5 s, cap learned in a few refusals",
            [("no options", []), ("--max-messages 10", ["--max-messages", "10"])],
            messages=200, setup={"per_connection": "10"},
        ),
    ]  # fmt: skip


def run_exim(case: Case, binary: Path, work: Path) -> list[tuple[str, Result]]:
    results = []
    for label, extra in case.runs:
        run = work / f"exim-{time.monotonic_ns()}"
        with Exim(
            binary,
            run,
            acl=case.setup.get("acl", ""),
            per_connection=int(case.setup.get("per_connection", 1000)),
        ) as exim:
            code, seconds, _ = send(run / "send", exim.url, case.messages, extra)
            results.append((label, exim.result(case.messages, code, seconds)))
    return results


def run_postfix(work: Path) -> list[tuple[str, Result]]:
    results = []
    with postfix_configured(port=POSTFIX_PORT) as postfix:
        assert isinstance(postfix, Postfix)
        for number, (label, extra) in enumerate([("no --rate", []), ("--rate 3/s", ["--rate", "3/s"])]):
            if number:
                time.sleep(QUIET_BETWEEN)
            postfix.mark()
            code, seconds, _ = send(work / f"postfix-{number}", postfix.url, 120, extra)
            delivered_counts = postfix.delivered()
            delivered, duplicates = tally(
                Counter({k.casefold(): v for k, v in delivered_counts.items()}), 120
            )
            rejections, refused = postfix.rejections()
            results.append(
                (label, Result(delivered, 120, duplicates, rejections, refused, seconds, str(code)))
            )
    return results


def run_sink(work: Path) -> list[tuple[str, Result]]:
    results = []
    for number, (label, extra) in enumerate([("no --rate", []), ("--rate 3/s", ["--rate", "3/s"])]):
        sink = Serve(work / f"sink-{number}", ["--rate", "3/s"])
        code, seconds, _ = send(work / f"sink-{number}" / "send", sink.url, 300, extra)
        results.append((label, sink.result(300, code, seconds)))
    return results


def run_profile(name: str, work: Path) -> tuple[str, Result]:
    server = Serve(work / f"profile-{name}", ["--profile", name, "--quota", str(PROFILE_QUOTA)])
    code, seconds, stderr = send(work / f"profile-{name}" / "send", server.url, 120, [])
    hint = " ".join(stderr.split())
    found = re.search(r"hint: (.{0,60})", hint, re.IGNORECASE)
    note = f"hint: {found.group(1)}..." if found else "no hint"
    return f"--quota {PROFILE_QUOTA}", server.result(120, code, seconds, note)


HEADER = ["delivered", "dup", "refusals", "refused conns", "seconds", "msg/s", "exit", "note"]


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--only", default="", help="run only the cases whose name starts with this")
    parser.add_argument("--exim-cache", type=Path, default=Path("/work/exim17b/cache"),
                        help="the folder holding root/ (the .debs unpacked with dpkg -x)")  # fmt: skip
    options = parser.parse_args()
    print("| case | server | run | " + " | ".join(HEADER) + " | target |")
    print("|---" * (len(HEADER) + 4) + "|", flush=True)

    def report(case_name: str, server: str, label: str, target: str, result: Result) -> None:
        # Each row as soon as it is measured: a long run must not hide the others' figures.
        cells = " | ".join(result.cells())
        print(f"| {case_name} | {server} | {label} | {cells} | {target} |", flush=True)

    def wanted(name: str) -> bool:
        return name.startswith(options.only)

    with tempfile.TemporaryDirectory(prefix="mailblast-bench-servers-") as tmp:
        work = Path(tmp)
        work.chmod(0o755)  # Exim's user must reach its run folder
        binary = exim_binary(options.exim_cache)
        root = os.geteuid() == 0
        for case in exim_cases():
            if not wanted(case.name):
                continue
            if binary is None or not root:
                print(
                    f"{case.name}: skipped (no Exim under {options.exim_cache}/root, or not root)",
                    file=sys.stderr,
                )
                continue
            for label, result in run_exim(case, binary, work):
                report(case.name, case.server, label, case.target, result)
        if wanted("postfix anvil"):
            if shutil.which("postfix") is None or not root:
                print("postfix: skipped (not installed, or not root)", file=sys.stderr)
            else:
                for label, result in run_postfix(work):
                    report(
                        "postfix anvil 30/10s, 3 conns", "Postfix", label, "<= 40 s, <= 12 refusals", result
                    )
        if wanted("sink"):
            for label, result in run_sink(work):
                report(
                    "sink 3/s sliding, 300 msgs",
                    "serve --rate 3/s",
                    label,
                    ">= 2.6 msg/s, <= 20 refusals",
                    result,
                )
        for name in PROFILES:
            if wanted(f"profile {name}"):
                label, result = run_profile(name, work)
                report(
                    f"profile {name} quota", f"serve --profile {name}", label, "exit 3 + reset hint", result
                )


if __name__ == "__main__":
    main()

"""Benchmark: rate precision and raw throughput of `mailblast send` against real SMTP servers.

    python bench/bench_send.py              # both parts: 60 messages per rate case, 5,000 for throughput
    python bench/bench_send.py --quick      # 30 and 1,000 messages: a smoke run
    python bench/bench_send.py --part 1     # only the rate precision cases
    python bench/bench_send.py --part 2     # only the throughput cases (in-process aiosmtpd sink)
    python bench/bench_send.py --part 3     # throughput to Postfix's smtp-sink, and the journal's cost
    python bench/bench_send.py --flat 20000 # peak memory sending 20,000 vs 200,000 messages

Part 1 sends through an in-process server that allows 3 messages per sliding second and
answers like Mailtrap above that ("550 5.7.0 ... too many emails per second").
Part 2 sends to a plain sink; the sink runs in this process (one thread), so its own
capacity is measured too, with a minimal aiosmtplib client, and mailblast's speed is
shown as a fraction of it. That sink is slow Python sharing the 2 cores with mailblast's two
processes; part 3 sends to Postfix's smtp-sink (C) instead, which takes as little CPU as a
remote server would, and measures the journal's cost (apt-get install postfix brings it).

Each `mailblast send` runs in its own process (cwd: a temp dir, so no mailblast.toml
is picked up) on its own fresh copy of the recipients file, so the campaign journal
that mailblast keeps beside it starts empty; peak memory is that process's max RSS.
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import os
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from bench_render import TEMPLATE, make_csv  # noqa: E402 - the same message as the render benchmark

from tests.servers import SmtpServer, start_server  # noqa: E402

RATE = (3, 1.0)  # what the throttling server allows: 3 per sliding second
FLOOR = 0.97 * RATE[0] / (RATE[1] * 1.1)  # what --rate 3/s gives after the 10% margin, less 3%
TIMEOUT = 600.0  # seconds any one child process may run before it is killed


_runs = itertools.count(1)


def fresh_csv(work: Path, rows: int) -> Path:
    """A new recipients file in a folder of its own: no journal of an earlier run applies to it."""
    folder = work / f"run{next(_runs):02d}"
    folder.mkdir()
    path = folder / "recipients.csv"
    make_csv(path, rows)
    return path


@dataclass
class Run:
    """One child process: when it started (time.monotonic), how long it took, what it left.

    ``peak_mib`` is the largest single process's peak RSS (the child's, or a worker's); ``tree_mib``
    the peak of the whole tree's proportional set size (PSS: shared pages split between processes),
    sampled every 0.1 s, so the child and its compose workers together."""

    started: float
    wall: float
    peak_mib: float
    code: int
    stdout: str
    stderr: str
    tree_mib: float = 0.0


def measure(args: Sequence[str], cwd: Path, timeout: float = TIMEOUT) -> Run:
    """Run one child with stdout and stderr captured to files; wall time and peak RSS via wait4."""
    out_path, err_path = cwd / "child.stdout", cwd / "child.stderr"
    with out_path.open("wb") as out, err_path.open("wb") as err:
        started = time.monotonic()
        proc = subprocess.Popen(list(args), cwd=cwd, stdin=subprocess.DEVNULL, stdout=out, stderr=err)
        deadline = started + timeout
        tree_kib, next_sample = 0, started
        while True:  # bounded by the deadline
            pid, status, usage = os.wait4(proc.pid, os.WNOHANG)
            if pid:
                break
            if time.monotonic() >= next_sample:
                tree_kib, next_sample = max(tree_kib, tree_pss_kib(proc.pid)), time.monotonic() + 0.1
            if time.monotonic() > deadline:
                os.kill(proc.pid, signal.SIGKILL)
                _, status, usage = os.wait4(proc.pid, 0)
                break
            time.sleep(0.005)
        wall = time.monotonic() - started
    proc.returncode = os.waitstatus_to_exitcode(status)  # so Popen never waits for it again
    return Run(
        started,
        wall,
        usage.ru_maxrss / 1024,
        proc.returncode,
        out_path.read_text("utf-8", "replace"),
        err_path.read_text("utf-8", "replace"),
        tree_kib / 1024,
    )


def tree_pss_kib(pid: int) -> int:
    """The PSS of ``pid`` and all its descendants, in KiB (0 where /proc does not tell)."""
    total, todo = 0, [pid]
    while todo:
        current = todo.pop()
        try:
            for line in Path(f"/proc/{current}/smaps_rollup").read_text().splitlines():
                if line.startswith("Pss:"):
                    total += int(line.split()[1])
            for task in Path(f"/proc/{current}/task").iterdir():
                todo += [int(c) for c in (task / "children").read_text().split()]
        except (OSError, ValueError):
            continue  # it ended meanwhile
    return total


def send_args(csv_path: Path, server: SmtpServer, extra: Sequence[str]) -> list[str]:
    return [
        sys.executable, "-m", "mailblast", "send", str(csv_path),
        "--smtp", server.url, "--template", str(csv_path.parent.parent / "news.md"), "--quiet", *extra,
    ]  # fmt: skip


def check_failed(name: str, run: Run, expected: int = 0) -> str:
    """A note when the child's exit code is not the expected one (with its last stderr lines)."""
    if run.code == expected:
        return ""
    tail = "\n    ".join(run.stderr.strip().splitlines()[-6:])
    return f"{name}: exit code {run.code}\n    {tail}"


# --------------------------------------------------------------------------- part 1


@dataclass
class RateResult:
    name: str
    messages: int
    delivered: int
    duplicates: int
    rejections: int
    max_window: int
    rate: float  # (accepted - 1) / (last - first accepted), as the server saw them
    steady: float  # (accepted - limit) / (last - first accepted): exact when sent in bursts of `limit`
    wall: float
    code: int
    note: str


RATE_CASES: tuple[tuple[str, list[str], bool], ...] = (
    ("a) --rate 3/s, 2 conns", ["--rate", "3/s"], True),
    ("b) --rate 3/s, 1 conn", ["--rate", "3/s", "--connections", "1"], True),
    ("c) --rate 3/s, 5 conns", ["--rate", "3/s", "--connections", "5"], True),
    ("d) no --rate, 2 conns", ["--connections", "2"], False),
)


def rate_case(name: str, extra: list[str], messages: int, work: Path) -> RateResult:
    csv_path = fresh_csv(work, messages)
    with start_server(rate=RATE) as server:
        run = measure(send_args(csv_path, server, extra), work)
        received = server.received
        rejections = len(server.rejected)
        max_window = server.max_in_window(RATE[1])
    expected = {f"user{i}@example.com" for i in range(messages)}
    counts = Counter(r for msg in received for r in msg.rcpt_tos)
    delivered = len(expected & counts.keys())
    duplicates = sum(n - 1 for n in counts.values() if n > 1)
    span = received[-1].at - received[0].at if len(received) > 1 else 0.0
    rate = (len(received) - 1) / span if span > 0 else 0.0
    steady = (len(received) - RATE[0]) / span if span > 0 else 0.0
    return RateResult(
        name, messages, delivered, duplicates, rejections, max_window, rate, steady, run.wall, run.code,
        check_failed(name, run),
    )  # fmt: skip


def part1(messages: int, work: Path) -> list[str]:
    results = [rate_case(name, extra, messages, work) for name, extra, _ in RATE_CASES]
    limit = RATE[0]
    print(f"Part 1: rate precision, {messages} messages, server allows {limit} per sliding {RATE[1]:g} s")
    print(
        f"{'case':<24}{'delivered':>11}{'dups':>6}{'rejects':>9}{'max/1s':>8}"
        f"{'rate/s':>8}{'steady/s':>10}{'wall s':>8}{'exit':>6}  verdict"
    )
    notes = []
    for (_, _, limited), r in zip(RATE_CASES, results, strict=True):
        misses = []
        if r.delivered != r.messages:
            misses.append(f"{r.messages - r.delivered} lost")
        if r.duplicates:
            misses.append("duplicates")
        if r.max_window > limit:
            misses.append(f"max/1s > {limit}")
        if limited and r.rejections:
            misses.append("rejections")
        if limited and min(r.rate, r.steady) < FLOOR:
            misses.append(f"rate < {FLOOR:.2f}/s")
        if r.code != 0:
            misses.append(f"exit {r.code}")
        verdict = "ok" if not misses else "MISS: " + ", ".join(misses)
        print(
            f"{r.name:<24}{f'{r.delivered}/{r.messages}':>11}{r.duplicates:>6}{r.rejections:>9}"
            f"{r.max_window:>8}{r.rate:>8.2f}{r.steady:>10.2f}{r.wall:>8.1f}{r.code:>6}  {verdict}"
        )
        if r.note:
            notes.append(r.note)
    print(
        f"rate/s = (accepted - 1) / (last - first accepted), steady/s = (accepted - {limit}) / (same);"
        f" the first overstates bursts of {limit}, the second smooth pacing"
    )
    print(
        f"targets: a-c: 0 rejects, max/1s <= {limit}, rate/s and steady/s >= {FLOOR:.2f}"
        " (97% of 3 per 1.1 s: the limiter's margin for servers that count coarsely);"
        f" d: all delivered, none lost or duplicated, max/1s <= {limit}; all: exit 0"
    )
    return notes


# --------------------------------------------------------------------------- part 2


@dataclass
class ThroughputResult:
    name: str
    messages: int
    accepted: int
    wall: float
    to_first: float  # process start -> first accepted message (startup + the check pass)
    sending: float  # first -> last accepted message
    peak_mib: float
    code: int

    @property
    def per_second(self) -> float:
        """Accepted messages per second of the whole process (startup and check pass included)."""
        return self.accepted / self.wall


def has_option(option: str) -> bool:
    """Whether this checkout's `mailblast send` knows ``option`` (it is being developed)."""
    help_text = subprocess.run(
        [sys.executable, "-m", "mailblast", "send", "--help"],
        capture_output=True, text=True, timeout=60, env={**os.environ, "COLUMNS": "200"},
    ).stdout  # fmt: skip
    return option in help_text


def throughput_case(
    name: str, args: list[str], server: SmtpServer, messages: int, work: Path
) -> tuple[ThroughputResult, str]:
    before = len(server.received)
    run = measure(args, work)
    received = server.received[before:]
    if received:
        to_first = received[0].at - run.started
        sending = received[-1].at - received[0].at
    else:
        to_first = sending = float("nan")
    result = ThroughputResult(
        name, messages, len(received), run.wall, to_first, sending, run.peak_mib, run.code
    )
    return result, check_failed(name, run)


RAW_CLIENT_CONNECTIONS = 5


async def raw_client(url: str, eml: Path, messages: int, connections: int) -> None:
    """The least a client can do: pre-built bytes, `connections` sessions, one sendmail each."""
    import aiosmtplib

    host, port = url.removeprefix("smtp://").rsplit(":", 1)
    data = eml.read_bytes()
    per_connection = [messages // connections + (i < messages % connections) for i in range(connections)]

    async def one(index: int, count: int) -> None:
        async with aiosmtplib.SMTP(hostname=host, port=int(port), timeout=30) as smtp:
            for i in range(count):
                await smtp.sendmail("news@example.com", [f"raw{index}-{i}@example.com"], data)

    await asyncio.gather(*(one(i, n) for i, n in enumerate(per_connection)))


def one_message(work: Path) -> Path:
    """A message as mailblast renders it (send --dry-run --out), to use as the raw client's bytes."""
    csv_path = work / "one.csv"
    make_csv(csv_path, 1)
    out = work / "one-out"
    exe = [sys.executable, "-m", "mailblast", "send", str(csv_path), "--template", "news.md"]
    subprocess.run(
        [*exe, "--dry-run", "--out", str(out)], cwd=work, check=True, capture_output=True, timeout=60
    )
    (eml,) = out.glob("*.eml")
    return eml


def part2(messages: int, work: Path) -> list[str]:
    eml = one_message(work)
    raw_args = [
        sys.executable, str(Path(__file__).resolve()), "--raw-client", "URL", "--raw-eml", str(eml),
        "--raw-messages", str(messages), "--raw-connections", str(RAW_CLIENT_CONNECTIONS),
    ]  # fmt: skip
    cases = [
        ("mailblast, 1 conn", ["--connections", "1"]),
        ("mailblast, 5 conns", ["--connections", "5"]),
        ("mailblast, 5 conns, max-msg 1000", ["--connections", "5", "--max-messages", "1000"]),
    ]
    if has_option("--no-journal"):
        cases.append(("mailblast, 5 conns, --no-journal", ["--connections", "5", "--no-journal"]))
    results: list[ThroughputResult] = []
    notes = []
    with start_server() as server:
        for name, extra in cases:
            args = send_args(fresh_csv(work, messages), server, extra)
            result, note = throughput_case(name, args, server, messages, work)
            results.append(result)
            notes.extend([note] if note else [])
        args = [server.url if a == "URL" else a for a in raw_args]
        raw, note = throughput_case(
            f"raw aiosmtplib, {RAW_CLIENT_CONNECTIONS} conns", args, server, messages, work
        )
        notes.extend([note] if note else [])
    check = measure(
        [sys.executable, "-m", "mailblast", "check", str(fresh_csv(work, messages)), "--template", "news.md"],
        work,
    )
    notes.extend([n] if (n := check_failed("check", check)) else [])

    size = eml.stat().st_size
    print(f"Part 2: throughput to a plain sink (in this process), {messages:,} messages of {size:,} bytes")
    print(
        f"{'client':<34}{'accepted':>9}{'wall s':>8}{'msg/s':>8}{'start->1st s':>13}"
        f"{'sending msg/s':>14}{'peak MiB':>10}{'exit':>6}"
    )
    for r in [*results, raw]:
        sending_rate = (r.accepted - 1) / r.sending if r.sending > 0 else float("nan")
        print(
            f"{r.name:<34}{r.accepted:>9,}{r.wall:>8.2f}{r.per_second:>8,.0f}{r.to_first:>13.2f}"
            f"{sending_rate:>14,.0f}{r.peak_mib:>10.1f}{r.code:>6}"
        )
    print(
        f"`mailblast check` alone on the same file: {check.wall:.2f} s ({messages / check.wall:,.0f} rows/s)"
    )
    raw_rate = raw.per_second
    for r in results:
        rate = r.per_second
        print(f"{r.name}: {rate:,.0f} msg/s = {rate / raw_rate:.2f}x the raw client ({raw_rate:,.0f} msg/s)")
    five = results[1]
    verdict = "ok" if five.per_second >= 1500 and five.accepted == messages else "MISS"
    print(f"target: >= 1,500 msg/s with 5 connections (wall time), all accepted: {verdict}")
    return notes


def smtp_sink_path() -> str | None:
    return shutil.which("smtp-sink") or next(
        (p for p in ("/usr/sbin/smtp-sink", "/usr/lib/postfix/sbin/smtp-sink") if Path(p).exists()), None
    )


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def part3(messages: int, work: Path, repeat: int = 3) -> list[str]:
    """Throughput to Postfix's smtp-sink (C, a separate process): the server takes little CPU,
    as a real remote server would. Cases alternate, `repeat` times each; the median is shown."""
    sink = smtp_sink_path()
    if sink is None:
        print("Part 3 skipped: Postfix's smtp-sink is not installed (apt-get install postfix)")
        return []
    port = free_port()
    url = f"smtp://127.0.0.1:{port}"
    server = subprocess.Popen([sink, "-u", "root", f"127.0.0.1:{port}", "1000"], stdout=subprocess.DEVNULL)
    notes: list[str] = []
    cases = {
        "mailblast, 1 conn": ["--connections", "1"],
        "mailblast, 5 conns": ["--connections", "5"],
        "mailblast, 5 conns, --no-journal": ["--connections", "5", "--no-journal"],
    }
    eml = one_message(work)
    raw_args = [
        sys.executable, str(Path(__file__).resolve()), "--raw-client", url, "--raw-eml", str(eml),
        "--raw-messages", str(messages), "--raw-connections", str(RAW_CLIENT_CONNECTIONS),
    ]  # fmt: skip
    walls: dict[str, list[float]] = {name: [] for name in [*cases, "raw aiosmtplib, 5 conns"]}
    try:
        time.sleep(0.3)  # let smtp-sink listen
        for _ in range(repeat):
            for name, extra in cases.items():
                args = [sys.executable, "-m", "mailblast", "send", str(fresh_csv(work, messages)),
                        "--template", "news.md", "--smtp", url, "--quiet", *extra]  # fmt: skip
                run = measure(args, work)
                notes.extend([n] if (n := check_failed(name, run)) else [])
                walls[name].append(run.wall)
            run = measure(raw_args, work)
            walls["raw aiosmtplib, 5 conns"].append(run.wall)
    finally:
        server.terminate()
        server.wait(timeout=10)
    median = {name: statistics.median(w) for name, w in walls.items()}
    print(
        f"Part 3: throughput to Postfix smtp-sink, {messages:,} messages, median of {repeat} alternating runs"
    )
    print(f"{'client':<34}{'wall s (each run)':>30}{'median msg/s':>14}")
    for name, w in walls.items():
        each = " ".join(f"{x:.2f}" for x in w)
        print(f"{name:<34}{each:>30}{messages / median[name]:>14,.0f}")
    five, bare = median["mailblast, 5 conns"], median["mailblast, 5 conns, --no-journal"]
    print(f"journal cost: {five / bare - 1:+.1%} wall time (5 conns, with vs --no-journal; target <= 10%)")
    verdict = "ok" if messages / five >= 1500 else "MISS"
    print(
        f"target: >= 1,500 msg/s with 5 connections (wall time, startup and check pass included): {verdict}"
    )
    return notes


def flat_memory(messages: int, work: Path) -> list[str]:
    """Peak memory of a send of N and of 10 N messages to smtp-sink: it must not grow with N."""
    sink = smtp_sink_path()
    if sink is None:
        print("--flat skipped: Postfix's smtp-sink is not installed (apt-get install postfix)")
        return []
    port = free_port()
    server = subprocess.Popen([sink, "-u", "root", f"127.0.0.1:{port}", "1000"], stdout=subprocess.DEVNULL)
    notes: list[str] = []
    peaks = []
    try:
        time.sleep(0.3)
        print(f"{'messages':>10}{'wall s':>8}{'msg/s':>8}{'peak MiB':>10}")
        for count in (messages, messages * 10):
            csv_path = str(fresh_csv(work, count))
            args = [sys.executable, "-m", "mailblast", "send", csv_path, "--template", "news.md",
                    "--smtp", f"smtp://127.0.0.1:{port}", "--connections", "5", "--quiet"]  # fmt: skip
            run = measure(args, work)
            notes.extend([note] if (note := check_failed(f"send of {count:,}", run)) else [])
            peaks.append(run.peak_mib)
            print(f"{count:>10,}{run.wall:>8.1f}{count / run.wall:>8,.0f}{run.peak_mib:>10.1f}")
    finally:
        server.terminate()
        server.wait(timeout=10)
    print(f"peak memory at {messages * 10:,} messages is {peaks[1] / peaks[0]:.2f}x that at {messages:,}")
    return notes


# --------------------------------------------------------------------------- main


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--quick", action="store_true", help="30 and 1,000 messages instead of 60 and 5,000")
    parser.add_argument("--part", type=int, choices=(1, 2, 3), help="run only this part")
    parser.add_argument(
        "--flat", type=int, metavar="N", help="only: peak memory of sending N vs 10 N messages (smtp-sink)"
    )
    # internal: the raw client of part 2, run as a child process so it does not share the sink's GIL
    parser.add_argument("--raw-client", metavar="URL", help=argparse.SUPPRESS)
    parser.add_argument("--raw-eml", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--raw-messages", type=int, default=0, help=argparse.SUPPRESS)
    parser.add_argument("--raw-connections", type=int, default=RAW_CLIENT_CONNECTIONS, help=argparse.SUPPRESS)
    options = parser.parse_args()
    if options.raw_client:
        asyncio.run(
            raw_client(options.raw_client, options.raw_eml, options.raw_messages, options.raw_connections)
        )
        return
    rate_messages, sink_messages = (30, 1_000) if options.quick else (60, 5_000)
    notes: list[str] = []
    with tempfile.TemporaryDirectory(prefix="mailblast-bench-") as tmp:
        work = Path(tmp)
        (work / "news.md").write_text(TEMPLATE, encoding="utf-8")
        if options.flat:
            for note in flat_memory(options.flat, work):
                print(note)
            return
        if options.part in (None, 1):
            notes.extend(part1(rate_messages, work))
        if options.part is None:
            print()
        if options.part in (None, 2):
            notes.extend(part2(sink_messages, work))
        if options.part is None:
            print()
        if options.part in (None, 3):
            notes.extend(part3(sink_messages, work))
    for note in notes:
        print(note)


if __name__ == "__main__":
    main()

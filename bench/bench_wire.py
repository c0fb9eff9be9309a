"""Benchmark (issue 11): a round trip per message, local throughput, several relays, flat memory.

    python bench/bench_wire.py                 # the four parts in one run (1,000,000 rows in part 4)
    python bench/bench_wire.py --quick         # a smoke run: fewer messages, 100,000 rows in part 4
    python bench/bench_wire.py --part 1        # only one part (1 to 4)

1. Over a 40 ms link: a latency proxy on 127.0.0.1 delays each direction by 20 ms in front of
   Postfix's smtp-sink (which offers PIPELINING); msg/s with 1 and 5 connections, with and
   without --no-pipelining. Targets: >= 20 msg/s with 1 connection, >= 90 with 5.
2. Locally, 20,000 messages over 5 connections straight to smtp-sink: end-to-end msg/s (the
   whole process: start-up, check pass, journal) and peak RSS. Target: >= 3,000 msg/s.
3. Three relays ([[relay]] in mailblast.toml) at 3/s each, to three test servers that refuse
   above 3 per sliding second: 90 messages, total rate, rejections, per-relay counts.
   Target: about 10 s, 0 rejections.
4. Peak RSS of `check`, `send --dry-run` and a real send (to smtp-sink) at 1,000,000 rows.
   Target: < 100 MB each.

smtp-sink comes with Postfix (apt-get install postfix); parts 1, 2 and 4 need it. Every figure
is printed with the load average beside it: the machine may be shared.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import re
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
for path in (ROOT, ROOT / "bench"):
    if str(path) not in sys.path:
        sys.path.insert(0, str(path))

from bench_render import TEMPLATE  # noqa: E402 - the same message as the other benchmarks
from bench_send import Run, free_port, fresh_csv, measure, smtp_sink_path  # noqa: E402

from tests.servers import start_server  # noqa: E402

HOST = "127.0.0.1"
DELAY = 0.020  # seconds, each direction: a 40 ms round trip


def load() -> str:
    return f"load {os.getloadavg()[0]:.1f}"


class LatencyProxy:
    """HOST:port -> upstream, every byte delayed by ``delay`` seconds each way, in order."""

    def __init__(self, upstream: int, delay: float = DELAY) -> None:
        self.upstream = upstream
        self.delay = delay
        self.port = 0
        self._ready = threading.Event()
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def __enter__(self) -> LatencyProxy:
        self._thread.start()
        self._ready.wait(10)
        return self

    def __exit__(self, *exc: object) -> None:
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(5)

    def _run(self) -> None:
        asyncio.set_event_loop(self._loop)
        server = self._loop.run_until_complete(asyncio.start_server(self._client, HOST, 0))
        self.port = server.sockets[0].getsockname()[1]
        self._ready.set()
        self._loop.run_forever()

    async def _client(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            up_reader, up_writer = await asyncio.open_connection(HOST, self.upstream)
        except OSError:
            writer.close()
            return
        await asyncio.gather(self._pipe(reader, up_writer), self._pipe(up_reader, writer))

    async def _pipe(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        loop = asyncio.get_running_loop()
        queue: asyncio.Queue[tuple[float, bytes]] = asyncio.Queue()

        async def deliver() -> None:
            while True:
                due, data = await queue.get()
                if (wait := due - loop.time()) > 0:
                    await asyncio.sleep(wait)
                if not data:
                    writer.close()
                    return
                writer.write(data)

        delivering = asyncio.create_task(deliver())
        with contextlib.suppress(OSError):
            while data := await reader.read(65536):
                queue.put_nowait((loop.time() + self.delay, data))
        queue.put_nowait((loop.time() + self.delay, b""))
        await delivering


@contextlib.contextmanager
def smtp_sink() -> Iterator[int]:
    """Postfix's smtp-sink on a free port (it offers PIPELINING), stopped afterwards."""
    sink = smtp_sink_path()
    if sink is None:
        raise SystemExit("smtp-sink is not installed: apt-get install postfix")
    port = free_port()
    process = subprocess.Popen([sink, "-u", "root", f"{HOST}:{port}", "1000"], stdout=subprocess.DEVNULL)
    try:
        time.sleep(0.3)  # let it listen
        yield port
    finally:
        process.terminate()
        process.wait(10)


def send(csv_path: Path, url: str, *extra: str) -> Run:
    args = [sys.executable, "-m", "mailblast", "send", str(csv_path), "--template", "news.md",
            "--smtp", url, "--quiet", *extra]  # fmt: skip
    run = measure(args, csv_path.parent.parent)
    if run.code != 0:
        print(f"  ! exit {run.code}: {run.stderr.strip().splitlines()[-3:]}")
    return run


def summary_rate(run: Run) -> float:
    """The summary's average rate: messages over the sending time (start-up and check pass aside)."""
    match = re.search(r"average rate\s+([\d.,]+) msg/s", run.stderr)
    return float(match.group(1).replace(",", "")) if match else 0.0


def part1(work: Path, quick: bool) -> None:
    print(f"Part 1: over a {2 * DELAY * 1000:.0f} ms link (latency proxy) to smtp-sink; sending msg/s")
    print(f"  {'':<28}{'1 connection':>14}{'5 connections':>15}")
    with smtp_sink() as sink, LatencyProxy(sink) as proxy:
        url = f"smtp://{HOST}:{proxy.port}"
        for name, extra in (("pipelining", ()), ("--no-pipelining", ("--no-pipelining",))):
            figures = []
            for connections, messages in ((1, 60 if quick else 150), (5, 200 if quick else 600)):
                run = send(fresh_csv(work, messages), url, "--connections", str(connections), *extra)
                figures.append(f"{summary_rate(run):.1f} ({load()})")
            print(f"  {name:<28}{figures[0]:>14}  {figures[1]:>15}")
    print("  targets: >= 20 msg/s with 1 connection, >= 90 with 5 (pipelining)")


def part2(work: Path, quick: bool) -> None:
    messages = 5_000 if quick else 20_000
    print(f"Part 2: locally, {messages:,} messages over 5 connections to smtp-sink, end to end")
    with smtp_sink() as sink:
        url = f"smtp://{HOST}:{sink}"
        for name, extra in (("with the journal", ()), ("--no-journal", ("--no-journal",))):
            run = send(fresh_csv(work, messages), url, "--connections", "5", *extra)
            print(
                f"  {name:<20}{messages / run.wall:>8,.0f} msg/s  wall {run.wall:.2f} s  "
                f"sending {summary_rate(run):,.0f} msg/s  peak RSS {run.peak_mib:.0f} MiB, all processes "
                f"{run.tree_mib:.0f} MiB PSS  ({load()})"
            )
    print("  target: >= 3,000 msg/s end to end")


def part3(work: Path) -> None:
    print("Part 3: three relays at 3/s each, 90 messages")
    servers = [start_server(rate=(3, 1.0)) for _ in range(3)]
    try:
        csv_path = fresh_csv(work, 90)
        tables = "".join(
            f'[[relay]]\nname = "relay{i}"\nurl = "{s.url}"\nrate = "3/s"\nconnections = 2\n\n'
            for i, s in enumerate(servers)
        )
        (csv_path.parent / "mailblast.toml").write_text(tables)
        args = [sys.executable, "-m", "mailblast", "send", csv_path.name, "--template", "../news.md",
                "--quiet"]  # fmt: skip
        run = measure(args, csv_path.parent)
        elapsed = re.search(r"elapsed\s+([\d.]+)s", run.stderr)
        received = sum(len(s.received) for s in servers)
        rejections = sum(len(s.rejected) for s in servers)
        counts = ", ".join(f"relay{i} {len(s.received)}" for i, s in enumerate(servers))
        print(
            f"  delivered {received}/90 in {elapsed.group(1) if elapsed else '?'} s of sending "
            f"({summary_rate(run):.2f} msg/s; wall {run.wall:.1f} s), {rejections} rejections; "
            f"{counts}  ({load()})"
        )
        if run.code != 0:
            print(f"  ! exit {run.code}: {run.stderr.strip().splitlines()[-3:]}")
    finally:
        for server in servers:
            server.stop()
    print("  target: about 10 s, 0 rejections")


def part4(work: Path, rows: int) -> None:
    print(f"Part 4: peak RSS at {rows:,} rows")
    csv_path = fresh_csv(work, rows)
    common = [str(csv_path), "--template", "news.md"]
    cases = {
        "check": [sys.executable, "-m", "mailblast", "check", *common],
        "send --dry-run": [sys.executable, "-m", "mailblast", "send", *common, "--dry-run", "--quiet"],
    }
    for name, args in cases.items():
        run = measure(args, work, timeout=3600)
        print(f"  {name:<16}peak RSS {run.peak_mib:6.1f} MiB, all processes {run.tree_mib:6.1f} MiB PSS  "
              f"wall {run.wall:7.1f} s  exit {run.code}  ({load()})")  # fmt: skip
    with smtp_sink() as sink:
        run = send(csv_path, f"smtp://{HOST}:{sink}", "--connections", "5")
        print(
            f"  {'send (real)':<16}peak RSS {run.peak_mib:6.1f} MiB, all processes "
            f"{run.tree_mib:6.1f} MiB PSS  wall {run.wall:7.1f} s  exit {run.code}  "
            f"{rows / run.wall:,.0f} msg/s  ({load()})"
        )
    print("  target: < 100 MB each (peak RSS: the largest process; PSS: the main process and its workers)")


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--quick", action="store_true", help="fewer messages: a smoke run")
    parser.add_argument("--part", type=int, choices=(1, 2, 3, 4), help="run only this part")
    parser.add_argument("--rows", type=int, help="rows for part 4 (default 1,000,000; --quick 100,000)")
    args = parser.parse_args()
    rows = args.rows or (100_000 if args.quick else 1_000_000)
    with tempfile.TemporaryDirectory(prefix="mailblast-bench-wire-") as folder:
        work = Path(folder)
        (work / "news.md").write_text(TEMPLATE)
        parts = {1: lambda: part1(work, args.quick), 2: lambda: part2(work, args.quick),
                 3: lambda: part3(work), 4: lambda: part4(work, rows)}  # fmt: skip
        for number, part in parts.items():
            if args.part in (None, number):
                part()


if __name__ == "__main__":
    main()

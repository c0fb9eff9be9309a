"""Benchmark: the memory `mailblast serve` takes while several clients send large messages at once.

    python bench/bench_serve_memory.py                 # 6 clients, 24 MiB each
    python bench/bench_serve_memory.py --clients 10 --mib 10

It starts `mailblast serve` in its own process on a free loopback port, sends one message of
the given size from each client at the same time (smtplib, threads), and prints the server's
resident memory before and its peak (VmHWM, Linux) after, and the time all took. The server reads
at most DATA_AT_ONCE messages at once and caps message size and connections (server/capture.py).
"""

from __future__ import annotations

import argparse
import smtplib
import socket
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def memory(pid: int) -> dict[str, int]:
    """VmRSS and VmHWM of a process, in KiB."""
    fields = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        name, _, value = line.partition(":")
        if name in ("VmRSS", "VmHWM"):
            fields[name] = int(value.split()[0])
    return fields


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--clients", type=int, default=6)
    parser.add_argument("--mib", type=float, default=24.0, help="each message's size")
    args = parser.parse_args()
    body = b"Subject: big\r\n\r\n" + (b"x" * 76 + b"\r\n") * int(args.mib * 1024 * 1024 / 78)
    with tempfile.TemporaryDirectory(prefix="mailblast-bench-serve-") as tmp:
        port = free_port()
        serve = subprocess.Popen(
            [sys.executable, "-m", "mailblast", "serve", "--port", str(port), "--outbox", "outbox"],
            cwd=tmp,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        try:
            assert serve.stdout is not None and "capturing mail" in serve.stdout.readline()
            before = memory(serve.pid)
            errors: list[Exception] = []

            def send() -> None:
                try:
                    with smtplib.SMTP("127.0.0.1", port, timeout=300) as client:
                        client.sendmail("a@example.com", ["b@example.com"], body)
                except Exception as e:  # reported below
                    errors.append(e)

            threads = [threading.Thread(target=send) for _ in range(args.clients)]
            started = time.monotonic()
            for thread in threads:
                thread.start()
            for thread in threads:
                thread.join()
            took = time.monotonic() - started
            after = memory(serve.pid)
        finally:
            serve.terminate()
            serve.wait(timeout=30)
    print(f"{args.clients} clients x {args.mib:g} MiB, {took:.1f} s, {len(errors)} error(s)")
    rss, peak = before["VmRSS"] / 1024, after["VmHWM"] / 1024
    print(f"serve resident memory: {rss:.0f} MiB before, peak {peak:.0f} MiB")


if __name__ == "__main__":
    main()

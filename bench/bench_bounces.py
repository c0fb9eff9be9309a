"""Benchmark: `mailblast bounces` over a Maildir of N bounces, and the same run again (a no-op).

    python bench/bench_bounces.py               # 5,000 bounces (the corpus of tests/data/bounces, repeated)
    python bench/bench_bounces.py --count 20000

Each message is a corpus sample with a Message-ID and recipient of its own, so that every one is
new and suppresses someone. The user's folders are temporary ones (XDG_*), so nothing of yours is
touched. Prints messages per second for the first run, and the second run's time.
"""

from __future__ import annotations

import argparse
import mailbox
import os
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

DATA = Path(__file__).resolve().parent.parent / "tests" / "data" / "bounces"
SAMPLES = ["own/gmail_5.1.1.eml", "own/postfix_hyphen_domain.eml", "own/rfc822_headers_only.eml",
           "flufl/postfix_01.txt", "flufl/qmail_01.txt", "flufl/yahoo_01.txt", "flufl/microsoft_01.txt",
           "own/arf_complaint.eml", "own/vacation.eml"]  # fmt: skip


def build(folder: Path, count: int) -> None:
    box = mailbox.Maildir(folder, create=True)
    texts = [(DATA / name).read_bytes() for name in SAMPLES]
    for n in range(count):
        text = texts[n % len(texts)]
        # a recipient of its own: every address in it gets the message's number
        text = re.sub(rb"([A-Za-z0-9._-]+)@", lambda m, n=n: m.group(1) + b"-%d@" % n, text)
        box.add(text)


def run(folder: Path, env: dict[str, str]) -> tuple[float, str]:
    began = time.perf_counter()
    proc = subprocess.run(
        [sys.executable, "-m", "mailblast", "bounces", "Bounces"],
        cwd=folder,
        env=env,
        capture_output=True,
        text=True,
    )
    seconds = time.perf_counter() - began
    if proc.returncode != 0:
        raise SystemExit(proc.stderr)
    return seconds, proc.stdout


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--count", type=int, default=5000)
    count = parser.parse_args().count
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        env = {**os.environ, **{k: str(folder / k.lower()) for k in ("XDG_DATA_HOME", "XDG_CONFIG_HOME")}}
        build(folder / "Bounces", count)
        first, out = run(folder, env)
        suppressed = next(
            line.split()[-1] for line in out.splitlines() if line.strip().startswith("suppressed")
        )
        second, out = run(folder, env)
        assert "nothing new since the last run" in out
        print(
            f"bounces over {count:,} messages: {first:.1f} s ({count / first:,.0f} msg/s), "
            f"{suppressed} suppressed"
        )
        print(f"the same again (all read before): {second:.1f} s")


if __name__ == "__main__":
    main()

"""Benchmark: `mailblast check` with a suppression list of 100,000 vs 1,000,000 addresses.

    python bench/bench_suppress.py                # recipients 100,000 rows; lists of 100,000 and 1,000,000
    python bench/bench_suppress.py --rows 20000   # quicker

Each check runs in its own process; peak memory is that process's max RSS. The list is kept
on disk (SQLite), so peak memory should not grow with the list.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

TEMPLATE = "From: news@example.com\nSubject: Hi {{ name }}\n\nHello {{ name }}\n"
CHILD = """
import resource, sys
from mailblast.cli import app
try:
    app(sys.argv[1:])
except SystemExit:
    pass
print("MAXRSS_KIB", resource.getrusage(resource.RUSAGE_SELF).ru_maxrss, file=sys.stderr)
"""


def run_check(folder: Path, extra: list[str]) -> tuple[float, float, str]:
    args = [sys.executable, "-c", CHILD, "check", "people.csv", "-t", "t.txt", *extra]
    began = time.perf_counter()
    proc = subprocess.run(args, cwd=folder, capture_output=True, text=True, env=dict(os.environ))
    seconds = time.perf_counter() - began
    rss = next(int(line.split()[1]) for line in proc.stderr.splitlines() if line.startswith("MAXRSS_KIB"))
    suppressed = next(
        (line.split()[1] for line in proc.stdout.splitlines() if "suppressed" in line.split()[:1]), "-"
    )
    return seconds, rss / 1024, suppressed


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--rows", type=int, default=100_000)
    rows = parser.parse_args().rows
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        (folder / "t.txt").write_text(TEMPLATE)
        with (folder / "people.csv").open("w") as f:
            f.write("email,name\n")
            f.writelines(f"user{i}@example.com,User {i}\n" for i in range(rows))
        print(f"check of {rows:,} rows")
        seconds, rss, _ = run_check(folder, [])
        print(f"  no list:                    {seconds:6.2f} s  peak {rss:6.1f} MiB")
        for size in (100_000, 1_000_000):
            path = folder / f"list{size}.txt"
            with path.open("w") as f:  # every other recipient, then addresses not in the file
                f.writelines(f"USER{i * 2}@example.com\n" for i in range(size))
            seconds, rss, suppressed = run_check(folder, ["--suppress", path.name])
            print(
                f"  list of {size:>9,} addresses: {seconds:6.2f} s  peak {rss:6.1f} MiB  "
                f"suppressed {suppressed}"
            )


if __name__ == "__main__":
    main()

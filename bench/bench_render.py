"""Benchmark: rows/s and peak memory of `mailblast check` and `mailblast send --dry-run`.

    python bench/bench_render.py                 # 100,000 rows
    python bench/bench_render.py --rows 20000    # quicker
    python bench/bench_render.py --flat          # 100,000 and 1,000,000 rows: memory must stay flat
    python bench/bench_render.py --sandbox-cost  # also without Jinja's sandbox (sandbox = false), same run

Every command runs twice, interleaved: with the Markdown template as sent (an embedded image, the
default style inlined into style attributes), and the same template without them (no image,
inline_css = false); the cost of images and CSS is the ratio of the two.
Each command runs in its own process; peak memory is that process's max RSS.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

TEMPLATE = """\
From: Newsletter <news@example.com>
To: {{ mailbox(name, email) }}
Subject: Hello {{ name }}, your {{ plan }} plan 🎉

{image}# Hi {{ name }}

Your plan **{{ plan }}** renews on {{ renews }}.

- City: {{ city }}
- Thanks for being with us.
"""


def make_csv(path: Path, rows: int) -> None:
    plans = ("Free", "Pro", "Team")
    with path.open("w", encoding="utf-8", newline="") as f:
        f.write("email,name,plan,renews,city\n")
        for i in range(rows):
            f.write(f"user{i}@example.com,Zoë User {i},{plans[i % 3]},2027-01-{i % 28 + 1:02d},Zürich\n")


def measure(args: list[str], cwd: Path) -> tuple[float, float, float, int]:
    """Wall seconds, CPU seconds, peak RSS in MiB, exit code of one child process.

    CPU seconds stay meaningful on a loaded machine, where wall seconds measure the load."""
    start = time.perf_counter()
    proc = subprocess.Popen(args, cwd=cwd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    _, status, usage = os.wait4(proc.pid, 0)
    elapsed = time.perf_counter() - start
    cpu = usage.ru_utime + usage.ru_stime
    return elapsed, cpu, usage.ru_maxrss / 1024, os.waitstatus_to_exitcode(status)


PNG = bytes.fromhex(  # a 1x1 transparent PNG: what is measured is embedding, not encoding a big file
    "89504e470d0a1a0a0000000d4948445200000001000000010806000000"
    "1f15c4890000000d49444154789c6360000002000185d114090000000049454e44ae426082"
)
PLAIN = " (no image, no CSS)"


def run(rows: int, work: Path, sandbox_cost: bool = False) -> list[tuple[str, int, float, float, float]]:
    csv_path = work / f"r{rows}.csv"
    make_csv(csv_path, rows)
    (work / "logo.png").write_bytes(PNG)
    (work / "news.md").write_text(TEMPLATE.replace("{image}", "![logo](logo.png)\n\n"), encoding="utf-8")
    (work / "plain.md").write_text(TEMPLATE.replace("{image}", ""), encoding="utf-8")
    (work / "plain.toml").write_text("inline_css = false\n", encoding="utf-8")
    (work / "unsandboxed.toml").write_text("sandbox = false\n", encoding="utf-8")
    exe = [sys.executable, "-m", "mailblast"]
    commands = [
        (f"{name}{label}", [*extra, *variant])
        for name, extra in (("check", ["check"]), ("send --dry-run", ["send", "--dry-run"]))
        for label, variant in (
            ("", ["--template", "news.md"]),
            (PLAIN, ["--template", "plain.md", "--config", "plain.toml"]),
        )
    ]
    if sandbox_cost:  # interleaved, so that both see the same load
        commands = [
            (f"{name}{label}", [*extra, *config])
            for name, extra in commands
            for label, config in (("", []), (" (no sandbox)", ["--config", "unsandboxed.toml"]))
            if not (config and PLAIN in name)
        ]
    results = []
    for name, extra in commands:
        if "--template" not in extra:
            extra = [*extra, "--template", "news.md"]
        args = [*exe, *extra, str(csv_path)]
        elapsed, cpu, peak, code = measure(args, work)
        if code != 0:
            sys.exit(f"{name} failed with exit code {code}")
        results.append((name, rows, rows / elapsed, rows / cpu, peak))
    csv_path.unlink()
    return results


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--rows", type=int, default=100_000)
    parser.add_argument("--flat", action="store_true", help="also run 10x the rows and compare memory")
    parser.add_argument(
        "--sandbox-cost", action="store_true", help="also run without Jinja's sandbox and compare rows/s"
    )
    options = parser.parse_args()
    sizes = [options.rows, options.rows * 10] if options.flat else [options.rows]
    results = []
    with tempfile.TemporaryDirectory(prefix="mailblast-bench-") as tmp:
        for rows in sizes:
            results.extend(run(rows, Path(tmp), options.sandbox_cost))
    print(f"{'command':<40}{'rows':>12}{'rows/s':>10}{'rows/cpu-s':>12}{'peak MiB':>10}")
    for name, rows, rate, cpu_rate, peak in results:
        print(f"{name:<40}{rows:>12,}{rate:>10,.0f}{cpu_rate:>12,.0f}{peak:>10.1f}")
    rates = {(name, rows): (rate, cpu_rate) for name, rows, rate, cpu_rate, _ in results}
    for (name, rows), (rate, cpu_rate) in rates.items():
        if (name + PLAIN, rows) in rates:
            plain, plain_cpu = rates[(name + PLAIN, rows)]
            print(
                f"{name}, {rows:,} rows, with an image and inlined CSS: {rate:,.0f} rows/s, without: "
                f"{plain:,.0f} rows/s ({cpu_rate / plain_cpu:.2f}x the rows per CPU second)"
            )
    if options.sandbox_cost:  # by CPU time: on a shared machine wall time mostly measures the others
        rates = {(name, rows): cpu_rate for name, rows, _, cpu_rate, _ in results}
        for (name, rows), rate in rates.items():
            if (f"{name} (no sandbox)", rows) in rates:
                cost = 1 - rate / rates[(f"{name} (no sandbox)", rows)]
                print(f"{name}, {rows:,} rows: the sandbox costs {cost:.1%} of the rows per CPU second")
    if options.flat:
        for name in ("check", "send --dry-run"):
            small, large = [peak for n, _, _, _, peak in results if n == name]
            print(f"{name}: peak memory at {sizes[1]:,} rows is {large / small:.2f}x that at {sizes[0]:,}")


if __name__ == "__main__":
    main()

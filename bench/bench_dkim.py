"""Benchmark: what DKIM signing costs a send of 5,000 messages (target: at most +30% wall time).

    python bench/bench_dkim.py              # 5,000 messages, 3 alternating runs per case, every server
    python bench/bench_dkim.py --quick      # 1,000 messages, 1 run per case
    python bench/bench_dkim.py --sink aiosmtpd   # only the in-process aiosmtpd sink
    python bench/bench_dkim.py --sink smtp-sink  # only Postfix's smtp-sink (apt-get install postfix)
    python bench/bench_dkim.py --sink remote     # only aiosmtpd answering each DATA after 10 ms
    python bench/bench_dkim.py --sink postfix    # only a real Postfix (root; configured, then restored)

Each case is a whole `mailblast send` (startup and check pass included) in its own process,
5 connections, on a fresh recipients file; the cases alternate (no DKIM, RSA 2048, Ed25519) so
that load on the machine falls on all of them alike. The figure is the same-run ratio of the
median wall times, with DKIM over without. Every received message is counted, and a sample of
the signed ones is verified with dkimpy against the key's record (Postfix discards them: it
counts what it delivered, from its log).
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

import dkim  # noqa: E402
from bench_render import TEMPLATE  # noqa: E402
from bench_send import check_failed, free_port, fresh_csv, measure, smtp_sink_path  # noqa: E402

from mailblast.message.dkim_sign import dns_record, new_key  # noqa: E402
from tests.servers import start_server  # noqa: E402

CASES = ("no DKIM", "DKIM rsa-sha256 (2048)", "DKIM ed25519-sha256")
LIMIT = 1.30
REMOTE_LATENCY = 0.010  # seconds before each DATA reply: a server across a network


def write_configs(work: Path) -> dict[str, tuple[Path, bytes | None]]:
    """A mailblast.toml per case, and the DNS record that verifies its signatures."""
    configs: dict[str, tuple[Path, bytes | None]] = {}
    for case, key_type in zip(CASES, (None, "rsa", "ed25519"), strict=True):
        folder = work / f"config-{key_type or 'none'}"
        folder.mkdir()
        text = f'template = "{work / "news.md"}"\n'
        record = None
        if key_type is not None:
            pem, public = new_key(key_type)  # type: ignore[arg-type]
            (folder / "key.pem").write_bytes(pem)
            text += '\n[dkim]\ndomain = "example.com"\nselector = "bench"\nprivate_key = "key.pem"\n'
            record = dns_record("example.com", "bench", key_type, public)[1].encode()  # type: ignore[arg-type]
        (folder / "mailblast.toml").write_text(text)
        configs[case] = (folder / "mailblast.toml", record)
    return configs


def run_cases(
    url: str, messages: int, repeat: int, work: Path, configs: dict[str, tuple[Path, bytes | None]]
) -> tuple[dict[str, list[float]], list[str]]:
    walls: dict[str, list[float]] = {case: [] for case in CASES}
    notes: list[str] = []
    for _ in range(repeat):
        for case in CASES:
            config = configs[case][0]
            args = [sys.executable, "-m", "mailblast", "send", str(fresh_csv(work, messages)),
                    "--config", str(config), "--smtp", url, "--connections", "5", "--quiet"]  # fmt: skip
            run = measure(args, work)
            notes.extend([n] if (n := check_failed(case, run)) else [])
            walls[case].append(run.wall)
    return walls, notes


def report(title: str, messages: int, walls: dict[str, list[float]]) -> None:
    median = {case: statistics.median(w) for case, w in walls.items()}
    base = median[CASES[0]]
    print(title)
    print(f"{'case':<28}{'wall s (each run)':>26}{'median msg/s':>14}{'vs no DKIM':>12}")
    for case, w in walls.items():
        each = " ".join(f"{x:.2f}" for x in w)
        ratio = median[case] / base
        print(f"{case:<28}{each:>26}{messages / median[case]:>14,.0f}{ratio:>11.2f}x")
    for case in CASES[1:]:
        ratio = median[case] / base
        verdict = "ok" if ratio <= LIMIT else "MISS"
        print(f"  {case}: {ratio - 1:+.1%} wall time (target <= +{LIMIT - 1:.0%}): {verdict}")


def verify_sample(received: list[bytes], record: bytes) -> str:
    def lookup(name: bytes, timeout: int = 5) -> bytes:
        return record

    sample = received[:: max(1, len(received) // 20)]
    good = sum(bool(dkim.verify(data, dnsfunc=lookup)) for data in sample)
    return f"{good}/{len(sample)} sampled signatures verify"


def on_aiosmtpd(messages: int, repeat: int, work: Path, configs: dict, latency: float = 0.0) -> list[str]:
    with start_server(data_latency=latency) as server:
        walls, notes = run_cases(server.url, messages, repeat, work, configs)
        received = server.received
    expected = messages * repeat * len(CASES)
    kind = f"answering each DATA after {latency * 1000:.0f} ms, as a remote server" if latency else "sink"
    title = (
        f"In-process aiosmtpd {kind}, {messages:,} messages, 5 connections, median of {repeat} "
        f"alternating runs ({len(received):,} of {expected:,} messages received)"
    )
    report(title, messages, walls)
    per_run = messages
    for index, case in enumerate(CASES[1:], start=1):
        # the runs of a case: every len(CASES)-th block of `messages`
        blocks = [received[(r * len(CASES) + index) * per_run : (r * len(CASES) + index + 1) * per_run]
                  for r in range(repeat)]  # fmt: skip
        data = [m.data for block in blocks for m in block]
        print(f"  {case}: {verify_sample(data, configs[case][1])}")
    return notes


def on_smtp_sink(messages: int, repeat: int, work: Path, configs: dict) -> list[str]:
    sink = smtp_sink_path()
    if sink is None:
        print("smtp-sink skipped: Postfix's smtp-sink is not installed (apt-get install postfix)")
        return []
    port = free_port()
    server = subprocess.Popen([sink, "-u", "root", f"127.0.0.1:{port}", "1000"], stdout=subprocess.DEVNULL)
    try:
        time.sleep(0.3)  # let it listen
        walls, notes = run_cases(f"smtp://127.0.0.1:{port}", messages, repeat, work, configs)
    finally:
        server.terminate()
        server.wait(timeout=10)
    report(
        f"Postfix smtp-sink, {messages:,} messages, 5 connections, median of {repeat} runs", messages, walls
    )
    return notes


def on_postfix(messages: int, repeat: int, work: Path, configs: dict) -> list[str]:
    """A real Postfix, with no limits, delivering to discard: a local relay, as many send through."""
    if shutil.which("postfix") is None or os.geteuid() != 0:
        print("Postfix skipped: it needs root and Postfix installed (apt-get install postfix)")
        return []
    from bench_postfix import PORT, postfix_configured

    with postfix_configured(limits=False) as postfix:
        postfix.mark()
        walls, notes = run_cases(f"smtp://127.0.0.1:{PORT}", messages, repeat, work, configs)
        delivered = sum(postfix.delivered().values())
    expected = messages * repeat * len(CASES)
    report(
        f"Postfix 3 smtpd (no limits, discard transport), {messages:,} messages, 5 connections, median "
        f"of {repeat} alternating runs ({delivered:,} of {expected:,} delivered)",
        messages,
        walls,
    )
    return notes


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--quick", action="store_true", help="1,000 messages, one run per case")
    parser.add_argument(
        "--sink", choices=("aiosmtpd", "smtp-sink", "remote", "postfix"), help="only this sink"
    )
    parser.add_argument("--messages", type=int, help="messages per run [default: 5,000]")
    parser.add_argument("--repeat", type=int, help="runs per case [default: 3]")
    options = parser.parse_args()
    messages = options.messages or (1_000 if options.quick else 5_000)
    repeat = options.repeat or (1 if options.quick else 3)
    notes: list[str] = []
    with tempfile.TemporaryDirectory(prefix="mailblast-bench-dkim-") as tmp:
        work = Path(tmp)
        (work / "news.md").write_text(TEMPLATE, encoding="utf-8")
        configs = write_configs(work)
        if options.sink in (None, "smtp-sink"):
            notes.extend(on_smtp_sink(messages, repeat, work, configs))
        if options.sink is None:
            print()
        if options.sink in (None, "aiosmtpd"):
            notes.extend(on_aiosmtpd(messages, repeat, work, configs))
        if options.sink is None:
            print()
        if options.sink in (None, "remote"):
            notes.extend(on_aiosmtpd(messages, repeat, work, configs, latency=REMOTE_LATENCY))
        if options.sink is None:
            print()
        if options.sink in (None, "postfix"):
            notes.extend(on_postfix(messages, repeat, work, configs))
    for note in notes:
        print(note)


if __name__ == "__main__":
    main()

"""Faults of the machine and of the run: a full disk, a damaged or read-only journal, signals,
a killed parent. Real `mailblast` processes, real SMTP servers, real file systems."""

from __future__ import annotations

import contextlib
import csv
import io
import os
import signal
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from tests.servers import SmtpServer
from tests.test_resume import command, journal_states, people, run, start, wait_until, write_campaign

STATUS = [sys.executable, "-m", "mailblast", "status", "people.csv"]
REPORT = [sys.executable, "-m", "mailblast", "report", "people.csv"]


def report_rows(text: str) -> list[dict[str, str]]:
    return list(csv.DictReader(io.StringIO(text)))


def summary(stderr: str) -> dict[str, str]:
    """The summary table's figures by name: {"sent": "17", ...}."""
    lines = stderr[stderr.index("summary\n") :].splitlines()[1:]
    return {" ".join(line.split()[:-1]): line.split()[-1] for line in lines if line.startswith("  ")}


@contextlib.contextmanager
def tmpfs(folder: Path, size: str) -> Iterator[Path]:
    """A small file system of its own at ``folder`` (needs root); the test is skipped without one."""
    folder.mkdir()
    mounted = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(folder)], capture_output=True
    )
    if mounted.returncode != 0:
        pytest.skip("cannot mount a tmpfs here (needs root)")
    try:
        yield folder
    finally:
        subprocess.run(["umount", "-l", str(folder)], check=False)


def test_a_full_disk_stops_the_run_cleanly_and_counts_what_was_sent(
    tmp_path: Path, smtp_server: Callable[..., SmtpServer]
) -> None:
    server = smtp_server()
    write_campaign(tmp_path, people(300))
    with tmpfs(tmp_path / "small", "300k") as small:
        journal = ["--journal", str(small / "j.sqlite")]
        first = run(tmp_path, command(server.url, *journal))  # the report goes to standard output
        assert first.returncode == 3, first.stderr
        assert "the journal cannot be written: database or disk is full" in first.stderr
        assert "Traceback" not in first.stderr
        sent = len(server.received)
        assert 0 < sent < 300
        assert summary(first.stderr)["sent"] == str(sent)  # every message the server took, counted
        reported = {r["email"] for r in report_rows(first.stdout)}
        received = set(server.recipients())
        assert reported | received == {a for a, _ in people(300)}  # nobody lost
        assert not reported & received
        # room again: the same command finishes the campaign, resending only what was in flight
        subprocess.run(["mount", "-o", "remount,size=4m", str(small)], check=True)
        again = run(tmp_path, command(server.url, *journal))
        assert again.returncode == 0, again.stderr
        counts = Counter(server.recipients())
        assert set(counts) == {a for a, _ in people(300)}
        assert sum(n - 1 for n in counts.values()) <= 2  # at most one per connection


def test_a_full_disk_during_the_check_pass(tmp_path: Path, smtp_server: Callable[..., SmtpServer]) -> None:
    server = smtp_server()
    write_campaign(tmp_path, people(3000))
    with tmpfs(tmp_path / "small", "300k") as small:
        result = run(tmp_path, command(server.url, "--journal", str(small / "j.sqlite")))
    assert result.returncode == 3, result.stderr
    assert "the journal cannot be written: database or disk is full" in result.stderr
    assert "Traceback" not in result.stderr and server.received == []


@contextlib.contextmanager
def read_only(folder: Path) -> Iterator[None]:
    """Make ``folder`` and its files read-only, for root too: a read-only bind mount."""
    if os.geteuid() != 0:
        for path in [*folder.iterdir(), folder]:
            path.chmod(0o555)
        yield
        for path in [folder, *folder.iterdir()]:
            path.chmod(0o755)
        return
    mounted = subprocess.run(["mount", "--bind", "-o", "ro", str(folder), str(folder)], capture_output=True)
    if mounted.returncode != 0:
        pytest.skip("cannot make a read-only mount here")
    try:
        with pytest.raises(OSError):
            (folder / "probe").write_text("")  # really read-only
        yield
    finally:
        subprocess.run(["umount", "-l", str(folder)], check=False)


def test_status_and_report_on_a_read_only_journal(
    tmp_path: Path, smtp_server: Callable[..., SmtpServer]
) -> None:
    server = smtp_server(reject_recipients={"user1@example.com"})
    folder = tmp_path / "campaign"
    folder.mkdir()
    write_campaign(folder, people(3))
    assert run(folder, command(server.url)).returncode == 1
    with read_only(folder):
        status = run(folder, STATUS)
        assert status.returncode == 0, status.stderr
        assert "readonly" not in status.stderr and "failed" in status.stdout
        report = run(folder, REPORT)
        assert report.returncode == 0, report.stderr
        assert [r["email"] for r in report_rows(report.stdout)] == ["user1@example.com"]


def test_an_empty_journal_is_an_error_with_the_way_out(
    tmp_path: Path, smtp_server: Callable[..., SmtpServer]
) -> None:
    server = smtp_server()
    write_campaign(tmp_path, people(3))
    (tmp_path / "people.csv.mailblast.sqlite").write_bytes(b"")
    for args in (command(server.url), STATUS, REPORT):
        result = run(tmp_path, args)
        assert result.returncode == 2, result.stderr
        assert "the journal is empty (0 bytes)" in result.stderr and "--restart" in result.stderr
        assert "Traceback" not in result.stderr
    assert server.received == []  # not taken for a new campaign
    restarted = run(tmp_path, command(server.url, "--restart"))
    assert restarted.returncode == 0, restarted.stderr
    assert "kept as" in restarted.stderr and (tmp_path / "people.csv.mailblast.sqlite.damaged").exists()
    assert sorted(server.recipients()) == sorted(a for a, _ in people(3))


def test_a_damaged_journal_is_an_error_for_send_status_and_report(
    tmp_path: Path, smtp_server: Callable[..., SmtpServer]
) -> None:
    server = smtp_server()
    write_campaign(tmp_path, people(400))
    assert run(tmp_path, command(server.url)).returncode == 0
    path = tmp_path / "people.csv.mailblast.sqlite"
    data = bytearray(path.read_bytes())
    data[-4096:] = b"\xde\xad" * 2048  # one page of the recipients table
    path.write_bytes(bytes(data))
    for args in (command(server.url), STATUS, REPORT):
        result = run(tmp_path, args)
        assert result.returncode == 2, (args, result.stderr)
        assert "the journal is damaged" in result.stderr and "--restart" in result.stderr
        assert "Traceback" not in result.stderr
    assert len(server.received) == 400


def test_a_symlink_to_the_journal_shares_its_lock(
    tmp_path: Path, smtp_server: Callable[..., SmtpServer]
) -> None:
    slow = smtp_server(data_latency=30)
    write_campaign(tmp_path, people(4))
    first = start(tmp_path, command(slow.url, "--connections", "1"))
    try:
        wait_until(lambda: journal_states(tmp_path)["sending"] == 1)
        (tmp_path / "link.sqlite").symlink_to(tmp_path / "people.csv.mailblast.sqlite")
        second = run(tmp_path, command(slow.url, "--journal", "link.sqlite"))
        assert second.returncode == 2, second.stderr
        assert "another mailblast send is using link.sqlite" in second.stderr
    finally:
        first.kill()
        first.wait()


def test_an_unwritable_report_path_is_found_before_the_check_pass(tmp_path: Path) -> None:
    write_campaign(tmp_path, people(3))
    result = run(tmp_path, command("smtp://127.0.0.1:9", "--report", "no/such/folder/failed.csv"))
    assert result.returncode == 2, result.stderr
    assert "--report no/such/folder/failed.csv: cannot write" in result.stderr
    assert "journal:" not in result.stderr  # the check pass never began
    assert not (tmp_path / "people.csv.mailblast.sqlite").exists()
    existing = tmp_path / "old-report.csv"
    existing.write_text("kept\n")
    bad = (tmp_path / "people.csv").read_text() + "not-an-address,X\n"
    (tmp_path / "people.csv").write_text(bad)
    assert run(tmp_path, command("smtp://127.0.0.1:9", "--report", str(existing))).returncode == 2
    assert existing.read_text() == "kept\n"  # checked, not truncated, when nothing is sent


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM])
def test_one_signal_while_the_rate_limit_waits_reports_every_recipient(
    tmp_path: Path, smtp_server: Callable[..., SmtpServer], sig: signal.Signals
) -> None:
    server = smtp_server()
    write_campaign(tmp_path, people(3))
    proc = start(tmp_path, command(server.url, "--rate", "1/min"))  # over a minute it is a quota
    wait_until(lambda: len(server.received) == 1)
    time.sleep(0.3)
    began = time.monotonic()
    proc.send_signal(sig)
    out, err = proc.communicate(timeout=30)
    assert time.monotonic() - began < 10  # not --timeout (30 s), and not an hour
    assert proc.returncode == 3, err
    assert "interrupted: 2 recipient(s) not attempted" in err and "unknown outcome" not in err
    rows = report_rows(out)
    assert [(r["email"], r["status"], r["attempts"]) for r in rows] == [
        ("user1@example.com", "not attempted", "0"),
        ("user2@example.com", "not attempted", "0"),
    ]


def test_two_signals_report_every_recipient_and_only_real_messages_in_flight(
    tmp_path: Path, smtp_server: Callable[..., SmtpServer]
) -> None:
    server = smtp_server(data_latency=2)  # long enough that the second signal finds them in flight
    write_campaign(tmp_path, people(600))
    proc = start(tmp_path, command(server.url, "--connections", "2", "--report", "failed.csv"))
    wait_until(lambda: len(server.received) >= 2)
    proc.send_signal(signal.SIGINT)
    time.sleep(0.1)
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=30)
    assert proc.returncode == 3, err
    assert "Traceback" not in err
    time.sleep(2.5)  # the server finishes what it was given
    rows = report_rows((tmp_path / "failed.csv").read_text())
    statuses = Counter(r["status"] for r in rows)
    received = set(server.recipients())
    reported = {r["email"] for r in rows}
    assert reported | received == {a for a, _ in people(600)}  # nobody neither sent nor reported
    assert 1 <= statuses["uncertain"] <= 2  # the messages whose final reply never came
    assert f"stopped at once: {statuses['uncertain']} message(s) in flight" in err
    assert all(r["attempts"] == "1" for r in rows if r["status"] == "uncertain")
    assert journal_states(tmp_path)["sending"] == statuses["uncertain"]


def test_a_fatal_reply_reports_every_recipient(
    tmp_path: Path, smtp_server: Callable[..., SmtpServer]
) -> None:
    server = smtp_server(reply_after=(3, "535 5.7.8 Authentication credentials invalid"))
    write_campaign(tmp_path, people(50))
    result = run(tmp_path, command(server.url, "--rate", "2/s"))
    assert result.returncode == 3, result.stderr
    assert "unknown outcome" not in result.stderr
    rows = report_rows(result.stdout)
    assert {r["email"] for r in rows} | set(server.recipients()) == {a for a, _ in people(50)}


def test_skip_uncertain_says_what_is_left(tmp_path: Path, smtp_server: Callable[..., SmtpServer]) -> None:
    slow = smtp_server(data_latency=30)  # the reply never comes before the kill
    write_campaign(tmp_path, people(2))
    proc = start(tmp_path, command(slow.url, "--connections", "1"))
    wait_until(lambda: journal_states(tmp_path)["sending"] == 1)
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=30)
    slow.stop()
    server = smtp_server()
    assert run(tmp_path, command(server.url, "--skip-uncertain")).returncode == 0
    again = run(tmp_path, command(server.url, "--skip-uncertain"))
    assert again.returncode == 0, again.stderr
    assert "every recipient was sent already" not in again.stderr
    assert "nothing to send: 1 sent, 1 left out as uncertain (--skip-uncertain)" in again.stderr


def descendants(pid: int) -> set[int]:
    """Every process below ``pid``, from /proc."""
    children: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            with contextlib.suppress(OSError):
                stat = (entry / "stat").read_text()
                ppid = int(stat.rsplit(")", 1)[1].split()[1])
                children.setdefault(ppid, []).append(int(entry.name))
    found, todo = set(), [pid]
    while todo:
        for child in children.get(todo.pop(), []):
            found.add(child)
            todo.append(child)
    return found


def alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"


@pytest.mark.skipif(not Path("/proc/self/stat").exists(), reason="reads /proc")
def test_the_composer_worker_dies_with_a_killed_parent(
    tmp_path: Path, smtp_server: Callable[..., SmtpServer]
) -> None:
    slow = smtp_server(data_latency=30)
    write_campaign(tmp_path, people(3000))  # over 64 KB: composed in a worker process
    proc = start(tmp_path, command(slow.url, "--connections", "1"))
    wait_until(lambda: journal_states(tmp_path)["sending"] == 1)
    workers = descendants(proc.pid)
    assert workers, "no worker process to test"
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=30)
    wait_until(lambda: not any(alive(pid) for pid in workers), timeout=20)


def test_kill_9_among_random_451s_leaves_only_real_unknowns(
    tmp_path: Path, smtp_server: Callable[..., SmtpServer]
) -> None:
    # the case e: 30% random 451s, 3 connections, kill -9; then --skip-uncertain
    flaky = smtp_server(fail_random=(0.3, "451 4.3.0 Temporary failure"), data_latency=0.02, seed=7)
    write_campaign(tmp_path, people(300))
    proc = start(tmp_path, command(flaky.url, "--connections", "3"))
    wait_until(lambda: len(flaky.received) >= 30)
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=30)
    time.sleep(0.5)
    states = journal_states(tmp_path)
    assert states["sending"] <= 3  # only a final "." whose reply never came; a 451 is not one
    server = smtp_server()
    skipped = run(tmp_path, command(server.url, "--skip-uncertain"))
    assert skipped.returncode == 0, skipped.stderr
    in_flight = journal_states(tmp_path)["sending"]
    delivered = set(flaky.recipients()) | set(server.recipients())
    assert len(delivered) >= 300 - in_flight  # everyone else was sent
    again = run(tmp_path, command(server.url, "--skip-uncertain"))
    assert again.returncode == 0, again.stderr
    if in_flight:
        assert f"{in_flight} left out as uncertain (--skip-uncertain)" in again.stderr


def test_a_message_in_flight_before_stays_in_flight_until_it_is_really_sent(
    tmp_path: Path, smtp_server: Callable[..., SmtpServer]
) -> None:
    slow = smtp_server(data_latency=30)  # the reply never comes before the kill
    write_campaign(tmp_path, people(3))
    proc = start(tmp_path, command(slow.url, "--connections", "1"))
    wait_until(lambda: journal_states(tmp_path)["sending"] == 1)
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=30)
    slow.stop()
    refusing = smtp_server(reply_after=(0, "535 5.7.8 Authentication credentials invalid"))
    stopped = run(tmp_path, command(refusing.url))
    assert stopped.returncode == 3, stopped.stderr
    assert journal_states(tmp_path)["sending"] == 1  # not "pending": the first run may have delivered it
    healthy = smtp_server()
    again = run(tmp_path, command(healthy.url))
    assert again.returncode == 0, again.stderr
    assert "sent again, possible duplicates: row 1 user0@example.com" in again.stderr


@pytest.mark.parametrize(
    ("case", "expected"),
    [
        ("unclosed quote", "people.csv, row 1 (line 2): a quoted value is never closed"),
        ("huge value", "people.csv, row 2 (line 3): a value longer than 131,072 characters"),
        ("utf-16 without BOM", "bytes that are not valid utf-16 (UTF-16 stream does not start with BOM)"),
        ("config not UTF-8", "mailblast.toml: not UTF-8 text (byte 12 is 0xe9)"),
    ],
)
def test_input_faults_are_one_clear_error_exit_2(tmp_path: Path, case: str, expected: str) -> None:
    write_campaign(tmp_path, people(3))
    csv_path = tmp_path / "people.csv"
    args = [sys.executable, "-m", "mailblast", "check", "people.csv", "-t", "t.txt"]
    if case == "unclosed quote":
        csv_path.write_text('email,name\nuser0@example.com,"User 0\nuser1@example.com,User 1\n')
    elif case == "huge value":
        huge = "x" * (128 * 1024 + 1)
        csv_path.write_text(
            f"email,name\nuser0@example.com,A\nuser1@example.com,{huge}\nuser2@example.com,C\n"
        )
    elif case == "utf-16 without BOM":
        csv_path.write_bytes(csv_path.read_text().encode("utf-16-le"))
        args += ["--encoding", "utf-16"]
    else:
        (tmp_path / "mailblast.toml").write_bytes(b'from = "caf\xe9 <a@example.com>"\n')
    result = run(tmp_path, args)
    assert result.returncode == 2, result.stderr
    assert expected in result.stderr + result.stdout
    assert "Traceback" not in result.stderr


def test_a_report_on_a_full_disk_stops_the_run_and_the_journal_keeps_every_outcome(
    tmp_path: Path, smtp_server: Callable[..., SmtpServer]
) -> None:
    server = smtp_server(reject_recipients=lambda address: True)
    write_campaign(tmp_path, people(1000))
    with tmpfs(tmp_path / "small", "20k") as small:
        result = run(tmp_path, command(server.url, "--report", str(small / "failed.csv")))
    assert result.returncode == 3, result.stderr
    assert "the report cannot be written: No space left on device" in result.stderr
    assert "Traceback" not in result.stderr and "mailblast report" in result.stderr
    states = journal_states(tmp_path)
    # Issue 15: the whole report is written (atomically) before anything is sent; it could not be,
    # so nothing was sent (this run used to stop part-way, when the report filled the disk)
    assert states["pending"] == 1000 and server.received == []
    report = run(tmp_path, REPORT)
    assert report.returncode == 0 and len(report_rows(report.stdout)) == 1000

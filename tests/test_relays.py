"""Several relays in one run ([[relay]] in mailblast.toml), each with its own limit and pool."""

from __future__ import annotations

import json
import re
import time
from collections.abc import Callable
from pathlib import Path

from mailblast.smtp.quota import QuotaBook
from tests.servers import SmtpServer
from tests.test_send_cli import campaign, mailblast

Server = Callable[..., SmtpServer]
DAY = 86400.0


def relay_table(server: SmtpServer, name: str, *, rate: str = "3/s", extra: str = "") -> str:
    return f'[[relay]]\nname = "{name}"\nurl = "{server.url}"\nrate = "{rate}"\nconnections = 1\n{extra}\n'


def summary_value(text: str, name: str) -> int:
    match = re.search(rf"^\s*{name}\s+([\d,]+)", text, re.M)
    assert match, text
    return int(match.group(1).replace(",", ""))


def test_work_spreads_across_relays_within_each_ones_limit(tmp_path: Path, smtp_server: Server) -> None:
    servers = [smtp_server(rate=(3, 1.0)) for _ in range(3)]
    campaign(tmp_path, 27)
    config = "".join(relay_table(s, f"r{i}") for i, s in enumerate(servers))
    (tmp_path / "mailblast.toml").write_text(config)
    proc = mailblast(tmp_path, "send", "people.csv", "-t", "t.txt")
    assert proc.returncode == 0, proc.stderr
    assert "through 3 relays" in proc.stderr
    received = [address for s in servers for address in s.recipients()]
    assert sorted(received) == sorted(f"user{i}@example.com" for i in range(27))
    for server in servers:
        assert server.rejected == []  # each relay's own limit held
        assert server.max_in_window(1.0) <= 3
        assert 5 <= len(server.received) <= 13  # in proportion to the limits: about 9 each
    status = mailblast(tmp_path, "status", "people.csv", "-t", "t.txt")
    assert status.returncode == 0, status.stderr
    out = status.stdout + status.stderr
    assert "sent through" in out
    for i, server in enumerate(servers):
        assert summary_value(out, f"r{i}") == len(server.received)


def test_a_relay_that_fails_sign_in_is_dropped_and_the_others_send(
    tmp_path: Path, smtp_server: Server
) -> None:
    good = [smtp_server(), smtp_server()]
    locked = smtp_server(auth={"mailer": "right"})
    campaign(tmp_path, 12)
    user_url = locked.url.replace("://", "://mailer@")
    config = (
        relay_table(good[0], "first", rate="100/s")
        + f'[[relay]]\nname = "locked"\nurl = "{user_url}"\npassword_env = "LOCKED_PASSWORD"\n\n'
        + relay_table(good[1], "second", rate="100/s")
    )
    (tmp_path / "mailblast.toml").write_text(config)
    proc = mailblast(tmp_path, "send", "people.csv", "-t", "t.txt", env={"LOCKED_PASSWORD": "wrong"})
    assert proc.returncode == 0, proc.stderr
    assert "dropped relay locked" in proc.stderr and "535" in proc.stderr
    assert "wrong" not in proc.stderr
    assert locked.received == []
    assert sorted(good[0].recipients() + good[1].recipients()) == sorted(
        f"user{i}@example.com" for i in range(12)
    )


def test_the_run_stops_when_no_relay_is_left(tmp_path: Path, smtp_server: Server) -> None:
    locked = [smtp_server(auth={"mailer": "right"}) for _ in range(2)]
    campaign(tmp_path, 5)
    config = "".join(
        f'[[relay]]\nname = "r{i}"\nurl = "{s.url.replace("://", "://mailer@")}"\npassword_env = "P"\n\n'
        for i, s in enumerate(locked)
    )
    (tmp_path / "mailblast.toml").write_text(config)
    proc = mailblast(tmp_path, "send", "people.csv", "-t", "t.txt", env={"P": "wrong"})
    assert proc.returncode == 3, proc.stderr
    assert "535" in proc.stderr
    assert all(s.received == [] for s in locked)


def test_smtp_on_the_command_line_means_one_relay(tmp_path: Path, smtp_server: Server) -> None:
    relay, only = smtp_server(), smtp_server()
    campaign(tmp_path, 4)
    (tmp_path / "mailblast.toml").write_text(relay_table(relay, "r"))
    proc = mailblast(tmp_path, "send", "people.csv", "-t", "t.txt", "--smtp", only.url)
    assert proc.returncode == 0, proc.stderr
    assert len(only.received) == 4 and relay.received == []


def test_relay_config_mistakes_are_one_line_each(tmp_path: Path, smtp_server: Server) -> None:
    server = smtp_server()
    campaign(tmp_path, 2)
    cases = {
        f'[smtp]\nurl = "{server.url}"\n\n' + relay_table(server, "r"): "both set",
        '[[relay]]\nname = "r"\nrate = "3/s"\n': "has no url",
        relay_table(server, "r") + relay_table(server, "r"): "same name",
        f'[[relay]]\nurl = "{server.url.replace("://", "://u@")}"\npassword_env = "UNSET"\n': "UNSET",
        relay_table(server, "r", extra="passwrd = 1"): "unknown setting",
    }
    for config, words in cases.items():
        (tmp_path / "mailblast.toml").write_text(config)
        proc = mailblast(tmp_path, "send", "people.csv", "-t", "t.txt")
        assert proc.returncode == 2, (config, proc.stderr)
        assert words in proc.stderr and "Traceback" not in proc.stderr, proc.stderr
        assert server.received == []


# -- quotas that hold across runs, one account per relay ------------------------------------


def quota_relay(server: SmtpServer, name: str, user: str, rate: str) -> str:
    """A relay signed in as ``user`` (so that relays on one host are separate accounts)."""
    url = server.url.replace("://", f"://{user}@")
    return (
        f'[[relay]]\nname = "{name}"\nurl = "{url}"\nrate = "{rate}"\nconnections = 1\n'
        f'password_env = "{user.upper()}_PASSWORD"\n\n'
    )


def quota_env(tmp_path: Path) -> dict[str, str]:
    # the quota database lives in this test's own state folder
    return {"MAILBLAST_STATE_DIR": str(tmp_path / "state"), "ALICE_PASSWORD": "a-pw", "BOB_PASSWORD": "b-pw"}


def used_earlier(tmp_path: Path, account: str, limit: int, period: float, at: float) -> None:
    """An earlier run used all of ``account``'s quota of ``limit`` per ``period``, at ``at``."""
    book = QuotaBook(tmp_path / "state")
    for _ in range(limit):
        assert book.take(account, limit, period, at) is None
    book.close()


def quota_servers(smtp_server: Server) -> tuple[SmtpServer, SmtpServer]:
    return smtp_server(auth={"alice": "a-pw"}), smtp_server(auth={"bob": "b-pw"})


def test_each_relay_keeps_its_own_quota_and_the_run_stops_when_all_are_used(
    tmp_path: Path, smtp_server: Server
) -> None:
    a, b = quota_servers(smtp_server)
    env = quota_env(tmp_path)
    first, second = tmp_path / "first", tmp_path / "second"
    for folder, n in ((first, 8), (second, 2)):
        folder.mkdir()
        campaign(folder, n)
        (folder / "mailblast.toml").write_text(
            quota_relay(a, "a", "alice", "3/d") + quota_relay(b, "b", "bob", "2/d")
        )
    before = time.time()
    proc = mailblast(first, "send", "people.csv", "-t", "t.txt", env=env)
    assert proc.returncode == 3, proc.stderr
    assert len(a.received) == 3 and len(b.received) == 2  # each relay's own quota held
    assert len(set(a.recipients() + b.recipients())) == 5
    err = proc.stderr
    assert "relay a: quota 3/d for alice at 127.0.0.1: 0 used, 3 left" in err
    assert "relay b: quota 2/d for bob at 127.0.0.1: 0 used, 2 left" in err
    # the first used up is dropped, once, and its messages go through the other
    assert err.count("warning: dropped relay") == 1 and "its messages go through" in err
    assert re.search(
        r"dropped relay [ab] \(the quota of [23]/d for (alice|bob) at 127.0.0.1 is used; the next may go at ",
        err,
    )
    assert (
        "the quotas of relays a (3/d for alice at 127.0.0.1), b (2/d for bob at 127.0.0.1) are used: "
        "5 sent in this run, 3 left; the next may go at " in err
    )
    assert "run the same command again then" in err and "--wait" in err and "Traceback" not in err
    # the summary says what each relay took, and why each stopped
    assert summary_value(err, "a") == 3 and summary_value(err, "b") == 2
    assert re.search(
        r"^\s*a dropped: the quota of 3/d for alice at 127.0.0.1 is used; the next may go at ", err, re.M
    )
    assert re.search(r"^\s*b dropped: the quota of 2/d for bob at 127.0.0.1 is used", err, re.M)

    connections = a.connections + b.connections
    for folder, left in ((second, 2), (first, 3)):  # another campaign through the accounts; a resume
        proc = mailblast(folder, "send", "people.csv", "-t", "t.txt", env=env)
        assert proc.returncode == 3, proc.stderr
        assert f"0 sent in this run, {left} left; the next may go at " in proc.stderr
        assert re.search(r"the next may go at .* through [ab]\n", proc.stderr)
        assert "relay a: quota 3/d for alice at 127.0.0.1: 3 used, 0 left" in proc.stderr
    assert len(a.received) == 3 and len(b.received) == 2
    assert a.connections + b.connections == connections  # stopped before connecting

    status = mailblast(first, "status", "people.csv", "-t", "t.txt", env=env)
    assert status.returncode == 0, status.stderr
    out = status.stdout + status.stderr
    assert "relay a: quota 3/d for alice at 127.0.0.1: 3 used, 0 left; the next may go at" in out
    assert "relay b: quota 2/d for bob at 127.0.0.1: 2 used, 0 left; the next may go at" in out
    assert summary_value(out, "a") == 3 and summary_value(out, "b") == 2
    assert time.time() - before < 60


def test_a_relay_used_up_by_an_earlier_run_sends_nothing_and_the_other_sends_all(
    tmp_path: Path, smtp_server: Server
) -> None:
    a, b = quota_servers(smtp_server)
    env = quota_env(tmp_path)
    used_earlier(tmp_path, "alice at 127.0.0.1", 3, DAY, time.time())
    campaign(tmp_path, 6)
    (tmp_path / "mailblast.toml").write_text(
        quota_relay(a, "a", "alice", "3/d") + quota_relay(b, "b", "bob", "50/d")
    )
    proc = mailblast(tmp_path, "send", "people.csv", "-t", "t.txt", "--json", env=env)
    assert proc.returncode == 0, proc.stderr
    assert sorted(b.recipients()) == sorted(f"user{i}@example.com" for i in range(6))
    assert a.received == [] and a.connections == 0  # not even signed in
    assert (
        "relay a: quota 3/d for alice at 127.0.0.1: 3 used, 0 left; the next may go at " in proc.stderr
        and "it sends nothing in this run" in proc.stderr
    )
    assert "relay b: quota 50/d for bob at 127.0.0.1: 0 used, 50 left" in proc.stderr
    facts = json.loads(proc.stdout)
    assert [(r["name"], r["took"]) for r in facts["relays"]] == [("a", 0), ("b", 6)]
    assert facts["relays"][0]["dropped"].startswith("the quota of 3/d for alice at 127.0.0.1 is used")
    assert facts["relays"][1]["dropped"] is None


def test_a_relay_whose_next_slot_is_minutes_away_lets_the_others_send(
    tmp_path: Path, smtp_server: Server
) -> None:
    a, b = quota_servers(smtp_server)
    env = quota_env(tmp_path)
    # both leave the hour's window in 60 s: within the wait, so a waits (or rests), not stops
    used_earlier(tmp_path, "alice at 127.0.0.1", 2, 3600.0, time.time() - 3600.0 + 60.0)
    campaign(tmp_path, 5)
    (tmp_path / "mailblast.toml").write_text(
        quota_relay(a, "a", "alice", "2/h") + quota_relay(b, "b", "bob", "100/s")
    )
    began = time.monotonic()
    proc = mailblast(tmp_path, "send", "people.csv", "-t", "t.txt", env=env)
    assert proc.returncode == 0, proc.stderr
    assert time.monotonic() - began < 50  # a's held message did not wait for a's slot
    assert a.received == [] and len(b.received) == 5
    assert proc.stderr.count("the other relays send meanwhile") <= 1
    assert "relay a: the quota of 2/h for alice at 127.0.0.1 is used until" in proc.stderr


def test_a_resting_relay_takes_messages_again_once_its_slot_is_free(
    tmp_path: Path, smtp_server: Server
) -> None:
    a, b = quota_servers(smtp_server)
    env = quota_env(tmp_path)
    used_earlier(tmp_path, "alice at 127.0.0.1", 2, 3600.0, time.time() - 3600.0 + 3.0)  # free in 3 s
    campaign(tmp_path, 6)
    (tmp_path / "mailblast.toml").write_text(
        quota_relay(a, "a", "alice", "2/h") + quota_relay(b, "b", "bob", "1/s")
    )
    proc = mailblast(tmp_path, "send", "people.csv", "-t", "t.txt", env=env)
    assert proc.returncode == 0, proc.stderr
    # b alone needs 5 s or more for 6 at 1/s: a comes back after its rest and sends too, within its quota
    assert 1 <= len(a.received) <= 2 and len(a.received) + len(b.received) == 6
    assert sorted(a.recipients() + b.recipients()) == sorted(f"user{i}@example.com" for i in range(6))


def test_with_wait_a_used_up_relay_rests_while_the_other_sends(tmp_path: Path, smtp_server: Server) -> None:
    a, b = quota_servers(smtp_server)
    env = quota_env(tmp_path)
    used_earlier(tmp_path, "alice at 127.0.0.1", 3, DAY, time.time())
    campaign(tmp_path, 4)
    (tmp_path / "mailblast.toml").write_text(
        quota_relay(a, "a", "alice", "3/d") + quota_relay(b, "b", "bob", "50/d")
    )
    began = time.monotonic()
    proc = mailblast(tmp_path, "send", "people.csv", "-t", "t.txt", "--wait", env=env)
    assert proc.returncode == 0, proc.stderr
    assert time.monotonic() - began < 60  # nothing waited for a's slot, a day away
    assert a.received == [] and len(b.received) == 4
    assert "relay a: the quota of 3/d for alice at 127.0.0.1 is used until" in proc.stderr
    assert "dropped" not in proc.stderr

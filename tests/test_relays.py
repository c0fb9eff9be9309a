"""Several relays in one run ([[relay]] in mailblast.toml), each with its own limit and pool."""

from __future__ import annotations

import re
from collections.abc import Callable
from pathlib import Path

from tests.servers import SmtpServer
from tests.test_send_cli import campaign, mailblast

Server = Callable[..., SmtpServer]


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

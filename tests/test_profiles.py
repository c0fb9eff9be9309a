"""`mailblast serve --profile NAME`: each provider's limits and replies, and a send stopped by its quota."""

from __future__ import annotations

import mailbox
import re
import signal
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

from mailblast.errors import ConfigError
from mailblast.server.capture import Limits, ProviderRules
from mailblast.server.profiles import PROFILES, profile_limits
from mailblast.smtp.replies import Cause, Kind, classify
from mailblast.smtp.urls import Rate
from tests.servers import child_environ
from tests.test_send_cli import campaign, mailblast


def reply_verdict(reply: str) -> tuple[Kind, Cause, str | None]:
    code, _, text = reply.partition(" ")
    verdict = classify(int(code), text)
    return verdict.kind, verdict.cause, verdict.provider


@pytest.mark.parametrize("name", list(PROFILES))
def test_each_profile_answers_as_its_provider(name: str) -> None:
    limits = PROFILES[name].limits
    assert reply_verdict(limits.replies.quota)[:2] == (Kind.FATAL, Cause.QUOTA_USED_UP)
    if limits.rate is not None:
        assert reply_verdict(limits.replies.rate)[:2] == (Kind.THROTTLED, Cause.THROTTLE)
    if limits.max_connections is not None:
        assert reply_verdict(limits.replies.connections)[:2] == (Kind.THROTTLED, Cause.CONNECTION_CAP)
    if limits.max_messages is not None:
        assert reply_verdict(limits.replies.per_connection)[1] is Cause.PER_CONNECTION_CAP


def test_a_quota_counts_accepted_messages_then_refuses_every_mail() -> None:
    rules = ProviderRules(profile_limits("ses", Limits(rate=Rate(100, 1.0), quota=2)), clock=lambda: 0.0)
    assert [rules.mail(0), rules.data(), rules.mail(1), rules.data()] == [None] * 4
    assert rules.mail(0) == "454 Throttling failure: Daily message quota exceeded."


def test_given_options_override_a_profiles_figures() -> None:
    limits = profile_limits("Postfix", Limits(max_connections=5, quota=7))
    assert (limits.rate, limits.max_connections, limits.quota) == (Rate(30, 10.0), 5, 7)
    assert limits.describe().startswith("Postfix's limits: at most 30/10s, 5 connection(s) at once")
    with pytest.raises(ConfigError, match="no such profile"):
        profile_limits("hotmail", Limits())


@contextmanager
def serve(tmp_path: Path, *args: str) -> Iterator[str]:
    """`mailblast serve ARGS` on a free port; yields its URL."""
    proc = subprocess.Popen(
        [sys.executable, "-m", "mailblast", "serve", "--port", "0", "--outbox", "captured", *args],
        cwd=tmp_path,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=child_environ(),
    )
    try:
        banner = proc.stdout.readline() if proc.stdout else ""
        found = re.search(r"smtp://127\.0\.0\.1:\d+", banner)
        assert found, banner + (proc.stderr.read() if proc.stderr else "")
        yield found.group(0)
    finally:
        proc.send_signal(signal.SIGINT)
        proc.communicate(timeout=30)


HINTS = {
    "ses": "SES: a rolling 24 hours",
    "gmail": "Gmail: a rolling 24 hours",
    "m365": "Microsoft 365: a rolling 24 hours",
    "mailtrap": "Mailtrap: the monthly limit",
    "postfix": "the server does not say when the quota frees",
    "exim": "cPanel's Exim: the last hour",
}


@pytest.mark.parametrize("name", list(PROFILES))
def test_a_providers_quota_reply_stops_the_send_with_its_reset_rule(tmp_path: Path, name: str) -> None:
    campaign(tmp_path, 5)
    with serve(tmp_path, "--profile", name, "--quota", "2") as url:
        proc = mailblast(tmp_path, "send", "people.csv", "-t", "t.txt", "--smtp", url)
    assert proc.returncode == 3, proc.stderr
    assert HINTS[name] in " ".join(proc.stderr.split()), proc.stderr
    assert "pass --rate" in proc.stderr or name in ("mailtrap", "postfix") or "empty" in proc.stderr
    assert "run the same command again" in proc.stderr  # and resume once it frees
    assert len(mailbox.Maildir(tmp_path / "captured", create=False)) == 2  # the quota, no more

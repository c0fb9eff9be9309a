"""The provider reply table: every real reply is read as its provider means it."""

from __future__ import annotations

from pathlib import Path

import pytest

from mailblast.smtp.providers import KNOWN_REPLIES, Cause, KnownReply, recognise
from mailblast.smtp.replies import Kind, classify

SES = "Amazon SES"


def split(reply: str) -> tuple[int, str]:
    code, _, text = reply.partition(" ")
    return int(code), text


@pytest.mark.parametrize("known", KNOWN_REPLIES, ids=lambda k: f"{k.provider}: {k.example[:40]}")
def test_each_example_is_recognised_as_its_own_entry(known: KnownReply) -> None:
    code, text = split(known.example)
    assert recognise(code, text) is known
    verdict = classify(code, text, recipient=known.cause is Cause.RECIPIENT)
    assert (verdict.cause, verdict.provider, verdict.reset_hint) == (known.cause, known.provider, known.rule)


@pytest.mark.parametrize(
    ("reply", "kind", "cause", "provider"),
    [
        # a spent quota stops the run even as a 4xx; the same "Throttling failure" for the rate slows it
        ("454 Throttling failure: Daily message quota exceeded.", Kind.FATAL, Cause.QUOTA_USED_UP, SES),
        ("454 Throttling failure: Maximum sending rate exceeded.", Kind.THROTTLED, Cause.THROTTLE, SES),
        ("550 5.4.5 Daily user sending quota exceeded. - gsmtp", Kind.FATAL, Cause.QUOTA_USED_UP, "Gmail"),
        ("550 5.4.5 Daily SMTP relay limit exceeded for user.", Kind.FATAL, Cause.QUOTA_USED_UP,
         "Google Workspace"),
        ("554 5.2.0 STOREDRV.Submission.Exception:SubmissionQuotaExceededException; Failed to process "
         "message due to a permanent exception", Kind.FATAL, Cause.QUOTA_USED_UP, "Microsoft 365"),
        # Microsoft's connection cap is a 432, which reads as a plain temporary failure by its code
        ("432 4.3.2 STOREDRV.ClientSubmit; sender thread limit exceeded", Kind.THROTTLED,
         Cause.CONNECTION_CAP, "Microsoft 365"),
        # Mailtrap answers too many connections with 535, the sign-in code: not a wrong password
        ("535 5.7.8 Too many connections per account", Kind.THROTTLED, Cause.CONNECTION_CAP, "Mailtrap"),
        ("535 5.7.0 Monthly messages limit reached", Kind.FATAL, Cause.QUOTA_USED_UP, "Mailtrap"),
        ("421 4.7.0 [TSS04] Messages from 203.0.113.9 temporarily deferred due to unexpected volume or "
         "user complaints - 4.16.55.1; see https://postmaster.yahooinc.com/error-codes", Kind.THROTTLED,
         Cause.THROTTLE, "Yahoo"),
        ("421 4.7.0 mail.example.net Error: too many connections from 127.0.0.1", Kind.THROTTLED,
         Cause.CONNECTION_CAP, "Postfix"),
        ("450 4.7.1 Error: too much mail from 127.0.0.1", Kind.THROTTLED, Cause.THROTTLE, "Postfix"),
        ("421 too many messages in this connection", Kind.THROTTLED, Cause.PER_CONNECTION_CAP, "Exim"),
        ("421 mx.example.net: Too many concurrent SMTP connections; please try again later", Kind.THROTTLED,
         Cause.CONNECTION_CAP, "Exim"),
        ("421 Too many concurrent SMTP connections", Kind.THROTTLED, Cause.CONNECTION_CAP, SES),
        ("550 Domain example.com has exceeded the max emails per hour (200/200 (100%)) allowed.  Message "
         "discarded.", Kind.FATAL, Cause.QUOTA_USED_UP, "Exim"),
        # neutral: no provider, no cause; telling a throttle from these is the sender's job
        ("451 Try again later", Kind.TRANSIENT, Cause.NONE, None),
    ],
)  # fmt: skip
def test_real_replies(reply: str, kind: Kind, cause: Cause, provider: str | None) -> None:
    verdict = classify(*split(reply))
    assert (verdict.kind, verdict.cause, verdict.provider) == (kind, cause, provider)


def test_every_quota_entry_says_when_it_frees() -> None:
    for known in KNOWN_REPLIES:
        if known.cause is Cause.QUOTA_USED_UP:
            assert any(word in known.rule for word in ("24 hours", "hour", "billing period", "empty"))


def test_accepted_and_lost_replies_are_never_a_provider_refusal() -> None:
    assert recognise(None, "Throttling failure: Daily message quota exceeded.") is None
    assert classify(250, "Throttling failure: Daily message quota exceeded.").kind is Kind.OK


def test_the_readme_lists_every_known_reply() -> None:
    readme = (Path(__file__).resolve().parent.parent / "README.md").read_text(encoding="utf-8")
    for known in KNOWN_REPLIES:
        example = known.example.replace("|", "\\|")  # a table cell's pipe
        assert f"| {known.provider} | `{example}` | {known.cause.value} |" in readme

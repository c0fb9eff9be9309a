"""Tests for mailblast.smtp.replies."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from mailblast.smtp.replies import Cause, Kind, Verdict, classify, connection_lost

QUOTA = Cause.QUOTA_USED_UP
OK, THROTTLED, TRANSIENT, PERMANENT, FATAL = (
    Kind.OK,
    Kind.THROTTLED,
    Kind.TRANSIENT,
    Kind.PERMANENT,
    Kind.FATAL,
)

CASES = [
    # accepted
    (250, "2.0.0 OK: queued as 12345", OK),
    (250, "Ok", OK),
    (354, "End data with <CR><LF>.<CR><LF>", OK),
    # fatal: authentication
    (535, "5.7.8 Username and Password not accepted.", FATAL),
    (535, "Authentication credentials invalid", FATAL),
    (534, "5.7.9 Application-specific password required.", FATAL),
    (530, "5.7.0 Authentication Required.", FATAL),
    (538, "5.7.11 Encryption required for requested authentication mechanism", FATAL),
    (550, "5.7.8 Error: authentication failed", FATAL),
    (554, "5.7.9 Authentication mechanism is too weak", FATAL),
    (550, "5.7.0 Auth required to send", FATAL),
    (550, "5.7.0 Invalid credentials for relay", FATAL),
    # fatal: the daily quota is used up
    (550, "5.4.5 Daily user sending quota exceeded.", FATAL),
    (550, "5.4.5 Daily sending limit reached", FATAL),
    (554, "Daily message limit exceeded for this account", FATAL),
    (550, "Sending quota exceeded", FATAL),
    (
        554,
        "5.2.0 STOREDRV.Submission.Exception:SubmissionQuotaExceededException",
        FATAL,
    ),
    (550, "You have reached your limit of 500 messages per day", FATAL),
    # throttled
    (421, "4.7.0 Try again later, closing connection.", THROTTLED),
    (421, "4.7.0 mx Error: too many connections from 127.0.0.1", THROTTLED),
    (450, "4.7.1 Error: too much mail from 127.0.0.1", THROTTLED),
    (421, "4.7.28 Our system has detected an unusual rate of unsolicited mail", THROTTLED),
    (451, "4.7.1 Please try again later", THROTTLED),
    (451, "4.4.5 Server busy", THROTTLED),
    (454, "Throttling failure: Maximum sending rate exceeded.", THROTTLED),
    (550, "5.7.0 Requested action not taken: too many emails per second", THROTTLED),
    (550, "5.7.1 Rate limit exceeded", THROTTLED),
    (554, "Sending rate exceeded, slow down", THROTTLED),
    (550, "Too many connections from your IP", THROTTLED),
    (550, "Max 100 messages per minute", THROTTLED),
    (550, "Limit of 1000 per hour reached", THROTTLED),
    (550, "Message throttled", THROTTLED),
    (550, "5.7.1 ratelimit hit", THROTTLED),
    (451, "4.3.0 Too many messages, slow down", THROTTLED),
    # transient
    # Gmail: one recipient's mailbox gets too much mail, not the sender too fast (see providers.py)
    (450, "4.2.1 The user you are trying to contact is receiving mail too quickly", TRANSIENT),
    (451, "4.3.0 Temporary server error. Please try again", TRANSIENT),
    (451, "4.4.1 No answer from host", TRANSIENT),
    # a 421, 450, 452 or 454 is not a throttle unless it says so: only 4.7.x, x.4.5 and the words
    (421, "Service not available", TRANSIENT),
    (421, "4.4.2 Connection dropped due to timeout", TRANSIENT),
    (450, "4.2.0 Mailbox busy", TRANSIENT),
    (452, "4.2.2 Mailbox full", TRANSIENT),
    (452, "4.3.1 Insufficient system storage", TRANSIENT),
    (452, "4.5.3 Too many recipients", TRANSIENT),
    (454, "4.3.0 Try again later", TRANSIENT),
    (441, "4.4.1 Recipient server did not respond", TRANSIENT),
    (None, "timed out", TRANSIENT),
    (0, "connection refused", TRANSIENT),
    (-1, "connection dropped", TRANSIENT),
    (199, "nonsense", TRANSIENT),
    (600, "nonsense", TRANSIENT),
    # permanent
    (550, "5.1.1 The email account that you tried to reach does not exist.", PERMANENT),
    (550, "5.1.1 User unknown", PERMANENT),
    (553, "5.1.3 Invalid address", PERMANENT),
    (501, "5.5.4 Syntax error in parameters", PERMANENT),
    (552, "5.3.4 Message size exceeds fixed maximum message size", PERMANENT),
    (554, "Please try again later", PERMANENT),
    (554, "5.7.1 Relay access denied", PERMANENT),
    (550, "5.7.1 Sender not authorized", PERMANENT),
    (550, "5.7.0 Policy violation", PERMANENT),
    (552, "5.2.2 Mailbox quota exceeded", PERMANENT),
    (552, "The recipient's inbox is full: quota exceeded", PERMANENT),
    # "rate" only as a word
    (550, "Please use a separate sender address", PERMANENT),
    (550, "Could not generate a message id", PERMANENT),
    (550, "Address is not accurate", PERMANENT),
    (550, "Message rated as spam", PERMANENT),
    (550, "Message looks like spam; try again with a different body", PERMANENT),
]


@pytest.mark.parametrize(("code", "text", "kind"), CASES)
def test_classify(code: int | None, text: str, kind: Kind) -> None:
    verdict = classify(code, text)
    assert verdict.kind is kind
    assert verdict.text == text
    assert verdict.is_retryable == (kind in (THROTTLED, TRANSIENT))


@pytest.mark.parametrize(
    ("code", "text", "kind"),
    [
        (452, "4.2.2 Mailbox full", TRANSIENT),
        (450, "4.7.1 <a@example.com>: Recipient address rejected: greylisted", TRANSIENT),
        (451, "4.7.1 Service unavailable - try again later", TRANSIENT),
        (450, "4.7.1 Error: too much mail from 127.0.0.1", THROTTLED),
        (452, "4.2.2 Too many messages per hour for this sender", THROTTLED),
        (550, "5.1.1 User unknown", PERMANENT),
    ],
)
def test_a_refused_recipient_is_that_recipients_trouble(code: int, text: str, kind: Kind) -> None:
    assert classify(code, text, recipient=True).kind is kind


@pytest.mark.parametrize(
    ("text", "enhanced"),
    [
        ("5.7.0 Requested action not taken", "5.7.0"),
        ("  4.7.28 Unusual rate", "4.7.28"),
        ("5.7.520 Access denied", "5.7.520"),
        ("2.0.0 OK", "2.0.0"),
        ("User unknown 5.1.1", None),
        ("5.1 nope", None),
        ("3.1.1 not a class", None),
        ("5.1.1x", None),
        ("", None),
    ],
)
def test_enhanced_code_comes_from_the_start_of_the_text(text: str, enhanced: str | None) -> None:
    assert classify(550, text).enhanced_code == enhanced


@pytest.mark.parametrize(
    ("text", "seconds"),
    [
        ("4.7.0 Try again in 30 seconds", 30.0),
        ("Rate limited, retry after 2 minutes", 120.0),
        ("try again in 1 min", 60.0),
        ("Please wait 90s before sending more", 90.0),
        ("Retry in 1.5 hours", 5400.0),
        ("TRY AGAIN IN 10 SECS", 10.0),
        ("try again in 5m", 300.0),
        ("try again later", None),
        ("try again in a while", None),
        ("retry after 5 mails", None),
    ],
)
def test_retry_after(text: str, seconds: float | None) -> None:
    assert classify(421, text).retry_after == seconds


def test_no_reply_has_no_code() -> None:
    for verdict in (classify(0, "timed out"), classify(-1, "timed out"), classify(None, "")):
        assert verdict.code is None
        assert verdict.kind is TRANSIENT
    lost = connection_lost()
    assert lost == Verdict(TRANSIENT, None, None, None, "connection lost")
    assert lost.describe() == "connection lost"
    assert classify(None, "").describe() == "no reply"


def test_describe_is_one_line() -> None:
    assert classify(550, "5.1.1 User unknown").describe() == "550 5.1.1 User unknown"
    assert classify(421, "4.7.0 Slow down\n4.7.0  see https://example.com/help").describe() == (
        "421 4.7.0 Slow down 4.7.0 see https://example.com/help"
    )
    assert classify(250, "").describe() == "250"


def test_verdict_is_frozen() -> None:
    verdict = classify(250, "OK")
    with pytest.raises(AttributeError):
        verdict.kind = FATAL  # type: ignore[misc]


@given(code=st.integers(0, 999), text=st.text())
def test_classify_never_raises(code: int, text: str) -> None:
    verdict = classify(code, text)
    assert isinstance(verdict.kind, Kind)
    assert "\n" not in verdict.describe()
    if 200 <= code < 400:
        assert verdict.kind is OK
    if 400 <= code < 500:
        assert verdict.is_retryable or verdict.cause is Cause.QUOTA_USED_UP


@pytest.mark.parametrize(
    ("code", "text", "kind", "cause"),
    [
        (250, "2.0.0 OK", OK, Cause.NONE),
        (None, "connection lost", TRANSIENT, Cause.NONE),
        (535, "5.7.8 Username and Password not accepted.", FATAL, Cause.SIGN_IN),
        (530, "5.7.0 Authentication Required.", FATAL, Cause.SIGN_IN),
        (550, "5.4.5 Daily user sending limit exceeded.", FATAL, Cause.QUOTA_USED_UP),
        (554, "5.2.0 STOREDRV.Submission.Exception:SubmissionQuotaExceededException", FATAL, QUOTA),
        # SES says "Throttling" but a spent daily quota is not a rate: retrying for hours cannot help
        (454, "Throttling failure: Daily message quota exceeded.", FATAL, Cause.QUOTA_USED_UP),
        (454, "Throttling failure: Maximum sending rate exceeded.", THROTTLED, Cause.THROTTLE),
        (450, "4.7.1 Error: too much mail from 127.0.0.1", THROTTLED, Cause.THROTTLE),
        (452, "4.2.2 Too many messages per hour for this sender", THROTTLED, Cause.THROTTLE),
        (421, "4.7.0 mx Error: too many connections from 127.0.0.1", THROTTLED, Cause.CONNECTION_CAP),
        (421, "Too many concurrent SMTP connections", THROTTLED, Cause.CONNECTION_CAP),
        (421, "4.7.0 too many messages in this connection", THROTTLED, Cause.PER_CONNECTION_CAP),
        (421, "mx.example.com lost input connection", TRANSIENT, Cause.NONE),
        (550, "5.1.1 User unknown", PERMANENT, Cause.RECIPIENT),
        (452, "4.2.2 Mailbox full", TRANSIENT, Cause.RECIPIENT),
        (552, "5.2.2 Mailbox quota exceeded", PERMANENT, Cause.RECIPIENT),
        (452, "4.5.3 Your message has too many recipients.", TRANSIENT, Cause.RECIPIENT),
        # a neutral "try again later" says nothing of why: telling a throttle by behaviour is the sender's job
        (451, "Try again later", TRANSIENT, Cause.NONE),
        (451, "4.3.0 Temporary server error. Please try again", TRANSIENT, Cause.NONE),
        (554, "5.7.1 Relay access denied", PERMANENT, Cause.NONE),
    ],
)
def test_cause(code: int | None, text: str, kind: Kind, cause: Cause) -> None:
    verdict = classify(code, text)
    assert (verdict.kind, verdict.cause) == (kind, cause)


def test_a_recipients_own_temporary_refusal_is_that_recipients() -> None:
    verdict = classify(450, "4.7.1 <a@example.com>: Recipient address rejected: greylisted", recipient=True)
    assert (verdict.kind, verdict.cause) == (TRANSIENT, Cause.RECIPIENT)


def test_verdicts_built_without_a_cause_have_none() -> None:
    verdict = Verdict(FATAL, None, None, None, "interrupted")
    assert (verdict.cause, verdict.provider, verdict.reset_hint) == (Cause.NONE, None, None)

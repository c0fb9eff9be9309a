"""Real providers' refusals, word for word, and what each means for a run: pure data and matching.

A reply's code says little: Amazon SES answers a spent daily quota with "454 Throttling failure",
Mailtrap a connection cap with a 535 (the sign-in code), Gmail one recipient's flood with "too
quickly". :data:`KNOWN_REPLIES` maps each provider's exact wording to a :class:`Cause` and to the
provider's own rule for when it frees, so that a stop can say when to come back and what ``--rate``
keeps the account under its limit next time. Replies not in the table are read by their code and
words (mailblast.smtp.replies). The README lists this table; `mailblast serve --profile NAME`
answers with these same replies.
"""

from __future__ import annotations

import enum
import re
from dataclasses import dataclass


class Cause(enum.Enum):
    """Why the server refused, as far as its reply says; NONE when it does not say (or accepted).

    The reply's Kind says what to do with the message; the Cause says what to do with the run: a
    THROTTLE slows it, a CONNECTION_CAP opens fewer connections, a PER_CONNECTION_CAP reconnects
    after fewer messages (without slowing down), QUOTA_USED_UP and SIGN_IN stop it, RECIPIENT is
    one address's trouble.
    """

    NONE = "none"
    THROTTLE = "throttle"  # too fast: messages or recipients per unit of time
    QUOTA_USED_UP = "quota used up"  # the account's allowance (per day, rolling 24 h, month) is spent
    CONNECTION_CAP = "connection cap"  # too many connections at once, or opened too fast
    PER_CONNECTION_CAP = "per-connection cap"  # too many messages in one connection: reconnect
    RECIPIENT = "recipient"  # this recipient only (unknown, mailbox full, too many in one message)
    SIGN_IN = "sign-in"  # authentication required or refused


@dataclass(frozen=True)
class KnownReply:
    """One provider's reply: its exact text, what it means, and that provider's rule for it."""

    provider: str
    cause: Cause
    example: str  # the reply as the provider sends it (its documentation's words)
    rule: str  # when it frees, or what keeps the account under it next time
    pattern: re.Pattern[str]  # found in "CODE TEXT", its whitespace collapsed


def _known(provider: str, cause: Cause, example: str, rule: str, pattern: str) -> KnownReply:
    return KnownReply(provider, cause, example, rule, re.compile(pattern, re.IGNORECASE))


SES, GMAIL, WORKSPACE, M365 = "Amazon SES", "Gmail", "Google Workspace", "Microsoft 365"
YAHOO, MAILTRAP, POSTFIX, EXIM = "Yahoo", "Mailtrap", "Postfix", "Exim"

SES_QUOTA_RULE = (
    "SES: a rolling 24 hours (the quota frees as the messages sent 24 hours earlier age out); "
    "pass --rate N/d, N your account's daily sending quota, to keep the account under it"
)
GMAIL_QUOTA_RULE = (
    "Gmail: a rolling 24 hours, counted in recipients (about 500 a day for a gmail.com account, "
    "2,000 for Google Workspace); pass --rate 500/d (2000/d on Workspace) to keep the account under it"
)
M365_QUOTA_RULE = (
    "Microsoft 365: a rolling 24 hours, 10,000 recipients a day per mailbox; pass --rate 10000/d "
    "to keep the mailbox under it"
)
MAILTRAP_QUOTA_RULE = (
    "Mailtrap: the monthly limit of the plan frees when the next billing period starts (or upgrade the plan)"
)
CPANEL_QUOTA_RULE = (
    "cPanel's Exim: the last hour, per domain (the limit is in the reply); pass --rate N/h below it"
)

# Sources, for each provider's block:
# SES: https://docs.aws.amazon.com/ses/latest/dg/troubleshoot-smtp.html (SMTP response codes) and
#   https://docs.aws.amazon.com/ses/latest/dg/manage-sending-quotas-errors.html (both 454s).
# Gmail / Google Workspace: https://support.google.com/a/answer/3726730 (Gmail SMTP errors and
#   codes), https://support.google.com/a/answer/166852 (sending limits: rolling 24 hours).
# Microsoft 365: https://learn.microsoft.com/en-us/exchange/troubleshoot/send-emails/smtp-submission-improvements
#   (3 connections, 30 messages a minute, 10,000 recipients a day, the 432 and 554 replies),
#   https://learn.microsoft.com/en-us/exchange/mail-flow-best-practices/non-delivery-reports-in-exchange-online/
#   (5.1.90, 5.7.233), https://aka.ms/smtp_auth_disabled (5.7.139).
# Yahoo: https://senders.yahooinc.com/smtp-error-codes/ and https://help.yahoo.com/kb/SLN3434.html
#   (TS* deferrals: "retry sending emails 4 hours after encountering the error").
# Mailtrap: https://help.mailtrap.io/article/44-features-and-limits (rate per 10 s, monthly limit)
#   and https://help.mailtrap.io/article/100-sending-limits (10 connections, 100 messages each).
# Postfix: smtpd(8) and postconf(5) (anvil's smtpd_client_*_limit, smtpd_recipient_limit); the
#   texts are src/smtpd/smtpd.c's, and bench/bench_servers.py sees them from a real Postfix.
# Exim: src/smtp_in.c (smtp_accept_max, smtp_accept_max_per_host, smtp_accept_max_per_connection);
#   cPanel's per-domain hourly limit: the "max emails per hour" line in its Exim logs and bounces.
KNOWN_REPLIES: tuple[KnownReply, ...] = (
    _known(
        SES, Cause.QUOTA_USED_UP, "454 Throttling failure: Daily message quota exceeded.",
        SES_QUOTA_RULE, r"throttling failure: daily message quota exceeded",
    ),
    _known(
        SES, Cause.THROTTLE, "454 Throttling failure: Maximum sending rate exceeded.",
        "SES: your account's maximum send rate, per second; pass --rate N/s below it",
        r"throttling failure: maximum sending rate exceeded",
    ),
    _known(
        SES, Cause.CONNECTION_CAP, "421 Too many concurrent SMTP connections",
        "SES: fewer connections at once (--connections)", r"^421 too many concurrent smtp connections\.?$",
    ),
    _known(
        SES, Cause.SIGN_IN, "535 Authentication Credentials Invalid",
        "SES: SMTP credentials are not the AWS access keys; create them under SMTP settings",
        r"^535 (?:authentication credentials invalid|account not subscribed to ses)",
    ),
    _known(
        GMAIL, Cause.QUOTA_USED_UP, "550 5.4.5 Daily user sending limit exceeded.",
        GMAIL_QUOTA_RULE, r"5\.4\.5 daily (?:user )?sending (?:limit|quota) exceeded",
    ),
    _known(
        WORKSPACE, Cause.QUOTA_USED_UP, "550 5.4.5 Daily SMTP relay limit exceeded for user.",
        "Google Workspace SMTP relay: a rolling 24 hours, 10,000 recipients per user; "
        "pass --rate 10000/d to keep under it",
        r"daily smtp relay limit exceeded for (?:user|customer)",
    ),
    _known(
        WORKSPACE, Cause.THROTTLE, "450 4.2.1 Peak SMTP relay limit exceeded for customer.",
        "Google Workspace SMTP relay: a short-term peak; slow down", r"peak smtp relay limit exceeded",
    ),
    _known(
        GMAIL, Cause.THROTTLE,
        "421 4.7.28 Our system has detected an unusual rate of unsolicited mail originating from your "
        "IP address. To protect our users from spam, mail sent from your IP address has been "
        "temporarily rate limited.",
        "Gmail: the sending IP's reputation; slow down and see Google's bulk sender guidelines",
        r"unusual rate of unsolicited mail|temporarily rate limited",
    ),
    _known(
        GMAIL, Cause.CONNECTION_CAP, "421 4.7.0 Try again later, closing connection.",
        "Gmail: connections opened too fast (a denial-of-service guard at HELO); open fewer",
        r"^421 4\.7\.0 try again later, closing connection",
    ),
    _known(
        GMAIL, Cause.RECIPIENT,
        "450 4.2.1 The user you are trying to contact is receiving mail too quickly. Please resend "
        "your message at a later time.",
        "Gmail: that one mailbox receives too much mail; retry it later",
        r"user you are trying to contact is receiving mail (?:too quickly|at a rate)",
    ),
    _known(
        GMAIL, Cause.RECIPIENT, "452 4.5.3 Your message has too many recipients.",
        "Gmail: at most 100 recipients a message over SMTP", r"your message has too many recipients",
    ),
    _known(
        GMAIL, Cause.SIGN_IN, "534 5.7.9 Application-specific password required.",
        "Gmail: with 2-step verification, sign in with an app password",
        r"5\.7\.9 application-specific password required",
    ),
    _known(
        M365, Cause.QUOTA_USED_UP,
        "554 5.2.0 STOREDRV.Submission.Exception:SubmissionQuotaExceededException",
        M365_QUOTA_RULE, r"submissionquotaexceeded",
    ),
    _known(
        M365, Cause.QUOTA_USED_UP,
        "550 5.1.90 Your message can't be sent because you've reached your daily limit for message "
        "recipients.",
        M365_QUOTA_RULE, r"daily limit for message recipients",
    ),
    _known(
        M365, Cause.QUOTA_USED_UP,
        "550 5.7.233 Your message can't be sent because your tenant has exceeded its daily limit for "
        "sending email to external recipients (tenant external recipient rate limit).",
        "Microsoft 365: the whole tenant's external recipients over a rolling 24 hours",
        r"tenant external recipient rate limit",
    ),
    _known(
        M365, Cause.QUOTA_USED_UP,
        "554 5.2.2 mailbox full; STOREDRV.Submission.Exception:QuotaExceededException."
        "MapiExceptionShutoffQuotaExceeded",
        "Microsoft 365: the sending mailbox is full (Sent Items keeps every message sent over SMTP); "
        "empty it, or give Sent Items a retention policy",
        r"storedrv\.submission\.exception:quotaexceededexception",
    ),
    _known(
        M365, Cause.CONNECTION_CAP, "432 4.3.2 Concurrent connections limit exceeded.",
        "Microsoft 365: at most 3 connections at once per mailbox; pass --connections 3",
        r"^432 4\.3\.2 (?:concurrent connections limit exceeded|storedrv\.clientsubmit; sender thread limit)",
    ),
    _known(
        M365, Cause.SIGN_IN,
        "535 5.7.139 Authentication unsuccessful, SmtpClientAuthentication is disabled for the Tenant.",
        "Microsoft 365: an administrator must turn SMTP AUTH on for the mailbox (aka.ms/smtp_auth_disabled)",
        r"smtpclientauthentication is disabled",
    ),
    _known(
        YAHOO, Cause.THROTTLE,
        "421 4.7.0 [TSS04] Messages from 192.0.2.1 temporarily deferred due to unexpected volume or "
        "user complaints - 4.16.55.1; see https://postmaster.yahooinc.com/error-codes",
        "Yahoo: deferred for the sending IP's volume or complaints; Yahoo asks to retry 4 hours later",
        r"\[ts\w*\] messages from .* (?:temporarily )?deferred|message temporarily deferred - \[?\d",
    ),
    _known(
        MAILTRAP, Cause.THROTTLE, "550 5.7.0 Requested action not taken: too many emails per second",
        "Mailtrap: a number of messages per 10 seconds, set by the plan; pass --rate N/10s below it",
        r"requested action not taken: too many emails per second",
    ),
    _known(
        MAILTRAP, Cause.QUOTA_USED_UP, "535 5.7.0 Monthly messages limit reached",
        MAILTRAP_QUOTA_RULE, r"monthly messages limit reached",
    ),
    _known(
        MAILTRAP, Cause.CONNECTION_CAP, "535 5.7.8 Too many connections per account",
        "Mailtrap: at most 10 connections at once per account", r"too many connections per account",
    ),
    _known(
        POSTFIX, Cause.CONNECTION_CAP, "421 4.7.0 mx.example.com Error: too many connections from 192.0.2.1",
        "Postfix: smtpd_client_connection_count_limit (at once) or _rate_limit (per anvil_rate_time_unit)",
        r"^421 4\.7\.0 \S+ error: too many connections from",
    ),
    _known(
        POSTFIX, Cause.THROTTLE, "450 4.7.1 Error: too much mail from 192.0.2.1",
        "Postfix: smtpd_client_message_rate_limit per anvil_rate_time_unit (60 s unless set)",
        r"4\.7\.1 error: too (?:much mail|many recipients) from",
    ),
    _known(
        POSTFIX, Cause.RECIPIENT, "452 4.5.3 Error: too many recipients",
        "Postfix: smtpd_recipient_limit recipients a message", r"^452 4\.5\.3 error: too many recipients$",
    ),
    _known(
        EXIM, Cause.PER_CONNECTION_CAP, "421 too many messages in this connection",
        "Exim: smtp_accept_max_per_connection messages a connection; pass --max-messages N",
        r"^421 too many messages in this connection",
    ),
    _known(
        EXIM, Cause.CONNECTION_CAP,
        "421 mx.example.com: Too many concurrent SMTP connections; please try again later",
        "Exim: smtp_accept_max (from anyone) or smtp_accept_max_per_host connections at once",
        r"too many concurrent smtp connections(?: from this ip address)?; please try again later",
    ),
    _known(
        EXIM, Cause.QUOTA_USED_UP,
        "550 Domain example.com has exceeded the max emails per hour (100/100 (100%)) allowed.  "
        "Message discarded.",
        CPANEL_QUOTA_RULE, r"has exceeded the max (?:emails|defers and failures) per hour",
    ),
)  # fmt: skip


def recognise(code: int | None, text: str) -> KnownReply | None:
    """The table's entry for the reply ``code text``, if a provider is known to send it."""
    if code is None:
        return None
    reply = " ".join(f"{code} {text}".split())
    return next((known for known in KNOWN_REPLIES if known.pattern.search(reply)), None)

"""`mailblast serve --profile NAME`: a provider's published limits, answered in its own words.

Each profile is the capture server's :class:`~mailblast.server.capture.Limits` with the numbers a
provider publishes and the replies it sends above them, taken from the one table of real replies
(mailblast.smtp.providers), so that a rehearsal and a real send read alike. A limit a provider does
not publish is left out rather than guessed. Quotas are real-sized: ``--quota N`` scales one down
for a rehearsal (and for the tests) without changing its reply.
"""

from __future__ import annotations

from dataclasses import dataclass

from mailblast.errors import ConfigError
from mailblast.server.capture import LOOPBACK, SERVER_NAME, Limits, Replies
from mailblast.smtp.providers import EXIM, GMAIL, KNOWN_REPLIES, M365, MAILTRAP, POSTFIX, SES, Cause
from mailblast.smtp.urls import Rate

_CAUSE_OF_REPLY = {
    "rate": Cause.THROTTLE,
    "connections": Cause.CONNECTION_CAP,
    "per_connection": Cause.PER_CONNECTION_CAP,
    "quota": Cause.QUOTA_USED_UP,
}


def _replies(provider: str, **given: str) -> Replies:
    """The provider's own reply for each limit, from the table (its first entry for that cause);
    ``given`` where the table's example names another host, or the provider has none of its own."""
    own = {
        name: next((k.example for k in KNOWN_REPLIES if k.provider == provider and k.cause is cause), None)
        for name, cause in _CAUSE_OF_REPLY.items()
    }
    return Replies(**{name: text for name, text in own.items() if text is not None} | given)


@dataclass(frozen=True)
class Profile:
    name: str
    provider: str
    limits: Limits
    notes: str  # what the profile leaves out, and where its figures come from


PROFILES: dict[str, Profile] = {
    profile.name: profile
    for profile in (
        Profile(
            "ses", SES,
            Limits(
                rate=Rate(1, 1.0), quota=200,
                replies=_replies(SES),
            ),
            "a new account in the SES sandbox: 1 message a second, 200 in 24 hours",
        ),
        Profile(
            "gmail", GMAIL,
            Limits(
                quota=500,
                replies=_replies(GMAIL),
            ),
            "a gmail.com account: 500 recipients in 24 hours (Google publishes no rate or connection cap)",
        ),
        Profile(
            "m365", M365,
            Limits(
                max_connections=3, quota=10_000,
                replies=_replies(M365),
            ),
            "SMTP AUTH submission: 3 connections at once, 10,000 recipients in 24 hours (its 30 messages "
            "a minute are queued by Microsoft, not refused, so they are not rehearsed)",
        ),
        Profile(
            "mailtrap", MAILTRAP,
            Limits(
                rate=Rate(3, 1.0), max_connections=10, max_messages=100, quota=1_000,
                replies=_replies(MAILTRAP),
            ),
            "10 connections, 100 messages each, a rate and a monthly limit that depend on the plan",
        ),
        Profile(
            "postfix", POSTFIX,
            Limits(
                rate=Rate(30, 10.0), max_connections=3, quota=1_000,
                replies=_replies(
                    POSTFIX,
                    rate=f"450 4.7.1 Error: too much mail from {LOOPBACK}",
                    connections=f"421 4.7.0 {SERVER_NAME} Error: too many connections from {LOOPBACK}",
                    # Postfix has no quota of its own: a policy service adds one, e.g. a hosting
                    # provider's "550 5.4.5 ...: Domain Sending Quota Exceeded" (its reset unknown).
                    quota="550 5.4.5 Sender address rejected: Domain Sending Quota Exceeded",
                ),
            ),
            "anvil at 30 messages per 10 s and 3 connections per client, as bench/bench_postfix.py "
            "configures it, and a policy service's daily quota",
        ),
        Profile(
            "exim", EXIM,
            Limits(
                rate=Rate(30, 10.0), max_connections=20, max_messages=10, quota=100,
                replies=_replies(
                    EXIM,
                    rate="451 4.7.1 Sending rate over limit; try again later",
                    connections=f"421 {SERVER_NAME}: Too many concurrent SMTP connections; "
                    "please try again later",
                ),
            ),
            "a ratelimit ACL of 30 per 10 s, smtp_accept_max 20, smtp_accept_max_per_connection 10, "
            "and cPanel's 100 messages an hour per domain",
        ),
    )
}  # fmt: skip


def profile_limits(name: str, overrides: Limits) -> Limits:
    """The limits of profile ``name``, with every limit given in ``overrides`` taking its place."""
    profile = PROFILES.get(name.casefold())
    if profile is None:
        raise ConfigError(f"--profile {name}: no such profile", f"choose one of {', '.join(PROFILES)}")
    base = profile.limits
    return Limits(
        rate=overrides.rate or base.rate,
        max_connections=overrides.max_connections or base.max_connections,
        max_messages=overrides.max_messages or base.max_messages,
        fail_rate=overrides.fail_rate or base.fail_rate,
        quota=overrides.quota or base.quota,
        replies=base.replies,
        profile=profile.provider,
    )

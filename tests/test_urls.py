"""Tests for mailblast.smtp.urls."""

from __future__ import annotations

import math

import pytest
from hypothesis import given
from hypothesis import strategies as st

from mailblast.errors import ConfigError
from mailblast.smtp.urls import Rate, SmtpTarget, parse_rate, parse_smtp_url

# --- SMTP URLs -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("url", "expected"),
    [
        (
            "smtp://mail.example.com",
            SmtpTarget("mail.example.com", 25, None, "starttls-if-offered"),
        ),
        (
            "smtp://mail.example.com:2525",
            SmtpTarget("mail.example.com", 2525, None, "starttls-if-offered"),
        ),
        ("smtp+starttls://smtp.gmail.com", SmtpTarget("smtp.gmail.com", 587, None, "starttls")),
        ("smtps://smtp.gmail.com", SmtpTarget("smtp.gmail.com", 465, None, "tls")),
        ("smtps://me@smtp.gmail.com:2465", SmtpTarget("smtp.gmail.com", 2465, "me", "tls")),
        (
            "smtp+starttls://user%40example.com@smtp.example.com",
            SmtpTarget("smtp.example.com", 587, "user@example.com", "starttls"),
        ),
        (
            "smtps://user@example.com@smtp.example.com",
            SmtpTarget("smtp.example.com", 465, "user@example.com", "tls"),
        ),
        ("smtp://[::1]:2525", SmtpTarget("::1", 2525, None, "starttls-if-offered")),
        ("smtp://bob@[2001:db8::25]", SmtpTarget("2001:db8::25", 25, "bob", "starttls-if-offered")),
        ("SMTPS://Mail.Example.COM/", SmtpTarget("mail.example.com", 465, None, "tls")),
        ("  smtp://localhost:1025\n", SmtpTarget("localhost", 1025, None, "starttls-if-offered")),
        ("smtp://127.0.0.1", SmtpTarget("127.0.0.1", 25, None, "starttls-if-offered")),
        ("smtp://@host", SmtpTarget("host", 25, None, "starttls-if-offered")),
    ],
)
def test_parse_smtp_url(url: str, expected: SmtpTarget) -> None:
    target = parse_smtp_url(url)
    assert target == expected
    assert parse_smtp_url(target.display()) == target


@pytest.mark.parametrize(
    ("url", "reason"),
    [
        ("http://mail.example.com", "unknown scheme 'http'"),
        ("mail.example.com", "no scheme"),
        ("smtp://", "no host"),
        ("smtp://:25", "no host"),
        ("smtp://user@", "no host"),
        ("smtp://mail.example.com:abc", "port must be a number"),
        ("smtp://mail.example.com:70000", "port must be a number"),
        ("smtp://mail.example.com:0", "port 0"),
        ("smtp://mail.example.com/inbox", "no path"),
        ("smtp://mail.example.com?tls=1", "no path"),
        ("smtp://mail.example.com#x", "no path"),
        ("smtp://[::1", "IPv6"),
        ("smtp://mail example.com", "not a host name"),
    ],
)
def test_bad_smtp_urls_are_quoted_with_a_hint(url: str, reason: str) -> None:
    with pytest.raises(ConfigError) as caught:
        parse_smtp_url(url)
    # quoted up to the first ':' after the scheme: what follows could be a password
    after = url.find(":", url.find("//") + 2 if "//" in url else 0)
    shown = url if after < 0 or "[" in url else url[: after + 1] + "..."
    assert repr(shown) in caught.value.message
    assert reason in caught.value.message
    assert caught.value.hint is not None
    assert "smtps://HOST[:PORT]" in caught.value.hint


@pytest.mark.parametrize(
    "url",
    [
        "smtp://user:{pw}@mail.example.com",
        "smtps://user:{pw}@mail.example.com:465",
        "smtp+starttls://:{pw}@mail.example.com",
        "smtp://user%40example.com:{pw}@[::1]:2525",
        "smtp://user:{pw}/x@mail.example.com",
        "smtp:user:{pw}@mail.example.com",
        "http://user:{pw}@mail.example.com:bad/path?q",
        "user:{pw}@mail.example.com",
    ],
)
def test_a_password_in_the_url_is_refused_without_repeating_it(url: str) -> None:
    password = "Hunter2-s3cret"
    with pytest.raises(ConfigError) as caught:
        parse_smtp_url(url.format(pw=password))
    error = caught.value
    assert "MAILBLAST_SMTP_PASSWORD" in (error.hint or "")
    assert "shell history" in (error.hint or "")
    for shown in (str(error), repr(error), error.message, error.hint, *map(str, error.args)):
        assert password not in (shown or "")
    assert error.__cause__ is None


@given(
    user=st.text("abcxyz.@%+-_", max_size=12),
    password=st.text(min_size=1, max_size=20).map(lambda p: "Pw!" + p),
)
def test_no_password_ever_reaches_the_error(user: str, password: str) -> None:
    with pytest.raises(ConfigError) as caught:
        parse_smtp_url(f"smtp://{user}:{password}@mail.example.com")
    assert password not in str(caught.value)
    assert password not in repr(caught.value)


@pytest.mark.parametrize(
    ("host", "loopback"),
    [
        ("localhost", True),
        ("127.0.0.1", True),
        ("127.12.0.9", True),
        ("[::1]", True),
        ("128.0.0.1", False),
        ("[::2]", False),
        ("localhost.example.com", False),
        ("smtp.gmail.com", False),
    ],
)
def test_is_loopback(host: str, loopback: bool) -> None:
    assert parse_smtp_url(f"smtp://{host}").is_loopback is loopback


def test_display_shows_no_secret_and_reads_back() -> None:
    target = parse_smtp_url("smtp+starttls://user%40example.com@[::1]:2525")
    assert target.display() == "smtp+starttls://user%40example.com@[::1]:2525"
    assert parse_smtp_url("smtp://h").display() == "smtp://h:25"


# --- rates ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "count", "period"),
    [
        ("3/s", 3, 1.0),
        ("180/min", 180, 60.0),
        ("10000/h", 10000, 3600.0),
        ("5/2s", 5, 2.0),
        ("100/10min", 100, 600.0),
        ("1/sec", 1, 1.0),
        ("60/minute", 60, 60.0),
        ("2/hours", 2, 3600.0),
        ("2/2hours", 2, 7200.0),
        ("500/d", 500, 86400.0),
        ("500/day", 500, 86400.0),
        (" 3 / s ", 3, 1.0),
        ("100 / 10 min", 100, 600.0),
        ("3/S", 3, 1.0),
        ("1/0.5s", 1, 0.5),
        ("3/1.5min", 3, 90.0),
        ("7/seconds", 7, 1.0),
    ],
)
def test_parse_rate(text: str, count: int, period: float) -> None:
    rate = parse_rate(text)
    assert rate == Rate(count, period)
    assert rate.per_second == count / period


@pytest.mark.parametrize(
    "text",
    [
        "",
        "3",
        "3/",
        "/s",
        "0/s",
        "-3/s",
        "3.5/s",
        "3/0s",
        "3/-2s",
        "3/m",
        "3/week",
        "3 per s",
        "3/s/s",
        "1/1e400s",
        "3//s",
        "x/s",
    ],
)
def test_bad_rates_are_named_with_a_hint(text: str) -> None:
    with pytest.raises(ConfigError) as caught:
        parse_rate(text)
    assert repr(text) in caught.value.message
    hint = "write the rate as COUNT/PERIOD, for example 3/s, 180/min, 10000/h or 5/2s"
    assert caught.value.hint == hint


@pytest.mark.parametrize(
    ("rate", "text"),
    [
        (Rate(3, 1.0), "3/s"),
        (Rate(180, 60.0), "180/min"),
        (Rate(10000, 3600.0), "10000/h"),
        (Rate(5, 2.0), "5/2s"),
        (Rate(100, 600.0), "100/10min"),
        (Rate(500, 86400.0), "500/d"),
        (Rate(3, 90.0), "3/90s"),
        (Rate(1, 0.5), "1/0.5s"),
    ],
)
def test_rate_str(rate: Rate, text: str) -> None:
    assert str(rate) == text


@pytest.mark.parametrize(("count", "period"), [(0, 1.0), (1, 0.0), (1, -1.0), (1, math.inf)])
def test_rate_refuses_nonsense(count: int, period: float) -> None:
    with pytest.raises(ValueError):
        Rate(count, period)


@given(
    count=st.integers(1, 10**12),
    period=st.floats(min_value=1e-9, max_value=1e12, allow_nan=False, allow_infinity=False)
    | st.builds(lambda n, u: n * u, st.integers(1, 1000), st.sampled_from([1.0, 60.0, 3600.0])),
)
def test_rate_round_trips_through_str(count: int, period: float) -> None:
    rate = Rate(count, float(period))
    assert parse_rate(str(rate)) == rate

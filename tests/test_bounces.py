"""`mailblast bounces`: a corpus of real bounce formats, the policy, matching, and re-runs."""

from __future__ import annotations

import csv
import email
import email.policy
import io
import mailbox
import shutil
import smtplib
from collections.abc import Callable
from email.utils import make_msgid
from pathlib import Path

import pytest

from mailblast.campaign.bounce_kinds import Kind, classify, status_kind
from mailblast.campaign.bounce_policy import DAY, SoftRule, decide
from mailblast.campaign.bounces import unsubscribe_pattern
from mailblast.server import capture
from tests.servers import SmtpServer
from tests.test_send_cli import campaign, mailblast

DATA = Path(__file__).parent / "data" / "bounces"
HARD, SOFT = Kind.HARD, Kind.SOFT
# file -> (kind, the addresses it is about); flufl.bounce's own expectations where it has them
CORPUS: dict[str, tuple[Kind, list[str]]] = {
    # Postfix
    "flufl/postfix_01.txt": (HARD, ["xxxxx@local.ie"]),
    "flufl/postfix_02.txt": (HARD, ["yyyyy@digicool.com"]),
    "flufl/postfix_03.txt": (HARD, ["ttttt@ggggg.com"]),
    "flufl/postfix_04.txt": (HARD, ["userx@mail1.example.com"]),
    "flufl/postfix_05.txt": (HARD, ["userx@example.net"]),
    "own/postfix_hyphen_domain.eml": (HARD, ["gone@mail-server.example-shop.com"]),
    # Exim
    "flufl/exim_01.txt": (HARD, ["userx@its.example.nl"]),
    "flufl/simple_16.txt": (HARD, ["userx@example.com"]),  # Exim, with Auto-Submitted
    # qmail
    "flufl/qmail_01.txt": (HARD, ["userx@example.de"]),
    "flufl/qmail_02.txt": (HARD, ["userx@example.com"]),
    "flufl/qmail_03.txt": (HARD, ["userx@example.jp"]),
    "flufl/qmail_07.txt": (HARD, ["user@example.net"]),
    # Microsoft Exchange
    "flufl/microsoft_01.txt": (HARD, ["userx@example.COM"]),
    "flufl/microsoft_02.txt": (HARD, ["userx@example.COM"]),
    "flufl/microsoft_03.txt": (HARD, ["userx@example.com"]),
    "flufl/microsoft_04.txt": (HARD, ["userx@example.COM"]),
    "flufl/groupwise_02.txt": (HARD, ["userx@example.com"]),
    "own/mailbox_full_5.2.2.eml": (SOFT, ["frank@outlook.com"]),
    "own/rfc822_headers_only.eml": (HARD, ["carol@example.org"]),  # Exchange-style 5.1.10
    # Gmail
    "own/gmail_5.1.1.eml": (HARD, ["nobody.here@gmail.com"]),
    # Yahoo and AOL
    "flufl/yahoo_01.txt": (HARD, ["userx@example.com"]),
    "flufl/yahoo_02.txt": (HARD, ["userx@example.es"]),
    "flufl/yahoo_11.txt": (HARD, ["bad_user@aol.com"]),
    "flufl/yahoo_13.txt": (HARD, ["bogus-address@example.net"]),
    "flufl/aol_01.txt": (HARD, ["screenname@aol.com"]),
    # Sendmail and RFC 3464 DSNs from other servers
    "flufl/sendmail_01.txt": (HARD, ["zzzzz@nfg.nl", "zzzzz@shaft.coal.nl"]),
    "flufl/dsn_02.txt": (SOFT, ["zzzzz@example.uk"]),
    "flufl/dsn_04.txt": (HARD, ["userx@example.ch"]),  # Original-Recipient, not the alias it led to
    "flufl/dsn_05.txt": (SOFT, ["userx@example.cz"]),
    "flufl/dsn_09.txt": (HARD, ["userx@example.com"]),
    "flufl/dsn_11.txt": (HARD, ["joem@example.com"]),
    "flufl/dsn_12.txt": (HARD, ["userx@example.jp"]),
    "flufl/dsn_17.txt": (SOFT, ["userx@example.fi"]),
    "flufl/simple_03.txt": (SOFT, ["userx@example.za"]),
    "flufl/simple_38.txt": (HARD, ["userx@example.com"]),  # Auto-Submitted: auto-replied (rejected)
    "flufl/simple_45.txt": (HARD, ["subscriber@earthlink.net"]),
    # not bounces
    "own/arf_complaint.eml": (Kind.COMPLAINT, ["heidi@yahoo.com"]),
    "own/unsubscribe.eml": (Kind.UNSUBSCRIBE, ["ivan@example.net"]),
    "own/vacation.eml": (Kind.AUTO_REPLY, []),
    "own/unrelated.eml": (Kind.UNRELATED, []),
}
UNSUBSCRIBE_TOML = (
    '[unsubscribe]\nurl = "https://news.example.com/u/{{ unsubscribe_token }}"\n'
    'mailto = "unsubscribe@news.example.com?subject=unsubscribe"\n'
)


def parse(path: Path) -> email.message.Message:
    return email.message_from_bytes(path.read_bytes(), policy=email.policy.compat32)


@pytest.mark.parametrize("name", sorted(CORPUS))
def test_each_sample_is_classified_with_its_address(name: str) -> None:
    kind, addresses = CORPUS[name]
    findings = classify(parse(DATA / name), unsubscribe_pattern("unsubscribe@news.example.com"))
    assert {f.kind for f in findings} == {kind}
    assert sorted(f.address for f in findings if f.address) == sorted(addresses)


def test_the_status_code_decides_soft_or_hard() -> None:
    assert status_kind("5.1.1") is HARD and status_kind("5.1.2") is HARD and status_kind("5.7.1") is HARD
    assert status_kind("4.2.2") is SOFT and status_kind("4.4.7") is SOFT
    assert status_kind("5.2.2") is SOFT  # mailbox full
    assert status_kind("5.0.0", diagnostic="recipient reached disk quota") is SOFT
    assert status_kind("2.0.0", "delivered") is None and status_kind("5.1.1", "relayed") is None
    assert status_kind("5.1.1", "delayed") is SOFT


def mailbox_of(folder: Path, names: list[str]) -> Path:
    box = mailbox.Maildir(folder, create=True)
    for name in names:
        box.add((DATA / name).read_bytes())
    return folder


def exported(folder: Path) -> dict[str, str]:
    proc = mailblast(folder, "suppress", "export")
    return {row["email"]: row["source"] for row in csv.DictReader(io.StringIO(proc.stdout))}


def test_bounces_over_the_corpus_suppresses_each_address_once_and_a_second_run_changes_nothing(
    tmp_path: Path,
) -> None:
    maildir = mailbox_of(tmp_path / "Bounces", sorted(CORPUS))
    (tmp_path / "mailblast.toml").write_text(UNSUBSCRIBE_TOML)
    before = sorted(p.name for p in (maildir / "new").iterdir())
    dry = mailblast(tmp_path, "bounces", "Bounces", "--dry-run")
    assert dry.returncode == 0, dry.stderr
    assert "complaint heidi@yahoo.com" in dry.stdout and "would be suppressed" in dry.stdout
    assert exported(tmp_path) == {}  # the dry run wrote nothing

    first = mailblast(tmp_path, "bounces", "Bounces")
    assert first.returncode == 0, first.stderr
    expected = {}
    for kind, addresses in CORPUS.values():
        for address in addresses:
            if kind is not SOFT:  # one soft bounce is counted, not suppressed
                expected.setdefault(address.lower(), {HARD: "bounce"}.get(kind, str(kind)))
    got = {a.lower(): source for a, source in exported(tmp_path).items()}
    assert got == expected
    assert "ivan@example.net" in got and "heidi@yahoo.com" in got and "frank@outlook.com" not in got
    # the mailbox is as it was: nothing deleted, moved or marked
    assert sorted(p.name for p in (maildir / "new").iterdir()) == before

    again = mailblast(tmp_path, "bounces", "Bounces")
    assert again.returncode == 0, again.stderr
    assert "nothing new since the last run" in again.stdout
    assert {a.lower(): s for a, s in exported(tmp_path).items()} == expected


def test_soft_bounces_suppress_after_three_within_thirty_days() -> None:
    rule = SoftRule()
    now = 100 * DAY
    assert not decide(SOFT, now, []).suppress
    assert not decide(SOFT, now, [now - 2 * DAY]).suppress
    assert decide(SOFT, now, [now - 2 * DAY, now - 20 * DAY]).suppress
    assert not decide(SOFT, now, [now - 2 * DAY, now - 31 * DAY]).suppress  # one is too old
    assert decide(SOFT, now, [now - DAY], SoftRule(limit=2, days=7)).suppress
    for kind in (HARD, Kind.COMPLAINT, Kind.UNSUBSCRIBE):
        assert decide(kind, now, [], rule).suppress
    for kind in (Kind.AUTO_REPLY, Kind.UNRELATED):
        assert not decide(kind, now, [], rule).suppress


def test_soft_bounces_count_across_runs_and_a_delivery_starts_from_zero(
    tmp_path: Path, smtp_server: Callable[..., SmtpServer]
) -> None:
    """Three mailbox-full bounces of frank, each read by its own run: the third suppresses; but a
    delivery to frank between the second and the third starts the count again."""
    server = smtp_server()
    sample = (DATA / "own/mailbox_full_5.2.2.eml").read_bytes()
    box = mailbox.Maildir(tmp_path / "Bounces", create=True)

    def bounce_once(n: int) -> str:
        box.add(sample.replace(b"<f3a1b2c3-", f"<{n}-f3a1b2c3-".encode()))
        proc = mailblast(tmp_path, "bounces", "Bounces")
        assert proc.returncode == 0, proc.stderr
        return proc.stdout

    assert "soft bounce 1 of 3" in bounce_once(1)
    assert "soft bounce 2 of 3" in bounce_once(2)
    # frank is delivered to: the count starts again
    (tmp_path / "t.txt").write_text("From: news@example.com\nSubject: Hi\n\nHello\n")
    (tmp_path / "people.csv").write_text("email\nfrank@outlook.com\n")
    sent = mailblast(tmp_path, "send", "people.csv", "-t", "t.txt", "--smtp", server.url)
    assert sent.returncode == 0, sent.stderr
    assert "soft bounce 1 of 3" in bounce_once(3)
    assert "soft bounce 2 of 3" in bounce_once(4)
    assert "frank@outlook.com" not in exported(tmp_path)
    assert "soft bounce 3 of 3 within 30 days: suppressed" in bounce_once(5)
    assert exported(tmp_path) == {"frank@outlook.com": "bounce"}


def test_move_to_moves_only_what_was_acted_on_and_mbox_works_too(tmp_path: Path) -> None:
    mailbox_of(tmp_path / "Bounces", ["own/gmail_5.1.1.eml", "own/vacation.eml", "own/unrelated.eml"])
    proc = mailblast(tmp_path, "bounces", "Bounces", "--move-to", "Processed")
    assert proc.returncode == 0, proc.stderr
    assert len(list((tmp_path / "Bounces" / "new").iterdir())) == 2  # the vacation reply and the reply
    assert len(list((tmp_path / "Bounces" / ".Processed" / "cur").iterdir())) == 1
    mbox = mailbox.mbox(tmp_path / "bounces.mbox")
    for name in ("own/arf_complaint.eml", "own/vacation.eml"):
        mbox.add((DATA / name).read_bytes())
    mbox.close()
    proc = mailblast(tmp_path, "bounces", "bounces.mbox")
    assert proc.returncode == 0, proc.stderr
    assert exported(tmp_path) == {"nobody.here@gmail.com": "bounce", "heidi@yahoo.com": "complaint"}
    again = mailblast(tmp_path, "bounces", "bounces.mbox")
    assert "nothing new since the last run" in again.stdout


# -- a real round trip: send, the relay bounces by SMTP into a Maildir, bounces, send again ------


def dsn_for(original: bytes, envelope_from: str, recipient: str, *, final: str | None = None) -> bytes:
    """A Postfix-style DSN of ``recipient`` (reported as ``final``), to the envelope sender, with
    the returned message's headers."""
    head = original.replace(b"\r\n", b"\n").split(b"\n\n", 1)[0].decode()
    final = final or recipient
    text = f"""From: MAILER-DAEMON@relay.example.net (Mail Delivery System)
To: {envelope_from}
Subject: Undelivered Mail Returned to Sender
Auto-Submitted: auto-replied
Message-ID: {make_msgid(domain="relay.example.net")}
MIME-Version: 1.0
Content-Type: multipart/report; report-type=delivery-status; boundary="dsnb"

--dsnb
Content-Type: text/plain

<{final}>: host store.example.com said: 550 5.1.1 User unknown

--dsnb
Content-Type: message/delivery-status

Reporting-MTA: dns; relay.example.net

Final-Recipient: rfc822; {final}
Action: failed
Status: 5.1.1
Diagnostic-Code: smtp; 550 5.1.1 User unknown

--dsnb
Content-Type: text/rfc822-headers

{head}

--dsnb--
"""
    return text.replace("\n", "\r\n").encode()


@pytest.mark.parametrize("verp", [True, False])
def test_a_bounce_of_an_unknown_user_keeps_them_out_of_the_next_campaign(
    tmp_path: Path, smtp_server: Callable[..., SmtpServer], verp: bool
) -> None:
    """The relay accepts everyone (as a smarthost does) and bounces user2 afterwards, over SMTP,
    into the sender's Maildir. With VERP the bounce's address says whom it is for; without, the
    Message-ID of the returned headers does, though the DSN names only the alias it led to."""
    relay = smtp_server()
    campaign(tmp_path, 4)
    toml = 'return_path = "bounces+{token}@example.com"\n' if verp else ""
    (tmp_path / "mailblast.toml").write_text(toml)
    first = mailblast(tmp_path, "send", "people.csv", "-t", "t.txt", "--smtp", relay.url)
    assert first.returncode == 0, first.stderr
    bounced = next(m for m in relay.received if m.rcpt_tos == ["user2@example.com"])
    if verp:
        assert bounced.mail_from.startswith("bounces+") and bounced.mail_from.endswith("@example.com")
        assert len({m.mail_from for m in relay.received}) == 4  # one return path each
    dsn = dsn_for(bounced.data, bounced.mail_from, "user2@example.com", final="u2-mailbox@store.example.com")
    with (
        capture.in_background(tmp_path / "Bounces") as mailroom,
        smtplib.SMTP(mailroom.url.split("//")[1].split(":")[0], int(mailroom.url.rsplit(":", 1)[1])) as s,
    ):
        s.sendmail("", [bounced.mail_from], dsn)
    read = mailblast(tmp_path, "bounces", "Bounces")
    assert read.returncode == 0, read.stderr
    how = "VERP" if verp else "Message-ID"
    assert f"hard bounce 5.1.1 user2@example.com (matched by {how}, campaign " in read.stdout
    assert "user2@example.com" in exported(tmp_path)
    # the next campaign: another template, the same people
    (tmp_path / "next.txt").write_text("From: news@example.com\nSubject: Next\n\nNext {{ name }}\n")
    relay2 = smtp_server()
    second = mailblast(
        tmp_path, "send", "people.csv", "-t", "next.txt", "--smtp", relay2.url, "--campaign", "next"
    )
    assert second.returncode == 0, second.stderr
    assert sorted(relay2.recipients()) == ["user0@example.com", "user1@example.com", "user3@example.com"]


def test_a_forged_verp_token_matches_no_one(tmp_path: Path, smtp_server: Callable[..., SmtpServer]) -> None:
    relay = smtp_server()
    campaign(tmp_path, 2)
    (tmp_path / "mailblast.toml").write_text('return_path = "bounces+{token}@example.com"\n')
    assert mailblast(tmp_path, "send", "people.csv", "-t", "t.txt", "--smtp", relay.url).returncode == 0
    genuine = relay.received[0].mail_from
    tag = genuine.split("+")[1].split("-")[0]
    forged = f"bounces+{tag}-{'a' * 16}@example.com"
    dsn = dsn_for(b"To: nobody@example.org\n\n", forged, "nobody@example.org")
    box = mailbox.Maildir(tmp_path / "Bounces", create=True)
    box.add(dsn)
    read = mailblast(tmp_path, "bounces", "Bounces")
    assert read.returncode == 0, read.stderr
    assert "user0@example.com" not in read.stdout and "user1@example.com" not in read.stdout
    assert set(exported(tmp_path)) == {"nobody@example.org"}  # only what the DSN itself says


def test_a_missing_mailbox_is_one_clear_error(tmp_path: Path) -> None:
    proc = mailblast(tmp_path, "bounces", "nowhere")
    assert proc.returncode == 2 and "nowhere: no such mailbox" in proc.stderr
    assert "Traceback" not in proc.stderr
    shutil.rmtree(tmp_path, ignore_errors=True)


def test_status_shows_the_rates_and_the_next_send_through_the_account_warns(
    tmp_path: Path, smtp_server: Callable[..., SmtpServer]
) -> None:
    server = smtp_server(reject_recipients={"user3@example.com", "user7@example.com"})
    campaign(tmp_path, 20)
    first = mailblast(tmp_path, "send", "people.csv", "-t", "t.txt", "--smtp", server.url)
    assert first.returncode == 1, first.stderr
    # user5 complains (an ARF report about the message it got), matched by its Message-ID
    got = next(m for m in server.received if m.rcpt_tos == ["user5@example.com"])
    report = (
        (DATA / "own/arf_complaint.eml")
        .read_bytes()
        .replace(b"<1679091c5a880faf6fb5e6087eb1b2dc@example.com>", got.message["Message-ID"].encode())
    )
    mailbox.Maildir(tmp_path / "Fbl", create=True).add(report)
    read = mailblast(tmp_path, "bounces", "Fbl")
    assert "complaint" in read.stdout and "user5@example.com (matched by Message-ID" in read.stdout
    status = mailblast(tmp_path, "status", "people.csv")
    assert status.returncode == 0, status.stderr
    lines = [line.split() for line in status.stdout.splitlines()]
    assert ["bounces", "2", "(10.00%)"] in lines and ["complaints", "1", "(5.00%)"] in lines
    assert (
        "bounce rate 10.0% is over 5%" in status.stdout
        and "complaint rate 5.00% is over 0.1%" in status.stdout
    )

    (tmp_path / "next.txt").write_text("From: news@example.com\nSubject: Next\n\nNext\n")
    second = mailblast(
        tmp_path, "send", "people.csv", "-t", "next.txt", "--smtp", server.url, "--campaign", "next"
    )
    assert second.returncode == 0, second.stderr
    warned = second.stderr[: second.stderr.index("sending ")]  # before it starts
    assert "the previous campaign through this account (people.csv with t.txt): bounce rate 10.0%" in warned
    assert "complaint rate 5.00%" in warned


def test_an_unsubscribe_mail_to_a_tokened_mailto_suppresses_the_recipient_it_was_for(
    tmp_path: Path, smtp_server: Callable[..., SmtpServer]
) -> None:
    """Written from another address (a forwarding alias), the token still says who."""
    relay = smtp_server()
    campaign(tmp_path, 2)
    (tmp_path / "mailblast.toml").write_text(
        '[unsubscribe]\nmailto = "unsubscribe+{{ unsubscribe_token }}@news.example.com?subject=unsubscribe"\n'
    )
    assert mailblast(tmp_path, "send", "people.csv", "-t", "t.txt", "--smtp", relay.url).returncode == 0
    sent = next(m for m in relay.received if m.rcpt_tos == ["user1@example.com"])
    mailto = sent.message["List-Unsubscribe"].strip("<>").removeprefix("mailto:").split("?")[0]
    assert mailto.startswith("unsubscribe+") and mailto.endswith("@news.example.com")
    request = f"From: other@example.org\nTo: {mailto}\nSubject: unsubscribe\n\nunsubscribe\n"
    mailbox.Maildir(tmp_path / "Unsub", create=True).add(request.encode())
    read = mailblast(tmp_path, "bounces", "Unsub")
    assert read.returncode == 0, read.stderr
    assert "unsubscribe user1@example.com (matched by token, campaign " in read.stdout
    assert exported(tmp_path) == {"user1@example.com": "unsubscribe"}

"""The journal on its own: states, resume order, file edits, and reading it back."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from mailblast.campaign.journal import DamagedJournal, Journal, RunChanges, default_path, recipient_key
from mailblast.errors import InputError
from mailblast.message.recipients import Recipient
from mailblast.smtp.outcomes import Outcome, Status
from mailblast.smtp.replies import classify


def person(row: int, address: str | None = None) -> Recipient:
    address = address or f"user{row}@example.com"
    return Recipient(row, row + 1, {"email": address, "name": f"User {row}"}, address)


def run_with(
    tmp_path: Path, rows: list[Recipient], sha: str = "sha1", **kwargs: bool
) -> tuple[Journal, tuple[bool, bool], RunChanges]:
    """A journal with a new run over ``rows``: (journal, (is new, edited), changes)."""
    journal = Journal(tmp_path / "j.sqlite")
    started = journal.begin_run(tmp_path / "r.csv", tmp_path / "t.txt", sha, ("email", "name"), **kwargs)
    for row in rows:
        journal.add(row)
    return journal, (started.is_new, started.edited), journal.end_run()


def test_default_path_sits_beside_the_recipients(tmp_path: Path) -> None:
    assert default_path(tmp_path / "people.csv") == tmp_path / "people.csv.mailblast.sqlite"


def test_keys_fold_case_and_allow_duplicates_by_row() -> None:
    assert recipient_key(person(1, "Ann@Example.com"), False) == "ann@example.com"
    assert recipient_key(person(7, "ann@example.com"), True) == "ann@example.com#7"


def test_states_move_and_todo_follows_them(tmp_path: Path) -> None:
    journal, _, changes = run_with(tmp_path, [person(i) for i in range(1, 2501)])
    assert (changes.added, changes.removed) == (2500, 0)
    todo = list(journal.todo(retry_failed=False, skip_uncertain=False))
    assert [r.row for r in todo] == list(range(1, 2501))  # file order, across pages
    assert todo[0].fields == {"email": "user1@example.com", "name": "User 1"}
    journal.mark_sending(person(1), "<id1@x>")
    journal.record(Outcome(person(2), Status.SENT, "<id2@x>", 1, classify(250, "ok")))
    journal.record(
        Outcome(person(3), Status.FAILED, "<id3@x>", 1, classify(550, "5.1.1 unknown"), "550 5.1.1")
    )
    journal.record(Outcome(person(4), Status.NOT_ATTEMPTED, "", 0))
    assert journal.counts() == {
        "pending": 2497,
        "sending": 1,
        "sent": 1,
        "failed": 1,
        "uncertain": 0,
        "suppressed": 0,
    }
    assert journal.in_flight() == [(1, "user1@example.com")]
    rows = [r.row for r in journal.todo(retry_failed=False, skip_uncertain=True)]
    assert rows[:2] == [4, 5] and 1 not in rows and 3 not in rows
    rows = [r.row for r in journal.todo(retry_failed=True, skip_uncertain=False)]
    assert rows[:4] == [1, 3, 4, 5]
    journal.close()


def test_a_new_run_sees_edits_and_keeps_sent_rows(tmp_path: Path) -> None:
    journal, started, _ = run_with(tmp_path, [person(1), person(2), person(3)])
    assert started == (True, False)
    journal.record(Outcome(person(1), Status.SENT, "<a@x>", 1, classify(250, "ok")))
    journal.close()
    # user1 moved to row 2 and stays sent; user2 removed; user4 and user5 new
    rows = [
        person(1, "user3@example.com"),
        person(2, "user1@example.com"),
        person(3, "user4@example.com"),
        person(4, "user5@example.com"),
    ]
    journal, started, changes = run_with(tmp_path, rows, sha="sha2")
    assert started == (False, True)
    assert changes == RunChanges(added=2, removed=1, removed_sample=["user2@example.com"])
    assert journal.counts()["sent"] == 1
    todo = [r.address for r in journal.todo(retry_failed=False, skip_uncertain=False)]
    assert todo == ["user3@example.com", "user4@example.com", "user5@example.com"]
    journal.close()


def test_an_abandoned_run_leaves_the_journal_as_it_was(tmp_path: Path) -> None:
    journal, _, _ = run_with(tmp_path, [person(1)])
    journal.close()
    journal = Journal(tmp_path / "j.sqlite")
    journal.begin_run(tmp_path / "r.csv", tmp_path / "t.txt", "sha1", ("email", "name"))
    journal.add(person(2))
    journal.abandon_run()
    journal.close()
    journal, started, changes = run_with(tmp_path, [person(1)])
    assert started == (False, False) and changes == RunChanges(0, 0, [])
    journal.close()


def test_restart_forgets_the_campaign(tmp_path: Path) -> None:
    journal, _, _ = run_with(tmp_path, [person(1)])
    journal.record(Outcome(person(1), Status.SENT, "<a@x>", 1))
    journal.close()
    journal, started, _ = run_with(tmp_path, [person(1)], restart=True)
    assert started == (True, False)
    assert journal.counts()["pending"] == 1 and journal.counts()["sent"] == 0
    journal.close()


def test_one_send_at_a_time(tmp_path: Path) -> None:
    first, _ = Journal.for_send(tmp_path / "j.sqlite")
    with pytest.raises(InputError, match="another mailblast send is using"):
        Journal.for_send(tmp_path / "j.sqlite")
    first.close()
    second, _ = Journal.for_send(tmp_path / "j.sqlite")  # free again
    second.close()


def test_the_lock_belongs_to_the_file_not_the_path(tmp_path: Path) -> None:
    (tmp_path / "sub").mkdir()
    first, _ = Journal.for_send(tmp_path / "j.sqlite")
    (tmp_path / "link.sqlite").symlink_to(tmp_path / "j.sqlite")
    os.link(tmp_path / "j.sqlite", tmp_path / "hard.sqlite")
    for spelling in (
        tmp_path / "link.sqlite",
        tmp_path / "sub" / ".." / "j.sqlite",
        tmp_path / "hard.sqlite",
    ):
        with pytest.raises(InputError, match="another mailblast send is using"):
            Journal.for_send(spelling)
    first.close()


def test_a_lock_file_that_cannot_be_written(tmp_path: Path) -> None:
    (tmp_path / "j.sqlite.lock").write_bytes(b"")
    (tmp_path / "j.sqlite.lock").chmod(0o444)  # read-only: flock needs no write access
    journal, _ = Journal.for_send(tmp_path / "j.sqlite")
    journal.close()
    (tmp_path / "k.sqlite.lock").mkdir()  # cannot be opened at all, not even by root
    with pytest.raises(InputError, match="cannot create the journal's lock file") as info:
        Journal.for_send(tmp_path / "k.sqlite")
    assert "--journal" in (info.value.hint or "")


def test_an_empty_journal_file_is_an_error_not_a_new_campaign(tmp_path: Path) -> None:
    path = tmp_path / "j.sqlite"
    path.write_bytes(b"")
    for open_it in (lambda: Journal.for_send(path), lambda: Journal(path, read_only=True)):
        with pytest.raises(DamagedJournal, match="the journal is empty") as info:
            open_it()
        assert "--restart" in (info.value.hint or "") and "j.sqlite.damaged" in (info.value.hint or "")
    journal, aside = Journal.for_send(path, restart=True)
    assert aside == tmp_path / "j.sqlite.damaged" and aside.read_bytes() == b""
    journal.close()


def corrupt_a_page(path: Path) -> None:
    """Overwrite the journal's last page (part of the recipients table) with garbage."""
    data = bytearray(path.read_bytes())
    data[-4096:] = b"\xde\xad" * 2048
    path.write_bytes(bytes(data))


def test_a_damaged_journal_is_an_error_with_the_way_out(tmp_path: Path) -> None:
    journal, _, _ = run_with(tmp_path, [person(i) for i in range(1, 400)])
    journal.close()  # checkpoints: every page is in the main file
    path = tmp_path / "j.sqlite"
    corrupt_a_page(path)
    with pytest.raises(DamagedJournal, match="the journal is damaged") as info:
        Journal.for_send(path)
    assert "--restart" in (info.value.hint or "")
    reader = Journal(path, read_only=True)
    campaign = reader.find("")
    with pytest.raises(DamagedJournal, match="damaged"):
        list(reader.not_sent(campaign.id))
    reader.close()
    journal, aside = Journal.for_send(path, restart=True)
    assert aside is not None and aside.name == "j.sqlite.damaged" and aside.stat().st_size > 0
    assert journal.campaigns() == []
    journal.close()
    garbage = tmp_path / "g.sqlite"
    garbage.write_bytes(b"not a journal at all" * 500)
    with pytest.raises(DamagedJournal, match="damaged"):
        Journal.for_send(garbage)


def test_reading_back_for_status_and_report(tmp_path: Path) -> None:
    journal, _, _ = run_with(tmp_path, [person(1), person(2), person(3), person(4)])
    journal.record(Outcome(person(1), Status.SENT, "<a@x>", 1, classify(250, "ok")))
    journal.record(
        Outcome(person(2), Status.FAILED, "<b@x>", 2, classify(550, "5.1.1 no such user"), "550 no")
    )
    journal.mark_sending(person(3), "<c@x>")
    campaign = journal.find("")
    assert campaign.header == ("email", "name")
    outcomes = {o.recipient.row: o for o in journal.not_sent(campaign.id)}
    assert set(outcomes) == {2, 3, 4}
    assert (outcomes[2].status, outcomes[2].smtp_code, outcomes[2].enhanced_code, outcomes[2].attempts) == (
        Status.FAILED,
        "550",
        "5.1.1",
        2,
    )
    assert outcomes[3].status is Status.UNCERTAIN and "in flight" in outcomes[3].error
    assert outcomes[4].status is Status.NOT_ATTEMPTED
    assert journal.failure_reasons(campaign.id) == [("failed", "550", "5.1.1", "550 no", 1)]
    assert journal.active_seconds(campaign.id) >= 0
    journal.close()


def test_allow_duplicates_cannot_change_mid_campaign(tmp_path: Path) -> None:
    journal, _, _ = run_with(tmp_path, [person(1)])
    journal.close()
    journal = Journal(tmp_path / "j.sqlite")
    with pytest.raises(InputError, match="started without --allow-duplicates"):
        journal.begin_run(tmp_path / "r.csv", tmp_path / "t.txt", "sha1", ("email",), allow_duplicates=True)
    journal.close()
    journal, started, _ = run_with(tmp_path, [person(1)], allow_duplicates=True, restart=True)
    assert started == (True, False)
    journal.close()

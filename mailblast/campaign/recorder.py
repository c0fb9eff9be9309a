"""Outcomes -> journal and report: every outcome recorded before the sender counts it.

The recorder also holds the recipients the sender has taken without an outcome yet, so that
however a run ends, every recipient is sent or reported.
"""

from __future__ import annotations

from collections.abc import Callable, Collection, Iterator
from dataclasses import dataclass, replace

from mailblast.campaign.feedback import SendFeedback
from mailblast.campaign.journal import Journal
from mailblast.campaign.report import ReportWriter
from mailblast.errors import MailblastError
from mailblast.message.compose import ComposedMessage
from mailblast.message.recipients import Recipient
from mailblast.smtp.connection import TransactionError
from mailblast.smtp.outcomes import Counts, Outcome, Reasons, Status
from mailblast.smtp.replies import Kind, Verdict

JOURNAL_FAILED = Verdict(Kind.FATAL, None, None, None, "the journal cannot be written")

REPORT_FAILED = Verdict(Kind.FATAL, None, None, None, "the report cannot be written")

DESTINATION_FAILED = Verdict(Kind.FATAL, None, None, None, "the outbox cannot be written")

STOPPED = "the run stopped first"


@dataclass
class _Open:
    """A recipient handed to the sender, with no outcome yet."""

    recipient: Recipient
    tries: int = 0
    in_flight: bool = False  # its DATA began, and neither an outcome nor a refusal came back


class Recorder:
    """Outcomes -> journal and report: each outcome is recorded before the sender counts it.

    It also keeps the few recipients the sender holds without an outcome, so that however
    the run ends, ``finish()`` reports every one of them.
    """

    def __init__(
        self,
        journal: Journal | None,
        report: ReportWriter,
        maybe_sent: Collection[int] = (),
        destination_fault: Callable[[], str | None] | None = None,
        feedback: SendFeedback | None = None,
    ) -> None:
        """``destination_fault`` says why the destination can store nothing more (the rehearsal's
        outbox on a full disk): a message it refused then stops the run, as a journal that
        cannot be written does, and nobody is marked failed for it."""
        self.journal = journal
        self._destination_fault = destination_fault
        self.destination_error: str | None = None
        self.report = report
        self.feedback = feedback  # refusals of the address itself go into the shared suppression list
        self.maybe_sent = maybe_sent  # rows an earlier run left in flight
        self.reasons = Reasons()
        self.unconfirmed = 0  # uncertain, and not accepted on a resend either
        self.stop: Callable[[Verdict], None] = lambda reason: None  # the sender's stop()
        self.journal_error: MailblastError | None = None
        self.report_error: str | None = None
        self.unrecorded: list[Recipient] = []  # accepted by the server, but not in the journal
        self._open: dict[int, _Open] = {}

    @property
    def in_flight(self) -> int:
        return sum(o.in_flight for o in self._open.values())

    def track(self, recipients: Iterator[Recipient]) -> Iterator[Recipient]:
        """``recipients``, remembering each one until its outcome comes."""
        for recipient in recipients:
            self._open[recipient.row] = _Open(recipient)
            yield recipient

    def sending(self, message: ComposedMessage) -> None:
        if self.journal_error is not None:  # the journal is gone: what goes now could not be recorded
            raise TransactionError(JOURNAL_FAILED)
        if self.journal is not None:
            try:
                self.journal.mark_sending(message.recipient, message.message_id)
            except MailblastError as e:
                self._journal_failed(e)
                raise TransactionError(JOURNAL_FAILED) from None  # not sent: it could not be recorded
        entry = self._open.get(message.recipient.row)
        if entry is not None:
            entry.tries += 1
            entry.in_flight = True

    def not_delivered(self, message: ComposedMessage) -> None:
        """A reply proved the try was not delivered: it is to be sent again, not in flight."""
        self._check_destination()
        entry = self._open.get(message.recipient.row)
        if entry is not None:
            entry.tries += not entry.in_flight  # refused before DATA: sending() did not count it
            entry.in_flight = False
        if self.journal is not None:
            try:
                self.journal.mark_pending(message.recipient)
            except MailblastError as e:
                self._journal_failed(e)

    def outcome(self, outcome: Outcome) -> Outcome:
        """Record ``outcome``; returns it as recorded, which is what the sender counts.

        A temporary refusal while the destination cannot store anything (the rehearsal's outbox
        on a full disk) is the destination's fault, not the recipient's: it stops the run, and the
        message is not attempted, pending for the next run, rather than failed.
        """
        if outcome.status is Status.FAILED and outcome.reply is not None and outcome.reply.is_retryable:
            self._check_destination()
            if self.destination_error is not None:
                error = self.destination_error
                outcome = replace(outcome, status=Status.NOT_ATTEMPTED, reply=DESTINATION_FAILED, error=error)
        self._open.pop(outcome.recipient.row, None)
        if self.journal is not None:
            try:
                self.journal.record(outcome, was_in_flight=outcome.recipient.row in self.maybe_sent)
            except MailblastError as e:
                self._journal_failed(e)
                if outcome.status is not Status.NOT_ATTEMPTED:
                    self.unrecorded.append(outcome.recipient)
        self._write(outcome)
        if self.feedback is not None:
            self.feedback.outcome(outcome)
        if outcome.status is Status.FAILED:
            text = outcome.reply.describe() if outcome.reply else outcome.error
            self.reasons.add("failed", outcome.smtp_code, outcome.enhanced_code, text)
        elif outcome.status is Status.UNCERTAIN:
            self.reasons.add("uncertain", "", "", outcome.error)
            self.unconfirmed += outcome.reply is None or outcome.reply.kind is not Kind.OK
        return outcome

    def finish(self, rest: Iterator[Recipient], counts: Counts) -> int:
        """Report what the run left without an outcome; return how many were in flight.

        The journal already has them right: in flight ones "sending", the others pending.
        """
        if self.journal is not None:  # None once it failed
            try:
                self.journal.end_sending()
            except MailblastError as e:
                self._journal_failed(e)
        unknown = 0
        for entry in sorted(self._open.values(), key=lambda o: o.recipient.row):
            if entry.in_flight:
                unknown += 1
                error = "in flight when the run stopped at once: may or may not have been delivered"
                self._left(Outcome(entry.recipient, Status.UNCERTAIN, "", entry.tries, None, error), counts)
            else:
                self._left(
                    Outcome(entry.recipient, Status.NOT_ATTEMPTED, "", entry.tries, None, STOPPED), counts
                )
        self._open.clear()
        for recipient in rest:
            self._left(Outcome(recipient, Status.NOT_ATTEMPTED, "", 0, None, STOPPED), counts)
        return unknown

    def _left(self, outcome: Outcome, counts: Counts) -> None:
        """An outcome the sender never gave: reported and counted; the journal has its state, and
        notes its tries and why (for the report it writes)."""
        if self.journal is not None:
            try:
                self.journal.note_left(outcome)
            except MailblastError as e:
                self._journal_failed(e)
        if outcome.status is Status.UNCERTAIN:
            self.reasons.add("uncertain", "", "", outcome.error)
            self.unconfirmed += 1
        self._write(outcome)
        counts.add(outcome)

    def _write(self, outcome: Outcome) -> None:
        if self.report_error is not None:
            return
        try:
            self.report.write(outcome)
        except OSError as e:
            self.report_error = e.strerror or str(e)
            self.stop(REPORT_FAILED)

    def _check_destination(self) -> None:
        if self.destination_error is None and self._destination_fault is not None:
            self.destination_error = self._destination_fault()
            if self.destination_error is not None:
                self.stop(DESTINATION_FAILED)

    def _journal_failed(self, error: MailblastError) -> None:
        if self.journal_error is None:
            self.journal_error = error
            self.journal = None  # nothing more is written to it; the report still gets everything
            self.stop(JOURNAL_FAILED)


def describe_unrecorded(recorder: Recorder) -> str:
    if not recorder.unrecorded:
        return ""
    names = ", ".join(f"row {r.row} {r.address}" for r in recorder.unrecorded[:10])
    return (
        f"; {len(recorder.unrecorded):,} message(s) had their outcome but could not record it "
        f"({names}): the next run counts them as in flight"
    )

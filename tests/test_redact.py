"""The pure pieces that keep secrets and formulas out: redaction and report cells."""

from __future__ import annotations

import base64

import pytest
from hypothesis import assume, given, settings
from hypothesis import strategies as st

from mailblast.message.spreadsheet import defuse, is_report, restore
from mailblast.smtp.redact import REDACTED, Redactor


def test_every_form_of_the_password_is_removed() -> None:
    redact = Redactor(["hunter2-and-more"], username="ann")
    raw = b"hunter2-and-more"
    for form in (
        raw,
        base64.b64encode(raw),
        base64.b64encode(b"\0ann\0" + raw),
        base64.b64encode(b"ann\0ann\0" + raw),
    ):
        reply = f"535 5.7.8 no: {form.decode()} (that was it)"
        assert redact(reply) == f"535 5.7.8 no: {REDACTED} (that was it)"


@settings(max_examples=100, deadline=None)
@given(secret=st.text(min_size=6, max_size=40), prefix=st.binary(max_size=20), suffix=st.binary(max_size=20))
def test_the_password_inside_any_base64_blob_is_removed(secret: str, prefix: bytes, suffix: bytes) -> None:
    """Wherever the password lands in a blob a server echoes, its bytes cannot be read back."""
    assume(secret not in REDACTED)  # "[redac" is gone too, but the marker itself holds it
    redact = Redactor([secret])
    blob = base64.b64encode(prefix + secret.encode() + suffix).decode()
    cleaned = redact(f"535 {blob} {secret}")
    assert secret not in cleaned
    for part in cleaned.split(REDACTED):
        for piece in part.split():
            try:
                decoded = base64.b64decode(piece + "=" * (-len(piece) % 4))
            except ValueError:
                continue
            assert secret.encode() not in decoded


def test_no_secret_no_change() -> None:
    assert Redactor([None, ""])("550 5.1.1 user unknown") == "550 5.1.1 user unknown"


@pytest.mark.parametrize("value", ["=1+1", "+1", "-1", "@SUM(A1)", "\tx", "\rx", "'x", "''"])
def test_formula_cells_get_a_mark_that_reading_back_removes(value: str) -> None:
    assert defuse(value) == "'" + value
    assert restore(defuse(value)) == value


@given(st.text(max_size=30))
def test_defuse_then_restore_is_the_identity(value: str) -> None:
    cell = defuse(value)
    assert not cell.startswith(("=", "+", "-", "@", "\t", "\r"))
    assert restore(cell) == value


def test_a_report_is_known_by_its_columns() -> None:
    assert is_report(("email", "name", "status", "smtp_code", "enhanced_code", "error", "attempts"))
    assert is_report(
        ("email", "status", "mailblast_status", "smtp_code", "enhanced_code", "error", "attempts")
    )
    assert not is_report(("email", "status"))
    assert not is_report(("email", "name", "error", "attempts"))

"""Reading recipients CSVs: encodings, delimiters, quoting, and every row problem."""

from __future__ import annotations

from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from mailblast.errors import RecipientsError
from mailblast.message.recipients import RecipientsFile


def write(tmp_path: Path, content: bytes | str, name: str = "r.csv") -> Path:
    path = tmp_path / name
    path.write_bytes(content.encode("utf-8") if isinstance(content, str) else content)
    return path


def read_all(path: Path, **kwargs) -> list:
    allow = kwargs.pop("allow_duplicates", False)
    return list(RecipientsFile(path, **kwargs).rows(allow_duplicates=allow))


def test_utf8_with_bom_and_plain(tmp_path: Path) -> None:
    for prefix in (b"\xef\xbb\xbf", b""):
        path = write(tmp_path, prefix + "email,name\nann@example.com,Zoë 🎉\n".encode())
        f = RecipientsFile(path)
        assert f.format.header == ("email", "name")  # no BOM glued to the first column
        [row] = list(f.rows())
        assert row.recipient.fields == {"email": "ann@example.com", "name": "Zoë 🎉"}


def test_cp1252_detected_and_latin1_given(tmp_path: Path) -> None:
    text = "email,name,city\n" + "".join(
        f"user{i}@example.com,Jürgen Müller-Großmann {i},Québec – “café” €\n" for i in range(20)
    )
    path = write(tmp_path, text.encode("cp1252"))
    f = RecipientsFile(path)
    rows = list(f.rows())
    assert rows[0].recipient.fields["name"] == "Jürgen Müller-Großmann 0"
    assert rows[0].recipient.fields["city"] == "Québec – “café” €"
    latin = write(tmp_path, "email,name\na@example.com,Ærø Ñúñez\n".encode("latin-1"), "l2.csv")
    [row] = read_all(latin, encoding="latin-1")
    assert row.recipient.fields["name"] == "Ærø Ñúñez"


def test_unknown_encoding_name_is_one_clear_error(tmp_path: Path) -> None:
    path = write(tmp_path, "email\na@example.com\n")
    with pytest.raises(RecipientsError, match="not a text encoding"):
        RecipientsFile(path, encoding="klingon-8")


def test_undecodable_bytes_name_the_line(tmp_path: Path) -> None:
    path = write(tmp_path, b"email,name\na@example.com,Ann\nb@example.com,\xff\xfe\x80\n")
    with pytest.raises(RecipientsError, match=r"line 3.*not valid utf-8") as info:
        read_all(path, encoding="utf-8")
    assert "--encoding" in (info.value.hint or "")


@pytest.mark.parametrize("delimiter", [",", ";", "\t"])
def test_delimiter_is_sniffed(tmp_path: Path, delimiter: str) -> None:
    d = delimiter
    path = write(tmp_path, f"email{d}name{d}note\na@example.com{d}Ann{d}x y\n")
    f = RecipientsFile(path)
    assert f.format.delimiter == d
    [row] = list(f.rows())
    assert row.recipient.fields["name"] == "Ann"


def test_quoted_commas_quotes_and_newlines(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        "email,name,note\r\n"
        'a@example.com,"Smith, Ann","She said ""hi""\nand left"\r\n'
        "b@example.com,Bob,plain\r\n",
    )
    rows = read_all(path)
    assert rows[0].recipient.fields == {
        "email": "a@example.com",
        "name": "Smith, Ann",
        "note": 'She said "hi"\nand left',
    }
    # row 2 starts on line 4 because row 1 spans lines 2-3
    assert (rows[1].row, rows[1].line) == (2, 4)


def test_header_names_are_trimmed_with_a_warning(tmp_path: Path) -> None:
    path = write(tmp_path, " Email , name \na@example.com,Ann\n")
    f = RecipientsFile(path)
    assert f.format.header == ("Email", "name")
    assert f.format.address_column == "Email"
    assert any("trimmed" in w for w in f.format.warnings)


@pytest.mark.parametrize("name", ["email", "E-Mail", "Email Address", "EMAIL"])
def test_address_column_found_by_name(tmp_path: Path, name: str) -> None:
    path = write(tmp_path, f"first,{name}\nAnn,a@example.com\n")
    [row] = read_all(path)
    assert row.recipient.address == "a@example.com"


def test_address_column_given_and_missing(tmp_path: Path) -> None:
    path = write(tmp_path, "who,contact\nAnn,a@example.com\n")
    with pytest.raises(RecipientsError, match="no address column") as info:
        RecipientsFile(path)
    assert "--email-column" in info.value.hint
    [row] = read_all(path, email_column="contact")
    assert row.recipient.address == "a@example.com"
    with pytest.raises(RecipientsError, match='no column "mail2"'):
        RecipientsFile(path, email_column="mail2")


@pytest.mark.parametrize(
    ("content", "message"),
    [(b"", "empty"), (b"\n\n", "first line is empty")],
)
def test_empty_files(tmp_path: Path, content: bytes, message: str) -> None:
    with pytest.raises(RecipientsError, match=message):
        RecipientsFile(write(tmp_path, content))


def test_missing_file_and_folder(tmp_path: Path) -> None:
    with pytest.raises(RecipientsError, match="no such file"):
        RecipientsFile(tmp_path / "nope.csv")
    with pytest.raises(RecipientsError, match="folder"):
        RecipientsFile(tmp_path)


def test_header_problems(tmp_path: Path) -> None:
    with pytest.raises(RecipientsError, match="more than once"):
        RecipientsFile(write(tmp_path, "email,name,name\n"))
    with pytest.raises(RecipientsError, match="no name"):
        RecipientsFile(write(tmp_path, "email,,name\n"))


def test_row_problems_are_reported_with_rows_and_columns(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        "email,name\n"
        "good@example.com,Good\n"
        "not-an-address,Bad\n"
        ",\n"
        "\n"
        "x@example.com,Too,Many\n"
        "few@example.com\n"
        "GOOD@example.com,Again\n"
        ",NoAddress\n",
    )
    rows = read_all(path)
    by_row = {r.row: r for r in rows}
    assert by_row[1].recipient is not None and not by_row[1].problems
    assert "not a valid address" in str(by_row[2].problems[0])
    assert by_row[2].problems[0].column == "email"
    assert str(by_row[2].problems[0]).endswith(
        "r.csv, row 2 (line 3), column \"email\": 'not-an-address' is not a valid address: "
        "An email address must have an @-sign."
    )
    assert by_row[3].problems[0].message == "empty row, skipped" and not by_row[3].problems[0].is_error
    # the blank line 5 is not a row at all
    assert "too many fields" in by_row[4].problems[0].message and by_row[4].line == 6
    assert "too few fields" in by_row[5].problems[0].message
    assert by_row[6].duplicate_of == 1 and "duplicates row 1" in by_row[6].problems[0].message
    assert by_row[7].problems[0].message == "no address"
    assert len(rows) == 7


def test_duplicates_allowed(tmp_path: Path) -> None:
    path = write(tmp_path, "email\na@example.com\na@example.com\n")
    assert [r.recipient is not None for r in read_all(path)] == [True, False]
    assert [r.recipient is not None for r in read_all(path, allow_duplicates=True)] == [True, True]


def test_non_ascii_local_part_is_flagged(tmp_path: Path) -> None:
    [row] = read_all(write(tmp_path, "email\nfrançois@exämple.com\n"))
    assert row.recipient.needs_smtputf8
    assert "SMTPUTF8" in row.problems[0].message and not row.problems[0].is_error


def test_rows_are_streamed_not_loaded(tmp_path: Path) -> None:
    path = tmp_path / "big.csv"
    with path.open("w") as f:
        f.write("email,name\n")
        for i in range(20_000):
            f.write(f"u{i}@example.com,User {i}\n")
    recipients = RecipientsFile(path)
    rows = recipients.rows()
    next(rows)
    assert recipients.bytes_read < path.stat().st_size / 2
    rows.close()


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    names=st.lists(
        st.text(st.characters(blacklist_categories=("Cs",), blacklist_characters="\x00"), max_size=20),
        min_size=1,
        max_size=10,
    ),
    delimiter=st.sampled_from([",", ";", "\t"]),
)
def test_any_values_round_trip_through_csv(tmp_path: Path, names: list[str], delimiter: str) -> None:
    import csv
    import io

    buf = io.StringIO()
    writer = csv.writer(buf, delimiter=delimiter)
    writer.writerow(["email", "name"])
    for i, name in enumerate(names):
        writer.writerow([f"u{i}@example.com", name])
    path = write(tmp_path, buf.getvalue(), "prop.csv")
    rows = read_all(path, delimiter=delimiter)
    assert [r.recipient.fields["name"] for r in rows] == names


def test_a_quote_never_closed_names_its_row_and_line(tmp_path: Path) -> None:
    # without strict reading, row 1's name would swallow every row after it, unreported
    path = write(tmp_path, 'email,name\nann@example.com,"Ann\nbob@example.com,Bob\ncy@example.com,Cy\n')
    with pytest.raises(RecipientsError, match=r"r\.csv, row 1 \(line 2\): a quoted value is never closed"):
        read_all(path)
    later = write(tmp_path, 'email,name\nann@example.com,Ann\n\nbob@example.com,"Bob\n', "later.csv")
    with pytest.raises(RecipientsError, match=r"row 2 \(line 4\)"):
        read_all(later)


def test_a_huge_value_is_an_error_not_a_traceback(tmp_path: Path) -> None:
    path = write(tmp_path, "email,name\nann@example.com," + "x" * (128 * 1024 + 1) + "\nb@example.com,B\n")
    with pytest.raises(RecipientsError, match=r"row 1 \(line 2\): a value longer than 131,072 characters"):
        read_all(path)
    header = write(tmp_path, "email," + "x" * (128 * 1024 + 1) + "\n", "header.csv")
    with pytest.raises(RecipientsError, match=r"line 1 \(the header\): a value longer"):
        RecipientsFile(header)


def test_utf16_without_a_byte_order_mark(tmp_path: Path) -> None:
    path = write(tmp_path, "email,name\nann@example.com,Ann\n".encode("utf-16-le"))
    with pytest.raises(RecipientsError, match="not valid utf-16.*BOM") as info:
        RecipientsFile(path, encoding="utf-16")
    assert "--encoding utf-16-le or utf-16-be" in (info.value.hint or "")
    [row] = read_all(path, encoding="utf-16-le")
    assert row.recipient.address == "ann@example.com"

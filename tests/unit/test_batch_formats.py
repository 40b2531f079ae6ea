"""Batch file formats: every value round-trips, bad lines come out as errors with line and column."""

from __future__ import annotations

import io

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from streams.batch.formats import FormatOptions, parse, read_lines, render, starts_with_bom

COLUMNS = ["id", "name", "note"]
ALL = [FormatOptions("csv"), FormatOptions("csv", delimiter=";", quoting="all"), FormatOptions("csv", delimiter="\t"),
       FormatOptions("kv"), FormatOptions("jsonl")]

text = st.text(st.characters(blacklist_categories=("Cs",)), min_size=1, max_size=40)


def _lines(content: str) -> list[str]:
    return io.StringIO(content, newline="").readlines()


@pytest.mark.parametrize("options", ALL, ids=lambda o: f"{o.format}-{o.delimiter!r}-{o.quoting}")
@settings(max_examples=150, deadline=None)
@given(rows=st.lists(st.fixed_dictionaries({"id": st.integers(0, 10**12).map(str), "name": text, "note": text}),
                     max_size=20))
def test_any_text_round_trips(options: FormatOptions, rows: list[dict]) -> None:
    content = render(rows, COLUMNS, options)
    parsed = list(parse(_lines(content), options, COLUMNS))
    assert [p.error for p in parsed if p.error] == []
    assert [p.row for p in parsed] == rows


def test_embedded_delimiters_quotes_and_newlines() -> None:
    row = {"id": "1", "name": 'He said "hi", then left;\tbye', "note": "line one\nline two\r\nline three = 3 \\ é 한글"}
    for options in ALL:
        parsed = list(parse(_lines(render([row, {**row, "id": "2"}], COLUMNS, options)), options, COLUMNS))
        assert [p.row for p in parsed] == [row, {**row, "id": "2"}], options
    # a csv row that spans lines is numbered by the line it starts on
    parsed = list(parse(_lines(render([row, {**row, "id": "2"}], COLUMNS, FormatOptions())), FormatOptions()))
    assert [p.line for p in parsed] == [2, 5]


def test_bad_lines_are_reported_with_line_and_column_and_good_lines_still_parse() -> None:
    csv_text = 'id,name,note\n1,a,x\n2,b\n3,c,z,extra\n4,"open quote,z\n'
    got = list(parse(_lines(csv_text), FormatOptions(), COLUMNS))
    assert [p.row["id"] for p in got if p.row] == ["1"]
    assert [(e.line, e.column) for e in (p.error for p in got) if e] == [(3, "note"), (4, "4"), (5, "-")]

    kv_text = 'id=1 name=a note=x\nid=2 name\nid=3 name="unterminated\nid=4 id=5\nid=6 name="ok" note=y\nbogus=1\n'
    got = list(parse(_lines(kv_text), FormatOptions("kv"), COLUMNS))
    assert [p.row["id"] for p in got if p.row] == ["1", "6"]
    errors = [p.error for p in got if p.error]
    assert [(e.line, e.column) for e in errors] == [(2, "10"), (3, "11"), (4, "id"), (6, "bogus")]
    assert "has no '=value'" in errors[0].message and "unknown column" in errors[3].message

    jsonl_text = '{"id": "1"}\n{"id": 2, "name": null}\n[1, 2]\n{"id": "4",\n'
    got = list(parse(_lines(jsonl_text), FormatOptions("jsonl"), COLUMNS))
    assert [p.row for p in got if p.row] == [{"id": "1"}, {"id": "2", "name": None}]
    assert [(e.line, e.column) for e in (p.error for p in got) if e] == [(3, "1"), (4, "12")]


def test_a_csv_header_unlike_the_manifest_is_one_error_for_the_file() -> None:
    got = list(parse(_lines("id,nom,note\n1,a,b\n"), FormatOptions(), COLUMNS))
    assert len(got) == 1 and got[0].error and got[0].error.line == 1 and "manifest's columns" in got[0].error.message


def test_options_are_validated() -> None:
    for bad in ({"format": "xml"}, {"delimiter": '"'}, {"delimiter": ",,"}, {"quoting": "never"}):
        with pytest.raises(ValueError):
            FormatOptions(**bad)


def test_a_byte_order_mark_is_dropped_and_told(tmp_path) -> None:
    # Excel's "CSV UTF-8" with a ';' list separator: BOM, CRLF rows, a line break inside a quoted cell (LF)
    content = '\ufeffid;name;note\r\n1;"a;b";"two\nlines"\r\n2;c;\r\n'.encode()
    path = tmp_path / "excel.csv"
    path.write_bytes(content)
    assert starts_with_bom(path)
    options = FormatOptions("csv", delimiter=";")
    got = list(parse(read_lines(path), options, COLUMNS))
    assert [(p.line, p.row) for p in got] == [(2, {"id": "1", "name": "a;b", "note": "two\nlines"}),
                                             (4, {"id": "2", "name": "c", "note": None})]
    plain = tmp_path / "plain.csv"
    plain.write_bytes(content[3:])
    assert not starts_with_bom(plain) and list(read_lines(plain)) == list(read_lines(path))
    # read as plain UTF-8 the mark stays in the first name, and the error says so
    bad = list(parse(io.StringIO(content.decode(), newline="").readlines(), options, COLUMNS))
    assert len(bad) == 1 and bad[0].error and bad[0].error.whole_file and "byte-order mark" in bad[0].error.message


def test_a_header_that_splits_on_another_delimiter_says_which() -> None:
    got = list(parse(_lines("id;name;note\r\n1;a;b\r\n"), FormatOptions(), COLUMNS))
    assert len(got) == 1 and got[0].error is not None and got[0].error.whole_file
    assert "it splits into them on ';', the manifest's delimiter is ','" in got[0].error.message

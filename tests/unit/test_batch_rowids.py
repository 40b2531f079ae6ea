"""Message ids of imported rows: the same row gets the same id again, wherever it sits in the file."""

from __future__ import annotations

import io
import uuid

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from streams.batch.formats import FormatOptions, parse, render
from streams.batch.rowids import _CANONICAL, ID_NAMESPACE, RowIdError, RowIds, canonical, sha1_of, uuid5

COLUMNS = ["order_id", "buyer", "note"]
ROWS = [{"order_id": "o-1", "buyer": "ann", "note": "first"},
        {"order_id": "o-2", "buyer": "bob", "note": "two\nlines"},
        {"order_id": "o-3", "buyer": "cy", "note": None}]


def _ids(rows: list[dict], *, source: str = "partner", file: str = "f.csv", id_columns: tuple[str, ...] = ()) -> list:
    ids = RowIds(source, file, id_columns)
    return [ids(line, row) for line, row in enumerate(rows, start=2)]


def _parsed_ids(content: str, options: FormatOptions) -> list[str]:
    ids = RowIds("partner", "f.csv")
    return [ids(p.line, p.row) for p in parse(io.StringIO(content, newline="").readlines(), options, COLUMNS)
            if p.row is not None]


def test_the_same_rows_get_the_same_ids_in_any_format_delimiter_or_line_end() -> None:
    first = _ids(ROWS)
    assert first == _ids(ROWS) and len(set(first)) == 3
    for options in (FormatOptions("csv"), FormatOptions("csv", delimiter=";", quoting="all"), FormatOptions("kv"),
                    FormatOptions("jsonl")):
        assert _parsed_ids(render(ROWS, COLUMNS, options), options) == first, options
    lf = render(ROWS, COLUMNS, FormatOptions()).replace("\r\n", "\n")
    assert _parsed_ids(lf, FormatOptions()) == first


def test_fixing_a_line_keeps_every_other_rows_id_even_when_lines_move() -> None:
    broken = [{"order_id": "o-0", "buyer": "", "note": "bad"}, *ROWS]
    fixed = [{"order_id": "o-0", "buyer": "dee", "note": "fixed\nover\nthree lines"}, *ROWS]
    before = _parsed_ids(render(broken, COLUMNS, FormatOptions()), FormatOptions())
    after = _parsed_ids(render(fixed, COLUMNS, FormatOptions()), FormatOptions())
    assert before[1:] == after[1:] and before[0] != after[0]


def test_identical_rows_stay_distinct_and_the_file_name_and_source_count() -> None:
    twice = [ROWS[0], ROWS[1], ROWS[0]]
    ids = _ids(twice)
    assert len(set(ids)) == 3 and ids[:2] == _ids(ROWS)[:2]
    assert set(_ids(ROWS, file="other.csv")).isdisjoint(_ids(ROWS))
    assert set(_ids(ROWS, source="someone-else")).isdisjoint(_ids(ROWS))


def test_id_columns_name_a_row_in_any_file_of_the_source() -> None:
    by_key = _ids(ROWS, id_columns=("order_id",))
    edited = [{**r, "note": "changed"} for r in ROWS]
    assert _ids(edited, file="other.csv", id_columns=("order_id",)) == by_key
    assert set(_ids(ROWS, source="someone-else", id_columns=("order_id",))).isdisjoint(by_key)
    ids = RowIds("partner", "f.csv", ("order_id",))
    ids(2, ROWS[0])
    with pytest.raises(RowIdError, match="the id \\(order_id\\) of line 2 again"):
        ids(7, {**ROWS[0], "note": "other"})
    with pytest.raises(RowIdError, match="'order_id' is empty") as empty:
        ids(8, {"order_id": None, "buyer": "x"})
    assert empty.value.column == "order_id"


text = st.text(st.characters(blacklist_categories=("Cs",)), max_size=12)


@given(name=st.text(st.characters(blacklist_categories=("Cs",))))
def test_the_fast_uuid5_is_the_standard_one(name: str) -> None:
    assert uuid5(name)[0] == str(uuid.uuid5(ID_NAMESPACE, name))


@settings(max_examples=200, deadline=None)
@given(rows=st.lists(st.fixed_dictionaries({"order_id": text, "buyer": text, "note": st.none() | text}),
                     min_size=1, max_size=15, unique_by=lambda r: (r["order_id"], r["buyer"], r["note"])),
       index=st.integers(0, 14), new_note=text)
def test_changing_one_row_changes_only_its_id(rows: list[dict], index: int, new_note: str) -> None:
    index %= len(rows)
    changed = [dict(r) for r in rows]
    changed[index]["note"] = "\x00" * 13 + new_note  # longer than any generated note: unique
    before, after = _ids(rows), _ids(changed)
    assert [a for i, a in enumerate(before) if i != index] == [b for i, b in enumerate(after) if i != index]
    assert before[index] != after[index]


@settings(max_examples=300, deadline=None)
@given(row=st.dictionaries(st.text(st.characters(blacklist_categories=("Cs",)), max_size=8),
                           st.none() | st.text(st.characters(blacklist_categories=("Cs",)), max_size=20), max_size=6),
       start=st.text(max_size=20), rest=st.text(max_size=20))
def test_the_fast_content_text_and_prefixed_uuid5_are_the_plain_ones(row: dict, start: str, rest: str) -> None:
    assert canonical(row) == _CANONICAL.encode({k: v for k, v in row.items() if v is not None})
    assert uuid5(rest, prefix=sha1_of(start)) == uuid5(start + rest)
    assert canonical({"n": 1, "s": "x", "none": None}) == '{"n":1,"s":"x"}'

"""Debezium change events → typed envelopes (streams.cdc.changes), from the bytes Connect writes."""

from __future__ import annotations

import json
from datetime import date, datetime, time, timedelta, timezone
from decimal import Decimal
from enum import StrEnum
from typing import Annotated, Any
from uuid import UUID

import pytest
from pydantic import BaseModel, Field, Json, NaiveDatetime

from streams.cdc.changes import ChangeDecoder, Operation
from streams.errors import DecodeError, DecodeReason


class Order(BaseModel):
    id: int
    status: str
    amount: Decimal


def event(op: str = "u", *, after: dict | None = None, before: dict | None = None, table: str = "orders",
          lsn: int = 1813985048, tx: int = 643319, snapshot: str = "false") -> dict:
    return {"before": before, "after": after if after is not None or op == "d" else
            {"id": 2, "status": "paid", "amount": "3.00"},
            "source": {"version": "3.4.3.Final", "connector": "postgresql", "name": "cdc.shop", "ts_ms": 1796191153830,
                       "snapshot": snapshot, "db": "shop", "schema": "public", "table": table, "txId": tx, "lsn": lsn},
            "op": op, "ts_ms": 1796191154068}


decoder = ChangeDecoder({"public.orders": Order})


def decode(value: dict | bytes | None, key: bytes | None = b'{"id":2}'):
    raw = json.dumps(value).encode() if isinstance(value, dict) else value
    return decoder.decode(raw, key)


def test_an_update_becomes_a_typed_envelope_with_a_position_id() -> None:
    envelope = decode(event())
    change = envelope.payload
    assert change.op is Operation.UPDATE and change.after == Order(id=2, status="paid", amount=Decimal("3.00"))
    assert change.key == {"id": 2} and change.table == "public.orders" and change.source.lsn == 1813985048
    assert envelope.message_type == "change:public.orders" and envelope.key == '{"id":2}'
    assert envelope.message_id.startswith("cdc:public.orders:1813985048:643319:u:")
    assert envelope.occurred_at.year == 2026  # the commit time


def test_the_same_change_delivered_twice_has_the_same_id_and_others_differ() -> None:
    first, again = decode(event()), decode(event())
    assert first.message_id == again.message_id
    assert decode(event(lsn=1813985049)).message_id != first.message_id
    assert decode(event(), key=b'{"id":3}').message_id != first.message_id
    # a snapshot reads every row at one LSN: the key tells them apart
    reads = {decode(event("r", snapshot="true"), key=f'{{"id":{i}}}'.encode()).message_id for i in range(50)}
    assert len(reads) == 50
    # a snapshot started over (new LSN, new transaction) reads an unchanged row as the same message,
    # a changed row as a new one
    first = decode(event("r", snapshot="true"))
    assert decode(event("r", snapshot="true", lsn=99, tx=7)).message_id == first.message_id
    changed = event("r", snapshot="true", after={"id": 2, "status": "refunded", "amount": "3.00"})
    assert decode(changed).message_id != first.message_id


def test_tombstones_are_none_and_schema_envelopes_are_unwrapped() -> None:
    assert decode(None) is None and decode(b"") is None
    wrapped = {"schema": {"type": "struct"}, "payload": event()}
    assert decode(wrapped).payload.after.status == "paid"


def test_a_delete_keeps_a_key_only_before_row_aside() -> None:
    change = decode(event("d", before={"id": 2}, after=None)).payload
    assert change.op is Operation.DELETE and change.before is None and change.before_columns == {"id": 2}
    assert change.row is None and change.key == {"id": 2}


@pytest.mark.parametrize(("value", "reason"), [
    (b"\xff not json", DecodeReason.NOT_JSON),
    ({"hello": "world"}, DecodeReason.NOT_CHANGE_EVENT),
    (event("x"), DecodeReason.NOT_CHANGE_EVENT),
    ({**event(), "source": {"table": "orders"}}, DecodeReason.NOT_CHANGE_EVENT),
    (event(table="payments"), DecodeReason.UNKNOWN_TABLE),
    (event(after={"id": 2, "state": "paid", "amount": "3.00"}), DecodeReason.SCHEMA_CHANGE),
    (event(after={"id": 2, "status": "paid", "amount": "lots"}), DecodeReason.SCHEMA_CHANGE),
    ([1, 2, 3], DecodeReason.NOT_CHANGE_EVENT),
])
def test_what_is_not_a_change_of_a_declared_table_is_refused_with_its_reason(value, reason) -> None:
    raw = json.dumps(value).encode() if isinstance(value, (dict, list)) else value
    with pytest.raises(DecodeError) as caught:
        decoder.decode(raw, b'{"id":2}')
    assert caught.value.reason is reason


def test_an_added_column_is_ignored() -> None:
    change = decode(event(after={"id": 2, "status": "paid", "amount": "3.00", "coupon": "X"})).payload
    assert change.after == Order(id=2, status="paid", amount=Decimal("3.00"))


def test_a_keyless_table_tells_rows_at_one_lsn_apart_by_their_content() -> None:
    one = decoder.decode(json.dumps(event("c", after={"id": 1, "status": "a", "amount": "1"})).encode(), None)
    two = decoder.decode(json.dumps(event("c", after={"id": 2, "status": "a", "amount": "1"})).encode(), None)
    assert one.payload.key is None and one.message_id != two.message_id


def test_column_types_as_the_generated_config_sends_them() -> None:
    class Typed(BaseModel):
        id: int
        d: date
        maybe: date | None = None
        t: time
        ts: datetime
        tz: datetime
        j: Json[dict]
        u: UUID
        n: Decimal
        arr: list[str]

    # what Debezium 3.4.3 wrote for a row of such a table (time.precision.mode=isostring)
    after = {"id": 1, "d": "2026-12-02Z", "maybe": "2026-12-03Z", "t": "10:11:12.5Z",
             "ts": "2026-12-02T10:11:12.123456Z", "tz": "2026-12-02T06:20:15.347396Z", "j": '{"a": [1, 2]}',
             "u": "04948efd-aebe-4d70-bcb2-38a00f45f9e6", "n": "12.50", "arr": ["x", "y"]}
    typed = ChangeDecoder({"public.typed": Typed})
    row = typed.decode(json.dumps(event("r", after=after, table="typed")).encode(), b'{"id":1}').payload.after
    assert row.d == date(2026, 12, 2) and row.maybe == date(2026, 12, 3) and row.t.hour == 10
    assert row.j == {"a": [1, 2]} and row.n == Decimal("12.50") and row.ts.microsecond == 123456


# --- column values as Debezium 3.4.3 wrote them (the generated config), for each PostgreSQL type ---
class Mood(StrEnum):
    SAD = "sad"
    HAPPY = "happy"


class Typed(BaseModel):
    id: int
    u: UUID | None = None
    n: Annotated[Decimal, Field(allow_inf_nan=True)] | None = None
    j: Json[Any] | None = None
    jo: dict[str, Any] | None = None
    ja: list[Any] | None = None
    ta: list[str | None] | None = None
    ia: list[int | None] | None = None
    tz: datetime | None = None
    ts: NaiveDatetime | None = None
    d: date | None = None
    t: time | None = None
    b: bytes | None = None
    ba: list[bytes | None] | None = None
    m: Mood | None = None
    iv: timedelta | None = None


# the `after` of one insert, copied from the topic (a row of the end-to-end test's table)
WRITTEN = {"id": 1, "u": "a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11", "n": "12345678901234567890.123456789012345678",
           "j": "{\"a\": [1, 2.5, null], \"b\": {\"c\": \"x\"}}", "jo": "{\"a\": [1, 2.5, null]}", "ja": "[1, \"two\", {}]",
           "ta": ["a", None, "b,c", "q\"u"], "ia": [1, None, -3], "tz": "2026-06-01T06:30:00.123456Z",
           "ts": "2026-06-01T12:00:00.654321Z", "d": "0001-01-01Z", "t": "10:01:05.123456Z", "b": "AQD/Cg==",
           "ba": ["AP8=", None, ""], "m": "happy", "iv": "P1Y2M-3DT4H5M6.789S"}


def typed_row(after: dict) -> Typed:
    typed = ChangeDecoder({"public.typed": Typed})
    return typed.decode(json.dumps(event("c", after=after, table="typed")).encode(), b'{"id":1}').payload.after


def test_each_column_type_gets_the_value_postgresql_holds() -> None:
    row = typed_row(WRITTEN)
    assert row.b == b"\x01\x00\xff\n", "bytea arrives as base64 text"
    assert row.ba == [b"\x00\xff", None, b""]
    assert row.t == time(10, 1, 5, 123456) and row.t.tzinfo is None, "a time column holds no zone"
    assert row.ts == datetime(2026, 6, 1, 12, 0, 0, 654321) and row.ts.tzinfo is None
    assert row.tz == datetime(2026, 6, 1, 12, 0, 0, 123456, tzinfo=timezone(timedelta(hours=5, minutes=30)))
    assert row.d == date(1, 1, 1)
    assert row.n == Decimal("12345678901234567890.123456789012345678")
    assert row.j == {"a": [1, 2.5, None], "b": {"c": "x"}} and row.jo == {"a": [1, 2.5, None]}
    assert row.ja == [1, "two", {}]
    assert row.ta == ["a", None, "b,c", 'q"u'] and row.ia == [1, None, -3]
    assert row.m is Mood.HAPPY and row.u == UUID("a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11")
    # psycopg's reading of '1 year 2 mons -3 days 04:05:06.789': a year is 365 days, a month 30
    assert row.iv == timedelta(days=365 + 60 - 3, hours=4, minutes=5, seconds=6.789)


@pytest.mark.parametrize(("text", "expected"), [
    ("NAN", "NaN"), ("POSITIVE_INFINITY", "Infinity"), ("NEGATIVE_INFINITY", "-Infinity"), ("0.0000001", "1E-7"),
    ("-0.01", "-0.01"), ("12.50", "12.50")])
def test_numeric_special_values_and_scale(text: str, expected: str) -> None:
    assert typed_row({"id": 1, "n": text}).n.as_tuple() == Decimal(expected).as_tuple()


@pytest.mark.parametrize(("text", "expected"), [
    ("P0Y0M-1DT2H0M0S", timedelta(days=-1, hours=2)),
    ("P0Y-1M0DT0H0M-0.000001S", timedelta(days=-30, microseconds=-1)),
    ("P0Y0M0DT0H0M0S", timedelta(0)),
    ("P0Y0M0DT-4H-5M-6.5S", -timedelta(hours=4, minutes=5, seconds=6.5)),
])
def test_intervals_as_psycopg_reads_them(text: str, expected: timedelta) -> None:
    assert typed_row({"id": 1, "iv": text}).iv == expected


def test_empty_and_null_values() -> None:
    row = typed_row({"id": 1, "b": "", "ta": [], "j": "null", "jo": None, "d": "9999-12-31Z", "t": "00:00:00Z"})
    assert row.b == b"" and row.ta == [] and row.j is None and row.jo is None
    assert row.d == date(9999, 12, 31) and row.t == time(0)


@pytest.mark.parametrize(("column", "value", "why"), [
    ("b", "AQD/Cg=", "base64"),                  # cut short: not base64 (a hex-mode connector's text is not read)
    ("iv", "PT1H", "interval"),                  # not the connector's interval form
    ("iv", "P178000000Y0M0DT0H0M0S", "range"),   # a real PostgreSQL interval beyond timedelta
    ("jo", "{not json", "JSON"),
    ("n", "POSITIVE_INFINITY", "finite"),        # a Decimal field that does not allow it
])
def test_values_that_cannot_be_converted_park_the_row_with_the_column(column: str, value: str, why: str) -> None:
    class Strict(Typed):
        n: Decimal | None = None

    strict = ChangeDecoder({"public.typed": Strict})
    with pytest.raises(DecodeError) as caught:
        strict.decode(json.dumps(event("c", after={"id": 1, column: value}, table="typed")).encode(), b'{"id":1}')
    assert caught.value.reason is DecodeReason.SCHEMA_CHANGE
    assert [d["loc"] for d in caught.value.details] == [[column]]
    assert why in caught.value.details[0]["msg"], caught.value.details


def test_numbers_from_other_connector_modes_are_refused_or_read_exactly() -> None:
    # interval.handling.mode=numeric (a connector made elsewhere, or before the generated config set string): µs
    assert typed_row({"id": 1, "iv": 1}).iv == timedelta(microseconds=1)
    # time.precision.mode=adaptive writes days / µs since the epoch, which pydantic would take as seconds
    for column, value in (("d", 20424), ("t", 36065123456), ("ts", 1780315200654321), ("tz", 1780315200654)):
        with pytest.raises(DecodeError) as caught:
            typed_row({"id": 1, column: value})
        assert "time.precision.mode" in caught.value.details[0]["msg"], caught.value.details


class Row(BaseModel):
    id: int
    status: str


def binlog_event(*, gtid: str = "0-1-42", file: str = "mysql-bin.000001", pos: int = 1517, row: int = 0,
                 op: str = "u", snapshot: str = "false") -> bytes:
    """A change event as Debezium's MariaDB connector writes it (JSON converter, no schema)."""
    return json.dumps({
        "before": {"id": 7, "status": "new"}, "after": {"id": 7, "status": "paid"},
        "source": {"version": "3.5.0.Final", "connector": "mariadb", "name": "cdc.orders", "ts_ms": 1796583341000,
                   "snapshot": snapshot, "db": "shop", "sequence": None, "ts_us": 1796583341000000,
                   "ts_ns": 1796583341000000000, "table": "cdc_orders", "server_id": 1, "gtid": gtid, "file": file,
                   "pos": pos, "row": row, "thread": 12, "query": None},
        "transaction": None, "op": op, "ts_ms": 1796583341522}).encode()


def test_binlog_changes_are_named_by_gtid_file_position_and_row() -> None:
    binlog = ChangeDecoder({"shop.cdc_orders": Row})
    first = binlog.decode(binlog_event(), b'{"id":7}')
    change = first.payload
    assert change.table == "shop.cdc_orders" and change.source.schema_name is None
    assert (change.source.gtid, change.source.file, change.source.pos, change.source.row) == (
        "0-1-42", "mysql-bin.000001", 1517, 0)
    assert first.message_id.startswith("cdc:shop.cdc_orders:0-1-42:mysql-bin.000001:1517:0:u:")
    assert binlog.decode(binlog_event(), b'{"id":7}').message_id == first.message_id  # read again: same id
    # the same transaction's next statement: another event, whose first row is row 0 as well
    # ("GTID + row" would name both changes alike)
    assert binlog.decode(binlog_event(pos=1705), b'{"id":7}').message_id != first.message_id
    assert binlog.decode(binlog_event(row=1), b'{"id":7}').message_id != first.message_id
    # a snapshot read is named by its row, as on PostgreSQL (a snapshot started over reads it alike)
    reads = {binlog.decode(binlog_event(op="r", snapshot="true", pos=p), b'{"id":7}').message_id for p in (1, 2)}
    assert len(reads) == 1


class Plain(BaseModel):
    """Columns whose values need no conversion: the one-pass path decodes their changes."""

    id: int
    status: str
    note: str | None = None


def _both(value: bytes, key: bytes | None) -> tuple[Any, Any]:
    """(one pass, careful) — each an envelope, None or the DecodeError."""
    fast, careful = ChangeDecoder({"public.orders": Plain}), ChangeDecoder({"public.orders": Plain})
    assert fast._fast is not None
    careful._fast = None
    out = []
    for d in (fast, careful):
        try:
            out.append(d.decode(value, key))
        except DecodeError as exc:
            out.append((exc.reason, str(exc)))
    return out[0], out[1]


PLAIN_AFTER = {"id": 2, "status": "paid", "note": "a \"quoted\" note, {braces} [brackets]"}


@pytest.mark.parametrize("value", [
    event("c", after=PLAIN_AFTER), event("u", after=PLAIN_AFTER, before=PLAIN_AFTER),
    event("d", before=PLAIN_AFTER), event("d", before={"id": 2}),  # a key-only before: kept aside
    event("r", after=PLAIN_AFTER, snapshot="true"), event("u", after={"id": 2, "status": 5}),
    event("u", after=PLAIN_AFTER, table="other"), {**event("c", after=PLAIN_AFTER), "ts_ms": "12"},
    {**event("c", after=PLAIN_AFTER), "ts_ms": True}, {**event("c", after=PLAIN_AFTER), "op": "x"},
    {"schema": {"type": "struct"}, "payload": event("c", after=PLAIN_AFTER)},
    {**event("c", after=PLAIN_AFTER), "schema": {}, "payload": event("u", after={**PLAIN_AFTER, "id": 3})},
    {**event("c", after=PLAIN_AFTER), "source": {**event()["source"], "ts_ms": 10**20}},
    event("c", after={**PLAIN_AFTER, "added": [[[[1]]]]}),
])
@pytest.mark.parametrize("key", [b'{"id":2}', None, b"not json", b'{"schema":{},"payload":{"id":2}}'])
def test_the_one_pass_decode_gives_what_the_careful_one_gives(value: dict, key: bytes | None) -> None:
    fast, careful = _both(json.dumps(value).encode(), key)
    if isinstance(careful, tuple) or careful is None:
        assert fast == careful
        return
    assert (fast.model_dump(), fast.model_fields_set) == (careful.model_dump(), careful.model_fields_set)
    assert fast.payload.model_dump() == careful.payload.model_dump()
    assert type(fast) is type(careful) and type(fast.payload) is type(careful.payload)


def test_the_one_pass_decode_keeps_the_limits() -> None:
    deep = event("c", after={**PLAIN_AFTER, "extra": json.loads("[" * 70 + "]" * 70)})
    big = event("c", after={**PLAIN_AFTER, "note": "x" * (1024 * 1024)})
    for value, reason in ((deep, DecodeReason.TOO_DEEP), (big, DecodeReason.TOO_LARGE)):
        fast, careful = _both(json.dumps(value).encode(), b'{"id":2}')
        assert fast == careful and fast[0] is reason
    fast, careful = _both(b'{"op": "c", "source": \xff}', b'{"id":2}')
    assert fast == careful and fast[0] is DecodeReason.NOT_JSON

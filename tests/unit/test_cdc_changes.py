"""Debezium change events → typed envelopes (streams.cdc.changes), from the bytes Connect writes."""

from __future__ import annotations

import json
from decimal import Decimal

import pytest
from pydantic import BaseModel

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
    from datetime import date, datetime, time
    from uuid import UUID

    from pydantic import Json

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

"""The relay writes a row's record without building the envelope model: the same bytes, or the
same error, as the envelope model gives for every row."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta, timezone
from zoneinfo import ZoneInfo

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from streams.outbox.rows import HEADER_OUTBOX_ID, OutboxRow
from streams.tracing import TRACEPARENT, TRACESTATE


def through_the_model(row: OutboxRow) -> tuple[bytes | None, bytes, list[tuple[str, bytes]]]:
    """What the relay sent before it had a direct path: the envelope model's record."""
    key, value, headers = row.envelope().to_record()
    headers = [*headers, (HEADER_OUTBOX_ID, str(row.id).encode())]
    if row.traceparent:
        headers.append((TRACEPARENT, row.traceparent.encode()))
        if row.tracestate:
            headers.append((TRACESTATE, row.tracestate.encode()))
    return key, value, headers


def same_outcome(row: OutboxRow) -> None:
    try:
        expected = through_the_model(row)
    except Exception as exc:  # noqa: BLE001 - the direct path must fail the same way
        with pytest.raises(type(exc)):
            row.record()
        return
    assert row.record() == expected


def usual(**changes) -> OutboxRow:
    fields = {"id": 7, "message_id": "m-1", "message_type": "OrderPlaced", "kind": "event", "topic": "orders",
              "key": "order-1", "payload": {"n": 1, "note": "é ✓"}, "headers": {}, "meta": {},
              "occurred_at": datetime(2026, 12, 6, 18, 0, 1, 5, UTC), "fail_count": 0, "traceparent": None,
              "tracestate": None}
    return OutboxRow(**{**fields, **changes})


def test_a_usual_row_takes_the_direct_path_and_gives_the_model_s_bytes():
    row = usual(meta={"source": "shop", "correlation_id": "c"}, headers={"schema_version": "2"},
                traceparent="00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01", tracestate="a=b")
    assert row._fast_record() is not None
    assert row.record() == through_the_model(row)


@pytest.mark.parametrize("occurred_at", [
    datetime(2026, 1, 2, 3, 4, 5, tzinfo=UTC), datetime(2026, 1, 2, 3, 4, 5, 120000, tzinfo=ZoneInfo("UTC")),
    datetime(2026, 1, 2, 3, 4, 5, 1, tzinfo=timezone(timedelta(hours=1))),
    datetime(2026, 7, 2, 3, 4, 5, tzinfo=ZoneInfo("Europe/Berlin")),
    datetime(2026, 1, 2, 3, 4, 5, tzinfo=timezone(timedelta(hours=5, minutes=30, seconds=7))),
    datetime(2026, 1, 2, 3, 4, 5)])
def test_times_in_any_zone_are_written_as_the_model_writes_them(occurred_at):
    same_outcome(usual(occurred_at=occurred_at))


@pytest.mark.parametrize("changes", [
    {"kind": "gossip"}, {"message_id": ""}, {"message_id": "x" * 201}, {"message_type": ""},
    {"key": "k" * 1001}, {"key": None}, {"key": ""}, {"headers": {"a": 1}}, {"headers": None}, {"meta": None},
    {"meta": {"tenant": "x"}}, {"meta": {"source": 5}}, {"headers": {"schema_version": "3", "x": "y"}},
    {"kind": "command"}, {"payload": [1, "two", None]}, {"payload": "text"}])
def test_rows_the_model_refuses_or_reshapes_come_out_as_through_the_model(changes):
    same_outcome(usual(**changes))


texts = st.text(max_size=12)
json_values = st.recursive(st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False, allow_infinity=False)
                           | texts, lambda inner: st.lists(inner, max_size=3) | st.dictionaries(texts, inner, max_size=3),
                           max_leaves=8)


@settings(max_examples=300, deadline=None)
@given(message_id=st.text(max_size=3) | st.just("x" * 201), kind=st.sampled_from(["event", "command", "other"]),
       key=st.none() | texts, payload=json_values,
       headers=st.dictionaries(st.sampled_from(["schema_version", "a"]), texts | st.integers(), max_size=2),
       meta=st.dictionaries(st.sampled_from(["source", "trace_id", "tenant"]), st.none() | texts | st.integers(),
                            max_size=2),
       minutes=st.integers(-600, 600), micro=st.integers(0, 999_999))
def test_any_row_comes_out_as_through_the_model(message_id, kind, key, payload, headers, meta, minutes, micro):
    zone = timezone(timedelta(minutes=minutes))
    same_outcome(usual(message_id=message_id, kind=kind, key=key, payload=payload, headers=headers, meta=meta,
                       occurred_at=datetime(2026, 3, 1, 12, 0, 0, micro, tzinfo=zone)))

"""Property-based tests of the change decoder (Debezium change events): whatever a client
outside this project writes into a change topic — key or value — decoding returns an
envelope, ``None`` (a tombstone) or raises ``DecodeError``; never anything else, so no
record can stop (and crash-loop) a worker. The envelope decoder's promise, for change events.

The worker-level proof (hostile change records from a raw producer are parked and the
partition moves on) is ``tests/test_hostile_records.py``.
"""

from __future__ import annotations

import json
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from pydantic import BaseModel, field_validator

from streams.cdc.changes import ChangeDecoder
from streams.errors import DecodeError, DecodeReason
from streams.messages.envelope import Envelope
from streams.messages.registry import DecodeLimits


class Order(BaseModel):
    id: int
    status: str

    @field_validator("status")
    @classmethod
    def _buggy(cls, value: str) -> str:
        # a user's validator with bugs of its own: it raises what pydantic does not wrap
        if value == "index":
            return value[10]
        if value == "type":
            return value + 1  # type: ignore[operator]
        if value == "key":
            raise KeyError(value)
        return value


LIMITS = DecodeLimits(max_value_bytes=64 * 1024, max_depth=32)
decoder = ChangeDecoder({"public.orders": Order}, LIMITS)
PROPERTY = settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])

json_scalars = st.none() | st.booleans() | st.integers() | st.floats(allow_nan=True) | st.text(max_size=20)
json_values = st.recursive(json_scalars, lambda children: st.lists(children, max_size=4)
                           | st.dictionaries(st.text(max_size=8), children, max_size=4), max_leaves=20)


def event(**overrides: Any) -> dict:
    data: dict[str, Any] = {
        "before": None, "after": {"id": 2, "status": "paid"},
        "source": {"connector": "postgresql", "name": "cdc.shop", "ts_ms": 1796191153830, "snapshot": "false",
                   "db": "shop", "schema": "public", "table": "orders", "txId": 643319, "lsn": 1813985048},
        "op": "u", "ts_ms": 1796191154068}
    data.update(overrides)
    return data


def decode_or_error(value: bytes | None, key: bytes | None) -> Envelope | DecodeError | None:
    """The property under test: an envelope, None, or DecodeError — anything else fails."""
    try:
        return decoder.decode(value, key)
    except DecodeError as exc:
        assert exc.reason in DecodeReason
        assert str(exc)
        return exc


def nested(depth: int, opener: str = "[") -> str:
    closer = "]" if opener == "[" else "}"
    return opener * depth + "1" + closer * depth


@PROPERTY
@given(st.binary(max_size=512), st.none() | st.binary(max_size=512))
def test_arbitrary_bytes_in_key_and_value(value: bytes, key: bytes | None) -> None:
    decode_or_error(value, key)


@PROPERTY
@given(json_values, json_values)
def test_arbitrary_json_in_key_and_value(value: Any, key: Any) -> None:
    decode_or_error(json.dumps(value).encode(), json.dumps(key).encode())


@PROPERTY
@given(st.sampled_from(["before", "after", "source", "op", "ts_ms"]), json_values)
def test_wrong_type_in_every_field(field: str, value: Any) -> None:
    decode_or_error(json.dumps(event(**{field: value})).encode(), b'{"id":2}')


@PROPERTY
@given(st.sampled_from(["connector", "name", "ts_ms", "snapshot", "db", "schema", "table", "txId", "lsn"]),
       json_values | st.integers(min_value=-(10 ** 30), max_value=10 ** 30))
def test_wrong_type_in_every_source_field(field: str, value: Any) -> None:
    data = event()
    data["source"][field] = value
    decode_or_error(json.dumps(data).encode(), b'{"id":2}')


@PROPERTY
@given(st.integers(min_value=1, max_value=5000), st.sampled_from(["[", "{\"a\":"]),
       st.sampled_from(["key", "value", "row", "key payload"]))
def test_deeply_nested_json_anywhere(depth: int, opener: str, where: str) -> None:
    deep = nested(depth, opener)
    value, key = json.dumps(event()).encode(), b'{"id":2}'
    if where == "value":
        value = deep.encode()
    elif where == "row":
        value = json.dumps(event(after={"id": 2, "status": "@"})).replace('"@"', deep).encode()
    elif where == "key":
        key = deep.encode()
    else:
        key = ('{"schema": {}, "payload": ' + deep + "}").encode()
    result = decode_or_error(value, key)
    levels = depth + (1 if where == "key payload" else 0)
    if where != "row" and levels > LIMITS.max_depth:
        assert isinstance(result, DecodeError) and result.reason is DecodeReason.TOO_DEEP, result
    if where in ("key", "key payload") and levels <= LIMITS.max_depth:
        assert isinstance(result, Envelope), result  # a key within the limits is no reason to park


@pytest.mark.parametrize("status", ["index", "type", "key"])
def test_a_row_validator_raising_anything_is_a_decode_error(status: str) -> None:
    result = decode_or_error(json.dumps(event(after={"id": 2, "status": status})).encode(), b'{"id":2}')
    assert isinstance(result, DecodeError), result
    assert "Order" in str(result) and result.reason is DecodeReason.SCHEMA_CHANGE


@pytest.mark.parametrize("key, reason", [
    (nested(20_000).encode(), DecodeReason.TOO_DEEP),
    (b'{"id": ' + nested(40).encode() + b"}", DecodeReason.TOO_DEEP),
    (b"x" * (LIMITS.max_value_bytes + 1), DecodeReason.TOO_LARGE),
])
def test_keys_over_the_limits_are_refused_with_the_reason(key: bytes, reason: DecodeReason) -> None:
    result = decode_or_error(json.dumps(event()).encode(), key)
    assert isinstance(result, DecodeError) and result.reason is reason, result
    assert "key" in str(result)


@pytest.mark.parametrize("key", [b"9" * 5000, b"not json", b"\xff\xfe"])
def test_a_key_that_is_not_json_is_kept_raw(key: bytes) -> None:
    result = decode_or_error(json.dumps(event()).encode(), key)
    assert isinstance(result, Envelope), result
    assert set(result.payload.key) == {"_raw"}


@pytest.mark.parametrize("ts_ms", [10 ** 20, -(10 ** 20), 2 ** 63])
def test_a_commit_time_out_of_range_is_a_decode_error(ts_ms: int) -> None:
    data = event()
    data["source"]["ts_ms"] = ts_ms
    result = decode_or_error(json.dumps(data).encode(), b'{"id":2}')
    assert isinstance(result, DecodeError) and result.reason is DecodeReason.NOT_CHANGE_EVENT, result

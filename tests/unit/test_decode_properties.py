"""Property-based tests of the decode path: whatever a client outside this project
writes into a topic, decoding returns an envelope or raises ``DecodeError`` —
never anything else, so no record content can stop a worker.

Pure functions only (no broker): the worker-level proof that such records are
parked and the partition moves on is ``test_hostile_records.py``.
"""

from __future__ import annotations

import json
from datetime import datetime
from decimal import Decimal
from types import SimpleNamespace

import pytest
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st
from pydantic import BaseModel, field_validator

from streams import DecodeError
from streams.consume.headers import Origin, origin_of
from streams.errors import DecodeReason
from streams.messages.envelope import Envelope
from streams.messages.registry import DecodeLimits, MessageRegistry, nesting_depth

registry = MessageRegistry()


class Line(BaseModel):
    sku: str
    quantity: int


@registry.event("OrderPlaced")
class OrderPlaced(BaseModel):
    order_id: str
    total: Decimal
    placed_at: datetime | None = None
    lines: list[Line] = []

    @field_validator("order_id")
    @classmethod
    def _no_poison(cls, value: str) -> str:
        # a user's validator with a bug of its own: it raises something pydantic does not wrap
        if value == "poison":
            raise ZeroDivisionError("division by zero in a user's validator")
        if value == "lookup":
            raise KeyError("missing")
        return value


@registry.command("GrantPoints")
class GrantPoints(BaseModel):
    user_id: str
    points: int


LIMITS = DecodeLimits(max_value_bytes=64 * 1024, max_depth=32)
FIELDS = ["message_id", "message_type", "kind", "occurred_at", "key", "payload", "source",
          "correlation_id", "causation_id", "trace_id", "headers"]

json_scalars = st.none() | st.booleans() | st.integers() | st.floats(allow_nan=True) | st.text(max_size=30)
json_values = st.recursive(json_scalars, lambda children: st.lists(children, max_size=4)
                           | st.dictionaries(st.text(max_size=10), children, max_size=4), max_leaves=25)


def decode_or_error(value, **kwargs) -> Envelope | DecodeError:
    """The property under test: an envelope, or DecodeError — anything else fails the test."""
    try:
        return registry.decode(value, limits=LIMITS, **kwargs)
    except DecodeError as exc:
        assert exc.reason in DecodeReason
        assert str(exc)  # the message renders
        return exc


def valid_dict(**overrides) -> dict:
    data = {"message_id": "m-1", "message_type": "OrderPlaced", "kind": "event",
            "occurred_at": "2026-01-01T00:00:00Z", "key": "o-1",
            "payload": {"order_id": "o-1", "total": "12.50", "lines": [{"sku": "a", "quantity": 1}]}}
    data.update(overrides)
    return data


PROPERTY = settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])


@PROPERTY
@given(st.binary(max_size=2048))
def test_arbitrary_bytes(value: bytes) -> None:
    decode_or_error(value)


@PROPERTY
@given(json_values)
def test_arbitrary_json(data) -> None:
    decode_or_error(json.dumps(data).encode())


@PROPERTY
@given(st.sampled_from(FIELDS), json_values)
def test_wrong_type_in_every_field(field: str, value) -> None:
    decode_or_error(json.dumps(valid_dict(**{field: value})).encode())


@PROPERTY
@given(st.sampled_from(["order_id", "total", "placed_at", "lines"]), json_values)
def test_wrong_type_in_every_payload_field(field: str, value) -> None:
    data = valid_dict()
    data["payload"][field] = value
    decode_or_error(json.dumps(data).encode())


@PROPERTY
@given(st.integers(min_value=1, max_value=6000), st.sampled_from(["[", "{\"a\":"]), st.booleans())
def test_deeply_nested_json(depth: int, opener: str, in_payload: bool) -> None:
    closer = "]" if opener == "[" else "}"
    nested = opener * depth + "1" + closer * depth
    value = (json.dumps(valid_dict(payload="@")).replace('"@"', nested) if in_payload else nested).encode()
    result = decode_or_error(value)
    total_depth = depth + (1 if in_payload else 0)
    if total_depth > LIMITS.max_depth:
        assert isinstance(result, DecodeError) and result.reason is DecodeReason.TOO_DEEP, result


@PROPERTY
@given(st.integers(min_value=0, max_value=200_000), st.sampled_from(["payload", "key", "message_id"]))
def test_huge_strings(size: int, field: str) -> None:
    value = json.dumps(valid_dict(**{field: "x" * size})).encode()
    result = decode_or_error(value)
    if len(value) > LIMITS.max_value_bytes:
        assert isinstance(result, DecodeError) and result.reason is DecodeReason.TOO_LARGE


@pytest.mark.parametrize("value, reason", [
    (b'{"message_id": "m", "message_type": "OrderPlaced", "payload": {"order_id": "1", "total": '
     + b"9" * 5000 + b"}}", DecodeReason.NOT_JSON),  # int too long for Python to convert
    (json.dumps(valid_dict(payload={"order_id": "poison", "total": "1"})).encode(), DecodeReason.INVALID_PAYLOAD),
    (json.dumps(valid_dict(payload={"order_id": "lookup", "total": "1"})).encode(), DecodeReason.INVALID_PAYLOAD),
    (json.dumps(valid_dict(payload={"order_id": "1", "total": "1e999999999"})).encode(), None),
    (json.dumps(valid_dict(occurred_at="99999-01-01T00:00:00Z")).encode(), DecodeReason.NOT_ENVELOPE),
    (json.dumps(valid_dict(occurred_at=10 ** 30)).encode(), DecodeReason.NOT_ENVELOPE),
    (b"\xef\xbb\xbf" + json.dumps(valid_dict()).encode(), DecodeReason.NOT_JSON),  # UTF-8 byte order mark
    (json.dumps(valid_dict(payload={"order_id": "\ud800", "total": "1"})).encode(), None),  # lone surrogate
    (("[" * 60_000).encode(), DecodeReason.TOO_DEEP),
    (("[" * 10_000 + "]" * 10_000).encode(), DecodeReason.TOO_DEEP),
    (b"NaN", DecodeReason.NOT_ENVELOPE),
])
def test_values_that_used_to_escape(value: bytes, reason: DecodeReason | None) -> None:
    result = decode_or_error(value)
    if reason is not None:
        assert isinstance(result, DecodeError), result
        assert result.reason is reason, result


def test_a_user_validator_error_names_the_model_and_the_error() -> None:
    result = decode_or_error(json.dumps(valid_dict(payload={"order_id": "poison", "total": "1"})).encode())
    assert isinstance(result, DecodeError)
    assert "OrderPlaced raised ZeroDivisionError" in str(result)
    assert result.message_id == "m-1"


def test_depth_limit_is_exact() -> None:
    limits = DecodeLimits(max_depth=4)
    ok = json.dumps(valid_dict(payload={"order_id": "1", "total": "1", "lines": []}, headers={})).encode()
    assert registry.decode(ok, limits=limits)  # envelope 1, payload 2, lines 3
    deep = valid_dict()
    deep["payload"]["extra"] = [[["x"]]]  # envelope 1, payload 2, [[[ 3..5
    with pytest.raises(DecodeError) as err:
        registry.decode(json.dumps(deep).encode(), limits=limits)
    assert err.value.reason is DecodeReason.TOO_DEEP
    assert "more than 4 levels" in str(err.value)
    assert nesting_depth({"a": [[{}]]}) == 4 and nesting_depth(5) == 0 and nesting_depth([]) == 1


def test_size_limit_names_the_setting() -> None:
    with pytest.raises(DecodeError) as err:
        registry.decode(b" " * 2000 + b"{}", limits=DecodeLimits(max_value_bytes=1024))
    assert err.value.reason is DecodeReason.TOO_LARGE
    assert "2002 bytes" in str(err.value) and "STREAMS_MAX_VALUE_BYTES" in str(err.value)


def test_an_envelope_without_message_id_is_refused() -> None:
    data = valid_dict()
    del data["message_id"]
    with pytest.raises(DecodeError) as err:
        registry.decode(json.dumps(data).encode())
    assert err.value.reason is DecodeReason.NOT_ENVELOPE
    assert err.value.details == [{"loc": ["message_id"], "msg": "Field required", "type": "missing"}]
    assert "message_id: Field required" in str(err.value)
    assert err.value.message_type == "OrderPlaced"


def test_a_fallback_id_stands_in_only_for_a_missing_one() -> None:
    data = valid_dict()
    del data["message_id"]
    assert registry.decode(json.dumps(data).encode(), fallback_id="orders-3@42").message_id == "orders-3@42"
    assert registry.decode(json.dumps(valid_dict()).encode(), fallback_id="orders-3@42").message_id == "m-1"
    with pytest.raises(DecodeError):  # an explicit null is not "missing": the producer sent a bad id
        registry.decode(json.dumps(valid_dict(message_id=None)).encode(), fallback_id="orders-3@42")


header_names = st.sampled_from(["retry.level", "retry.due_at", "retry.attempts", "retry.first_failure",
                                "retry.original.topic", "retry.original.partition", "retry.original.offset",
                                "replay.of", "message_id", "kind"]) | st.text(max_size=12)
header_values = st.none() | st.binary(max_size=12) | st.sampled_from([b"1", b"0", b"-3", b"2.5", b"orders"])


@PROPERTY
@given(st.lists(st.tuples(header_names, header_values), max_size=8), st.booleans())
def test_random_headers(headers, on_retry_topic: bool) -> None:
    record = SimpleNamespace(topic="orders", partition=2, offset=7, headers=headers)
    try:
        origin = origin_of(record, on_retry_topic=on_retry_topic)
    except DecodeError as exc:
        assert exc.reason is DecodeReason.BAD_HEADERS
        assert on_retry_topic
        return
    assert isinstance(origin, Origin)
    if not on_retry_topic:  # a source record's origin is the record itself, whatever headers say
        assert (origin.topic, origin.partition, origin.offset, origin.level) == ("orders", 2, 7, 0)


@PROPERTY
@given(json_values, st.text(max_size=20))
def test_kind_and_type_combinations(payload, message_type: str) -> None:
    assume(message_type)
    for kind in ("event", "command"):
        decode_or_error(json.dumps(valid_dict(message_type=message_type, kind=kind, payload=payload)).encode())


def _outcome(value, **kwargs):
    try:
        return registry.decode(value, limits=LIMITS, **kwargs)
    except DecodeError as exc:
        return exc.reason


@PROPERTY
@given(st.sampled_from([*FIELDS, "payload.order_id", "payload.total"]), json_values, st.booleans())
def test_the_one_pass_decode_agrees_with_the_careful_one(field: str, value, drop_id: bool) -> None:
    """A record whose message_type header names a registered type is decoded in one pydantic pass;
    whatever that pass accepts must be exactly what the careful path gives, and what it refuses must
    get the careful path's reason."""
    data = valid_dict()
    if field.startswith("payload."):
        data["payload"][field.split(".", 1)[1]] = value
    else:
        data[field] = value
    if drop_id:
        data.pop("message_id", None)
    raw = json.dumps(data).encode()
    for hint in ("OrderPlaced", "GrantPoints", "Unknown"):
        assert _outcome(raw, message_type=hint) == _outcome(raw)

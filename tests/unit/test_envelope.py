"""Envelope and registry: round trips and every decoding failure class (pure logic, no services)."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from decimal import Decimal

import pytest
from pydantic import BaseModel

from streams import (
    ConfigurationError,
    DecodeError,
    DecodeReason,
    Envelope,
    Kind,
    MessageRegistry,
    Settings,
    StreamsApp,
    command,
    event,
)
from streams.messages.envelope import (
    HEADER_KIND,
    HEADER_MESSAGE_ID,
    HEADER_MESSAGE_TYPE,
)


class OrderPlaced(BaseModel):
    order_id: str
    amount: Decimal


class GrantPoints(BaseModel):
    user_id: str
    points: int


@pytest.fixture
def registry() -> MessageRegistry:
    reg = MessageRegistry()
    reg.register("OrderPlaced", OrderPlaced, Kind.EVENT)
    reg.register("GrantPoints", GrantPoints, Kind.COMMAND)
    return reg


def test_round_trip_keeps_every_field(registry: MessageRegistry) -> None:
    original = registry.envelope(
        OrderPlaced(order_id="o-1", amount=Decimal("12.50")), key="o-1",
        source="orders", correlation_id="c-9", trace_id="t-1", headers={"tenant": "kr"},
    )
    key, value, headers = original.to_record()
    decoded = registry.decode(value)
    assert decoded == original
    assert isinstance(decoded.payload, OrderPlaced)
    assert decoded.payload.amount == Decimal("12.50")
    assert key == b"o-1"
    hdrs = dict(headers)
    assert hdrs[HEADER_MESSAGE_ID] == original.message_id.encode()
    assert hdrs[HEADER_MESSAGE_TYPE] == b"OrderPlaced"
    assert hdrs[HEADER_KIND] == b"event"
    assert json.loads(value)["kind"] == "event"


def test_ids_are_unique_and_times_are_aware() -> None:
    a = event("OrderPlaced", {"order_id": "1", "amount": 1})
    b = event("OrderPlaced", {"order_id": "1", "amount": 1})
    assert a.message_id != b.message_id
    assert a.occurred_at.tzinfo is not None
    naive = Envelope(message_type="X", payload={}, occurred_at=datetime(2026, 1, 1))
    assert naive.occurred_at.tzinfo == UTC


def test_command_builder_and_registry_kind(registry: MessageRegistry) -> None:
    cmd = registry.envelope(GrantPoints(user_id="u", points=10), key="u")
    assert cmd.kind is Kind.COMMAND
    assert command("GrantPoints", {"user_id": "u", "points": 1}).kind is Kind.COMMAND


@pytest.mark.parametrize("value, detail", [
    (b"", "empty"),
    (None, "empty"),
    (b"\xff\xfe\x00garbage", "not UTF-8"),
    (b"{not json", "not JSON"),
])
def test_not_json(registry: MessageRegistry, value, detail: str) -> None:
    with pytest.raises(DecodeError) as err:
        registry.decode(value)
    assert err.value.reason is DecodeReason.NOT_JSON
    assert detail in str(err.value)


@pytest.mark.parametrize("value", [
    b"[1, 2, 3]",
    b'"a string"',
    b'{"payload": {}}',
    b'{"message_type": "OrderPlaced", "payload": {}, "kind": "gossip"}',
    b'{"message_type": "OrderPlaced", "payload": {}, "unexpected": 1}',
])
def test_not_an_envelope(registry: MessageRegistry, value: bytes) -> None:
    with pytest.raises(DecodeError) as err:
        registry.decode(value)
    assert err.value.reason is DecodeReason.NOT_ENVELOPE


def test_not_an_envelope_lists_the_fields(registry: MessageRegistry) -> None:
    with pytest.raises(DecodeError) as err:
        registry.decode(b'{"payload": {}, "message_id": "m-1"}')
    assert err.value.message_id == "m-1"
    assert any(d["loc"] == ["message_type"] for d in err.value.details)
    assert "message_type: Field required" in str(err.value)


def test_unknown_type(registry: MessageRegistry) -> None:
    with pytest.raises(DecodeError) as err:
        registry.decode(event("OrderShipped", {"order_id": "1"}).to_json())
    assert err.value.reason is DecodeReason.UNKNOWN_TYPE
    assert err.value.message_type == "OrderShipped"
    assert "GrantPoints, OrderPlaced" in str(err.value)


def test_invalid_payload_carries_pydantic_details(registry: MessageRegistry) -> None:
    bad = event("OrderPlaced", {"order_id": 5, "amount": "lots"})
    with pytest.raises(DecodeError) as err:
        registry.decode(bad.to_json())
    exc = err.value
    assert exc.reason is DecodeReason.INVALID_PAYLOAD
    assert exc.message_id == bad.message_id
    locs = {tuple(d["loc"]) for d in exc.details}
    assert ("order_id",) in locs and ("amount",) in locs
    assert "payload does not match OrderPlaced" in str(exc)


def test_kind_mismatch(registry: MessageRegistry) -> None:
    as_event = event("GrantPoints", {"user_id": "u", "points": 1})
    with pytest.raises(DecodeError) as err:
        registry.decode(as_event.to_json())
    assert err.value.reason is DecodeReason.KIND_MISMATCH


def test_decode_error_names_where(registry: MessageRegistry) -> None:
    try:
        registry.decode(b"nope")
    except DecodeError as exc:
        exc.at("orders", 3, 42)
        assert "at orders[3]@42" in str(exc)
    else:  # pragma: no cover
        pytest.fail("expected DecodeError")


def test_registry_refuses_conflicting_registration(registry: MessageRegistry) -> None:
    with pytest.raises(ConfigurationError):
        registry.register("OrderPlaced", GrantPoints, Kind.EVENT)


def _app(registry: MessageRegistry, tmp_path) -> StreamsApp:
    return StreamsApp("envelope-test", registry=registry, settings=Settings(home=tmp_path, store="memory://"))


async def _noop(message, delivery) -> None:
    return None


def test_two_handlers_for_one_command_are_refused(registry: MessageRegistry, tmp_path) -> None:
    app = _app(registry, tmp_path)
    points = app.topic("points.commands", kind=Kind.COMMAND)
    app.handler(points, "GrantPoints", name="grant_points")(_noop)
    with pytest.raises(ConfigurationError, match="exactly one owner"):
        app.handler(points, "GrantPoints", name="grant_points_again")(_noop)


def test_many_handlers_for_one_event_are_fine(registry: MessageRegistry, tmp_path) -> None:
    app = _app(registry, tmp_path)
    orders = app.topic("orders", kind=Kind.EVENT)
    app.handler(orders, "OrderPlaced", name="push_seller")(_noop)
    app.handler(orders, "OrderPlaced", name="update_stats")(_noop)
    assert set(app.handlers) == {"push_seller", "update_stats"}


def test_handler_kind_must_match_topic_kind(registry: MessageRegistry, tmp_path) -> None:
    app = _app(registry, tmp_path)
    orders = app.topic("orders", kind=Kind.EVENT)
    with pytest.raises(ConfigurationError, match="is a command but topic"):
        app.handler(orders, "GrantPoints")(_noop)
    with pytest.raises(ConfigurationError, match="not registered"):
        app.handler(orders, "Nope")(_noop)


def test_topic_prefix_applies_to_topics_and_dead_letters(registry: MessageRegistry, tmp_path) -> None:
    app = StreamsApp("p", registry=registry, settings=Settings(home=tmp_path, topic_prefix="staging."))
    t = app.topic("orders", kind=Kind.EVENT, partitions=3)
    assert t.name == "staging.orders" and t.dead_letter_name == "staging.orders.dlq"
    assert {(s.name, s.partitions) for s in app.topic_specs()} == {("staging.orders", 3), ("staging.orders.dlq", 3)}

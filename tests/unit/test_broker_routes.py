"""STREAMS_BROKER_ROUTES parsing and routing; RabbitMQ lanes follow Kafka's partitioner; records as
RabbitMQ messages and Redis entries and back, byte for byte."""

from __future__ import annotations

import pytest

from streams.broker_routes import Routes, parse_routes
from streams.messages.envelope import event
from streams.settings import SettingsError, load_settings


def test_first_matching_pattern_wins_and_the_rest_is_kafka() -> None:
    routes = Routes("orders.dlq=kafka, orders.*=rabbitmq, sms.*=redis")
    assert [routes.broker(t) for t in ("orders.placed", "orders.dlq", "sms.code", "points")] == \
        ["rabbitmq", "kafka", "redis", "kafka"]
    assert routes.brokers() == {"kafka", "rabbitmq", "redis"}
    assert Routes("*=redis").brokers() == {"redis"}  # nothing left for Kafka: the relay starts no producer
    assert Routes("").brokers() == {"kafka"}


@pytest.mark.parametrize("text, says", [("orders.*", "PATTERN=BROKER"), ("=kafka", "PATTERN=BROKER"),
                                        ("orders.*=activemq", "unknown broker 'activemq'")])
def test_bad_routes_are_refused_naming_the_part(text: str, says: str) -> None:
    with pytest.raises(ValueError, match=says):
        parse_routes(text)
    with pytest.raises(SettingsError, match="STREAMS_BROKER_ROUTES"):
        load_settings(broker_routes=text)


def test_a_keys_lane_is_its_kafka_partition() -> None:
    from aiokafka.partitioner import DefaultPartitioner

    from streams.rabbitmq.messages import lane_of

    for i in range(200):
        key = f"key-{i}".encode()
        assert int(lane_of(key, "m", 8)) == DefaultPartitioner()(key, list(range(8)), list(range(8)))


def test_records_round_trip_through_rabbitmq_messages_and_redis_entries() -> None:
    from streams.rabbitmq.messages import HEADER_KEY, record_headers, to_message
    from streams.redis_streams.entries import from_fields, to_fields

    key, value, headers = event("OrderPlaced", {"n": 1}, key="k-1").to_record()
    message = to_message(key, value, headers)
    assert message.body == value and message.message_id == dict(headers)["message_id"].decode()
    amqp = dict(message.headers or {})
    assert amqp.pop(HEADER_KEY) == "k-1"
    assert sorted(record_headers(amqp)) == sorted(headers)
    assert from_fields(to_fields(key, value, headers)) == (key, value, headers)

"""A record (key, value, headers: what the relay sends to Kafka) as an AMQP message, and back."""

from __future__ import annotations

from typing import TYPE_CHECKING

from streams.messages.envelope import HEADER_MESSAGE_ID, HEADER_MESSAGE_TYPE

if TYPE_CHECKING:
    import aio_pika

#: AMQP header holding the record key (the routing key is also the key, but a message
#: dead-lettered or retried keeps its headers, not always its routing key)
HEADER_KEY = "key"


def to_message(key: bytes | None, value: bytes, headers: list[tuple[str, bytes]]) -> aio_pika.Message:
    """A persistent message: the value as body, the record headers as AMQP headers (text),
    ``message_id`` and ``type`` properties from the envelope's headers."""
    import aio_pika

    amqp_headers: dict[str, str] = {name: raw.decode("utf-8", "replace") for name, raw in headers}
    if key is not None:
        amqp_headers[HEADER_KEY] = key.decode("utf-8", "replace")
    return aio_pika.Message(
        value, headers=amqp_headers,  # type: ignore[arg-type]  # str values are valid AMQP field values
        message_id=amqp_headers.get(HEADER_MESSAGE_ID), type=amqp_headers.get(HEADER_MESSAGE_TYPE),
        content_type="application/json", delivery_mode=aio_pika.DeliveryMode.PERSISTENT)


def lane_of(key: bytes | None, message_id: str, lanes: int) -> str:
    """The lane (routing key) of a message: Kafka's default partitioner over ``lanes`` (murmur2 of
    the key), so a key's lane is its partition on a Kafka topic with as many partitions; a keyless
    message spreads by its id."""
    from aiokafka.partitioner import murmur2

    return str((murmur2(key if key is not None else message_id.encode()) & 0x7FFFFFFF) % lanes)


def record_headers(headers: dict | None) -> list[tuple[str, bytes]]:
    """AMQP headers as record headers (bytes values); values of other AMQP types as their text."""
    out: list[tuple[str, bytes]] = []
    for name, value in (headers or {}).items():
        if isinstance(value, bytes):
            out.append((str(name), value))
        else:
            out.append((str(name), str(value).encode("utf-8")))
    return out

"""Publishing an import's records: whole record batches per partition, acknowledged a batch at a time.

The records go out with the idempotent ``acks=all`` producer
(:func:`streams.kafka.clients.durable_producer`), each to the partition the Java
client's default partitioner gives its key (:func:`murmur2`; a record without a key goes to
any partition), in the order given — so the rows of one key keep the file's order.
Rather than one ``send`` (a coroutine and a future) per record, records are appended
to a record batch per partition (aiokafka's batch API) that is handed to the producer
when full: the per-record cost is the append alone. ``on_acked`` gets the message ids
of each batch once the broker acknowledged it.
"""

from __future__ import annotations

import asyncio
import random
import struct
from collections.abc import Callable, Iterable
from typing import Any

from streams.batch.records import Record
from streams.kafka.clients import durable_producer
from streams.settings import Settings

#: bytes of one record batch (the broker's default message.max.bytes is about 1 MiB)
BATCH_BYTES = 256 * 1024


def murmur2(data: bytes) -> int:
    """Kafka's partitioner hash (the Java client's ``Utils.murmur2``): what
    ``aiokafka.partitioner.murmur2`` returns, reading the key's 4-byte words in one unpack."""
    length = len(data)
    m = 0x5BD1E995
    h = (0x9747B28C ^ length) & 0xFFFFFFFF
    words = length >> 2
    if words:
        for k in struct.unpack_from(f"<{words}I", data):
            k = (k * m) & 0xFFFFFFFF
            k ^= k >> 24
            k = (k * m) & 0xFFFFFFFF
            h = ((h * m) & 0xFFFFFFFF) ^ k
    extra = length & 3
    if extra:
        base = length & ~3
        if extra >= 3:
            h ^= data[base + 2] << 16
        if extra >= 2:
            h ^= data[base + 1] << 8
        h = ((h ^ data[base]) * m) & 0xFFFFFFFF
    h ^= h >> 13
    h = (h * m) & 0xFFFFFFFF
    return h ^ (h >> 15)


class RecordTooLarge(ValueError):
    """A record that does not fit in a record batch of its own."""


async def publish_records(settings: Settings, topic: str, chunks: Iterable[list[Record]],
                          headers: Callable[[str], list[tuple[str, bytes]]],
                          on_acked: Callable[[list[str]], None] | None = None) -> int:
    """Publish ``(key, value, message id)`` records in order; returns how many.

    ``headers`` gives a record's headers from its message id. Raises what the producer
    raised for a batch the broker did not take (nothing after it is acknowledged)."""
    producer = durable_producer(settings, max_batch_size=BATCH_BYTES, linger_ms=0)
    await producer.start()
    count = 0
    try:
        partitions = sorted(await producer.partitions_for(topic))
        n = len(partitions)
        open_batches: dict[int, tuple[Any, list[str]]] = {}
        in_flight: list[tuple[asyncio.Future, list[str]]] = []

        async def send(partition: int) -> None:
            batch, ids = open_batches.pop(partition)
            batch.close()
            in_flight.append((await producer.send_batch(batch, topic, partition=partition), ids))
            while in_flight and in_flight[0][0].done():
                acked(*in_flight.pop(0))

        def acked(future: asyncio.Future, ids: list[str]) -> None:
            future.result()  # raises what the broker answered
            if on_acked is not None:
                on_acked(ids)

        for chunk in chunks:
            for key, value, message_id in chunk:
                partition = (partitions[(murmur2(key) & 0x7FFFFFFF) % n] if key is not None
                             else random.choice(partitions))
                entry = open_batches.get(partition)
                if entry is None:
                    entry = open_batches[partition] = (producer.create_batch(), [])
                if entry[0].append(timestamp=None, key=key, value=value, headers=headers(message_id)) is None:
                    if not entry[1]:
                        raise RecordTooLarge(f"the record of message {message_id} ({len(value):,} bytes) does not "
                                             f"fit in a record batch ({BATCH_BYTES:,} bytes)")
                    await send(partition)
                    entry = open_batches[partition] = (producer.create_batch(), [])
                    if entry[0].append(timestamp=None, key=key, value=value, headers=headers(message_id)) is None:
                        raise RecordTooLarge(f"the record of message {message_id} ({len(value):,} bytes) does not "
                                             f"fit in a record batch ({BATCH_BYTES:,} bytes)")
                entry[1].append(message_id)
                count += 1
        for partition in list(open_batches):
            await send(partition)
        for future, ids in in_flight:
            await future
            acked(future, ids)
    finally:
        await producer.stop()
    return count

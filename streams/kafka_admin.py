"""Broker-side facts and chores: create topics, read end offsets and a group's
committed offsets. Everything here asks the broker, never a worker's memory."""

from __future__ import annotations

import asyncio
from collections.abc import Iterable
from dataclasses import dataclass

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from aiokafka.errors import TopicAlreadyExistsError

from streams.envelope import Envelope
from streams.settings import Settings


@dataclass(frozen=True)
class TopicSpec:
    name: str
    partitions: int
    replication_factor: int = 1
    config: dict[str, str] | None = None


def admin_client(settings: Settings) -> AIOKafkaAdminClient:
    kwargs = settings.kafka_client_kwargs()
    return AIOKafkaAdminClient(**kwargs)


async def ensure_topics(settings: Settings, topics: Iterable[TopicSpec]) -> list[str]:
    """Create the topics that do not exist yet; returns the names created."""
    wanted = list(topics)
    admin = admin_client(settings)
    await admin.start()
    try:
        existing = set(await admin.list_topics())
        new = [
            NewTopic(t.name, t.partitions, t.replication_factor, topic_configs=t.config or {})
            for t in wanted
            if t.name not in existing
        ]
        if not new:
            return []
        try:
            await admin.create_topics(new)
        except TopicAlreadyExistsError:
            pass
        # wait until metadata shows them (creation is asynchronous on the controller)
        for _ in range(100):
            if {t.name for t in new} <= set(await admin.list_topics()):
                break
            await asyncio.sleep(0.1)
        return [t.name for t in new]
    finally:
        await admin.close()


async def topic_partitions(consumer: AIOKafkaConsumer, topic: str) -> list[TopicPartition]:
    """The partitions of ``topic`` (metadata refreshed once if the consumer does not know
    it yet); an empty list for a topic that does not exist."""
    partitions = consumer.partitions_for_topic(topic)
    if partitions is None:
        await consumer._client.force_metadata_update()  # noqa: SLF001 - no public refresh
        partitions = consumer.partitions_for_topic(topic)
    return [TopicPartition(topic, p) for p in sorted(partitions or ())]


async def end_offsets(settings: Settings, topic: str) -> dict[int, int]:
    """Log-end offset of each partition of ``topic``."""
    consumer = AIOKafkaConsumer(**settings.kafka_client_kwargs(), enable_auto_commit=False)
    await consumer.start()
    try:
        tps = await topic_partitions(consumer, topic)
        if not tps:
            return {}
        ends = await consumer.end_offsets(tps)
        return {tp.partition: off for tp, off in ends.items()}
    finally:
        await consumer.stop()


async def committed_offsets(settings: Settings, group: str, topic: str | None = None) -> dict[tuple[str, int], int]:
    """Offsets committed by consumer group ``group`` ((topic, partition) → offset)."""
    admin = admin_client(settings)
    await admin.start()
    try:
        result = await admin.list_consumer_group_offsets(group)
    finally:
        await admin.close()
    return {
        (tp.topic, tp.partition): meta.offset
        for tp, meta in result.items()
        if (topic is None or tp.topic == topic) and meta.offset >= 0
    }


async def produce_envelopes(settings: Settings, topic: str, envelopes: Iterable[Envelope],
                            *, linger_ms: int = 5) -> int:
    """Publish envelopes (key → partition) with an idempotent, acks=all producer; returns the count."""
    producer = AIOKafkaProducer(
        **settings.kafka_client_kwargs(), acks="all", enable_idempotence=True, linger_ms=linger_ms
    )
    await producer.start()
    count = 0
    try:
        futures = []
        for env in envelopes:
            key, value, headers = env.to_record()
            futures.append(await producer.send(topic, value=value, key=key, headers=headers))
            count += 1
            if len(futures) >= 1000:
                await asyncio.gather(*futures)
                futures.clear()
        await asyncio.gather(*futures)
    finally:
        await producer.stop()
    return count


async def produce_raw(settings: Settings, topic: str, records: Iterable[tuple[bytes | None, bytes]],
                      headers: list[tuple[str, bytes]] | None = None) -> int:
    """Publish raw (key, value) records, e.g. to test how consumers treat bad input."""
    producer = AIOKafkaProducer(**settings.kafka_client_kwargs(), acks="all", enable_idempotence=True)
    await producer.start()
    count = 0
    try:
        for key, value in records:
            await producer.send_and_wait(topic, value=value, key=key, headers=headers or [])
            count += 1
    finally:
        await producer.stop()
    return count


async def read_topic(settings: Settings, topic: str, *, read_committed: bool = False) -> list:
    """Every record of ``topic`` present now (beginning to the current end), without a group.

    With ``read_committed`` only committed transactional records are returned and the end is the
    last stable offset.
    """
    consumer = AIOKafkaConsumer(**settings.kafka_client_kwargs(), group_id=None, enable_auto_commit=False,
                                auto_offset_reset="earliest",
                                isolation_level="read_committed" if read_committed else "read_uncommitted")
    await consumer.start()
    out: list = []
    try:
        tps = await topic_partitions(consumer, topic)
        if not tps:
            raise LookupError(f"topic {topic!r} does not exist")
        consumer.assign(tps)
        ends = await consumer.end_offsets(tps)
        starts = await consumer.beginning_offsets(tps)
        for tp in tps:  # explicit positions: no lazy offset reset to race with
            consumer.seek(tp, starts[tp])
        remaining = {tp for tp in tps if ends[tp] > starts[tp]}
        seen: set[tuple[int, int]] = set()
        while remaining:
            batch = await consumer.getmany(*remaining, timeout_ms=1000)
            for tp, records in batch.items():
                for r in records:
                    # a record is one (partition, offset): a re-fetch must not count it twice
                    if r.offset < ends[tp] and (r.partition, r.offset) not in seen:
                        seen.add((r.partition, r.offset))
                        out.append(r)
            for tp in list(remaining):
                if await consumer.position(tp) >= ends[tp]:
                    remaining.discard(tp)
    finally:
        await consumer.stop()
    return out

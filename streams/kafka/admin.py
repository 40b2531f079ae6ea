"""Broker-side facts and chores: create topics, read end offsets and a group's
committed offsets. Everything here asks the broker, never a worker's memory."""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any, TypeVar

from aiokafka import AIOKafkaConsumer, TopicPartition
from aiokafka.admin import NewTopic
from aiokafka.client import AIOKafkaClient
from aiokafka.errors import (
    KafkaError,
    TopicAlreadyExistsError,
    UnknownTopicOrPartitionError,
    for_code,
)

from streams import tracing
from streams.kafka.clients import admin_client, durable_producer, plain_consumer, read_ranges, with_coordinator
from streams.messages.envelope import Envelope
from streams.settings import Settings

T = TypeVar("T")


@dataclass(frozen=True)
class TopicSpec:
    """A topic to create: ``replication_factor`` None follows the settings and the cluster size
    (see :meth:`Settings.replication`), and so does ``min.insync.replicas`` unless ``config`` sets it."""

    name: str
    partitions: int
    replication_factor: int | None = None
    config: dict[str, str] | None = None


def new_topic(settings: Settings, spec: TopicSpec, brokers: int) -> NewTopic:
    """The admin request for ``spec`` on a cluster of ``brokers``, replication defaults applied."""
    replication, min_isr = settings.replication(brokers)
    if spec.replication_factor is not None:
        replication, min_isr = spec.replication_factor, min(min_isr, spec.replication_factor)
    config = dict(spec.config or {})
    if replication > 1:  # with one replica the broker default (1) is the only possible value
        config.setdefault("min.insync.replicas", str(min_isr))
    return NewTopic(spec.name, spec.partitions, replication, topic_configs=config)


class TopicsNotReady(TimeoutError):
    """Topics did not show in every broker's metadata in time (named in the message)."""


async def wait_for_topic_metadata(client: AIOKafkaClient, topics: Mapping[str, int | None], *,
                                  timeout: float = 30.0) -> None:
    """Return once every broker's metadata shows each topic with its partition count
    (None: any count) and a leader for every partition.

    Creating a topic returns when the controller has it; a broker's metadata (what
    a consumer group's leader assigns partitions from) follows a moment later. A
    consumer that subscribes in between is assigned nothing of the topic, so
    whatever creates topics waits here first. Raises :class:`TopicsNotReady`."""
    from aiokafka.protocol.metadata import MetadataRequest

    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    names = sorted(topics)
    problems: dict[str, str] = {}
    while True:
        problems = {}
        nodes = [b.nodeId for b in client.cluster.brokers()]
        if not nodes:
            await client.force_metadata_update()
            nodes = [b.nodeId for b in client.cluster.brokers()]
        for node in nodes:
            try:
                response = await client.send(node, MetadataRequest(names))
            except Exception as exc:  # noqa: BLE001 - a broker that does not answer now: ask again
                problems["*"] = f"broker {node} did not answer: {exc!r}"
                continue
            seen = {}
            for entry in response.topics:
                error_code, name, partitions = entry[0], entry[1], next(x for x in entry[2:] if isinstance(x, list))
                seen[name] = (error_code, partitions)
            for name in names:
                error_code, partitions = seen.get(name, (3, []))
                expected = topics[name]
                if error_code:
                    problems[name] = f"broker {node}: {for_code(error_code).__name__}"
                elif not partitions or (expected is not None and len(partitions) != expected):
                    problems[name] = f"broker {node}: {len(partitions)} partition(s), expected {expected or '>0'}"
                elif any(p[2] < 0 for p in partitions):
                    problems[name] = f"broker {node}: a partition has no leader yet"
        if not problems:
            return
        if loop.time() > deadline:
            raise TopicsNotReady("topics not in the brokers' metadata after {:.0f}s: {}".format(
                timeout, "; ".join(f"{k}: {v}" for k, v in sorted(problems.items()))))
        await asyncio.sleep(0.1)


async def probe_topics(client: AIOKafkaClient, topics: Iterable[str], *,
                       timeout: float = 5.0) -> dict[str, type[KafkaError] | None]:
    """Whether each topic exists, asked of one broker with a metadata request for just these
    topics: None (it does) or the error class the broker answered for it
    (``UnknownTopicOrPartitionError``: no such topic; ``InvalidTopicError``: not a legal name;
    ``LeaderNotAvailableError``: being created). Asked the way a producer asks, so a broker with
    ``auto.create.topics.enable`` creates them. Unlike a producer's send, it neither waits for a
    missing topic nor makes the client log about it on every later metadata refresh.
    Raises ``KafkaError`` (or ``TimeoutError``) when no broker answers."""
    import random

    from aiokafka.errors import NodeNotReadyError
    from aiokafka.protocol.metadata import MetadataRequest

    names = sorted(set(topics))
    if not names:
        return {}
    nodes = [b.nodeId for b in client.cluster.brokers()]
    random.shuffle(nodes)
    if not nodes:
        raise NodeNotReadyError("no broker known (the cluster's metadata is empty)")
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    response = None
    for i, node in enumerate(nodes):  # one dead broker of a cluster must not leave the question open
        try:
            response = await asyncio.wait_for(client.send(node, MetadataRequest(names)),
                                              max(deadline - loop.time(), 0.001))
            break
        except (KafkaError, OSError):  # TimeoutError included
            if i == len(nodes) - 1 or loop.time() >= deadline:
                raise
    assert response is not None
    answers: dict[str, type[KafkaError] | None] = {}
    for entry in response.topics:
        error_code, name = entry[0], entry[1]
        answers[name] = for_code(error_code) if error_code else None
    return {name: answers.get(name, UnknownTopicOrPartitionError) for name in names}


async def ensure_topics(settings: Settings, topics: Iterable[TopicSpec]) -> list[str]:
    """Create the topics that do not exist yet; returns the names created. Returns only
    once every broker's metadata shows all of ``topics`` (see :func:`wait_for_topic_metadata`)."""
    wanted = list(topics)
    admin = admin_client(settings)
    await admin.start()
    try:
        existing = set(await admin.list_topics())
        brokers = len(admin._client.cluster.brokers()) or 1  # noqa: SLF001 - known after list_topics
        new = [new_topic(settings, t, brokers) for t in wanted if t.name not in existing]
        if new:
            try:
                response = await admin.create_topics(new)
            except TopicAlreadyExistsError:
                response = None
            for entry in getattr(response, "topic_errors", None) or []:
                name, code = entry[0], entry[1]
                if code and for_code(code) is not TopicAlreadyExistsError:
                    raise for_code(code)(f"creating topic {name!r} failed: {entry[2] if len(entry) > 2 else ''}")
        await wait_for_topic_metadata(
            admin._client,  # noqa: SLF001 - the admin client's connections to every broker
            {t.name: (t.partitions if t.name not in existing else None) for t in wanted})
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
    consumer = plain_consumer(settings)
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
        result = await with_coordinator(lambda: admin.list_consumer_group_offsets(group))
    finally:
        await admin.close()
    return {
        (tp.topic, tp.partition): meta.offset
        for tp, meta in result.items()
        if (topic is None or tp.topic == topic) and meta.offset >= 0
    }


async def produce_envelopes(settings: Settings, topic: str, envelopes: Iterable[Envelope],
                            *, linger_ms: int = 5, on_acked: Callable[[list[Envelope]], None] | None = None) -> int:
    """Publish envelopes (key → partition) with an idempotent, acks=all producer; returns the count.

    ``on_acked`` is called with each run of envelopes (up to 1,000) once the broker acknowledged them all."""
    producer = durable_producer(settings, linger_ms=linger_ms)
    await producer.start()
    count = 0
    try:
        futures, sent = [], []
        for env in envelopes:
            key, value, headers = env.to_record()
            headers = tracing.output_headers(headers)  # the current span's trace context (tracing on)
            futures.append(await producer.send(topic, value=value, key=key, headers=headers))
            sent.append(env)
            count += 1
            if len(futures) >= 1000:
                await asyncio.gather(*futures)
                if on_acked is not None:
                    on_acked(sent)
                futures, sent = [], []
        await asyncio.gather(*futures)
        if on_acked is not None and sent:
            on_acked(sent)
    finally:
        await producer.stop()
    return count


async def produce_raw(settings: Settings, topic: str, records: Iterable[tuple[bytes | None, bytes]],
                      headers: list[tuple[str, bytes]] | None = None) -> int:
    """Publish raw (key, value) records, e.g. to test how consumers treat bad input."""
    producer = durable_producer(settings)
    await producer.start()
    count = 0
    try:
        for key, value in records:
            await producer.send_and_wait(topic, value=value, key=key, headers=headers or [])
            count += 1
    finally:
        await producer.stop()
    return count


async def read_record(settings: Settings, topic: str, partition: int, offset: int) -> Any:
    """The record at ``topic[partition]@offset``, or None when it is not there (any more)."""
    consumer = plain_consumer(settings, max_partition_fetch_bytes=16 * 1024 * 1024)
    await consumer.start()
    try:
        tp = TopicPartition(topic, partition)
        if tp not in await topic_partitions(consumer, topic):
            return None
        start, end = (await consumer.beginning_offsets([tp]))[tp], (await consumer.end_offsets([tp]))[tp]
        if not start <= offset < end:
            return None
        found = (await read_ranges(consumer, {tp: (offset, offset + 1)}))[tp]
        return found[0] if found else None
    finally:
        await consumer.stop()


async def read_topic(settings: Settings, topic: str, *, read_committed: bool = False) -> list:
    """Every record of ``topic`` present now (beginning to the current end), without a group.

    With ``read_committed`` only committed transactional records are returned and the end is the
    last stable offset.
    """
    consumer = plain_consumer(settings, auto_offset_reset="earliest",
                                isolation_level="read_committed" if read_committed else "read_uncommitted")
    await consumer.start()
    out: list = []
    try:
        tps = await topic_partitions(consumer, topic)
        if not tps:
            raise LookupError(f"topic {topic!r} does not exist")
        ends = await consumer.end_offsets(tps)
        starts = await consumer.beginning_offsets(tps)
        for records in (await read_ranges(consumer, {tp: (starts[tp], ends[tp]) for tp in tps})).values():
            out.extend(records)
    finally:
        await consumer.stop()
    return out

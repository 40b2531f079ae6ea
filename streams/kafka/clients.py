"""Kafka clients made one way: admin clients, group-less reading consumers, durable producers,
and the retries a request to a cluster needs (a dead broker, a coordinator not there yet)."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Mapping
from typing import Any, TypeVar

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient
from aiokafka.errors import (
    CoordinatorLoadInProgressError,
    CoordinatorNotAvailableError,
    KafkaConnectionError,
    NodeNotReadyError,
    NotCoordinatorError,
    RequestTimedOutError,
)

from streams.settings import Settings

T = TypeVar("T")


#: what a request to a broker that is down raises (a cluster with one node dead)
_NODE_DOWN = (NodeNotReadyError, KafkaConnectionError, RequestTimedOutError)


async def on_a_live_broker(call: Callable[[], Awaitable[T]], attempts: int = 8) -> T:
    """``await call()``, again if the broker it reached is down: aiokafka's admin client sends
    some requests to a random known broker, which on a cluster may be a dead one."""
    for attempt in range(attempts):
        try:
            return await call()
        except _NODE_DOWN:
            if attempt == attempts - 1:
                raise
            await asyncio.sleep(0.5)
    raise AssertionError("unreachable")


def admin_client(settings: Settings) -> AIOKafkaAdminClient:
    """An admin client for the configured cluster (not started)."""
    return AIOKafkaAdminClient(**settings.kafka_client_kwargs())


def plain_consumer(settings: Settings, **options: Any) -> AIOKafkaConsumer:
    """A consumer that reads without a group and commits nothing (not started); ``options``
    add to or override that (``isolation_level``, ``group_id`` to read a group's offsets, ...)."""
    return AIOKafkaConsumer(**{**settings.kafka_client_kwargs(), "group_id": None, "enable_auto_commit": False,
                               **options})


def durable_producer(settings: Settings, **options: Any) -> AIOKafkaProducer:
    """A producer whose sends are acknowledged by every in-sync replica and never duplicated
    by a retry (``acks=all``, idempotent; not started)."""
    return AIOKafkaProducer(**{**settings.kafka_client_kwargs(), "acks": "all", "enable_idempotence": True,
                               **options})


async def with_coordinator(call, attempts: int = 40, delay: float = 0.25):
    """Await ``call()``, retrying while the group coordinator is not available yet (a fresh
    broker creates its offsets topic on the first coordinator lookup), has moved, or is still
    loading the group's state."""
    for attempt in range(attempts):
        try:
            return await call()
        except (CoordinatorNotAvailableError, NotCoordinatorError, CoordinatorLoadInProgressError):
            if attempt == attempts - 1:
                raise
            await asyncio.sleep(delay)


async def read_ranges(consumer: AIOKafkaConsumer, ranges: Mapping[TopicPartition, tuple[int, int]]
                      ) -> dict[TopicPartition, list[Any]]:
    """The records of each partition with ``start <= offset < end``, each once, in offset order.

    ``consumer`` is started and group-less; it is assigned the partitions and sought to each
    start (explicit positions: no lazy offset reset to race with). Returns when every position
    has reached its end. Under ``read_committed`` pass an end no further than the last stable
    offset, which the consumer's ``end_offsets`` gives."""
    wanted = {tp: (start, end) for tp, (start, end) in ranges.items() if end > start}
    out: dict[TopicPartition, dict[int, Any]] = {tp: {} for tp in ranges}
    if not wanted:
        return {tp: [] for tp in ranges}
    consumer.assign(list(wanted))
    for tp, (start, _end) in wanted.items():
        consumer.seek(tp, start)
    remaining = set(wanted)
    while remaining:
        batch = await consumer.getmany(*remaining, timeout_ms=1000)
        for tp, records in batch.items():
            start, end = wanted[tp]
            for record in records:
                if start <= record.offset < end:
                    out[tp].setdefault(record.offset, record)  # a re-fetch must not count it twice
        for tp in list(remaining):
            if await consumer.position(tp) >= wanted[tp][1]:
                remaining.discard(tp)
    return {tp: [by_offset[o] for o in sorted(by_offset)] for tp, by_offset in out.items()}

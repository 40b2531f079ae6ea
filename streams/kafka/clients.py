"""Kafka clients made one way: admin clients, group-less reading consumers, durable producers,
and the retries a request to a cluster needs (a dead broker, a coordinator not there yet)."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer
from aiokafka.admin import AIOKafkaAdminClient
from aiokafka.errors import (
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
    broker creates its offsets topic on the first coordinator lookup)."""
    for attempt in range(attempts):
        try:
            return await call()
        except (CoordinatorNotAvailableError, NotCoordinatorError):
            if attempt == attempts - 1:
                raise
            await asyncio.sleep(delay)

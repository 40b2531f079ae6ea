"""The relay's publishers, one per broker its routes use (``STREAMS_BROKER_ROUTES``).

:class:`RoutedPublisher` has the interface of the Kafka :class:`~streams.outbox.to_kafka.Publisher`
(``start`` / ``stop`` / ``publish`` and ``producer``, the Kafka producer or None) and sends
each row to the broker its topic routes to: Kafka (:class:`~streams.outbox.to_kafka.Publisher`),
RabbitMQ (:class:`~streams.outbox.to_rabbitmq.RabbitPublisher`) or Redis Streams
(:class:`~streams.outbox.to_redis.RedisStreamPublisher`). A batch's rows go out per broker in
id order, the brokers side by side (a key's order matters within one topic, and a topic is on
one broker). Only the Kafka rows go through the relay's missing-topic check (:meth:`sort`).
"""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING, Any

from streams.broker_routes import Broker, Routes
from streams.outbox.rows import OutboxRow, PublishResult
from streams.settings import Settings

if TYPE_CHECKING:
    from aiokafka import AIOKafkaProducer

    from streams.outbox.topics import Sorted, TopicWatch


class RoutedPublisher:
    """Publishers of the brokers the routes use, started and stopped together."""

    def __init__(self, settings: Settings) -> None:
        from streams.outbox.to_kafka import Publisher

        self.settings = settings
        self.routes = Routes(settings.broker_routes)
        self.publishers: dict[Broker, Any] = {}
        for broker in sorted(self.routes.brokers()):
            if broker == "kafka":
                self.publishers[broker] = Publisher(settings)
            elif broker == "rabbitmq":
                from streams.outbox.to_rabbitmq import RabbitPublisher

                self.publishers[broker] = RabbitPublisher(settings)
            else:
                from streams.outbox.to_redis import RedisStreamPublisher

                self.publishers[broker] = RedisStreamPublisher(settings)

    @property
    def producer(self) -> AIOKafkaProducer | None:
        """The Kafka producer (None when no route goes to Kafka, or before :meth:`start`)."""
        kafka = self.publishers.get("kafka")
        return kafka.producer if kafka is not None else None

    def describe(self) -> str:
        return ", ".join(sorted(self.publishers))

    async def start(self, stopping: asyncio.Event) -> bool:
        """Start every publisher (each waits for its broker); False if ``stopping`` came first."""
        for publisher in self.publishers.values():
            if not await publisher.start(stopping):
                return False
        return True

    async def stop(self, timeout: float | None = None) -> None:
        await asyncio.gather(*(p.stop(timeout) for p in self.publishers.values()))

    async def sort(self, topics: TopicWatch, rows: list[OutboxRow]) -> Sorted:
        """Split a claimed batch: Kafka rows by what their topics allow (``topics``), the others to send."""
        from streams.outbox.topics import Sorted

        kafka = [r for r in rows if self.routes.broker(r.topic) == "kafka"]
        others = [r for r in rows if self.routes.broker(r.topic) != "kafka"]
        batch = Sorted()
        if kafka:
            assert self.producer is not None
            batch = await topics.sort(self.producer.client, kafka)
        batch.send += others
        return batch

    async def publish(self, rows: list[OutboxRow]) -> PublishResult:
        """Publish each broker's share of ``rows`` (in their order), the brokers side by side."""
        shares: dict[Broker, list[OutboxRow]] = {}
        for row in rows:
            shares.setdefault(self.routes.broker(row.topic), []).append(row)
        results = await asyncio.gather(*(self.publishers[b].publish(share) for b, share in shares.items()))
        out = PublishResult()
        for result in results:
            out.sent += result.sent
            out.failed += result.failed
            out.unsent += result.unsent
        return out

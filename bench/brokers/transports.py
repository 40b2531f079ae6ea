"""What the benchmark does on each broker: prepare a topic, publish envelopes (all at once or at a
rate), read the backlog (lag / queue depth / pending), and find the broker's process for its memory."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bench.messages import Ping, registry
from streams.messages.envelope import Envelope
from streams.rabbitmq.messages import lane_of, to_message
from streams.rabbitmq.topology import GroupTopology, declare_group
from streams.redis_streams.entries import to_fields

LANES = 4  # Kafka partitions = RabbitMQ lane queues


def envelopes(n: int, tag: str, keys: int = 100) -> list[Envelope]:
    """The same small envelopes on every broker (~290 bytes of JSON each)."""
    return [registry.envelope(Ping(n=i, note=f"{tag}-{i:08d}-" + "x" * 32), key=f"ping-{i % keys}")
            for i in range(n)]


def rss_mib(pid: int | None) -> float:
    if pid is None:
        return 0.0
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return 0.0


@dataclass
class Broker:
    """One broker under test: ``name`` (kafka, rabbitmq, redis, pubsub), where it answers, its pid."""

    name: str
    url: str
    pid: Callable[[], int | None]
    settings: Any = None  # Kafka: Settings for the admin helpers

    # --- topics -------------------------------------------------------------------------------
    async def prepare(self, topic: str, group: str) -> None:
        """Create what a consumer group reads before anything is published (an offline consumer)."""
        if self.name == "kafka":
            from streams.kafka.admin import TopicSpec, ensure_topics

            await ensure_topics(self.settings, [TopicSpec(topic, LANES)])
        elif self.name == "rabbitmq":
            import aio_pika

            conn = await aio_pika.connect(self.url)
            async with conn:
                await declare_group(await conn.channel(), GroupTopology(topic, group, LANES))
        elif self.name == "redis":
            import redis.asyncio as aioredis

            client = aioredis.Redis.from_url(self.url)
            await client.xgroup_create(topic, group, id="0", mkstream=True)
            await client.aclose()

    async def drop(self, topic: str, group: str) -> None:
        """Delete a RabbitMQ group's queues or a Redis stream (a backlog left behind would weigh on the
        broker's memory in the next scenario); Kafka keeps its log on disk."""
        if self.name == "rabbitmq":
            import aio_pika

            conn = await aio_pika.connect(self.url)
            async with conn:
                channel = await conn.channel()
                for n in range(LANES):
                    await channel.queue_delete(f"{topic}.{group}.{n}")
        elif self.name == "redis":
            import redis.asyncio as aioredis

            client = aioredis.Redis.from_url(self.url)
            await client.delete(topic)
            await client.aclose()

    # --- publishing -----------------------------------------------------------------------------
    async def publish(self, topic: str, items: list[Envelope], rate: float | None = None,
                      on_tick: Callable[[float, int], None] | None = None) -> float:
        """Publish ``items`` (acknowledged by the broker: confirms, acks=all, XADD replies), all at once
        or at ``rate`` per second in 50 ms ticks; returns the seconds it took."""
        started = time.monotonic()
        step = 1000 if rate is None else max(1, int(rate / 20))
        async with _Sender(self, topic) as send:
            for i in range(0, len(items), step):
                if rate is not None:
                    due = started + i / rate
                    if (delay := due - time.monotonic()) > 0:
                        await asyncio.sleep(delay)
                await send(items[i:i + step])
                if on_tick is not None:
                    on_tick(time.monotonic() - started, i + step)
        return time.monotonic() - started

    # --- backlog ---------------------------------------------------------------------------------
    async def backlog(self, topic: str, group: str) -> int:
        """Messages the group has not yet acknowledged: Kafka lag (log end − committed), RabbitMQ the
        lane queues' ready messages (not those delivered to the consumer and unacknowledged: at most
        its prefetch), Redis pending + entries not yet delivered to the group (XINFO GROUPS ``lag``)."""
        if self.name == "kafka":
            from streams.kafka.admin import committed_offsets, end_offsets

            ends = await end_offsets(self.settings, topic)
            committed = await committed_offsets(self.settings, group, topic)
            return sum(max(0, end - committed.get((topic, p), 0)) for p, end in ends.items())
        if self.name == "rabbitmq":
            return await _rabbit_depth(self.url, [f"{topic}.{group}.{n}" for n in range(LANES)])
        if self.name == "redis":
            import redis.asyncio as aioredis

            client = aioredis.Redis.from_url(self.url)
            try:
                for info in await client.xinfo_groups(topic):
                    if info["name"].decode() == group:
                        return int(info["pending"]) + int(info.get("lag") or 0)
            finally:
                await client.aclose()
        return 0


async def _rabbit_depth(url: str, queues: list[str]) -> int:
    """Ready messages of ``queues`` (a passive declare's message count)."""
    import aio_pika

    conn = await aio_pika.connect(url)
    async with conn:
        channel = await conn.channel()
        total = 0
        for name in queues:
            queue = await channel.declare_queue(name, passive=True)
            total += queue.declaration_result.message_count
        return total


class _Sender:
    """Publishes lists of envelopes to one broker, waiting for its acknowledgement of each list."""

    def __init__(self, broker: Broker, topic: str) -> None:
        self.broker, self.topic = broker, topic
        self.client: Any = None
        self.exchange: Any = None

    async def __aenter__(self):
        name = self.broker.name
        if name == "kafka":
            from streams.kafka.clients import durable_producer

            self.client = durable_producer(self.broker.settings, linger_ms=5)
            await self.client.start()
        elif name == "rabbitmq":
            import aio_pika

            self.client = await aio_pika.connect(self.broker.url)
            channel = await self.client.channel(publisher_confirms=True)
            self.exchange = await channel.get_exchange(self.topic)
        else:
            import redis.asyncio as aioredis

            self.client = aioredis.Redis.from_url(self.broker.url)
        return self

    async def __aexit__(self, *exc) -> None:
        name = self.broker.name
        if name == "kafka":
            await self.client.stop()
        elif name == "rabbitmq":
            await self.client.close()
        else:
            await self.client.aclose()

    async def __call__(self, items: list[Envelope]) -> None:
        name = self.broker.name
        if name == "kafka":
            futures = []
            for env in items:
                key, value, headers = env.to_record()
                futures.append(await self.client.send(self.topic, value=value, key=key, headers=headers))
            await asyncio.gather(*futures)
        elif name == "rabbitmq":
            sends = []
            for env in items:
                key, value, headers = env.to_record()
                sends.append(asyncio.create_task(self.exchange.publish(
                    to_message(key, value, headers), routing_key=lane_of(key, env.message_id, LANES))))
            await asyncio.gather(*sends)
        else:
            pipe = self.client.pipeline(transaction=False)
            for env in items:
                key, value, headers = env.to_record()
                if name == "redis":
                    pipe.xadd(self.topic, to_fields(key, value, headers))
                else:
                    pipe.publish(self.topic, value)
            await pipe.execute()

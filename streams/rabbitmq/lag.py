"""A group's backlog on RabbitMQ: the ready messages of its lane, delayed-retry and unrouted queues.

RabbitMQ has no offsets: the lag of a group is what waits in its queues. A passive declare
counts a queue's *ready* messages; those pushed to a consumer and not yet acknowledged (at most
its prefetch per lane) are not in that count.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from streams.rabbitmq.topology import GroupTopology


@dataclass
class QueueLag:
    """Ready messages per queue of one group and topic (``missing``: queues that do not exist)."""

    topic: str
    group: str
    queues: dict[str, int] = field(default_factory=dict)
    missing: list[str] = field(default_factory=list)

    @property
    def total(self) -> int:
        return sum(self.queues.values())


async def queue_lag(url: str, topic: str, group: str, lanes: int, retry_levels: int | None = None) -> QueueLag:
    """The backlog of ``group`` on ``topic``: its lanes and retry levels (``retry_levels`` None: as
    many as exist, looked up until the first missing one)."""
    import aio_pika

    topology = GroupTopology(topic, group, lanes)
    out = QueueLag(topic, group)
    connection = await aio_pika.connect(url, timeout=10)
    async with connection:
        async def ready(name: str) -> int | None:
            channel = await connection.channel()  # a missing queue closes the channel it was asked on
            try:
                queue = await channel.declare_queue(name, passive=True)
                return queue.declaration_result.message_count or 0
            except aio_pika.exceptions.ChannelNotFoundEntity:
                return None
            finally:
                if not channel.is_closed:
                    await channel.close()

        for name in topology.lane_queues:
            count = await ready(name)
            if count is None:
                out.missing.append(name)
            else:
                out.queues[name] = count
        unrouted = await ready(topology.unrouted)  # lane numbers the group has no queue for (lane counts differ)
        if unrouted:
            out.queues[topology.unrouted] = unrouted
        level = 1
        while retry_levels is None or level <= retry_levels:
            count = await ready(topology.retry(level))
            if count is None:
                if retry_levels is not None:
                    out.missing.append(topology.retry(level))
                    level += 1
                    continue
                break
            out.queues[topology.retry(level)] = count
            level += 1
    return out

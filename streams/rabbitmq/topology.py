"""Exchanges and queues a topic stands for on RabbitMQ, and who declares them.

A *topic* is a durable **fanout exchange** named after it. The publisher (the relay) sends
each message there with its **lane** as routing key: ``murmur2(key) % lanes``, Kafka's default
partitioner, so with as many lanes as partitions a key's lane is its Kafka partition
(:func:`streams.rabbitmq.messages.lane_of`; ``STREAMS_RABBITMQ_LANES``, the same on both sides,
like a topic's partition count). Each consumer group that reads the topic has

* a **direct exchange** ``<topic>.<group>``, bound to the topic's exchange, routing each lane
  number to
* its **lane queue** ``<topic>.<group>.<n>``: a quorum queue (replicated, durable) with
  *single active consumer*: however many consumer processes attach, one at a time receives
  the queue's messages, in order, and the next one takes over when it goes;
* ``<topic>.<group>.unrouted``: what the group's exchange cannot route (a lane number the group
  has no queue for: publisher and group disagree on the lane count) lands here through the
  exchange's alternate exchange, instead of being dropped;
* ``<topic>.<group>.retry.<level>``: one fanout exchange and one quorum queue per delayed-retry
  level of the handlers' policy, with the level's delay as the queue's message TTL and the
  group's exchange as its dead-letter exchange: a retry copy waits there, then goes back, by its
  lane number, to the lane it came from (after the messages that arrived meanwhile: a delayed
  retry gives up its key's order, as Kafka retry topics do);
* ``<topic>.<group>.dlq``: the group's dead letters (quorum, durable).

Why lanes *and* single active consumer: a key's messages must be handled one after the other.
One queue with a single active consumer keeps every key's order but lets one process work at
a time; competing consumers on one queue work in parallel and lose per-key order. Keys hashed
onto lanes, each with one active consumer, give both, and a standby process takes a lane over
when its consumer dies (the lane's unacknowledged messages are delivered again, in order).

Why the publisher computes the lane rather than RabbitMQ's consistent-hash exchange: that
exchange places a key by its ring of bindings, which it rebuilds when the node restarts; seen
here (RabbitMQ 3.10.8, ``tests/test_broker_consumers.py``), keys moved to other queues across a
restart while their old queue still held messages, and a key's later messages were handled
before its earlier ones. A lane number fixed by the publisher does not move.

Several groups each receive every message (a fanout to each group's exchange), as Kafka's
consumer groups do; unlike Kafka, a message leaves a queue once acknowledged, so a group that
did not exist when it was published never gets it, and nothing can be re-read.

The consumers declare this (the app that consumes a topic creates it, as with Kafka topics);
the relay only checks that the topic's exchange exists. :func:`declare_group` is idempotent.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import aio_pika


@dataclass(frozen=True)
class GroupTopology:
    """Names of one group's exchange and queues for one topic."""

    topic: str
    group: str
    lanes: int

    @property
    def group_exchange(self) -> str:
        return f"{self.topic}.{self.group}"

    def lane(self, n: int) -> str:
        return f"{self.topic}.{self.group}.{n}"

    @property
    def lane_queues(self) -> list[str]:
        return [self.lane(n) for n in range(self.lanes)]

    def retry(self, level: int) -> str:
        """Exchange and queue of delayed-retry level ``level`` (1-based)."""
        return f"{self.topic}.{self.group}.retry.{level}"

    @property
    def unrouted(self) -> str:
        return f"{self.topic}.{self.group}.unrouted"

    @property
    def dead_letters(self) -> str:
        return f"{self.topic}.{self.group}.dlq"


async def declare_topic(channel: aio_pika.abc.AbstractChannel, topic: str) -> aio_pika.abc.AbstractExchange:
    """The topic's durable fanout exchange (idempotent)."""
    import aio_pika

    return await channel.declare_exchange(topic, aio_pika.ExchangeType.FANOUT, durable=True)


async def declare_group(channel: aio_pika.abc.AbstractChannel, topology: GroupTopology,
                        retry_delays: tuple[float, ...] = ()) -> None:
    """Declare the topic's exchange and the group's exchange, lanes, retry levels, unrouted and
    dead-letter queues, and bind them (idempotent; existing queues must have the same arguments)."""
    import aio_pika

    topic_exchange = await declare_topic(channel, topology.topic)
    unrouted = await channel.declare_exchange(topology.unrouted, aio_pika.ExchangeType.FANOUT, durable=True)
    unrouted_queue = await channel.declare_queue(topology.unrouted, durable=True, arguments={"x-queue-type": "quorum"})
    await unrouted_queue.bind(unrouted)
    group_exchange = await channel.declare_exchange(topology.group_exchange, aio_pika.ExchangeType.DIRECT,
                                                    durable=True, arguments={"alternate-exchange": topology.unrouted})
    await group_exchange.bind(topic_exchange)
    for n, name in enumerate(topology.lane_queues):
        queue = await channel.declare_queue(name, durable=True, arguments={
            "x-queue-type": "quorum", "x-single-active-consumer": True})
        await queue.bind(group_exchange, routing_key=str(n))
    for level, delay in enumerate(retry_delays, start=1):
        name = topology.retry(level)
        exchange = await channel.declare_exchange(name, aio_pika.ExchangeType.FANOUT, durable=True)
        queue = await channel.declare_queue(name, durable=True, arguments={
            "x-queue-type": "quorum", "x-message-ttl": max(int(delay * 1000), 1),
            "x-dead-letter-exchange": topology.group_exchange,
            # at-least-once dead-lettering: a copy leaves the retry queue only once a lane took it
            "x-dead-letter-strategy": "at-least-once", "x-overflow": "reject-publish"})
        await queue.bind(exchange)
    await channel.declare_queue(topology.dead_letters, durable=True, arguments={"x-queue-type": "quorum"})

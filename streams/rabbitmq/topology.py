"""Exchanges and queues a topic stands for on RabbitMQ, and who declares them.

A *topic* is a durable **fanout exchange** named after it: the relay publishes there, with
the message's key as routing key. Each consumer group that reads the topic has

* a **consistent-hash exchange** ``<topic>.<group>`` bound to the topic's exchange, which
  sends every key always to the same one of
* ``lanes`` **quorum queues** ``<topic>.<group>.<n>`` (replicated, durable; with
  *single active consumer*: however many consumer processes attach, one at a time
  receives a queue's messages, in order, and the next takes over when it goes);
* ``<topic>.<group>.retry.<level>``: one fanout exchange and one quorum queue per delayed-retry
  level of the handler's policy, with the level's delay as the queue's message TTL and the
  group's hash exchange as its dead-letter exchange: a retry copy waits there, then goes back
  through the hash exchange, by its key, to the lane it came from (after the messages that
  arrived meanwhile: a delayed retry gives up its key's order, as Kafka retry topics do);
* ``<topic>.<group>.dlq``: the group's dead letters (quorum, durable).

Why a consistent-hash exchange *and* single active consumer: a key's messages must be
handled one after the other. One queue with a single active consumer would keep every
key's order but lets one process work at a time; several competing consumers on one
queue would work in parallel and lose per-key order. Hashing keys onto ``lanes`` queues,
each with one active consumer, gives both: keys in parallel, each key in order, and a
standby process taking a lane over when its consumer dies (the lane's unacknowledged
messages are delivered again, in order, to the new one).

Several groups each receive every message (a fanout to each group's hash exchange), as
Kafka's consumer groups do; unlike Kafka, a message leaves a queue once acknowledged, so a
group that did not exist when it was published never gets it, and nothing can be re-read.

The consumers declare this (the app that consumes a topic creates it, as with Kafka
topics); the relay only checks that the topic's exchange exists. :func:`declare_group`
is idempotent.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import aio_pika

#: the weight every lane queue binds with (equal shares of the hash space)
LANE_WEIGHT = "1"


@dataclass(frozen=True)
class GroupTopology:
    """Names of one group's exchange and queues for one topic."""

    topic: str
    group: str
    lanes: int

    @property
    def hash_exchange(self) -> str:
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
    def dead_letters(self) -> str:
        return f"{self.topic}.{self.group}.dlq"


async def declare_topic(channel: aio_pika.abc.AbstractChannel, topic: str) -> aio_pika.abc.AbstractExchange:
    """The topic's durable fanout exchange (idempotent)."""
    import aio_pika

    return await channel.declare_exchange(topic, aio_pika.ExchangeType.FANOUT, durable=True)


async def declare_group(channel: aio_pika.abc.AbstractChannel, topology: GroupTopology,
                        retry_delays: tuple[float, ...] = ()) -> None:
    """Declare the topic's exchange and the group's hash exchange, lanes, retry levels and
    dead-letter queue, and bind them (idempotent; existing queues must have the same arguments)."""
    import aio_pika

    topic_exchange = await declare_topic(channel, topology.topic)
    hash_exchange = await channel.declare_exchange(topology.hash_exchange, "x-consistent-hash", durable=True)
    await hash_exchange.bind(topic_exchange)
    for name in topology.lane_queues:
        queue = await channel.declare_queue(name, durable=True, arguments={
            "x-queue-type": "quorum", "x-single-active-consumer": True})
        await queue.bind(hash_exchange, routing_key=LANE_WEIGHT)
    for level, delay in enumerate(retry_delays, start=1):
        name = topology.retry(level)
        exchange = await channel.declare_exchange(name, aio_pika.ExchangeType.FANOUT, durable=True)
        queue = await channel.declare_queue(name, durable=True, arguments={
            "x-queue-type": "quorum", "x-message-ttl": max(int(delay * 1000), 1),
            "x-dead-letter-exchange": topology.hash_exchange,
            # at-least-once dead-lettering: a copy leaves the retry queue only once a lane took it
            "x-dead-letter-strategy": "at-least-once", "x-overflow": "reject-publish"})
        await queue.bind(exchange)
    await channel.declare_queue(topology.dead_letters, durable=True, arguments={"x-queue-type": "quorum"})

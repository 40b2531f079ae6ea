"""Handlers on RabbitMQ: each lane queue of the app's group, one message at a time, acknowledged
after the handler's effect.

For every topic its handlers read, the consumer declares the group's topology
(:func:`~streams.rabbitmq.topology.declare_group`, group = the app id): the group's exchange,
``STREAMS_RABBITMQ_LANES`` quorum lane queues with single active consumer, a delayed-retry queue
per level of the handlers' policy, the unrouted and dead-letter queues. Then per lane:

* ``basic.qos`` prefetch ``STREAMS_RABBITMQ_PREFETCH`` per lane consumer: RabbitMQ pushes at most
  that many unacknowledged messages; the rest wait in the queue (the backlog is queue depth);
* a lane's messages are handled one after the other (each by every handler of the topic,
  :class:`~streams.consume.runner.HandlerRunner`), and ``basic.ack`` follows once the handler's
  effect committed, or the message was parked or copied to a retry level: a crash in between
  delivers it again, and ``effects=`` makes the repeat a no-op;
* bad input (not JSON, not an envelope, too large, unknown type) is parked in
  ``<topic>.<group>.dlq`` with the ``dlq.*`` headers of the Kafka path, and acknowledged;
* a delayed retry is a copy published to ``<topic>.<group>.retry.<level>``; after the level's
  TTL RabbitMQ dead-letters it back through the group's exchange to the lane it came from (RabbitMQ's
  ``x-death`` header says which retry queue it comes from, so only those copies are trusted to
  carry ``retry.*`` headers);
* a lost connection (broker restart) ends every lane's work; unacknowledged messages go back to
  their queues and the consumer reconnects with backoff and starts over.

Lanes run side by side; one lane is one key's order. Lag = the lane queues' ready messages.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any

from streams.broker_consume import BrokerRecord, BrokerWrites, Sleeps, delays_per_topic, runners
from streams.consume import waiting
from streams.consume.headers import headers_dict
from streams.kafka.names import dead_letter_topic, retry_topic
from streams.rabbitmq.messages import HEADER_KEY, lane_of, record_headers, to_message
from streams.rabbitmq.topology import GroupTopology, declare_group
from streams.settings import redact_url

log = logging.getLogger(__name__)


class RabbitWrites(BrokerWrites):
    """Dead letters to the group's dead-letter queue, retry copies to the level's exchange, outputs
    to the exchange of their topic; each publish waits for the broker's confirm."""

    def __init__(self, topologies: dict[str, GroupTopology], lanes: int) -> None:
        self.topologies = topologies
        self.lanes = lanes
        self.channel: Any = None

    def _target(self, topic: str, key: bytes | None, message_id: str, lane: int | None) -> tuple[str, str]:
        """(exchange, routing key) of a write to ``topic``: a dead letter to the group's queue, a retry
        copy to its level with the lane it came from, an output to its topic's exchange by its key's lane."""
        for source, topology in self.topologies.items():
            if topic == dead_letter_topic(source):
                return "", topology.dead_letters
            for level in range(1, 100):
                if topic == retry_topic(source, level):
                    return topology.retry(level), str(lane if lane is not None else
                                                      lane_of(key, message_id, topology.lanes))
        return topic, lane_of(key, message_id, self.lanes)

    async def publish(self, topic: str, key: bytes | None, value: bytes | None, headers: Any,
                      partition: int | None = None) -> None:
        pairs = list(headers.items()) if isinstance(headers, dict) else list(headers or [])
        message_id = next((v.decode("utf-8", "replace") for k, v in pairs if k == "message_id"), "")
        exchange_name, key_text = self._target(topic, key, message_id, partition)
        exchange = (self.channel.default_exchange if exchange_name == ""
                    else await self.channel.get_exchange(exchange_name, ensure=False))
        await exchange.publish(to_message(key, value or b"", pairs), routing_key=key_text, mandatory=True)


#: seconds a stopping consumer lets its lanes finish the message each is handling
DRAIN_TIMEOUT = 30.0


class RabbitConsumer:
    """Runs ``app``'s handlers (``handlers``: their names; None: all) on RabbitMQ until :meth:`stop`."""

    def __init__(self, app: Any, handlers: list[str] | None = None) -> None:
        self.app = app
        self.settings = app.settings
        self.group = app.app_id
        self.writes = RabbitWrites({}, self.settings.rabbitmq_lanes)
        self.runners = runners(app, self.writes, handlers, broker="rabbitmq", offsets=False)
        self.by_topic: dict[str, list[Any]] = {}
        for runner in self.runners:
            self.by_topic.setdefault(runner.spec.topic.name, []).append(runner)
        #: per topic the delays of its retry levels (a level is one queue with one TTL per topic and group)
        self.delays = delays_per_topic(self.by_topic, "RabbitMQ queue (one TTL)")
        for topic in self.by_topic:
            self.writes.topologies[topic] = GroupTopology(topic, self.group, self.settings.rabbitmq_lanes)
        self._stop = asyncio.Event()
        self._busy: set[str] = set()  # names of the lane tasks handling a message
        self.handled = 0
        self.connected = asyncio.Event()

    def stop(self) -> None:
        self._stop.set()

    async def run(self) -> None:
        """Consume until :meth:`stop`; reconnects (with backoff) whenever the connection is lost."""
        import aio_pika

        delay = 0.5
        while not self._stop.is_set():
            try:
                connection = await aio_pika.connect(self.settings.amqp_url, timeout=10,
                                                    client_properties={"connection_name": f"streams {self.group}"})
            except (OSError, aio_pika.exceptions.AMQPError, TimeoutError) as exc:
                log.warning("RabbitMQ at %s not reachable (%s); retrying in %.1fs",
                            redact_url(self.settings.amqp_url), exc, delay)
                await self._sleep(delay)
                delay = min(delay * 2, 10.0)
                continue
            delay = 0.5
            try:
                await self._consume(connection)
            except (OSError, aio_pika.exceptions.AMQPError, aio_pika.exceptions.ChannelInvalidStateError) as exc:
                log.warning("RabbitMQ connection lost (%s: %s); unacknowledged messages go back to their queues, "
                            "reconnecting", type(exc).__name__, exc)
            finally:
                self.connected.clear()
                if not connection.is_closed:
                    try:
                        await asyncio.wait_for(connection.close(), 5)
                    except Exception:  # noqa: BLE001 - the connection is dropped either way
                        pass

    async def _sleep(self, seconds: float) -> None:
        try:
            await asyncio.wait_for(self._stop.wait(), seconds)
        except TimeoutError:
            pass

    async def _consume(self, connection: Any) -> None:
        setup = await connection.channel()
        for topic, topology in self.writes.topologies.items():
            await declare_group(setup, topology, self.delays[topic])
            unrouted = await setup.declare_queue(topology.unrouted, passive=True)
            if unrouted.declaration_result.message_count:
                log.warning("%d message(s) of %s wait in %s: their lane number has no queue in this group (the "
                            "publisher's STREAMS_RABBITMQ_LANES is not %d); they are kept there, not handled",
                            unrouted.declaration_result.message_count, topic, topology.unrouted, topology.lanes)
        await setup.close()
        self.writes.channel = await connection.channel(publisher_confirms=True, on_return_raises=True)
        channel = await connection.channel()
        await channel.set_qos(prefetch_count=self.settings.rabbitmq_prefetch)
        closed = asyncio.get_running_loop().create_future()

        def on_close(*_: Any) -> None:
            if not closed.done():
                closed.set_result(None)

        connection.close_callbacks.add(on_close)
        lanes = []
        for topic, topology in self.writes.topologies.items():
            for n, name in enumerate(topology.lane_queues):
                inbox: asyncio.Queue = asyncio.Queue()
                queue = await channel.get_queue(name, ensure=False)
                await queue.consume(inbox.put)
                lanes.append(asyncio.create_task(self._lane(topic, n, inbox), name=f"lane-{name}"))
        self.connected.set()
        log.info("consuming %s from RabbitMQ (group %s, %d lane(s) each, prefetch %d)",
                 ", ".join(self.writes.topologies), self.group, self.settings.rabbitmq_lanes,
                 self.settings.rabbitmq_prefetch)
        stop = asyncio.ensure_future(self._stop.wait())
        try:
            done, _ = await asyncio.wait([*lanes, stop, closed], return_when=asyncio.FIRST_COMPLETED)
            for task in done:
                if task in lanes:
                    task.result()  # a lane that failed: its error ends this connection's work
            if closed in done:
                raise ConnectionError("the connection was closed")
            await self._drain(lanes)
        finally:
            stop.cancel()
            for task in lanes:
                task.cancel()
            await asyncio.gather(*lanes, stop, return_exceptions=True)

    async def _drain(self, lanes: list[asyncio.Task]) -> None:
        """On :meth:`stop`: a lane waiting for a message ends now; a lane handling one finishes it (its
        effect, then its ack) within :data:`DRAIN_TIMEOUT` seconds. What was pushed and not taken goes
        back to the queue when the channel closes."""
        busy = [task for task in lanes if task.get_name() in self._busy]
        for task in lanes:
            if task not in busy:
                task.cancel()
        if busy:
            _, late = await asyncio.wait(busy, timeout=DRAIN_TIMEOUT)
            if late:
                log.warning("%d lane(s) still handling a message %.0fs after the stop: cancelled (the message "
                            "is delivered again)", len(late), DRAIN_TIMEOUT)

    async def _lane(self, topic: str, lane: int, inbox: asyncio.Queue) -> None:
        """One lane's messages, one after the other: every handler of the topic, then the ack."""
        waiting.waits_of(Sleeps())
        topology = self.writes.topologies[topic]
        retry_queues = {topology.retry(level): level for level in range(1, len(self.delays[topic]) + 1)}
        name = asyncio.current_task().get_name()  # type: ignore[union-attr]
        while not self._stop.is_set():
            message = await inbox.get()
            self._busy.add(name)  # no await since the get: a stop sees this lane busy or idle, never between
            try:
                record = self._record(topic, lane, message, retry_queues)
                headers = headers_dict(record)
                for runner in self.by_topic[topic]:
                    await runner.process(record, headers)
                await message.ack()
                self.handled += 1
            finally:
                self._busy.discard(name)

    def _record(self, topic: str, lane: int, message: Any, retry_queues: dict[str, int]) -> BrokerRecord:
        amqp = dict(message.headers or {})
        deaths = amqp.pop("x-death", None) or []
        key = amqp.pop(HEADER_KEY, None)
        source = topic
        if deaths and isinstance(deaths[0], dict):
            queue = deaths[0].get("queue")
            queue = queue.decode() if isinstance(queue, bytes) else queue
            if queue in retry_queues:
                source = retry_topic(topic, retry_queues[queue])
        headers = record_headers({k: v for k, v in amqp.items() if not str(k).startswith("x-")})
        if message.message_id and not any(k == "message_id" for k, _ in headers):
            headers.append(("message_id", str(message.message_id).encode()))
        raw_key = key if isinstance(key, bytes) else key.encode() if key is not None else (
            message.routing_key.encode() if message.routing_key else None)
        return BrokerRecord(source, lane, -1, raw_key, message.body, headers)

    async def lag(self) -> dict[str, int]:
        """Ready messages per topic in the group's lane and retry queues (:mod:`streams.rabbitmq.lag`)."""
        from streams.rabbitmq.lag import queue_lag

        return {topic: (await queue_lag(self.settings.amqp_url, topic, self.group, topology.lanes,
                                        len(self.delays[topic]))).total
                for topic, topology in self.writes.topologies.items()}

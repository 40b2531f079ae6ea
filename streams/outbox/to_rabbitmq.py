"""The relay's RabbitMQ publisher: persistent messages, publisher confirms, one exchange per topic.

A row goes to the durable fanout exchange named by its topic (:mod:`streams.rabbitmq.topology`),
routing key = its key's lane (``STREAMS_RABBITMQ_LANES``), ``mandatory`` set, on a channel in confirm mode. A row is *sent* once
the broker confirmed it (``basic.ack``: a quorum queue confirms once a majority of its replicas
wrote it). Otherwise:

* the exchange does not exist, or no queue is bound to it (the message would be dropped:
  RabbitMQ returns it, ``basic.return``), or the broker refused it (``basic.nack``): a failed
  attempt (the row waits its backoff; its key's later rows wait behind it; parked after
  ``relay_max_attempts``). The consumers declare the queues (:func:`~streams.rabbitmq.topology.declare_group`);
* the connection or channel is lost, or the confirm does not come within the publish
  timeout: the row is left as it was (``unsent``) and sent again later with the same
  ``message_id`` — the broker may already have it: consumers drop the copy.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any

from streams.outbox.rows import OutboxRow, PublishResult
from streams.rabbitmq.messages import lane_of, to_message
from streams.settings import Settings, redact_url

log = logging.getLogger(__name__)


class ExchangeMissing(LookupError):
    """The topic's exchange does not exist on the broker."""


class Unroutable(LookupError):
    """The broker returned the message: no queue is bound to the topic's exchange."""


class RabbitPublisher:
    """Sends rows to RabbitMQ and reports, per row, whether the broker confirmed it."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.connection: Any = None
        self.channel: Any = None
        self._exchanges: dict[str, Any] = {}

    async def start(self, stopping: asyncio.Event) -> bool:
        """Connect (as long as it takes, unless ``stopping`` is set first: then False)."""
        import aio_pika

        delay = 1.0
        while not stopping.is_set():
            try:
                self.connection = await aio_pika.connect_robust(
                    self.settings.amqp_url, timeout=self.settings.relay_publish_timeout,
                    client_properties={"connection_name": "streams-relay"})
                return True
            except (OSError, aio_pika.exceptions.AMQPError, TimeoutError) as exc:
                log.warning("RabbitMQ at %s not reachable (%s); retrying in %.0fs",
                            redact_url(self.settings.amqp_url), exc, delay)
            try:
                await asyncio.wait_for(stopping.wait(), delay)
            except TimeoutError:
                pass
            delay = min(delay * 2, 10)
        return False

    async def stop(self, timeout: float | None = None) -> None:
        if self.connection is not None:
            try:
                await asyncio.wait_for(self.connection.close(), timeout or self.settings.relay_publish_timeout)
            except Exception as exc:  # noqa: BLE001 - closing is best effort
                log.warning("RabbitMQ connection did not close cleanly: %s", exc)
            self.connection = self.channel = None
            self._exchanges.clear()

    async def _channel(self):
        if self.channel is None or self.channel.is_closed:
            assert self.connection is not None
            self.channel = await self.connection.channel(publisher_confirms=True, on_return_raises=True)
            self._exchanges.clear()
        return self.channel

    async def _exchange(self, topic: str):
        """The topic's exchange, checked once (a passive declare on a throwaway channel: a missing
        exchange closes the channel it was asked on)."""
        import aio_pika

        if topic not in self._exchanges:
            assert self.connection is not None
            probe = await self.connection.channel()
            try:
                await probe.declare_exchange(topic, passive=True)
            except aio_pika.exceptions.ChannelNotFoundEntity:
                raise ExchangeMissing(f"exchange {topic!r} does not exist on RabbitMQ: start the app that "
                                      "consumes it (it declares the topic) first") from None
            finally:
                if not probe.is_closed:
                    await probe.close()
            channel = await self._channel()
            self._exchanges[topic] = await channel.get_exchange(topic, ensure=False)
        return self._exchanges[topic]

    async def publish(self, rows: list[OutboxRow]) -> PublishResult:
        """Publish ``rows`` in order on one confirm channel and wait for every confirm, all within
        the publish timeout (see the module docstring for what each outcome means)."""
        import aio_pika
        from aiormq.exceptions import DeliveryError, PublishError

        result = PublishResult()
        timeout = self.settings.relay_publish_timeout
        sends: list[tuple[OutboxRow, asyncio.Task]] = []
        try:
            async with asyncio.timeout(timeout):
                for row in rows:
                    try:
                        exchange = await self._exchange(row.topic)
                    except ExchangeMissing as exc:
                        result.failed.append((row, exc))
                        continue
                    key, value, headers = row.record()
                    message = to_message(key, value, headers)
                    # tasks start in this order and take the channel's lock in it: the frames go out in row order
                    sends.append((row, asyncio.create_task(exchange.publish(
                        message, routing_key=lane_of(key, row.message_id, self.settings.rabbitmq_lanes), mandatory=True,
                        timeout=timeout))))
                if sends:
                    await asyncio.wait([task for _, task in sends])
        except (TimeoutError, OSError, aio_pika.exceptions.AMQPConnectionError,
                aio_pika.exceptions.ChannelInvalidStateError) as exc:
            log.warning("RabbitMQ publish interrupted (%s: %s); unconfirmed rows stay pending", type(exc).__name__, exc)
        handed = {row.id for row, _ in sends} | {row.id for row, _ in result.failed}
        result.unsent.extend(row for row in rows if row.id not in handed)
        for row, task in sends:
            if not task.done():
                task.cancel()
                result.unsent.append(row)
                continue
            if task.cancelled():
                result.unsent.append(row)
            elif isinstance(error := task.exception(), PublishError):
                result.failed.append((row, Unroutable(
                    f"no queue is bound to exchange {row.topic!r}: the message would be dropped (returned by "
                    "RabbitMQ); start the app that consumes it first")))
            elif isinstance(error, DeliveryError):
                result.failed.append((row, error))
            elif error is not None:  # connection or channel lost: the broker may or may not have it
                log.warning("RabbitMQ publish of row %d not confirmed: %s: %s", row.id, type(error).__name__, error)
                result.unsent.append(row)
            else:
                result.sent.append(row)
        if any(isinstance(exc, ExchangeMissing) for _, exc in result.failed) or result.unsent:
            self._exchanges.clear()  # check again next time
        return result

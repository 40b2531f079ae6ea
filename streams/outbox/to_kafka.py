"""The relay's Kafka publisher: an idempotent ``acks=all`` producer; a row is sent once Kafka acknowledged it."""

from __future__ import annotations

import asyncio
import logging

from aiokafka import AIOKafkaProducer
from aiokafka.errors import InvalidTopicError, KafkaError, MessageSizeTooLargeError

from streams import tracing
from streams.kafka.clients import durable_producer
from streams.outbox.rows import OutboxRow, PublishResult
from streams.settings import Settings

log = logging.getLogger("streams.outbox.relay")

#: errors a retry cannot fix: the row is parked at once
PERMANENT_ERRORS: tuple[type[BaseException], ...] = (MessageSizeTooLargeError, InvalidTopicError, ValueError,
                                                     TypeError)


def describe_error(exc: BaseException) -> str:
    text = str(exc).strip() or exc.__class__.__doc__ or ""
    return f"{exc.__class__.__name__}: {text.splitlines()[0] if text else ''}"[:500]


class Publisher:
    """Sends a batch of rows to Kafka and reports, per row, whether the broker took it."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.producer: AIOKafkaProducer | None = None

    async def start(self, stopping: asyncio.Event) -> bool:
        """Start the producer, waiting for the broker as long as it takes, unless ``stopping``
        is set first (then returns False)."""
        timeout_ms = int(self.settings.relay_publish_timeout * 1000)
        self.producer = durable_producer(self.settings, linger_ms=2, request_timeout_ms=timeout_ms,
                                         max_batch_size=256 * 1024)
        # the broker may be down when the relay starts: keep trying, rows wait in the outbox
        delay = 1.0
        while not stopping.is_set():
            try:
                await self.producer.start()
                return True
            except KafkaError as exc:
                log.warning("Kafka at %s not reachable (%s); retrying in %.0fs",
                            self.settings.bootstrap_servers, describe_error(exc), delay)
            try:
                await asyncio.wait_for(stopping.wait(), delay)
            except TimeoutError:
                pass
            delay = min(delay * 2, 10)
        return False

    async def stop(self, timeout: float | None = None) -> None:
        """Flush and close the producer, for ``timeout`` seconds at most (default the publish timeout)."""
        if self.producer is not None:
            try:
                await asyncio.wait_for(self.producer.stop(), timeout or self.settings.relay_publish_timeout)
            except (TimeoutError, KafkaError) as exc:
                log.warning("producer did not stop cleanly: %s", describe_error(exc))
            self.producer = None

    async def publish(self, rows: list[OutboxRow]) -> PublishResult:
        """Send ``rows`` in order and wait for every acknowledgement, all within the publish
        timeout. A send that cannot be handed over in time (no metadata, full buffers) is
        cancelled, which keeps its record out of the producer: that row and the ones after it
        come back as ``unsent``; a send handed over but not acknowledged in time is a failure."""
        assert self.producer is not None
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.settings.relay_publish_timeout
        result = PublishResult()
        pending: list[tuple[OutboxRow, asyncio.Future]] = []
        spans: dict[int, object] = {}  # row id → its send span (tracing on)
        i = 0
        try:
            async with asyncio.timeout_at(deadline):  # cancels the send in progress when time is up
                for i, row in enumerate(rows):  # noqa: B007 - i tells which row the time ran out on
                    try:
                        key, value, headers = row.record()
                        sending = tracing.start_send(row.topic, row.message_id,
                                                     tracing.span_context_from(row.traceparent, row.tracestate),
                                                     outbox_id=row.id)
                        if sending is not None:
                            spans[row.id] = sending
                            headers = tracing.with_context(headers, sending.get_span_context())
                        fut = await self.producer.send(row.topic, value=value, key=key, headers=headers)
                    except Exception as exc:  # noqa: BLE001 - every failure is recorded on the row
                        result.failed.append((row, exc))
                        continue
                    pending.append((row, fut))
        except TimeoutError:
            result.unsent = rows[i:]
        if pending:
            _done, _ = await asyncio.wait([f for _, f in pending], timeout=max(deadline - loop.time(), 0))
        for row, fut in pending:
            if not fut.done():
                fut.cancel()
                result.failed.append((row, TimeoutError(
                    f"not acknowledged by Kafka within {self.settings.relay_publish_timeout:.0f}s")))
            elif fut.cancelled():
                result.failed.append((row, TimeoutError("send cancelled")))
            elif (error := fut.exception()) is not None:
                result.failed.append((row, error))
            else:
                result.sent.append(row)
        if spans:
            errors: dict[int, BaseException] = {row.id: exc for row, exc in result.failed}
            errors.update((row.id, TimeoutError("not handed to the producer in time")) for row in result.unsent)
            for row_id, sending in spans.items():
                tracing.end(sending, errors.get(row_id))
        return result

"""The relay's Kafka publisher: an idempotent ``acks=all`` producer; a row is sent once Kafka acknowledged it.

A claimed batch goes out as record batches built here, one per partition (``send_batch``):
per record, that spares the producer's ``send`` (a coroutine, a future, a partitioner call).
"""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass, field

from aiokafka import AIOKafkaProducer, TopicPartition
from aiokafka.errors import InvalidTopicError, KafkaError, MessageSizeTooLargeError
from aiokafka.partitioner import DefaultPartitioner
from aiokafka.producer.message_accumulator import BatchBuilder
from aiokafka.record.default_records import DefaultRecordBatchBuilder

from streams import tracing
from streams.kafka.clients import durable_producer
from streams.outbox.rows import OutboxRow, PublishResult
from streams.settings import Settings

log = logging.getLogger("streams.outbox.relay")

#: keys whose partition a publisher remembers per topic (then it starts over)
_KEYS_REMEMBERED = 100_000
#: the producer's ``max_request_size`` (aiokafka's default; the relay does not change it)
MAX_REQUEST_SIZE = 1024 * 1024

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
        self._partitioner = DefaultPartitioner()  # the producer's own (durable_producer sets no other)
        self._partitions: dict[str, tuple[list[int], dict[bytes, int]]] = {}
        self._max_request_size = MAX_REQUEST_SIZE

    async def start(self, stopping: asyncio.Event) -> bool:
        """Start the producer, waiting for the broker as long as it takes, unless ``stopping``
        is set first (then returns False)."""
        timeout_ms = int(self.settings.relay_publish_timeout * 1000)
        self.producer = durable_producer(self.settings, linger_ms=2, request_timeout_ms=timeout_ms,
                                         max_batch_size=256 * 1024, max_request_size=self._max_request_size)
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
        timeout. The records are packed into one batch per partition (more when a batch fills
        up, each handed over after the one before it) and handed to the producer together,
        which acknowledges a batch as a whole. A row that cannot become a record (too large,
        refused by the envelope) fails alone. A batch not handed over in time (no metadata,
        full buffers) is withdrawn: its rows and the later ones of its partition come back as
        ``unsent``; a batch handed over but not acknowledged in time is a failure of its rows."""
        assert self.producer is not None
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.settings.relay_publish_timeout
        result = PublishResult()
        spans: dict[int, object] = {}  # row id → its send span (tracing on)
        chains: dict[TopicPartition, list[_Batch]] = {}
        partitions: dict[str, list[int]] = {}  # topic → its partitions, looked up once per batch
        i = 0
        try:
            async with asyncio.timeout_at(deadline):  # cancels the hand-over in progress when time is up
                for i, row in enumerate(rows):  # noqa: B007 - i tells which row the time ran out on
                    try:
                        key, value, headers = row.record()
                        if tracing.enabled():
                            sending = tracing.start_send(row.topic, row.message_id,
                                                         tracing.span_context_from(row.traceparent, row.tracestate),
                                                         outbox_id=row.id)
                            if sending is not None:
                                spans[row.id] = sending
                                headers = tracing.with_context(headers, sending.get_span_context())
                        self._check_size(key, value, headers)
                        tp = TopicPartition(row.topic, await self._partition(row.topic, key, partitions))
                    except Exception as exc:  # noqa: BLE001 - every failure is recorded on the row
                        result.failed.append((row, exc))
                        continue
                    chain = chains.setdefault(tp, [])
                    if not chain or chain[-1].builder.append(timestamp=None, key=key, value=value,
                                                             headers=headers) is None:
                        chain.append(_Batch(self.producer.create_batch()))
                        chain[-1].builder.append(timestamp=None, key=key, value=value, headers=headers)
                    chain[-1].rows.append(row)
                i = len(rows)
                await asyncio.gather(*(self._hand_over(tp, chain, result) for tp, chain in chains.items()))
        except TimeoutError:
            result.unsent = rows[i:]
        batches = [b for chain in chains.values() for b in chain]
        result.unsent += [row for b in batches if b.future is None and not b.failed for row in b.rows]
        handed = [b for b in batches if b.future is not None]
        futures = [b.future for b in handed if b.future is not None]
        if futures:
            _done, _ = await asyncio.wait(futures, timeout=max(deadline - loop.time(), 0))
        for b in handed:
            fut = b.future
            assert fut is not None
            if not fut.done():
                fut.cancel()
                error: BaseException | None = TimeoutError(
                    f"not acknowledged by Kafka within {self.settings.relay_publish_timeout:.0f}s")
            elif fut.cancelled():
                error = TimeoutError("send cancelled")
            else:
                error = fut.exception()
            if error is None:
                result.sent += b.rows
            else:
                result.failed += [(row, error) for row in b.rows]
        result.sent.sort(key=_row_id)
        if spans:
            errors: dict[int, BaseException] = {row.id: exc for row, exc in result.failed}
            errors.update((row.id, TimeoutError("not handed to the producer in time")) for row in result.unsent)
            for row_id, sending in spans.items():
                tracing.end(sending, errors.get(row_id))
        return result

    async def _hand_over(self, tp: TopicPartition, chain: list[_Batch], result: PublishResult) -> None:
        """Hand a partition's batches to the producer in order; once one cannot be handed over,
        its rows and the later ones fail (none may overtake them)."""
        assert self.producer is not None
        for n, batch in enumerate(chain):
            batch.builder.close()  # nothing else may join it
            try:
                batch.future = await self.producer.send_batch(batch.builder, tp.topic, partition=tp.partition)
            except Exception as exc:  # noqa: BLE001 - recorded on the rows
                for later in chain[n:]:
                    later.failed = True
                    result.failed += [(row, exc) for row in later.rows]
                return

    def _check_size(self, key: bytes | None, value: bytes, headers: list[tuple[str, bytes]]) -> None:
        """Refuse a record larger than the producer's ``max_request_size``, as ``send`` does."""
        size = DefaultRecordBatchBuilder.estimate_size_in_bytes(key, value, headers)
        if size > self._max_request_size:
            raise MessageSizeTooLargeError(
                f"The message is {size} bytes when serialized which is larger than the maximum request "
                "size you have configured with the max_request_size configuration")

    async def _partition(self, topic: str, key: bytes | None, partitions: dict[str, list[int]]) -> int:
        """The partition the producer's default partitioner picks for ``key`` (remembered per key
        while the topic's partitions stay the same); ``partitions``: the batch's topics so far."""
        assert self.producer is not None
        all_partitions = partitions.get(topic)
        if all_partitions is None:
            found = self.producer.client.cluster.partitions_for_topic(topic)
            if found is None:
                found = await self.producer.partitions_for(topic)  # waits for the topic's metadata
            all_partitions = partitions[topic] = list(found)
        if key is None:
            available = list(self.producer.client.cluster.available_partitions_for_topic(topic))
            return self._partitioner(None, all_partitions, available)
        known = self._partitions.get(topic)
        if known is None or known[0] != all_partitions:
            known = self._partitions[topic] = (all_partitions, {})
        cache = known[1]
        partition = cache.get(key)
        if partition is None:
            if len(cache) >= _KEYS_REMEMBERED:
                cache.clear()
            partition = cache[key] = self._partitioner(key, all_partitions, all_partitions)
        return partition


@dataclass
class _Batch:
    """Records of one partition handed to the producer together, and the rows they come from."""

    builder: BatchBuilder
    rows: list[OutboxRow] = field(default_factory=list)
    future: asyncio.Future | None = None
    failed: bool = False


def _row_id(row: OutboxRow) -> int:
    return row.id

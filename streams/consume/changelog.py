"""Changelog writes of one batch, sent as one producer batch per changelog partition.

Faust sends a table's changelog record per write (``Table.send_changelog``),
about 95 µs of CPU each in the producer path. Inside a batch,
:meth:`streams.consume.dedup.ProcessedIds.record` hands its entries to the
:class:`ChangelogBatch` that is open (:func:`collecting`) instead; when the batch
is done, :meth:`ChangelogBatch.send` serializes them exactly as Faust would (the
table's own key and value serializers, so compaction and recovery see the same
bytes) and appends them to aiokafka record batches, one per changelog
partition. Under exactly_once the batches go through the source partition's
transactional producer, inside its transaction. When a batch is acknowledged,
the table's persisted offset moves to its last record (what Faust does per
write; under exactly_once only once the transaction commits), so a restart
replays only what came after.

Writes of a RocksDB-backed table can come already encoded (:meth:`ChangelogBatch.put`):
they are encoded once for the lookup, the local write and the changelog, held here
until :meth:`ChangelogBatch.send` (a lookup inside the batch sees them:
:meth:`ChangelogBatch.pending`), then written to the partition's database in one
RocksDB write batch, before their changelog records leave.
"""

from __future__ import annotations

import asyncio
import contextvars
from collections import defaultdict
from typing import TYPE_CHECKING, Any

from streams.faust_compat import table_store
from streams.faust_compat.private import faust_producer, require

if TYPE_CHECKING:
    from streams.consume.transactions import Transactions

#: the batch whose changelog writes are being collected in this task (None: write at once)
_open: contextvars.ContextVar["ChangelogBatch | None"] = contextvars.ContextVar("streams_changelog_batch",
                                                                                default=None)


def collecting() -> "ChangelogBatch | None":
    """The changelog batch open in this task, if any."""
    return _open.get()


class ChangelogBatch:
    """Table writes of one batch of records: ``(table, partition) → [(key, value)]``."""

    def __init__(self, transactions: "Transactions", faust_app: Any) -> None:
        self.transactions = transactions
        self.faust = faust_app
        self._writes: dict[tuple[Any, int], list[tuple[Any, Any]]] = defaultdict(list)
        #: encoded writes of RocksDB-backed tables, not yet in the local database: raw key → raw value
        self._encoded: dict[tuple[Any, int], dict[bytes, bytes]] = defaultdict(dict)
        self._token: contextvars.Token | None = None

    def __enter__(self) -> "ChangelogBatch":
        self._token = _open.set(self)
        return self

    def __exit__(self, *exc: Any) -> None:
        if self._token is not None:
            _open.reset(self._token)

    def add(self, table: Any, partition: int, key: Any, value: Any) -> None:
        """A write to ``table``'s changelog partition ``partition`` (sent by :meth:`send`)."""
        self._writes[(table, partition)].append((key, value))

    def put(self, table: Any, partition: int, raw_key: bytes, raw_value: bytes) -> None:
        """An encoded write to ``table``'s partition ``partition`` (the bytes its store keeps and its
        changelog carries: ``table_store.encoders``): into the local database and the changelog at
        :meth:`send`."""
        self._encoded[(table, partition)][raw_key] = raw_value

    def pending(self, table: Any, partition: int, raw_key: bytes) -> bytes | None:
        """The value :meth:`put` holds for ``raw_key`` (not yet in the local database), if any."""
        held = self._encoded.get((table, partition))
        return None if held is None else held.get(raw_key)

    def __len__(self) -> int:
        return sum(len(v) for v in self._writes.values()) + sum(len(v) for v in self._encoded.values())

    async def send(self) -> list[asyncio.Future]:
        """Send every collected write; returns the futures of the producer batches (the
        records are durable once all are done)."""
        futures: list[asyncio.Future] = []
        for (table, partition), encoded in self._encoded.items():
            if not encoded:
                continue
            table_store.write_raw(table.data, partition, encoded.items())  # local first, as Faust's writes
            name = table.changelog_topic.get_topic_name()
            producer = await self._producer(name, partition)
            batch, count = producer.create_batch(), 0
            for raw_key, raw_value in encoded.items():
                if batch.append(key=raw_key, value=raw_value, timestamp=None, headers=[]) is None:
                    futures.append(await self._send(producer, batch, table, name, partition, count))
                    batch, count = producer.create_batch(), 0
                    batch.append(key=raw_key, value=raw_value, timestamp=None, headers=[])
                count += 1
            if count:
                futures.append(await self._send(producer, batch, table, name, partition, count))
        self._encoded.clear()
        for (table, partition), writes in self._writes.items():
            topic = table.changelog_topic
            name = topic.get_topic_name()
            producer = await self._producer(name, partition)
            batch = producer.create_batch()
            count = 0
            for key, value in writes:
                raw_key, headers = topic.prepare_key(key, table.key_serializer)
                raw_value, headers = topic.prepare_value(value, table.value_serializer, headers=headers)
                header_list = list(headers.items()) if hasattr(headers, "items") else list(headers or [])
                if batch.append(key=raw_key, value=raw_value, timestamp=None, headers=header_list) is None:
                    futures.append(await self._send(producer, batch, table, name, partition, count))
                    batch, count = producer.create_batch(), 0
                    batch.append(key=raw_key, value=raw_value, timestamp=None, headers=header_list)
                count += 1
            if count:
                futures.append(await self._send(producer, batch, table, name, partition, count))
        self._writes.clear()
        return futures

    async def _producer(self, topic: str, partition: int) -> Any:
        if self.transactions.enabled:
            return await self.transactions.batch_producer(topic, partition)
        return require(faust_producer(self.faust), "_ensure_producer")()  # its aiokafka producer

    async def _send(self, producer: Any, batch: Any, table: Any, topic: str, partition: int,
                    count: int) -> asyncio.Future:
        future = await producer.send_batch(batch, topic, partition=partition)
        done: asyncio.Future = asyncio.get_running_loop().create_future()

        def persisted(sent: asyncio.Future) -> None:
            if sent.cancelled():
                done.cancel()
            elif (error := sent.exception()) is not None:
                done.set_exception(error)
            else:
                metadata = sent.result()
                tp = table.app.consumer._new_topicpartition(topic, partition)  # noqa: SLF001
                last = metadata.offset + count - 1
                if table.app.in_transaction:  # as Faust does: only once the partition's transaction commits
                    table.app.tables.persist_offset_on_commit(table.data, tp, last)
                else:
                    table.data.set_persisted_offset(tp, last)
                done.set_result(metadata)

        future.add_done_callback(persisted)
        return done

"""The processed-ID table: which messages a handler already dealt with.

One Faust table per idempotent handler, ``processed-<handler>``, stored in
RocksDB (rocksdict) and backed by the compacted changelog topic
``<app id>-processed-<handler>-changelog``. It has the partition count of the
handler's source topic and every write happens while a message of that
partition is being handled, so entry and message share a partition number:
the table is co-partitioned with its source and moves with it on rebalance.
After a restart the table is read back from local RocksDB (plus the changelog
tail); a worker with an empty data dir rebuilds it from the changelog.

Entry: key = ``message_id``; value = ``{"at": epoch seconds, "outcome":
"handled" | "dead_lettered", "p": partition, "o": offset, "attempts": n}``.

Expiry: entries older than the retention are deleted while the partition is
being processed: each sweep reads the next ``sweep_batch`` entries of the
partition after where the last one stopped (every ``sweep_interval`` seconds, or
sooner under a steady stream of new ids: :mod:`streams.consume.expiry`). A delete writes a tombstone to the changelog, which
compaction then removes, so local state and the changelog both stay bounded
under a steady stream of new IDs. A partition that receives no messages does not
sweep (its entries are kept until traffic resumes).

Duplicates are recognised per partition. The same message always carries the
same key, so producers' repeats, relay re-sends and replays land in the
partition holding its entry.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

from streams.consume.changelog import collecting
from streams.consume.expiry import ExpiryCursor
from streams.faust_compat import table_store

log = logging.getLogger(__name__)

HANDLED = "handled"
DEAD_LETTERED = "dead_lettered"


@dataclass
class ProcessedEntry:
    message_id: str
    at: float
    outcome: str
    partition: int
    offset: int
    attempts: int

    @classmethod
    def from_value(cls, message_id: str, value: dict) -> "ProcessedEntry":
        return cls(message_id, float(value["at"]), value.get("outcome", HANDLED), int(value.get("p", -1)),
                   int(value.get("o", -1)), int(value.get("attempts", 1)))


def changelog_configs(retention: float) -> dict[str, str]:
    """Topic configs that let compaction drop expired IDs soon after their tombstones."""
    ms = int(retention * 1000)
    return {
        "cleanup.policy": "compact",
        "segment.ms": str(min(max(ms, 5_000), 86_400_000)),
        "delete.retention.ms": str(min(max(ms, 1_000), 86_400_000)),
        "min.cleanable.dirty.ratio": "0.1",
    }


class ProcessedIds:
    """The processed-ID table of one handler, with expiry."""

    def __init__(self, make_table: Callable[..., Any], handler: str, partitions: int, *, retention: float,
                 sweep_interval: float | None = None, sweep_batch: int = 5000) -> None:
        """``make_table(name, **options)`` declares the Faust table (``StreamsApp.table``)."""
        self.handler = handler
        self.retention = retention
        self.sweep_interval = sweep_interval if sweep_interval is not None else max(0.5, min(60.0, retention / 10))
        self.sweep_batch = sweep_batch
        self.table = make_table(
            f"processed-{handler}",
            partitions=partitions,
            default=None,
            extra_topic_configs=changelog_configs(retention),
            help=f"message ids handled by {handler}",
        )
        #: key and value encoders of the table's store (set on first use), the last key encoded
        self._encoders: tuple[Any, Any] | None = None
        self._last_key: tuple[str, bytes] = ("", b"")
        #: where each partition's expiry sweep stands (streams.consume.expiry)
        self._expiry = ExpiryCursor(self.sweep_interval, sweep_batch)
        self.expired = 0

    # --- lookups and writes (inside a handler's event context) -----------------
    def _raw_key(self, message_id: str) -> bytes:
        """The stored key of ``message_id`` (a lookup and the write after it encode it once)."""
        if self._last_key[0] == message_id:
            return self._last_key[1]
        if self._encoders is None:
            self._encoders = table_store.encoders(self.table.data)
        raw = self._encoders[0](message_id)
        self._last_key = (message_id, raw)
        return raw

    def get(self, message_id: str, partition: int | None = None) -> ProcessedEntry | None:
        """The entry of ``message_id`` (in ``partition``, the current record's; inside a batch
        on a RocksDB store read straight from that partition's database, or from the batch's
        writes not yet there)."""
        store = self.table.data
        batch = collecting()
        if partition is not None and batch is not None and table_store.is_partitioned(store):
            raw_key = self._raw_key(message_id)
            raw = batch.pending(self.table, partition, raw_key)
            if raw is None:
                raw = table_store.get_raw(store, partition, raw_key)
            value = None if raw is None else table_store.decode_value(store, raw)
        else:
            value = self.table.get(message_id)
        if not value:
            return None
        return ProcessedEntry.from_value(message_id, value)

    def record(self, message_id: str, outcome: str, partition: int, offset: int, attempts: int,
               record_topic: str | None = None, record_offset: int | None = None) -> Any:
        """Write the entry locally and to the changelog; returns the changelog send's future.

        Inside a batch (:mod:`streams.consume`) the changelog write joins the batch's and
        None is returned. The caller acknowledges the source message only once that future is done,
        so a committed offset never runs ahead of the changelog (Faust's own table
        writes do not give that: they are flushed independently of commits).
        """
        now = time.time()
        value = {"at": now, "outcome": outcome, "p": partition, "o": offset, "attempts": attempts}
        if record_topic is not None:  # the record that wrote it (source or retry topic): see purge_uncommitted
            value["rt"], value["ro"] = record_topic, record_offset
        batch = collecting()
        store = self.table.data
        if batch is not None and table_store.is_partitioned(store):
            # encoded once; local RocksDB and changelog with the rest of the batch (streams.consume)
            if self._encoders is None:
                self._encoders = table_store.encoders(store)
            batch.put(self.table, partition, self._raw_key(message_id), self._encoders[1](value))
            future = None
        elif batch is not None:
            store[message_id] = value  # the local store (partition of the current event)
            batch.add(self.table, partition, message_id, value)
            future = None
        else:
            store[message_id] = value
            future = self.table.send_changelog(partition, message_id, value)
        self._expiry.note_write(partition)
        return future

    def purge_uncommitted(self, partition: int, committed: dict[str, int | None]) -> int:
        """Drop local entries of ``partition`` written by records at or past their topic's
        committed offset (``committed``: topic → committed offset of this partition).

        Under exactly_once an entry and its record's offset commit in one transaction, so
        after an unclean stop such entries come from aborted transactions: the changelog
        never got them, only the local RocksDB did. Local delete only."""
        removed = 0
        for message_id, value in list(self.partition_items(partition)):
            topic, offset = value.get("rt"), value.get("ro")
            if topic is None or offset is None:
                continue
            if offset >= (committed.get(topic) or 0):  # missing: nothing committed there yet
                del self.table.data[message_id]
                removed += 1
        if removed:
            log.warning("processed-%s[%d]: dropped %d entr(y/ies) of aborted transactions", self.handler,
                        partition, removed)
        return removed

    # --- expiry -----------------------------------------------------------------
    def forget_assignment(self) -> None:
        """After a rebalance the partitions' contents may differ: their sweeps start over."""
        self._expiry.reset()

    def maybe_sweep(self, partition: int) -> int:
        """Delete expired entries of ``partition`` if a sweep is due (at most ``sweep_batch`` entries
        read: :class:`~streams.consume.expiry.ExpiryCursor`); returns how many."""
        now = time.time()
        if not self._expiry.due(partition, now):
            return 0
        removed = 0
        for message_id in self._expiry.expired(self.table.data, partition, now - self.retention, now):
            del self.table[message_id]
            removed += 1
        if removed:
            self.expired += removed
            log.debug("processed-%s[%d]: expired %d ids", self.handler, partition, removed)
        return removed

    def partition_items(self, partition: int) -> Iterator[tuple[str, dict]]:
        """(message_id, value) of the entries held locally for ``partition``."""
        store = self.table.data
        if table_store.is_partitioned(store):  # RocksDB: one database per partition
            for key, value in table_store.partition_items(store, partition):
                yield (key.decode() if isinstance(key, bytes) else key), value
            return
        for key, value in list(store.items()):
            if isinstance(value, dict) and int(value.get("p", -1)) == partition:
                yield (key.decode() if isinstance(key, bytes) else key), value

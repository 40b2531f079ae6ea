"""Exactly-once plumbing: every Kafka write a record causes joins the transaction
that commits the record's offset.

Faust 0.15 (``processing_guarantee="exactly_once"``) keeps one transactional
producer per source partition (``<app id>-<topic group>-<partition>``) and commits
a partition's offsets in that producer's transaction. Three things in it break
exactly-once, and this module works around each:

1. **Table changelog writes are not transactional.** ``Table.send_changelog``
   goes through ``app.producer.send_soon``, a buffered *non*-transactional
   producer, so processed-ID entries (and every table update) are written outside
   the transaction, or lost with the buffer when the worker dies.
   :meth:`Transactions.patch_table` sends them with the transactional producer of
   the record being handled.
2. **Outputs pick their transaction by destination.** ``TransactionManager.send``
   derives the transactional id from the *destination* topic's group and
   partition, so an output can land in another partition's transaction (or fail
   for a topic the worker does not consume). :meth:`Transactions.send` uses the
   transaction of the *source* record.
3. **A commit can split a record.** Offsets are committed on a timer; a commit
   that runs after a record sent its output but before it was acknowledged
   commits the output without the offset, and a crash then repeats the output.
   :class:`CommitBarrier` makes the commit wait until no record is between its
   first transactional write and its acknowledgement (records that have not
   written anything yet, e.g. waiting for a retry, do not hold commits back).

With these, a record's outputs, dead letters, retry-topic copies, table updates,
processed-ID entry and offset commit are one Kafka transaction. After a crash,
the local RocksDB may still hold processed-ID entries of aborted transactions
(Faust writes locally at once); :meth:`Transactions.purge_aborted_once` drops the
entries written by records at or past the committed offset before the partition's
first lookup. (Wiping all local state, as Kafka Streams does, made Faust 0.15 drop
undelivered records at the end of its long restore: the worker then sat idle with
records unhandled.)
"""

from __future__ import annotations

import asyncio
import contextvars
import logging
from typing import TYPE_CHECKING, Any, ClassVar

from streams.faust_compat import table_changelog
from streams.faust_compat.private import faust_producer, require

if TYPE_CHECKING:
    from streams.consume.committed import CommittedAtAssignment

log = logging.getLogger(__name__)

#: the record being handled: its scope (source topic and partition)
_current: contextvars.ContextVar["RecordScope | None"] = contextvars.ContextVar("streams_record", default=None)


class CommitBarrier:
    """Commits wait while any record is between its first transactional write and its ack."""

    def __init__(self) -> None:
        self._cond = asyncio.Condition()
        self._writing = 0
        self._committing = False
        self.commits_waited = 0

    async def enter(self) -> None:
        """Called before a record's first transactional write."""
        async with self._cond:
            await self._cond.wait_for(lambda: not self._committing)
            self._writing += 1

    async def leave(self) -> None:
        async with self._cond:
            self._writing -= 1
            self._cond.notify_all()

    async def commit(self, commit: Any, *args: Any, **kwargs: Any) -> Any:
        """Run ``commit`` once no record is mid-write; no record starts writing meanwhile."""
        async with self._cond:
            if self._writing:
                self.commits_waited += 1
            self._committing = True
            try:
                await self._cond.wait_for(lambda: self._writing == 0)
            except BaseException:
                self._committing = False
                self._cond.notify_all()
                raise
        try:
            return await commit(*args, **kwargs)
        finally:
            async with self._cond:
                self._committing = False
                self._cond.notify_all()


class RecordScope:
    """One record being handled under exactly_once (``async with``)."""

    def __init__(self, tx: "Transactions", topic: str, partition: int) -> None:
        self.tx = tx
        self.topic = topic
        self.partition = partition
        self.writing = False
        #: this record's transactional writes (awaited by :meth:`flush` before the ack)
        self.pending: list[asyncio.Future] = []
        self._entering: asyncio.Task | None = None
        self._token: contextvars.Token | None = None

    def reserve(self) -> None:
        """Take this record's place at the commit barrier (once), without waiting."""
        if self._entering is None:
            self._entering = asyncio.ensure_future(self.tx.barrier.enter())

    async def enter_writing(self) -> None:
        if not self.writing:
            self.reserve()
            assert self._entering is not None
            await asyncio.shield(self._entering)
            self.writing = True

    async def flush(self) -> None:
        """Wait until every write of this record is acknowledged (raises the first failure)."""
        while self.pending:
            pending, self.pending = self.pending, []
            await asyncio.gather(*pending)

    async def release(self) -> None:
        """Give the commit barrier up (once every write so far is flushed and acknowledged, e.g.
        before a long wait); the next write, or :meth:`enter_writing`, takes it again."""
        if self._entering is not None:
            await asyncio.shield(self._entering)
            self._entering = None
            self.writing = False
            await self.tx.barrier.leave()

    async def __aenter__(self) -> "RecordScope":
        self._token = _current.set(self)
        return self

    async def __aexit__(self, *exc: Any) -> None:
        if self._token is not None:
            _current.reset(self._token)
        if self.pending:  # an error left writes behind: let them finish before the commit may run
            await asyncio.gather(*self.pending, return_exceptions=True)
            self.pending.clear()
        if self._entering is not None:
            await asyncio.shield(self._entering)
            await self.tx.barrier.leave()


class _NoScope:
    pending: ClassVar[list] = []

    async def flush(self) -> None:
        return None

    async def release(self) -> None:
        return None

    async def __aenter__(self) -> "_NoScope":
        return self

    async def __aexit__(self, *exc: Any) -> None:
        return None


class Transactions:
    """The app's exactly-once routing (inactive under at_least_once): ``faust_app``'s consumer
    commits and transactional producers; ``committed`` gives the group's committed offsets."""

    def __init__(self, faust_app: Any, committed: "CommittedAtAssignment", *, enabled: bool) -> None:
        self.faust = faust_app
        self.committed = committed
        self.enabled = enabled
        self.barrier = CommitBarrier()
        self._installed = False
        #: set by the worker when the previous one on this data dir did not stop cleanly
        self.unclean_start = False
        self._purged: set[tuple[str, int]] = set()

    # --- set-up --------------------------------------------------------------
    def install(self) -> None:
        """Wrap the consumer's commit with the barrier (once, when the worker starts)."""
        if not self.enabled or self._installed:
            return
        consumer = self.faust.consumer
        original = consumer.commit
        barrier = self.barrier

        state = {"logged": 0.0}

        async def commit(*args: Any, **kwargs: Any) -> Any:
            import time

            result = await barrier.commit(original, *args, **kwargs)
            if time.monotonic() - state["logged"] > 5:
                state["logged"] = time.monotonic()
                committed, acked, gaps = (require(consumer, n) for n in ("_committed_offset", "_acked", "_gap"))
                log.debug("exactly_once commit: committed=%s acked=%s gaps=%s",
                          {f"{tp.topic[-12:]}[{tp.partition}]": o for tp, o in committed.items()},
                          {f"{tp.topic[-12:]}[{tp.partition}]": (min(v), max(v), len(v))
                           for tp, v in acked.items() if v},
                          {f"{tp.topic[-12:]}[{tp.partition}]": len(v) for tp, v in gaps.items() if v})
            return result

        consumer.commit = commit  # the commit barrier goes first
        self._installed = True

    def patch_table(self, table: Any) -> None:
        """Send ``table``'s changelog writes inside the current record's transaction."""
        if self.enabled:
            table_changelog.send_through(table, self.send_soon)

    # --- after an unclean stop -------------------------------------------------------
    async def purge_aborted_once(self, processed: Any, partition: int) -> None:
        """After an unclean stop, before the first record of ``partition`` is looked up:
        drop the processed-ID entries the local RocksDB kept from aborted transactions
        (the changelog, read with read_committed on recovery, never had them)."""
        if not (self.enabled and self.unclean_start):
            return
        key = (processed.handler, partition)
        if key in self._purged:
            return
        self._purged.add(key)
        topics = {v.get("rt") for _, v in processed.partition_items(partition)} - {None}
        committed = {t: await self.committed(t, partition) for t in topics}
        processed.purge_uncommitted(partition, committed)

    # --- per record ------------------------------------------------------------
    def scope(self, topic: str, partition: int) -> Any:
        """Context for handling one record of ``topic[partition]``."""
        return RecordScope(self, topic, partition) if self.enabled else _NoScope()

    def transactional_id(self, topic: str, partition: int) -> str:
        """The transactional id Faust commits ``topic[partition]``'s offsets with."""
        group = self.faust.assignor.group_for_topic(topic)
        return f"{self.faust.conf.id}-{group}-{partition}"

    def send_soon(self, topic: str, key: bytes | None, value: bytes | None, headers: Any = None,
                  partition: int | None = None) -> asyncio.Future:
        """Schedule a transactional write for the current record; the future gives the RecordMetadata.

        Writes of one record keep their order (they queue on Faust's per-transaction lock)."""
        scope = _current.get()
        if scope is None:
            raise RuntimeError(f"an exactly_once write to {topic} outside a handled record")
        scope.reserve()  # our place before the commit can start (see RecordScope)
        fut = asyncio.ensure_future(self._send(scope, topic, key, value, headers, partition))
        scope.pending.append(fut)
        return fut

    async def batch_producer(self, topic: str, partition: int) -> Any:
        """The aiokafka producer of the current record's transaction, with ``topic[partition]``
        added to that transaction, for writes sent as whole record batches
        (:mod:`streams.consume.changelog`)."""
        from aiokafka import TopicPartition

        scope = _current.get()
        if scope is None:
            raise RuntimeError(f"an exactly_once batch to {topic} outside a handled record")
        await scope.enter_writing()
        tid = self.transactional_id(scope.topic, scope.partition)
        producer = require(faust_producer(self.faust), "_transaction_producers")[tid]  # Faust's per-tid producers
        require(producer, "_txn_manager").maybe_add_partition_to_txn(TopicPartition(topic, partition))
        return producer

    async def send(self, topic: str, key: bytes | None, value: bytes | None, headers: Any = None,
                   partition: int | None = None) -> Any:
        """Transactional write for the current record; waits for the broker's ack. A failure is
        the caller's to handle (e.g. a dead letter the producer refuses as too large): it is not
        raised again when the record's writes are flushed."""
        fut = self.send_soon(topic, key, value, headers, partition)
        try:
            return await fut
        except Exception:
            scope = _current.get()
            if scope is not None and fut in scope.pending:
                scope.pending.remove(fut)
            raise

    async def _send(self, scope: RecordScope, topic: str, key: bytes | None, value: bytes | None,
                    headers: Any, partition: int | None) -> Any:
        await scope.enter_writing()
        tid = self.transactional_id(scope.topic, scope.partition)
        if headers is not None and not isinstance(headers, list):
            headers = list(headers.items()) if hasattr(headers, "items") else list(headers)
        fut = await self.faust.producer.send(topic, key, value, partition, None, headers, transactional_id=tid)
        return await fut

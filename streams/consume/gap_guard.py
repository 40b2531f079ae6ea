"""The gap guard: a handler never silently passes over records its consumer did not deliver."""

from __future__ import annotations

import asyncio
import logging
from typing import TYPE_CHECKING, Any

from streams.faust_compat import consumer_fixes
from streams.faust_compat.private import require
from streams.kafka.clients import plain_consumer

if TYPE_CHECKING:
    from streams.consume.committed import CommittedAtAssignment
    from streams.settings import Settings

log = logging.getLogger(__name__)


class GapNotRead(Exception):
    """A range of records the consumer skipped could not be read back: the worker stops (loudly)
    rather than leave the partition's commits stalled below them."""


class _RecoveredRecord:
    """The minimum of a Faust message that its consumer's ``ack`` needs."""

    __slots__ = ("__weakref__", "acked", "offset", "topic", "tp")

    def __init__(self, tp: Any, offset: int) -> None:
        self.tp = tp
        self.topic = tp.topic
        self.offset = offset
        self.acked = False


class GapGuard:
    """Refuses to let a handler silently pass over records its consumer never delivered.

    Faust treats a jump in the offsets it delivers as a gap to acknowledge (and
    commit past). Real gaps exist (transaction markers, aborted transactions,
    compaction), but so do lost deliveries: with faust-streaming 0.15 a worker
    that restores a table from its changelog can drop a few dozen fetched
    records per partition at the end of recovery and then commits past them
    (seen here: 8–30 records per partition on every fresh-node restart).

    This guard tracks the next expected offset per partition. On a jump it reads
    the skipped range itself, with a plain consumer assigned to that partition,
    and returns whatever records are there so they are handled, in order, before
    the record that revealed the gap. Real gaps read back empty and cost one
    small fetch.
    """

    def __init__(self, name: str, faust_app: Any, settings: "Settings", committed: "CommittedAtAssignment") -> None:
        self.name = name
        self.faust = faust_app
        self.settings = settings
        self.committed = committed
        self._expected: dict[Any, int] = {}
        #: per partition: offset jumps seen inside fetched record lists, start → end (see note_gaps)
        self._known_gaps: dict[Any, dict[int, int]] = {}
        self._idle_reads: dict[Any, tuple[int, int]] = {}
        self.topic_name: str | None = None
        self._reader: Any = None
        #: one reader, used by one partition at a time (the batch path runs partitions side by side)
        self._reader_lock = asyncio.Lock()
        self.records_recovered = 0
        self.gaps_confirmed = 0
        self.incomplete_reads = 0

    #: seconds without a delivered record before :meth:`undelivered_tail` looks for lost ones
    idle_check_interval = 3.0
    #: seconds one read-back of a skipped range may take, and how many times it is tried
    read_deadline = 30.0
    read_attempts = 3

    def reset(self) -> None:
        """After a rebalance: positions start afresh."""
        self._expected.clear()
        self._idle_reads.clear()
        self._known_gaps.clear()

    def note_gaps(self, tp: Any, ranges: list[tuple[int, int]]) -> None:
        """Offset ranges ``[start, end)`` that one fetch of ``tp`` jumped over between two of its
        records (transaction markers, aborted records): no record there was lost, so a batch
        starting right after one is not a gap to read back (the consumer's commits already
        pass them: :func:`~streams.faust_compat.consumer_fixes.add_gaps`)."""
        self._known_gaps.setdefault(tp, {}).update(ranges)

    async def undelivered_tail(self) -> list[tuple[Any, list[Any]]]:
        """Records Faust's consumer read but never delivered, found while the stream is idle.

        The gap check of :meth:`missing_before` needs a later record to reveal a gap; a
        record lost at the *end* of what was fetched (seen with faust-streaming 0.15
        after a long table restore: the worker then sits idle with records unhandled)
        reveals nothing. Faust notes the last offset it read per partition; if that
        stays ahead of the next offset this guard expects for two idle checks in a
        row, the records in between were read and not delivered: they are read back
        and returned ``[(tp, records)]`` for the agent to handle."""
        consumer = self.faust.consumer
        if not self.faust.flow_control.is_active():
            return []  # rebalancing or recovering: nothing is delivered now anyway
        read = require(consumer, "_read_offset")
        paused = require(consumer, "_paused_partitions")
        out = []
        for tp in list(consumer.assignment()):
            if tp.topic != self.topic_name or tp in paused:
                continue  # a paused partition's records wait in Faust's buffers on purpose
            # Faust's own note of what it read, or what its aiokafka consumer handed it: Faust
            # drops records of partitions it has not resumed yet without noting them (seen after
            # a crashed worker: positions at the log end, nothing delivered, nothing noted)
            position = await consumer.position(tp)
            candidates = [o for o in (read.get(tp), None if position is None else position - 1) if o is not None]
            if not candidates:
                continue
            last_read = max(candidates)
            expected = self._expected.get(tp)
            if expected is None:
                expected = await self._start_offset(tp)
            if expected is None or last_read < expected:
                self._idle_reads.pop(tp, None)
                continue
            if self._idle_reads.get(tp) != (expected, last_read):
                self._idle_reads[tp] = (expected, last_read)  # wait one more idle check
                continue
            self._idle_reads.pop(tp, None)
            records = await self._read_range(tp.topic, tp.partition, expected, last_read + 1)
            self._expected[tp] = last_read + 1
            if records:
                self.records_recovered += len(records)
                log.warning("%s: %d record(s) of %s[%d] in %d..%d were read by the consumer but never "
                            "delivered; handling them now", self.name, len(records), tp.topic, tp.partition,
                            expected, last_read)
                out.append((tp, records))
        return out

    async def missing_before(self, message: Any, tp: Any = None) -> list[Any]:
        """Records of ``message``'s partition that were skipped just before it (``tp``: its
        partition, for records without a ``tp`` of their own)."""
        tp, offset = tp or message.tp, message.offset
        expected = self._expected.get(tp)
        if expected is None:
            # the first record since the assignment: it should sit at the committed offset (Faust
            # seeks there after recovery); records dropped before it are a gap like any other.
            expected = await self._start_offset(tp)
        known = self._known_gaps.get(tp)
        while known and expected is not None and expected < offset and expected in known:
            expected = known.pop(expected)  # jumped over inside a fetch: nothing there to read
        self._expected[tp] = max(offset + 1, expected or 0)
        if expected is None or offset <= expected:
            return []
        records = await self._read_range(tp.topic, tp.partition, expected, offset)
        # what holds no record (markers, aborted records) may be committed past
        consumer_fixes.add_gaps(self.faust.consumer, tp, _empty_ranges(expected, offset, records))
        if records:
            self.records_recovered += len(records)
            log.warning("%s: the consumer skipped %d record(s) of %s[%d] in %d..%d; handling them now",
                        self.name, len(records), tp.topic, tp.partition, expected, offset - 1)
        else:
            self.gaps_confirmed += 1
        return records

    def handled(self, tp: Any, offset: int) -> None:
        """Records of ``tp`` up to ``offset`` were handled (the next one expected is ``offset + 1``)."""
        self._expected[tp] = max(offset + 1, self._expected.get(tp) or 0)
        known = self._known_gaps.get(tp)
        if known:
            for start in [start for start in known if start <= offset]:
                del known[start]

    async def _start_offset(self, tp: Any) -> int | None:
        """Where the partition's delivery starts after an assignment: the group's committed
        offset, or without one the log start (the consumer resets to the earliest offset).
        Noted for the commit computation too: no commit may pass an offset below it that was
        never acknowledged (:func:`~streams.faust_compat.consumer_fixes.next_commit_offset`)."""
        committed = await self.committed(tp.topic, tp.partition)
        if committed is None:
            from aiokafka import TopicPartition

            async with self._reader_lock:
                reader = await self._ensure_reader()
                ktp = TopicPartition(tp.topic, tp.partition)
                committed = (await reader.beginning_offsets([ktp]))[ktp]
        consumer_fixes.note_delivery_start(self.faust.consumer, tp, committed)
        return committed

    def acknowledge(self, tp: Any, offset: int) -> None:
        """Tell Faust's consumer a recovered record is done, so commits can pass it
        (Faust never acks records it dropped itself)."""
        self.faust.consumer.ack(_RecoveredRecord(tp, offset))  # what ack reads of a message

    async def _read_range(self, topic: str, partition: int, start: int, end: int) -> list[Any]:
        async with self._reader_lock:
            return await self._read_range_locked(topic, partition, start, end)

    async def _read_range_locked(self, topic: str, partition: int, start: int, end: int) -> list[Any]:
        """Every record of ``topic[partition]`` in ``start .. end - 1``. A read that does not reach
        ``end`` within :attr:`read_deadline` (the broker slow or away) is tried again, with a
        warning, up to :attr:`read_attempts` times; then :class:`GapNotRead` is raised — a part of
        the range is never returned as if it were all of it (the partition's commits would stop
        below the records left out, unseen)."""
        from aiokafka import TopicPartition

        await self._ensure_reader()
        tp = TopicPartition(topic, partition)
        for attempt in range(1, self.read_attempts + 1):
            self._reader.assign([tp])
            self._reader.seek(tp, start)
            out: list[Any] = []
            position = start
            loop = asyncio.get_running_loop()
            deadline = loop.time() + self.read_deadline
            while loop.time() < deadline:
                batch = await self._reader.getmany(tp, timeout_ms=500, max_records=1000)
                records = batch.get(tp, [])
                out.extend(r for r in records if start <= r.offset < end)
                position = await self._reader.position(tp)
                if position >= end or (not records and position >= start and await self._at_end(tp, position)):
                    return out
            self.incomplete_reads += 1
            log.warning("%s: reading back %s[%d] %d..%d stopped at offset %d after %.0fs (attempt %d of %d)",
                        self.name, topic, partition, start, end - 1, position, self.read_deadline, attempt,
                        self.read_attempts)
        raise GapNotRead(f"{self.name}: could not read back {topic}[{partition}] offsets {start}..{end - 1} "
                         f"({self.read_attempts} attempts of {self.read_deadline:.0f}s); the records in it are "
                         "neither handled nor acknowledged, so commits cannot pass them: stopping")

    async def _ensure_reader(self) -> Any:
        """The plain consumer (no group) that reads skipped ranges back."""

        if self._reader is None:
            isolation = ("read_committed" if self.settings.processing_guarantee.value == "exactly_once"
                         else "read_uncommitted")
            reader = plain_consumer(self.settings, isolation_level=isolation)
            await reader.start()
            self._reader = reader
        return self._reader

    async def _at_end(self, tp: Any, position: int) -> bool:
        ends = await self._reader.end_offsets([tp])
        return position >= ends[tp]

    async def close(self) -> None:
        if self._reader is not None:
            await self._reader.stop()
            self._reader = None


def _empty_ranges(start: int, end: int, records: list[Any]) -> list[tuple[int, int]]:
    """The ranges of ``start .. end - 1`` that hold none of ``records`` (in offset order)."""
    out, position = [], start
    for record in records:
        if record.offset > position:
            out.append((position, record.offset))
        position = max(position, record.offset + 1)
    if position < end:
        out.append((position, end))
    return out

"""Corrections to faust-streaming 0.15's consumer that the framework installs on each worker.

**Offsets acknowledged twice stall commits.** Faust's consumer finds the offset to
commit by merging the acknowledged offsets of a partition with the "gaps" it
recorded (offset jumps it treats as done) and taking the first run of
consecutive numbers. When the same offset is both in a gap and acknowledged —
which happens whenever :class:`~streams.consume.runner.GapGuard` handles records Faust
skipped — the merged list holds it twice, the run breaks at the repeat, and each
commit advances only a few offsets (seen: a partition committing +10 offsets per
5 s while hundreds were handled, so a crash then repeats hundreds of records).
:func:`install` replaces ``Consumer._new_offset`` with the same computation over
distinct offsets.

**The commit could pass an unacknowledged record.** Faust's check lets the offset right
after the committed one through unacknowledged, skips the check when the committed offset
is 0, and its fetch loop counts the record that reveals a gap (a transaction marker, an
aborted record) as part of the gap — as done before any handler saw it.
:func:`next_commit_offset` commits only a run that starts exactly at the committed offset
(or, before the first commit, where delivery started), and the gap ends before the record.

**A commit asked for while another runs commits nothing.** Faust's ``commit`` waits for a
commit under way and returns without committing, although that commit took its offsets
before the acknowledgements that came since: the last commit of a graceful stop could be
such a call, and the records handled just before the stop were read again by the next
owner. :func:`install` makes such a call commit once the running commit is done.

**Exactly-once restores wait for records that never come** (and start from an
unknown end). Faust restores a
table until it has seen the record just before the changelog's end offset. Under
``exactly_once`` every transaction ends with a commit (or abort) marker, so the
last offset of a changelog is a marker that a ``read_committed`` reader never
sees, and Faust only ends the restore after two idle 5 s timeouts (seen: 12–14 s
of every exactly_once start or rebalance). :func:`install_recovery_fix` makes
the restore aim at the last record a ``read_committed`` reader can see.

**A rebalance waits forever for a message two agents share.** A record of a topic
that several agents consume is put into every agent's queue, with one reference
per agent. When a rebalance starts, Faust clears the queues (events not yet taken
are dropped, to be fetched again by the partition's next owner) and then waits
until every message it tracks is acknowledged or garbage-collected. A message
that one agent handled and another's queue still held stays referenced (the
first agent's current event) and unacknowledged, so the wait never ends: the
worker leaves its group only when the group evicts it, and a graceful stop hangs
too (seen in the chaos test with two handlers on one topic: 60 s and more per
rebalance). :func:`install_cleared_events_fix` stops tracking the messages of
cleared events — without acknowledging them, so no commit passes them.
"""

from __future__ import annotations

import asyncio
import logging
import weakref
from typing import TYPE_CHECKING, Any

from faust.utils.functional import consecutive_numbers

from streams.kafka.clients import plain_consumer

if TYPE_CHECKING:
    from streams.settings import Settings

log = logging.getLogger(__name__)


def next_commit_offset(acked: list[int], acked_index: set[int], gaps: Any, committed: int | None,
                       start: int | None = None) -> int | None:
    """The offset Faust's consumer may commit for one partition (``Consumer._new_offset`` over
    distinct offsets): the end of the first run of consecutive offsets among the acknowledged
    ones and the gaps, if that run starts exactly at the committed offset (the next offset to
    read); None if nothing can be committed. Consumes what it returns from
    ``acked``/``acked_index`` and the gaps it used, like Faust.

    ``committed`` is Faust's ``_committed_offset`` (None both after a seek to offset 0 and
    without any committed offset); ``start`` is where the partition's delivery began (the
    committed offset, or the log start without one), the floor used when ``committed`` is None.
    Faust's own check let one unacknowledged offset through (committed 100, acknowledged
    [101, 102] → 103) and skipped the check when the committed offset was 0."""
    if not acked:
        return None
    max_offset = max(acked)
    if gaps:
        candidates = sorted(gaps.overlap(0, max_offset), key=lambda iv: iv.begin)
        if candidates:
            extra = [o for iv in candidates for o in range(iv.begin, iv.end)]
            new_max = max(extra[-1], max_offset + 1)
            acked.extend(extra)
            gaps.chop(0, new_max)
    acked[:] = sorted(set(acked))  # an offset counted twice must not break the run
    base = committed if committed is not None else start
    if base is not None:
        below = 0
        while below < len(acked) and acked[below] < base:  # committed already: not part of any run
            below += 1
        if below:
            acked_index.difference_update(acked[:below])
            acked[:below] = []
        if not acked or acked[0] != base:
            return None  # the next offset to commit is not done yet
    batch = next(consecutive_numbers(acked))
    acked[: len(batch)] = []
    acked_index.difference_update(batch)
    return batch[-1] + 1


#: per Faust consumer: tp -> the offset its delivery started from after the last assignment
_STARTS: "weakref.WeakKeyDictionary[Any, dict[Any, int]]" = weakref.WeakKeyDictionary()


def note_delivery_start(consumer: Any, tp: Any, offset: int) -> None:
    """Record where ``tp``'s delivery starts after an assignment (the committed offset or the log
    start), the floor of its commits while Faust's own committed offset is unknown (None)."""
    starts = _STARTS.get(consumer)
    if starts is None:
        starts = _STARTS[consumer] = {}
    starts[tp] = offset


def forget_delivery_starts(consumer: Any) -> None:
    """A new assignment: the starts are noted again by the first batch of each partition."""
    _STARTS.pop(consumer, None)


def install(consumer: Any) -> None:
    """Patch ``consumer`` (a Faust consumer) once."""
    if getattr(consumer, "_streams_fixes", False):
        return

    def _new_offset(tp: Any) -> int | None:
        start = _STARTS.get(consumer, {}).get(tp)
        return next_commit_offset(consumer._acked[tp], consumer._acked_index[tp],
                                  consumer._gap[tp], consumer._committed_offset[tp], start)

    consumer._new_offset = _new_offset

    async def _add_gap(tp: Any, offset_from: int, offset_to: int) -> None:
        # Faust's fetch loop calls this with the offset of the record that revealed the gap as
        # ``offset_to`` and adds [offset_from, offset_to + 1): the revealing record itself was
        # counted as done before any handler saw it. The gap is the offsets strictly between
        # (and it may start at the committed offset: see add_gaps).
        add_gaps(consumer, tp, [(offset_from, offset_to)])

    consumer._add_gap = _add_gap
    original_commit = consumer.commit

    async def commit(*args: Any, **kwargs: Any) -> Any:
        # Faust's commit returns at once, committing nothing, when another commit is under way
        # ("original commit finished, return False as we did not commit"); but that commit took
        # its offsets before the latest acknowledgements. The final commit of a graceful stop
        # then left handled records uncommitted (seen: 18 of 30 re-read after a SIGTERM). Wait
        # for the running commit, then commit.
        while (running := consumer._commit_fut) is not None:
            try:
                await asyncio.shield(running)
            except asyncio.CancelledError:
                if not running.cancelled():
                    raise  # we were cancelled, not the commit
        return await original_commit(*args, **kwargs)

    consumer.commit = commit
    consumer._streams_fixes = True


def ack_offsets(consumer: Any, tp: Any, offsets: list[int]) -> None:
    """Acknowledge ``offsets`` of ``tp`` in Faust's consumer at once (what ``Consumer.ack``
    does per message), so that its commit can pass them. A partition revoked while its
    batch was handled is left alone: its next owner starts from the committed offset."""
    if tp not in consumer.assignment():
        return
    committed = consumer._committed_offset.get(tp)
    index = consumer._acked_index[tp]
    acked = consumer._acked[tp]
    fresh = [o for o in offsets if (committed is None or o >= committed) and o not in index]
    index.update(fresh)
    acked.extend(fresh)
    consumer._n_acked += len(fresh)


def add_gaps(consumer: Any, tp: Any, ranges: list[tuple[int, int]]) -> None:
    """Offsets ``start .. end - 1`` of ``tp`` (each of ``ranges``) hold no record this consumer is
    handed — a transaction's commit marker, an aborted or compacted-away record: commits pass them
    once the records before them are acknowledged (Faust's gaps, which
    :func:`next_commit_offset` merges). Faust's own ``_add_gap`` starts a gap no lower than the
    committed offset + 1, but the committed offset is the next one to read: a marker right there
    (where the last commit stopped, at the end of a transaction) would then never be passed."""
    committed = consumer._committed_offset.get(tp)
    gaps = consumer._gap[tp]
    added = False
    for start, end in ranges:
        if committed is not None:
            start = max(start, committed)
        if start < end:
            gaps.addi(start, end)
            added = True
    if added:
        gaps.merge_overlaps()


def install_cleared_events_fix(faust_app: Any, on_clear: Any = None) -> None:
    """Make ``faust_app``'s flow control forget the messages of the events it clears
    (and call ``on_clear()`` then: other buffers of fetched records clear too)."""
    flow_control = faust_app.flow_control
    if getattr(flow_control, "_streams_fixes", False):
        return
    original = flow_control.clear

    def clear() -> None:
        consumer = faust_app.consumer
        unacked = consumer._unacked_messages
        for queue in list(flow_control._queues):
            for event in list(queue._queue):
                message = getattr(event, "message", None)
                if message is not None and not message.acked:
                    unacked.discard(message)  # not acked: the commit stays below it
        if on_clear is not None:
            on_clear()
        original()

    flow_control.clear = clear
    flow_control._streams_fixes = True


#: Faust app -> the settings its recovery reads changelogs with
_SETTINGS: "weakref.WeakKeyDictionary[Any, Settings]" = weakref.WeakKeyDictionary()


def install_recovery_fix(faust_app: Any, settings: "Settings") -> None:
    """Make ``faust_app``'s table restores under exactly_once end at the last visible record.

    ``Recovery._build_offsets`` runs after the highwaters are known; the patched
    version lowers each highwater to the offset of the last record a
    ``read_committed`` reader sees (never below the offset already restored
    locally, so Faust's consistency check still holds)."""
    from faust.tables.recovery import Recovery

    _SETTINGS[faust_app] = settings
    if getattr(Recovery, "_streams_fixes", False):
        return
    original = Recovery._build_offsets
    original_highwaters = Recovery._build_highwaters

    async def _build_highwaters(self: Any, consumer: Any, tps: Any, destination: Any, title: str) -> None:
        """Under exactly_once Faust takes a changelog's end from the last stable offset the
        consumer saw in a fetch response; for a partition it has not fetched yet (just
        assigned) that is unknown and Faust uses -1, "empty": the restore is skipped (the
        new owner's processed-ID table stays empty, so duplicates pass) or, with a local
        store, Faust stops the worker with ConsistencyError ("persisted offset 234 >
        highwater -1", seen in the chaos test). Unknown ends are asked from the broker."""
        await original_highwaters(self, consumer, tps, destination, title)
        app_settings = _SETTINGS.get(self.app)
        if app_settings is None or not self.app.in_transaction:
            return
        unknown = [tp for tp in tps if destination.get(tp, -1) < 0]
        if not unknown:
            return
        try:
            stable = await stable_end_offsets(app_settings, unknown)
        except Exception as exc:  # noqa: BLE001 - Faust's own (possibly wrong) figure stays
            log.warning("could not read the stable end offsets of %d changelog partition(s): %r", len(unknown), exc)
            return
        known = {tp: end - 1 for tp, end in stable.items() if end > 0}
        if known:
            log.info("%s changelog partitions not fetched yet; their ends from the broker: %s", title,
                     {f"{tp.topic}[{tp.partition}]": o for tp, o in sorted(known.items())})
            destination.update(known)

    async def _build_offsets(self: Any, consumer: Any, tps: Any, destination: Any, title: str) -> None:
        await original(self, consumer, tps, destination, title)
        app_settings = _SETTINGS.get(self.app)
        if app_settings is None or not self.app.in_transaction:
            return
        highwaters = self.active_highwaters if title == "active" else self.standby_highwaters
        ends = {tp: highwaters[tp] + 1 for tp in tps if highwaters.get(tp) is not None and highwaters[tp] >= 0}
        if not ends:
            return
        try:
            visible = await last_visible_offsets(app_settings, ends)
        except Exception as exc:  # noqa: BLE001 - Faust's own (slower) end detection still works
            log.warning("could not find the last committed changelog records (%r); the restore ends on "
                        "Faust's timeouts instead", exc)
            return
        lowered = {}
        for tp, last in visible.items():
            local = destination.get(tp)
            target = max(last, -1 if local is None else local)
            if target < highwaters[tp]:
                lowered[tp] = target
        if lowered:
            log.info("%s changelog partitions end in transaction markers or aborted records; restoring up "
                     "to the last committed record: %s", title,
                     {f"{tp.topic}[{tp.partition}]": f"{highwaters[tp]}->{o}" for tp, o in sorted(lowered.items())})
            for tp, offset in lowered.items():  # a Counter: update() would add
                highwaters[tp] = offset

    Recovery._build_offsets = _build_offsets
    Recovery._build_highwaters = _build_highwaters
    Recovery._streams_fixes = True


async def stable_end_offsets(settings: "Settings", tps: list[Any]) -> dict[Any, int]:
    """The last stable offset (what a ``read_committed`` reader can reach) of each partition."""
    from aiokafka import TopicPartition

    reader = plain_consumer(settings, isolation_level="read_committed")
    await reader.start()
    try:
        by_key = {TopicPartition(tp.topic, tp.partition): tp for tp in tps}
        ends = await reader.end_offsets(list(by_key))
        return {by_key[ktp]: end for ktp, end in ends.items()}
    finally:
        await reader.stop()


async def last_visible_offsets(settings: "Settings", ends: dict[Any, int], window: int = 256,
                               read_timeout: float = 10.0) -> dict[Any, int]:
    """For each partition, the offset of the last record below ``ends[tp]`` that a
    ``read_committed`` reader sees (-1 if none): reads back from the end in growing windows.
    A partition whose window cannot be read within ``read_timeout`` is left out."""
    from aiokafka import TopicPartition

    reader = plain_consumer(settings, isolation_level="read_committed")
    await reader.start()
    try:
        by_key = {TopicPartition(tp.topic, tp.partition): tp for tp in ends}
        reader.assign(list(by_key))
        starts = await reader.beginning_offsets(list(by_key))
        out: dict[Any, int] = {}
        loop = asyncio.get_running_loop()
        for ktp, tp in by_key.items():
            end, low, size, last, complete = ends[tp], starts[ktp], window, -1, True
            stop = end
            while complete and last < 0 and stop > low:
                start = max(low, stop - size)
                reader.seek(ktp, start)
                deadline = loop.time() + read_timeout
                while await reader.position(ktp) < stop:
                    if loop.time() > deadline:
                        complete = False  # could not read the window: leave this highwater alone
                        break
                    batch = await reader.getmany(ktp, timeout_ms=500, max_records=1000)
                    last = max([last, *(r.offset for r in batch.get(ktp, []) if r.offset < stop)])
                stop, size = start, size * 4
            if complete:
                out[tp] = last
        return out
    finally:
        await reader.stop()

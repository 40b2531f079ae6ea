"""Table restores in write batches: changelog records applied a fetch at a time.

Faust restores a table (an active partition after an assignment, and a standby
replica all the time) by turning every changelog record into an event, queueing
it, and applying the events in buffers of ``recovery_buffer_size`` — about
85 µs of CPU per record on this project's machine (11,600 entries/s). Its fetch,
seeks, highwaters, pausing and readiness are sound; only the per-record path is
slow.

:func:`install` takes the records of the changelog partitions Faust is
restoring out of each fetch of Faust's own consumer (the same hook the batch
consume path uses, :func:`streams.faust_compat.fetches.intercept_fetches`), before
they become events, and writes each partition's records with one RocksDB write
batch that also carries the partition's persisted offset — so data and offset
move together, and a worker killed mid-restore resumes from a consistent point.
The bookkeeping Faust's own loop keeps is kept the same way
(``Recovery._slurp_changelogs``): a record at or below the offset already
applied is skipped, the partition's offset in ``active_offsets`` /
``standby_offsets`` moves to the last record, and once no active partition has
anything left the recovery-end signal is set (Faust's loop would set it only
after its next 5 s idle timeout); standbys become ready when none has anything
left. Faust's seeks, highwaters (with the exactly_once corrections of
:mod:`streams.faust_compat.consumer_fixes`), ``read_committed`` isolation, pause and
resume are untouched: the records are the ones Faust's consumer fetched.

The bytes written are the record's key and value as they are, which is what
Faust's ``Store.apply_changelog_batch`` writes, so a table restored here is the
table the event path builds (``tests/test_state_at_scale.py`` compares them key
by key). Tables this cannot stand in for go on through Faust's path: a store
that is not RocksDB (rocksdict), a global table, a table with an
``on_changelog_event`` callback. ``STREAMS_RESTORE_PATH=events`` switches it off.
"""

from __future__ import annotations

import logging
import weakref
from time import monotonic
from typing import Any

import rocksdict

from streams.faust_compat import fetches, table_store
from streams.faust_compat.private import require, table_manager

log = logging.getLogger(__name__)


def eligible(table: Any) -> bool:
    """True for tables whose restore the batch path stands in for (see the module docstring)."""
    store = table.data
    return (table_store.is_partitioned(store) and bool(getattr(store, "use_rocksdict", False))
            and not table.is_global and getattr(table, "_on_changelog_event", None) is None)


class BatchRestore:
    """Applies the fetched changelog records of the tables being restored, a write batch per
    partition and fetch."""

    def __init__(self, faust_app: Any) -> None:
        self.faust_app = faust_app
        #: records applied here (active, standby); keyless records skipped
        self.applied = {"active": 0, "standby": 0}
        self.skipped_keyless = 0
        self._installed = False

    # --- which records ------------------------------------------------------------
    def _topics(self) -> set[str]:
        return {table.changelog_topic.get_topic_name() for table in self.faust_app.tables.values()
                if eligible(table)}

    def install(self) -> None:
        """Wrap the Faust consumer's fetch (once; the consumer exists at the first assignment)."""
        if self._installed:
            return
        topics = self._topics()
        if not topics:
            return
        fetches.intercept_fetches(self.faust_app, lambda topic: topic in topics, self.apply)
        self._installed = True
        log.info("table restores and standbys use write batches for %d changelog topic(s)", len(topics))

    # --- applying ---------------------------------------------------------------
    def apply(self, tp: Any, records: list[Any]) -> None:
        """Write the records of one changelog partition's fetch (what Faust's recovery loop does
        event by event), then signal what Faust's loop would signal."""
        if not records or not fetches.flow_active(self.faust_app):
            return  # a rebalance is under way: Faust seeks the changelogs again when it resumes
        recovery = table_manager(self.faust_app).recovery
        if tp in recovery.active_tps:
            role, offsets = "active", recovery.active_offsets
            received = require(recovery, "_active_events_received_at")
        elif tp in recovery.standby_tps:
            role, offsets = "standby", recovery.standby_offsets
            received = require(recovery, "_standby_events_received_at")
        else:
            return  # not restored here (any more): Faust would drop it too
        table = recovery.tp_to_table[tp]
        if recovery.buffers.get(table):  # events Faust's own loop took (none once installed): theirs first
            recovery.flush_buffers()
        seen = offsets.get(tp)
        fresh = records if seen is None else [r for r in records if r.offset > seen]
        if not fresh:
            return
        store = table.data
        batch = rocksdict.WriteBatch(raw_mode=True)
        for record in fresh:
            if record.key is None:  # no table writes one; Faust's own path would fail the whole buffer
                self.skipped_keyless += 1
                log.warning("%s[%d]@%d: a changelog record without a key is not a table entry; skipped",
                            tp.topic, tp.partition, record.offset)
            elif record.value is None:
                batch.delete(record.key)
            else:
                batch.put(record.key, record.value)
        last = fresh[-1].offset
        batch.put(store.offset_key, str(last).encode())  # the persisted offset, atomic with the data
        require(store, "_db_for_partition")(tp.partition).write(batch)
        offsets[tp] = last
        now = monotonic()
        received[tp] = now
        recovery._last_flush_at = now
        self.applied[role] += len(fresh)
        if role == "active":
            self._maybe_end_recovery(recovery)
        else:
            self._maybe_standbys_ready(recovery)

    def _maybe_end_recovery(self, recovery: Any) -> None:
        """What Faust's recovery loop does after an event: end the active restore once nothing
        is left (its buffers, empty for these tables, are flushed first)."""
        if recovery.in_recovery and not recovery.need_recovery():
            recovery.flush_buffers()
            require(recovery, "_set_recovery_ended")()
            recovery.signal_recovery_end.set()

    def _maybe_standbys_ready(self, recovery: Any) -> None:
        tables = table_manager(self.faust_app)
        if not tables.standbys_ready and not recovery.standby_remaining_total():
            tables.on_standbys_ready()


_RESTORES: "weakref.WeakKeyDictionary[Any, BatchRestore]" = weakref.WeakKeyDictionary()


def restorer(faust_app: Any) -> BatchRestore | None:
    """The batch restore installed on ``faust_app`` (None with ``STREAMS_RESTORE_PATH=events``)."""
    return _RESTORES.get(faust_app)


def install(faust_app: Any) -> BatchRestore:
    """Apply ``faust_app``'s table restores in write batches from its first assignment on.

    The fetch is wrapped when Faust's recovery learns of an assignment
    (``Recovery.on_rebalance``, wrapped once for every app): the consumer exists then, and no
    changelog record of that assignment has been fetched yet — the app's own
    ``on_partitions_assigned`` signal comes after the recovery has started, too late."""
    existing = _RESTORES.get(faust_app)
    if existing is not None:
        return existing
    restore = _RESTORES[faust_app] = BatchRestore(faust_app)
    from faust.tables.recovery import Recovery

    if not getattr(Recovery, "_streams_batch_restore", False):
        original = Recovery.on_rebalance

        async def on_rebalance(self: Any, *args: Any, **kwargs: Any) -> None:
            installed = _RESTORES.get(self.app)
            if installed is not None:
                installed.install()
            await original(self, *args, **kwargs)

        Recovery.on_rebalance = on_rebalance
        Recovery._streams_batch_restore = True
    return restore

"""Warm-up before joining: a worker brings its local copy of every table up to the
changelogs' ends before it joins its consumer group.

Faust hands a joining worker its partitions at once, and the worker restores
their tables while those partitions stand still (measured: a worker joining a
group with a 1,000,000-id table stopped 3 partitions for 49.6 s on Faust's
event path). Kafka Streams avoids that with warm-up replicas (KIP-441): the
new instance first catches up as a standby and takes the partitions only once
it is close. Faust 0.15's assignor has no notion of that, so here the warm-up
happens before the group learns of the worker at all: ``streams worker`` calls
:func:`warm_up` before it starts Faust. Every partition of every table the batch
restore covers (:func:`streams.faust_compat.restore.eligible`) is read from its
persisted offset to the changelog's end (its last stable offset under
exactly_once, read ``read_committed``) in large fetches and written in RocksDB
write batches that carry the persisted offset (under exactly_once up to the
last record a ``read_committed`` reader sees: a changelog can end in aborted
records, past which aiokafka's position does not always move; a partition with
no record for ``stall_after`` seconds is left to Faust's restore after joining)
— the files Faust's store opens
later, so its recovery then reads only the tail written since. Meanwhile the
group goes on without this worker: nothing stops.

The cost: a worker copies every partition, not only the share it will get (a
table's full size on each worker's disk; after the first start, only the tail
since its last run). ``STREAMS_WARMUP_BEFORE_JOIN=false`` turns it off.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import rocksdict
from faust.stores import rocksdb as rocksdb_store

from streams.faust_compat.consumer_fixes import last_visible_offsets
from streams.kafka.admin import topic_partitions
from streams.kafka.clients import plain_consumer

if TYPE_CHECKING:
    from streams.settings import Settings

log = logging.getLogger(__name__)


@dataclass
class WarmUp:
    """What a warm-up did."""

    records: int = 0
    seconds: float = 0.0
    #: changelog partition ("topic[p]") -> (offset read from, end offset)
    partitions: dict[str, tuple[int, int]] = field(default_factory=dict)
    skipped: list[str] = field(default_factory=list)


async def warm_up(faust_app: Any, settings: "Settings", *, fetch_bytes: int = 1024 * 1024,
                  max_records: int = 20_000, progress_every: float = 5.0, stall_after: float = 30.0) -> WarmUp:
    """Bring the local RocksDB copy of every eligible table partition up to its changelog's end."""
    started = time.monotonic()
    out = WarmUp()
    tables = [t for t in faust_app.tables.values() if _eligible(faust_app, t)]
    if not tables:
        return out
    # from the settings: Faust's ``in_transaction`` is cached, and False until the worker runs
    exactly_once = settings.processing_guarantee.value == "exactly_once"
    isolation = "read_committed" if exactly_once else "read_uncommitted"
    # fetches of a worker's size, and at most ``max_records`` records in hand: the warm-up's memory
    # stays near the worker's own
    reader = plain_consumer(settings, isolation_level=isolation, max_partition_fetch_bytes=fetch_bytes,
                            fetch_max_bytes=8 * fetch_bytes)
    reader_max_records = max_records
    await reader.start()
    try:
        for table in tables:
            await _table(reader, faust_app, settings, table, out, progress_every, reader_max_records, stall_after)
    finally:
        await reader.stop()
    out.seconds = time.monotonic() - started
    return out


def _eligible(faust_app: Any, table: Any) -> bool:
    """What :func:`streams.faust_compat.restore.eligible` says, read from the configuration: the
    table's store object is not made here (it binds Faust's event loop, which the worker makes
    afterwards)."""
    url = str(getattr(table, "_store", None) or faust_app.conf.store)
    return (url.rstrip("/") == "rocksdb:" and bool(rocksdb_store.USE_ROCKSDICT) and not table.is_global
            and getattr(table, "_on_changelog_event", None) is None)


def _partition_path(faust_app: Any, table: Any, partition: int) -> Path:
    """Where Faust's RocksDB store keeps one partition of ``table`` (``Store.partition_path`` for a
    store URL without a path, as the settings give)."""
    return Path(faust_app.conf.tabledir) / f"{table.name}-{partition}.db"


async def _table(reader: Any, faust_app: Any, settings: "Settings", table: Any, out: WarmUp,
                 progress_every: float, max_records: int, stall_after: float) -> None:
    exactly_once = settings.processing_guarantee.value == "exactly_once"
    options = rocksdb_store.RocksDBOptions(**{k: v for k, v in (table.options or {}).items()
                                              if k not in ("driver", "read_only")})
    offset_key = rocksdb_store.Store.offset_key
    topic = table.changelog_topic.get_topic_name()
    tps = await topic_partitions(reader, topic)
    if not tps:
        out.skipped.append(f"{topic}: no such topic yet")
        return
    dbs: dict[Any, Any] = {}
    try:
        for tp in tps:
            path = _partition_path(faust_app, table, tp.partition)
            path.parent.mkdir(parents=True, exist_ok=True)
            try:
                dbs[tp] = options.open(path)
            except Exception as exc:  # noqa: BLE001 - e.g. locked by another worker on this data dir
                out.skipped.append(f"{topic}[{tp.partition}]: {exc}")
        ends = await reader.end_offsets(list(dbs))
        todo = {}
        for tp, db in dbs.items():
            raw = db.get(offset_key)
            start = int(raw) + 1 if raw is not None else 0
            if start < ends[tp]:
                todo[tp] = start
                out.partitions[f"{topic}[{tp.partition}]"] = (start, ends[tp])
        if not todo:
            return
        # the last record a reader of this isolation sees below each end: under exactly_once a
        # changelog can end in aborted records and markers, past which aiokafka's position does not
        # always move (what streams.faust_compat.consumer_fixes works around for Faust's restore)
        targets = {tp: ends[tp] - 1 for tp in todo}
        if exactly_once:
            visible = await last_visible_offsets(settings, {tp: ends[tp] for tp in todo})
            targets.update(visible)
        reader.assign(list(todo))
        for tp, start in todo.items():
            reader.seek(tp, start)
        log.info("warming up %s before joining: %d changelog records in %d partition(s)", topic,
                 sum(ends[tp] - s for tp, s in todo.items()), len(todo))
        active = {tp for tp in todo if targets[tp] >= todo[tp]}
        last_log = last_progress = time.monotonic()
        while active:
            fetched = await reader.getmany(*active, timeout_ms=1000, max_records=max_records)
            for tp, records in fetched.items():
                records = [r for r in records if r.offset <= targets.get(tp, -1)]
                if not records:
                    continue
                last_progress = time.monotonic()
                batch = rocksdict.WriteBatch(raw_mode=True)
                for record in records:
                    if record.key is None:
                        continue  # not a table entry (see streams.faust_compat.restore)
                    if record.value is None:
                        batch.delete(record.key)
                    else:
                        batch.put(record.key, record.value)
                batch.put(offset_key, str(records[-1].offset).encode())
                dbs[tp].write(batch)
                out.records += len(records)
                if records[-1].offset >= targets[tp]:
                    active.discard(tp)
            for tp in list(active):
                if await reader.position(tp) >= ends[tp]:
                    active.discard(tp)
            if active and time.monotonic() - last_progress > stall_after:
                out.skipped.append(f"{topic}: no record for {stall_after:.0f}s in {sorted(tp.partition for tp in active)}"
                                   " (Faust's restore after joining reads the rest)")
                log.warning("warming up %s: %s", topic, out.skipped[-1])
                break
            if time.monotonic() - last_log >= progress_every:
                last_log = time.monotonic()
                left = sum([max(0, ends[tp] - await reader.position(tp)) for tp in active])
                log.info("warming up %s: %d records applied, %d left", topic, out.records, left)
        reader.unsubscribe()
    finally:
        for db in dbs.values():
            db.close()

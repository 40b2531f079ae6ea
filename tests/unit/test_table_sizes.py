"""Table sizes without scans: the web views and ``/metrics`` read a partition's size from RocksDB's
own estimate, never by iterating a large partition's keys on the event loop (issue 24 part 4).

Real RocksDB (rocksdict, through Faust's RocksDB store); no servers."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import faust
import pytest
import rocksdict

from streams.faust_compat import table_store
from streams.web.tables import TableViews


@pytest.fixture
def store(tmp_path: Path) -> Any:
    app = faust.App("sizes-test", store="rocksdb://", datadir=str(tmp_path))
    return app.Table("ids", partitions=2).data


def _fill(db: Any, store: Any, n: int, *, batch: int = 5000, first: int = 0) -> None:
    """Keys ``first..first+n-1`` in write batches, the persisted offset rewritten after each (as a
    restore does)."""
    for start in range(first, first + n, batch):
        wb = rocksdict.WriteBatch(raw_mode=True)
        for i in range(start, min(first + n, start + batch)):
            wb.put(b'"id-%d"' % i, b'{"at": 1.0, "outcome": "handled"}')
        db.write(wb)
        db.put(store.offset_key, str(start).encode())


def _count_reads(store: Any) -> list[int]:
    """Wrap the store's key iterator: how many keys every size query read."""
    reads = [0]
    original = store._visible_keys

    def visible_keys(db: Any):
        for key in original(db):
            reads[0] += 1
            yield key

    store._visible_keys = visible_keys
    return reads


def test_a_large_partition_reports_its_size_without_reading_its_keys(store: Any) -> None:
    db = store._db_for_partition(0)
    _fill(db, store, 60_000)
    for i in range(1_000):
        db.delete(b'"id-%d"' % i)
    reads = _count_reads(store)
    views = TableViews(app=None)  # type: ignore[arg-type]  # sizes read only the table's store
    table = type("T", (), {"data": store})()
    size = views.size(table, 0)
    assert reads[0] == 0, f"the size query read {reads[0]} keys"
    assert size is not None and size[1] is True
    assert abs(size[0] - 59_000) <= 59_000 * 0.01, size  # in the memtable: overwrites of the offset key only
    db.flush()  # an SST's estimate counts each delete against an older put: ~2 % low here
    entries, estimated = table_store.entries(store, db)
    assert estimated and abs(entries - 59_000) <= 59_000 * 0.02, entries
    assert views.entries(table, 1) is None  # no copy of partition 1 here


def test_a_small_partition_is_counted_exactly_with_a_bounded_read(store: Any) -> None:
    db = store._db_for_partition(1)
    _fill(db, store, 700, batch=100)
    db.delete(b'"id-3"')
    reads = _count_reads(store)
    assert table_store.entries(store, db) == (699, False)
    assert reads[0] == 699
    _fill(db, store, table_store.EXACT_BELOW, batch=1000, first=700)  # past the bound: the estimate
    reads[0] = 0
    entries, estimated = table_store.entries(store, db)
    assert estimated and reads[0] <= table_store.EXACT_BELOW + 1
    assert abs(entries - (table_store.EXACT_BELOW + 699)) <= 30, entries  # + the offset key's rewrites

"""Expiry of the processed-ID table at scale: a sweep reads a bounded chunk of the partition, never
the whole of it (nor an index of it kept in memory), and a few sweeps cover the partition.

Real RocksDB (rocksdict through Faust's RocksDB store); no servers."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import faust
import rocksdict

from streams.consume.dedup import ProcessedIds


class _Table:
    """What ProcessedIds uses of a Faust table: its store, reads, deletes (a delete's changelog
    tombstone is Faust's business and is left out here)."""

    def __init__(self, store: Any, partition: int) -> None:
        self.data, self.partition = store, partition

    def _db(self) -> Any:
        return self.data._db_for_partition(self.partition)

    def get(self, key: str) -> Any:
        raw = self._db().get(json.dumps(key).encode())
        return None if raw is None else json.loads(raw)

    def __delitem__(self, key: str) -> None:
        self._db().delete(json.dumps(key).encode())


def test_each_sweep_reads_a_bounded_chunk_and_a_few_sweeps_expire_everything(tmp_path: Path) -> None:
    store = faust.App("expiry-test", store="rocksdb://", datadir=str(tmp_path)).Table("ids", partitions=1).data
    db = store._db_for_partition(0)
    now, n = time.time(), 30_000
    wb = rocksdict.WriteBatch(raw_mode=True)
    for i in range(n):  # every other id expired long ago
        value = {"at": now - 1_000 if i % 2 == 0 else now, "outcome": "handled", "p": 0, "o": i, "attempts": 1}
        wb.put(json.dumps(f"id-{i:06d}").encode(), json.dumps(value).encode())
    db.write(wb)
    db.put(store.offset_key, b"29999")
    processed = ProcessedIds(lambda name, **kw: _Table(store, 0), "h", 1, retention=100.0, sweep_interval=0.0,
                             sweep_batch=5_000)
    reads = [0]
    decode = store._decode_value

    def counting(raw: bytes) -> Any:
        reads[0] += 1
        return decode(raw)

    store._decode_value = counting
    removed, per_sweep = 0, []
    for _ in range(n // 5_000 + 1):
        reads[0] = 0
        removed += processed.maybe_sweep(0)
        per_sweep.append(reads[0])
    assert max(per_sweep) <= 5_000, per_sweep
    assert removed == n // 2
    left = [k for k in list(db.keys()) if k != store.offset_key]
    assert len(left) == n // 2 and all(int(json.loads(k)[3:]) % 2 == 1 for k in left)
    assert db.get(store.offset_key) == b"29999"


def test_no_sweep_reads_until_the_oldest_entry_left_can_expire(tmp_path: Path) -> None:
    """A completed pass knows the oldest entry it kept: until that one (or one written since the
    pass began) can expire, no sweep reads anything — however many entries are written."""
    store = faust.App("expiry-quiet", store="rocksdb://", datadir=str(tmp_path)).Table("ids", partitions=1).data
    db = store._db_for_partition(0)
    now = time.time()
    for i in range(100):  # the oldest entry is 40 s old, retention 100 s: it expires in 60 s
        value = {"at": now - 40 + i * 0.1, "outcome": "handled", "p": 0, "o": i, "attempts": 1}
        db.put(json.dumps(f"id-{i:03d}").encode(), json.dumps(value).encode())
    processed = ProcessedIds(lambda name, **kw: _Table(store, 0), "h", 1, retention=100.0, sweep_interval=0.0,
                             sweep_batch=50)
    reads = [0]
    decode = store._decode_value

    def counting(raw: bytes) -> Any:
        reads[0] += 1
        return decode(raw)

    store._decode_value = counting
    cursor = processed._expiry
    for _ in range(3):  # one pass: two chunks of 50, then the end
        assert processed.maybe_sweep(0) == 0
    assert reads[0] == 100
    for _ in range(1_000):
        cursor.note_write(0)  # many new entries: a sweep would be due without the quiet period
    assert not cursor.due(0, now + 59)
    assert cursor.due(0, now + 61)
    # an entry written after the pass began is covered too: the quiet period ends by pass start + retention
    assert cursor._quiet_until[0] <= now + 60.1
    cursor.reset()  # a rebalance: the partition's contents may have changed
    assert cursor.due(0, now + 1)

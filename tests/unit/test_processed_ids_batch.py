"""Processed-ID entries inside a batch: encoded once, seen by the batch's own lookups before they
reach RocksDB, written to the partition's database at the batch's end in the bytes Faust's table
would have written (and its changelog carries). Real RocksDB (Faust's store); no servers."""

from __future__ import annotations

import json
from pathlib import Path

import faust

from streams.consume.changelog import ChangelogBatch
from streams.consume.dedup import HANDLED, ProcessedIds
from streams.faust_compat import table_store


def test_a_batch_sees_its_own_entries_and_writes_them_as_faust_would(tmp_path: Path) -> None:
    app = faust.App("processed-batch-test", store="rocksdb://", datadir=str(tmp_path))
    table = app.Table("processed-h", partitions=2, default=None)
    store = table.data
    processed = ProcessedIds(lambda name, **kw: table, "h", 2, retention=3600.0)
    with ChangelogBatch(transactions=None, faust_app=app) as batch:  # type: ignore[arg-type]
        assert processed.get("m-1", 1) is None
        assert processed.record("m-1", HANDLED, 1, 41, 1, "t", 41) is None  # joins the batch
        entry = processed.get("m-1", 1)
        assert entry is not None and (entry.partition, entry.offset, entry.outcome) == (1, 41, HANDLED)
        assert processed.get("m-1", 0) is None  # another partition's database
        raw_key = json.dumps("m-1").encode()
        assert table_store.get_raw(store, 1, raw_key) is None  # not in RocksDB before the batch's end
        held = batch.pending(table, 1, raw_key)
        assert held is not None and json.loads(held)["o"] == 41
        value = json.loads(held)
        assert held == store._encode_value(value) and raw_key == store._encode_key("m-1")
        # what send() does first: the local write, one write batch per partition
        table_store.write_raw(store, 1, batch._encoded[(table, 1)].items())
    assert table_store.get_raw(store, 1, raw_key) == held


def test_the_encoders_give_faust_s_own_bytes(tmp_path: Path) -> None:
    """The codecs used for processed ids give exactly what Faust's store (and changelog) would."""
    store = faust.App("encoders-test", store="rocksdb://", datadir=str(tmp_path)).Table("p", partitions=1).data
    encode_key, encode_value = table_store.encoders(store)
    value = {"at": 1796582685.771234, "outcome": HANDLED, "p": 0, "o": 12, "attempts": 2, "rt": "t", "ro": 12}
    for key in ("m-1", "ünïcödé-\u2603-☃", "x" * 200):
        assert encode_key(key) == store._encode_key(key)
    assert encode_value(value) == store._encode_value(value)

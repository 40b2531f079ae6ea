"""Reading a table's local RocksDB store one partition at a time.

Faust's RocksDB store keeps one database per partition but offers no public
per-partition view; the table web views and the processed-ID expiry need one.
Other stores (Faust's in-memory store, used by ``test_context``) are one mapping.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

from faust.stores.rocksdb import Store as RocksDBStore

from streams.faust_compat.private import require


def is_partitioned(store: Any) -> bool:
    """True for Faust's RocksDB store (one database per partition)."""
    return isinstance(store, RocksDBStore)


def partition_dbs(store: Any) -> dict[int, Any]:
    """The per-partition databases open here (RocksDB store only)."""
    return require(store, "_dbs")


def items(store: Any, db: Any) -> Iterator[tuple[Any, Any]]:
    """Decoded (key, value) pairs of one partition's database."""
    visible, decode_key, decode_value = (require(store, "_visible_items"), require(store, "_decode_key"),
                                         require(store, "_decode_value"))
    for raw_key, raw_value in visible(db):
        yield decode_key(raw_key), decode_value(raw_value)


def partition_items(store: Any, partition: int) -> Iterator[tuple[Any, Any]]:
    """Decoded (key, value) pairs of ``partition`` (its database is opened if needed)."""
    yield from items(store, require(store, "_db_for_partition")(partition))


def count(store: Any, db: Any) -> int:
    """Entries of one partition's database."""
    return sum(1 for _ in require(store, "_visible_keys")(db))


def decode_value(store: Any, raw: bytes) -> Any:
    """A raw value read from one partition's database, decoded like the table does."""
    return require(store, "_decode_value")(raw)

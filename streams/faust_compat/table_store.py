"""Reading a table's local RocksDB store one partition at a time.

Faust's RocksDB store keeps one database per partition but offers no public
per-partition view; the table web views and the processed-ID expiry need one.
Other stores (Faust's in-memory store, used by ``test_context``) are one mapping.
"""

from __future__ import annotations

from collections.abc import Iterator
from itertools import islice
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


def encoders(store: Any) -> tuple[Any, Any]:
    """``(encode key, encode value)`` for plain keys and values (str, dict: no Faust models) of
    ``store``: its serializers' codecs themselves when they are named (what Faust's serializer
    registry ends up calling for such keys and values, without its per-call model checks), else
    the store's own encoding."""
    from faust.serializers.codecs import get_codec

    key_serializer, value_serializer = store.key_serializer, store.value_serializer
    if isinstance(key_serializer, str) and isinstance(value_serializer, str):
        return get_codec(key_serializer).dumps, get_codec(value_serializer).dumps
    return require(store, "_encode_key"), require(store, "_encode_value")


def get_raw(store: Any, partition: int, raw_key: bytes) -> bytes | None:
    """The stored bytes of ``raw_key`` in ``partition``'s database (RocksDB store only)."""
    return require(store, "_db_for_partition")(partition).get(raw_key)


def write_raw(store: Any, partition: int, items: Any) -> None:
    """``(raw key, raw value)`` pairs into ``partition``'s database, one RocksDB write batch."""
    import rocksdict

    batch = rocksdict.WriteBatch(raw_mode=True)
    for raw_key, raw_value in items:
        batch.put(raw_key, raw_value)
    require(store, "_db_for_partition")(partition).write(batch)


def partition_items_after(store: Any, partition: int, after: bytes | None, limit: int) -> list[tuple[bytes, Any, Any]]:
    """Up to ``limit`` entries of ``partition`` in key order, from the first key past ``after``
    (from the start when None): ``(raw key, key, value)``. Reads only those entries."""
    db = require(store, "_db_for_partition")(partition)
    decode_key, decode_value = require(store, "_decode_key"), require(store, "_decode_value")
    out: list[tuple[bytes, Any, Any]] = []
    for raw_key, raw_value in db.items(from_key=after) if after is not None else db.items():
        if raw_key == after or raw_key == store.offset_key:
            continue
        out.append((raw_key, decode_key(raw_key), decode_value(raw_value)))
        if len(out) >= limit:
            break
    return out


def count(store: Any, db: Any, limit: int | None = None) -> int:
    """Entries of one partition's database, counted key by key (at most ``limit + 1``)."""
    keys = require(store, "_visible_keys")(db)
    if limit is not None:
        keys = islice(keys, limit + 1)
    return sum(1 for _ in keys)


#: partitions whose RocksDB estimate is at most this many keys are counted exactly (a bounded scan)
EXACT_BELOW = 10_000


def entries(store: Any, db: Any, exact_below: int = EXACT_BELOW) -> tuple[int, bool]:
    """(entries, estimated) of one partition's database without scanning a large one.

    RocksDB's ``rocksdb.estimate-num-keys`` (memtables plus SST metadata: O(1)) is exact for
    keys written once, and runs high by the overwrites not yet compacted (Faust's persisted
    offset key is rewritten per batch) — the estimate is what a large partition reports.
    Up to ``exact_below`` estimated keys the database is counted key by key, so small tables
    report exact sizes at a bounded cost (``exact_below`` keys at most, the scan stops there).
    """
    estimate = int(db.property_int_value("rocksdb.estimate-num-keys") or 0)
    if estimate <= exact_below:
        exact = count(store, db, limit=exact_below)
        if exact <= exact_below:
            return exact, False
    has_offset = db.get(store.offset_key) is not None
    return max(0, estimate - (1 if has_offset else 0)), True


def decode_value(store: Any, raw: bytes) -> Any:
    """A raw value read from one partition's database, decoded like the table does."""
    return require(store, "_decode_value")(raw)

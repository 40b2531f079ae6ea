"""What a worker holds of its Faust tables: sizes per partition, roles, recovery,
pages of entries and key lookups — read from the local stores, never written.

A table partition is *active* on the worker that consumes the matching source
partition (it answers for its keys) and *standby* on a worker that keeps a warm
copy from the changelog. ``owner_url`` tells which worker is active for a
partition, from the group assignment every worker receives
(``app.faust.router.table_metadata``); the views forward a request there.

RocksDB keeps one database per table partition; Faust exposes no per-partition
view of a store, so the few private accessors used (``_dbs``, ``_visible_keys``,
``_visible_items``, ``_decode_*``) are confined to this module.
"""

from __future__ import annotations

from collections.abc import Iterator
from itertools import islice
from typing import TYPE_CHECKING, Any

from aiokafka.partitioner import DefaultPartitioner
from faust.types import TP

from streams.faust_compat import table_store
from streams.faust_compat.private import table_manager
from streams.web.http import bad_request, not_found

if TYPE_CHECKING:
    from streams.app import StreamsApp

MAX_KEY_LENGTH = 1024


def _text(value: Any) -> Any:
    return value.decode("utf-8", errors="replace") if isinstance(value, bytes) else value


class TableViews:
    """Read-only access to the app's tables on this worker."""

    def __init__(self, app: "StreamsApp") -> None:
        self.app = app

    # --- which tables, which partitions ------------------------------------------------
    def names(self) -> list[str]:
        return sorted(self.app.faust.tables.keys())

    def table(self, name: str) -> Any:
        try:
            return self.app.faust.tables[name]
        except KeyError:
            raise not_found(f"no table named {name!r}", tables=self.names()) from None

    def partitions(self, table: Any) -> int:
        return int(table.partitions or self.app.faust.conf.topic_partitions)

    def check_partition(self, table: Any, value: str | None) -> int | None:
        """``value`` as a partition number of ``table`` (None when not given); 400 if invalid."""
        if value is None or value == "":
            return None
        try:
            partition = int(value)
        except ValueError:
            raise bad_request(f"partition must be an integer, got {value!r}") from None
        if not 0 <= partition < self.partitions(table):
            raise bad_request(f"partition {partition} out of range: {table.name!r} has partitions "
                              f"0..{self.partitions(table) - 1}")
        return partition

    def role(self, table: Any, partition: int) -> str | None:
        """``active``, ``standby`` or None (not held here) for one partition of ``table``."""
        tp = TP(table.changelog_topic_name, partition)
        assignor = self.app.faust.assignor
        if tp in assignor.assigned_actives():
            return "active"
        if tp in assignor.assigned_standbys():
            return "standby"
        return None

    def owner_url(self, table: Any, partition: int) -> str | None:
        """Canonical URL of the worker whose active partition this is (None when unassigned)."""
        topic = table.changelog_topic_name
        for url, topics in self.app.faust.router.table_metadata(table.name).items():
            if partition in topics.get(topic, ()):
                return str(url).rstrip("/")
        return None

    def local_url(self) -> str:
        return str(self.app.faust.conf.canonical_url).rstrip("/")

    # --- keys ------------------------------------------------------------------------
    def parse_key(self, table: Any, raw: str) -> Any:
        """The request's key as the table's key type; 400 when it cannot be one."""
        if not raw or len(raw) > MAX_KEY_LENGTH:
            raise bad_request(f"a key must have 1..{MAX_KEY_LENGTH} characters")
        key_type = getattr(table, "key_type", None)
        if key_type is int:
            try:
                return int(raw)
            except ValueError:
                raise bad_request(f"table {table.name!r} has integer keys, got {raw!r}") from None
        if key_type not in (None, str, bytes):
            raise bad_request(f"table {table.name!r} has {getattr(key_type, '__name__', key_type)} keys: "
                              "lookup by URL is not supported")
        return raw

    def key_partitions(self, table: Any, key: Any) -> list[int]:
        """Where ``key`` can live, most likely first (Kafka's default partitioner, murmur2):

        1. the partition of a record whose Kafka key is ``key`` (UTF-8): a handler's table
           write goes to the partition of the record being handled, and the framework's
           records are keyed by the envelope key — Faust's own router hashes the
           serialized table key instead (JSON, with quotes), which lands elsewhere;
        2. the partition of the serialized table key (tables written with Faust's partitioner).
        """
        every = list(range(self.partitions(table)))
        forms = [key if isinstance(key, bytes) else str(key).encode("utf-8"),
                 table.changelog_topic.prepare_key(key, None)[0]]
        out: list[int] = []
        for raw in forms:
            partition = DefaultPartitioner()(raw, every, every)
            if partition not in out:
                out.append(partition)
        return out

    def lookup(self, table: Any, key: Any, partitions: list[int] | None = None) -> dict[str, Any] | None:
        """The local entry for ``key`` in ``partitions`` (default: the likely ones first, then
        every partition held here)."""
        store = table.data
        if not table_store.is_partitioned(store):  # not RocksDB: the store is one mapping
            value = store.get(key)
            return None if value is None else {"partition": None, "role": "active", "value": value}
        dbs = table_store.partition_dbs(store)
        raw = table.changelog_topic.prepare_key(key, None)[0]
        if partitions is None:
            likely = self.key_partitions(table, key)
            partitions = likely + [p for p in sorted(dbs) if p not in likely]
        for partition in partitions:
            db = dbs.get(partition)
            if db is None:
                continue
            value = db.get(raw)
            if value is not None:
                return {"partition": partition, "role": self.role(table, partition),
                        "value": table_store.decode_value(store, value)}
        return None

    # --- sizes and pages ---------------------------------------------------------------
    def entries(self, table: Any, partition: int) -> int | None:
        """Entries held here for one partition (None when this worker has no copy)."""
        size = self.size(table, partition)
        return None if size is None else size[0]

    def size(self, table: Any, partition: int) -> tuple[int, bool] | None:
        """(entries, estimated) held here for one partition, never by scanning a large one
        (:func:`streams.faust_compat.table_store.entries`); None when this worker has no copy."""
        store = table.data
        if not table_store.is_partitioned(store):
            return None
        db = table_store.partition_dbs(store).get(partition)
        return None if db is None else table_store.entries(store, db)

    def stats(self, table: Any) -> dict[str, Any]:
        """Per partition: role here, entries held here, changelog records left to recover, owner."""
        recovery = table_manager(self.app.faust).recovery
        topic = table.changelog_topic_name
        active_left = recovery.active_remaining()
        standby_left = recovery.standby_remaining()
        rows = []
        for partition in range(self.partitions(table)):
            tp = TP(topic, partition)
            role = self.role(table, partition)
            left = active_left.get(tp) if role == "active" else standby_left.get(tp) if role else None
            size = self.size(table, partition)
            lag = self.standby_lag(tp) if role == "standby" else None
            rows.append({
                "partition": partition,
                "role": role,
                # a local copy can exist without a role: Faust leaves a changelog that was missing
                # from the first assignment unassigned until the next rebalance, yet writes go on
                "entries": None if size is None else size[0],
                # RocksDB's estimate (no scan) above table_store.EXACT_BELOW entries, exact below
                "entries_estimated": None if size is None else size[1],
                "recovery_remaining": int(left) if left is not None else None,
                # a standby copy: changelog records written since (the end its consumer last saw)
                "standby_lag": lag,
                "owner": self.owner_url(table, partition),
            })
        active = [r for r in rows if r["role"] == "active"]
        return {
            "name": table.name,
            "changelog_topic": topic,
            "partitions": len(rows),
            "help": getattr(table, "help", None) or None,
            "active_partitions": [r["partition"] for r in active],
            "standby_partitions": [r["partition"] for r in rows if r["role"] == "standby"],
            "active_entries": sum(r["entries"] or 0 for r in active),
            "standby_entries": sum(r["entries"] or 0 for r in rows if r["role"] == "standby"),
            "standby_lag": sum(r["standby_lag"] or 0 for r in rows if r["role"] == "standby"),
            "local_entries": sum(r["entries"] or 0 for r in rows),
            "unassigned_local_partitions": [r["partition"] for r in rows
                                            if r["role"] is None and r["entries"] is not None],
            "recovering": any(r["recovery_remaining"] for r in rows),
            "per_partition": rows,
        }

    def standby_lag(self, tp: TP) -> int | None:
        """Records of a standby partition's changelog not applied here yet: the end offset the
        consumer saw in its last fetch minus the next offset to apply (None before a fetch)."""
        recovery = table_manager(self.app.faust).recovery
        end = self.app.faust.consumer.highwater(tp)
        applied = recovery.standby_offsets.get(tp)
        if end is None or applied is None:
            return None
        return max(0, int(end) - 1 - int(applied))

    def page(self, table: Any, partitions: list[int], page: int, page_size: int) -> dict[str, Any]:
        """One page of the entries of ``partitions`` held here, in partition then key order."""
        total = sum(self.entries(table, p) or 0 for p in partitions)
        pages = max(1, -(-total // page_size))
        if page > pages:
            raise not_found(f"page {page} out of range: {total} entries make {pages} page(s) of {page_size}",
                            total=total, pages=pages)
        chosen = islice(self._items(table, partitions), (page - 1) * page_size, page * page_size)
        items = [{"partition": p, "key": _text(k), "value": v} for p, k, v in chosen]
        return {"table": table.name, "partitions": partitions, "page": page, "page_size": page_size,
                "pages": pages, "total": total, "items": items}

    def _items(self, table: Any, partitions: list[int]) -> Iterator[tuple[int, Any, Any]]:
        store = table.data
        if not table_store.is_partitioned(store):
            for key, value in store.items():
                yield -1, key, value
            return
        dbs = table_store.partition_dbs(store)
        for partition in partitions:
            db = dbs.get(partition)
            if db is None:
                continue
            for key, value in table_store.items(store, db):
                yield partition, key, value

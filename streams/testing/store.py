"""The table store of the test driver: in memory, one mapping per partition, like RocksDB.

A worker keeps each table partition in its own RocksDB database and looks a key up in
the partition of the record being handled (so a processed-ID entry is found only for a
record of the same partition, see :mod:`streams.consume.dedup`). Faust's ``memory://``
store is one mapping for every partition, and keeps values as objects. This store keeps
the serialized bytes (the table's own key and value serializers, so a value a worker
could not store fails here too) in one mapping per partition, and finds a key the way
Faust's RocksDB store does: in the current record's partition while a record is handled,
in any partition otherwise.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

from faust.stores.base import SerializedStore

from streams.faust_compat.detached_tables import current_partition


class PartitionedMemoryStore(SerializedStore):
    """Serialized entries per partition, in memory."""

    def __post_init__(self) -> None:
        self.partitions: dict[int, dict[bytes, bytes | None]] = {}

    def _lookup_partition(self) -> int | None:
        if self.table.is_global or self.table.use_partitioner:
            return None
        return current_partition()

    def _get(self, key: bytes) -> bytes | None:
        partition = self._lookup_partition()
        if partition is not None:
            return self.partitions.get(partition, {}).get(key)
        for data in self.partitions.values():
            if key in data:
                return data[key]
        return None

    def _set(self, key: bytes, value: bytes | None) -> None:
        partition = current_partition()
        if partition is None:
            raise RuntimeError(f"table {self.table_name!r} written outside a record's handling")
        self.partitions.setdefault(partition, {})[key] = value

    def _del(self, key: bytes) -> None:
        for data in self.partitions.values():
            data.pop(key, None)

    def _iterkeys(self) -> Iterator[bytes]:
        for data in list(self.partitions.values()):
            yield from list(data)

    def _itervalues(self) -> Iterator[bytes | None]:
        for data in list(self.partitions.values()):
            yield from list(data.values())

    def _iteritems(self) -> Iterator[tuple[bytes, Any]]:
        for data in list(self.partitions.values()):
            yield from list(data.items())

    def _size(self) -> int:
        return sum(len(data) for data in self.partitions.values())

    def _contains(self, key: bytes) -> bool:
        return self._get(key) is not None

    def _clear(self) -> None:
        self.partitions.clear()

    def persisted_offset(self, tp: Any) -> int | None:
        return None

    def set_persisted_offset(self, tp: Any, offset: int) -> None:
        return None

    def reset_state(self) -> None:
        return None

    async def backup_partition(self, tp: Any, flush: bool = True, purge: bool = False, keep: int = 1) -> None:
        return None

    def restore_backup(self, tp: Any, latest: bool = True, backup_id: int = 0) -> None:
        return None

    def apply_changelog_batch(self, batch: Any, to_key: Any, to_value: Any) -> None:
        raise NotImplementedError("the test driver's tables are never recovered from a changelog")

"""Expiry of a processed-ID table by a cursor over each partition's keys.

A sweep reads the next ``batch`` entries of the partition after the key where the
previous sweep stopped (starting over at the end) and returns those older than the
cutoff, so each sweep costs at most ``batch`` entries read — whatever the table's
size — and nothing is held in memory between sweeps but one key per partition.
A sweep is due every ``interval`` seconds, and sooner once the partition received
``batch // 2`` new entries since its last sweep: the cursor then reads at least
twice as fast as entries arrive, so a full pass over a table holding ``retention``
seconds of entries takes at most about half the retention, and an entry outlives
its retention by at most that.
"""

from __future__ import annotations

import time
from typing import Any

from streams.faust_compat import table_store


class ExpiryCursor:
    """Where the sweep of each partition stands, and whether the next one is due."""

    def __init__(self, interval: float, batch: int) -> None:
        self.interval = interval
        self.batch = batch
        self._after: dict[int, bytes | None] = {}
        self._last: dict[int, float] = {}
        self._written: dict[int, int] = {}

    def note_write(self, partition: int) -> None:
        """One new entry in ``partition`` (it brings the next sweep closer)."""
        self._written[partition] = self._written.get(partition, 0) + 1

    def due(self, partition: int, now: float | None = None) -> bool:
        now = time.time() if now is None else now
        return (now - self._last.get(partition, 0.0) >= self.interval
                or self._written.get(partition, 0) >= self.batch // 2)

    def reset(self) -> None:
        """After a rebalance: partitions start over (their contents may have changed)."""
        self._after.clear()
        self._written.clear()

    def expired(self, store: Any, partition: int, cutoff: float, now: float | None = None) -> list[str]:
        """The ids among the partition's next ``batch`` entries whose ``at`` is at or before ``cutoff``
        (the cursor moves past the entries read)."""
        self._last[partition] = time.time() if now is None else now
        self._written[partition] = 0
        if not table_store.is_partitioned(store):  # one mapping (tests' memory store): read it whole
            return [_text(k) for k, v in list(store.items())
                    if isinstance(v, dict) and int(v.get("p", -1)) == partition and float(v.get("at", 0)) <= cutoff]
        chunk = table_store.partition_items_after(store, partition, self._after.get(partition), self.batch)
        self._after[partition] = chunk[-1][0] if len(chunk) >= self.batch else None
        return [_text(key) for _raw, key, value in chunk
                if isinstance(value, dict) and float(value.get("at", 0)) <= cutoff]


def _text(key: Any) -> str:
    return key.decode() if isinstance(key, bytes) else key

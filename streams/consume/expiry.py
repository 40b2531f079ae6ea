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

A completed pass knows the oldest entry it left in the partition; nothing there can
expire before that entry does, nor before an entry written since the pass began would
(``min(oldest, pass start) + retention``), so no sweep is due until then.
A table younger than its retention (a new handler, a fresh group, a benchmark) is
then swept once per partition, not twice for every entry written.
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
        #: the oldest ``at`` kept so far in the pass under way, and when that pass began, per partition
        self._oldest: dict[int, float] = {}
        self._pass_start: dict[int, float] = {}
        #: after a completed pass: no entry of the partition can expire before this time
        self._quiet_until: dict[int, float] = {}

    def note_write(self, partition: int) -> None:
        """One new entry in ``partition`` (it brings the next sweep closer)."""
        self._written[partition] = self._written.get(partition, 0) + 1

    def due(self, partition: int, now: float | None = None) -> bool:
        now = time.time() if now is None else now
        if now < self._quiet_until.get(partition, float("-inf")):
            return False
        return (now - self._last.get(partition, 0.0) >= self.interval
                or self._written.get(partition, 0) >= self.batch // 2)

    def reset(self) -> None:
        """After a rebalance: partitions start over (their contents may have changed)."""
        self._after.clear()
        self._written.clear()
        self._oldest.clear()
        self._pass_start.clear()
        self._quiet_until.clear()

    def expired(self, store: Any, partition: int, cutoff: float, now: float | None = None) -> list[str]:
        """The ids among the partition's next ``batch`` entries whose ``at`` is at or before ``cutoff``
        (the cursor moves past the entries read)."""
        now = time.time() if now is None else now
        self._last[partition] = now
        self._written[partition] = 0
        if self._after.get(partition) is None:  # a pass begins
            self._pass_start[partition] = now
            self._oldest.pop(partition, None)
        if not table_store.is_partitioned(store):  # one mapping (tests' memory store): read it whole
            entries = [(k, v) for k, v in list(store.items()) if isinstance(v, dict) and int(v.get("p", -1)) == partition]
            complete = True
        else:
            chunk = table_store.partition_items_after(store, partition, self._after.get(partition), self.batch)
            self._after[partition] = chunk[-1][0] if len(chunk) >= self.batch else None
            entries = [(key, value) for _raw, key, value in chunk if isinstance(value, dict)]
            complete = self._after[partition] is None
        out, oldest = [], self._oldest.get(partition, float("inf"))
        for key, value in entries:
            at = float(value.get("at", 0))
            if at <= cutoff:
                out.append(_text(key))
            else:
                oldest = min(oldest, at)
        if complete:  # nothing read can expire before its oldest entry, nothing written since before the start
            self._quiet_until[partition] = min(oldest, self._pass_start.get(partition, now)) + (now - cutoff)
            self._oldest.pop(partition, None)
        else:
            self._oldest[partition] = oldest
        return out


def _text(key: Any) -> str:
    return key.decode() if isinstance(key, bytes) else key

"""Forced reprocessing: offset ranges whose messages a group handles again on purpose.

After ``streams offsets reset ... --reprocess --execute`` a group re-reads a range
it already handled. By default the processed-ID table turns those messages into
no-ops (counted ``duplicate``). With ``--reprocess`` the reset also records a
**reprocess window** per partition — ``[new offset, old committed offset)`` and
the moment of the reset — and a worker handles a message in a window again if
its processed-ID entry is older than the reset (``reprocessed`` counter). The
entry is then rewritten, so a crash and re-read inside the window does not
repeat it a second time, and the window does nothing once the range was passed.
A plain reset (without ``--reprocess``) clears the windows of the partitions it
moves.

The windows live in a compacted topic, ``<prefix>streams.consume.reprocess-windows``,
keyed ``<group>|<topic>|<partition>``; workers read them when partitions are
assigned to them (before they fetch anything).

The other way to reprocess everything is a new consumer group: a worker run
with another ``STREAMS_APP_ID`` has its own offsets and its own (empty)
processed-ID tables.
"""

from __future__ import annotations

import json
import logging
import time
from dataclasses import dataclass

from streams.errors import DecodeError
from streams.kafka.admin import TopicSpec, ensure_topics, read_topic
from streams.kafka.clients import durable_producer
from streams.messages.registry import DEFAULT_LIMITS, parse_json
from streams.settings import Settings

log = logging.getLogger(__name__)


def windows_topic(settings: Settings) -> str:
    """Name of the topic holding the reprocess windows."""
    return f"{settings.topic_prefix}streams.consume.reprocess-windows"


@dataclass(frozen=True)
class Window:
    """Offsets ``start <= o < end`` of one partition are reprocessed if handled before ``created_at``."""

    group: str
    topic: str
    partition: int
    start: int
    end: int
    created_at: float

    @property
    def key(self) -> bytes:
        return f"{self.group}|{self.topic}|{self.partition}".encode()

    def to_json(self) -> bytes:
        return json.dumps({"start": self.start, "end": self.end, "created_at": self.created_at}).encode()


class ReprocessWindows:
    """The windows of one group, as a worker holds them."""

    def __init__(self, windows: dict[tuple[str, int], Window] | None = None) -> None:
        self.windows = windows or {}

    def forces(self, topic: str, partition: int, offset: int, handled_at: float) -> bool:
        """True if the record at ``offset`` must be handled again although it was handled at ``handled_at``."""
        w = self.windows.get((topic, partition))
        return w is not None and w.start <= offset < w.end and handled_at < w.created_at

    def since(self, topic: str, partition: int) -> float | None:
        """When the window of ``topic[partition]`` was opened (None: it has none)."""
        w = self.windows.get((topic, partition))
        return None if w is None else w.created_at

    def __len__(self) -> int:
        return len(self.windows)


async def _ensure(settings: Settings) -> str:
    name = windows_topic(settings)
    await ensure_topics(settings, [TopicSpec(name, 1, settings.topic_replication_factor,
                                             {"cleanup.policy": "compact"})])
    return name


async def save_windows(settings: Settings, windows: list[Window]) -> None:
    """Record windows (replacing earlier ones of the same partitions)."""
    await _write(settings, [(w.key, w.to_json()) for w in windows])


async def clear_windows(settings: Settings, group: str, partitions: list[tuple[str, int]]) -> None:
    """Remove the windows of these partitions (tombstones)."""
    await _write(settings, [(f"{group}|{t}|{p}".encode(), None) for t, p in partitions])


async def _write(settings: Settings, records: list[tuple[bytes, bytes | None]]) -> None:

    if not records:
        return
    name = await _ensure(settings)
    producer = durable_producer(settings)
    await producer.start()
    try:
        for key, value in records:
            await producer.send_and_wait(name, key=key, value=value)
    finally:
        await producer.stop()


async def load_windows(settings: Settings, group: str) -> ReprocessWindows:
    """The group's current windows (empty if the topic does not exist)."""
    try:
        records = await read_topic(settings, windows_topic(settings))
    except LookupError:
        return ReprocessWindows()
    live: dict[tuple[str, int], Window] = {}
    prefix = f"{group}|"
    for r in records:
        key = (r.key or b"").decode("utf-8", "replace")
        if not key.startswith(prefix) or key.count("|") < 2:
            continue
        try:
            _, topic, partition = key.rsplit("|", 2)
            tp = (topic, int(partition))
            if r.value is None:
                live.pop(tp, None)
                continue
            data = parse_json(r.value, DEFAULT_LIMITS)
            live[tp] = Window(group, topic, int(partition), int(data["start"]), int(data["end"]),
                              float(data.get("created_at", time.time())))
        except (DecodeError, ValueError, TypeError, KeyError, AttributeError) as exc:
            # written by something else than `streams offsets reset`: skipped, said where
            log.warning("reprocess window record %s[%d]@%d (key %r) is not readable and is ignored: %s",
                        r.topic, r.partition, r.offset, key[:200], exc)
    return ReprocessWindows(live)

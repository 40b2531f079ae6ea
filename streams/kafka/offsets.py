"""Offset reset: move a stopped consumer group's committed offsets, so it re-reads (or skips).

A reset is planned first — per partition the current committed offset, the new
one and how many records will be re-read (or skipped) — and applied only on
request. Like Kafka's ``kafka-consumer-groups --reset-offsets``, it refuses to
apply while the group has active members (stop the workers first): a running
consumer would overwrite the new offsets with its own next commit.

Targets (:class:`ResetTarget`):

* ``earliest`` / ``latest`` — the log-start / log-end offset;
* ``offset N`` — absolute offset N;
* ``datetime T`` — the first offset whose record timestamp is at or after T
  (log end if there is none);
* ``duration D`` — the same for *now − D* (ISO 8601 duration ``PnDTnHnMnS``);
* ``shift ±N`` — the current committed offset plus N.

An offset outside the retained log (before log start, after log end) is
clamped to it and the row says so. After a reset the workers re-read, and the
processed-ID tables make already-handled messages no-ops; see
:mod:`streams.kafka.reprocess_windows` for handling them again on purpose.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

from aiokafka import TopicPartition

from streams.kafka.admin import committed_offsets
from streams.kafka.clients import plain_consumer
from streams.kafka.groups import GroupDescription, describe_group
from streams.kafka.lag import log_offsets
from streams.settings import Settings

MODES = ("earliest", "latest", "offset", "datetime", "duration", "shift")


class ResetError(ValueError):
    """A reset cannot be planned as asked (bad target, unknown partition)."""


class GroupActiveError(RuntimeError):
    """The group has active members; offsets can only be reset for a stopped group."""


@dataclass(frozen=True)
class ResetTarget:
    """Where to move the offsets: ``mode`` is one of :data:`MODES`."""

    mode: str
    value: Any = None

    def __post_init__(self) -> None:
        if self.mode not in MODES:
            raise ResetError(f"unknown reset mode {self.mode!r} (one of {', '.join(MODES)})")

    def describe(self) -> str:
        return self.mode if self.value is None else f"{self.mode} {self.value}"


def parse_topic_partitions(text: str) -> tuple[str, list[int] | None]:
    """``"orders"`` → every partition; ``"orders:0,2"`` → partitions 0 and 2."""
    topic, sep, parts = text.partition(":")
    if not topic:
        raise ResetError(f"--topic {text!r}: expected TOPIC or TOPIC:P1,P2")
    if not sep:
        return topic, None
    try:
        partitions = sorted({int(p) for p in parts.split(",") if p.strip()})
    except ValueError:
        raise ResetError(f"--topic {text!r}: partitions must be integers, e.g. {topic}:0,1") from None
    if not partitions or any(p < 0 for p in partitions):
        raise ResetError(f"--topic {text!r}: give at least one partition number >= 0")
    return topic, partitions


_DURATION = re.compile(r"^P(?:(?P<d>\d+(?:\.\d+)?)D)?(?:T(?:(?P<h>\d+(?:\.\d+)?)H)?(?:(?P<m>\d+(?:\.\d+)?)M)?"
                       r"(?:(?P<s>\d+(?:\.\d+)?)S)?)?$")


def parse_duration(text: str) -> timedelta:
    """An ISO 8601 duration of days and time (``P1D``, ``PT6H``, ``P1DT2H30M``, ``PT90S``)."""
    m = _DURATION.match(text.strip().upper())
    if not m or text.strip().upper() in ("P", "PT") or text.strip().upper().endswith("T"):
        raise ResetError(f"--by-duration {text!r}: expected an ISO 8601 duration such as P1D, PT6H or P1DT2H30M")
    parts = {k: float(v) for k, v in m.groupdict().items() if v}
    return timedelta(days=parts.get("d", 0), hours=parts.get("h", 0), minutes=parts.get("m", 0),
                     seconds=parts.get("s", 0))


def parse_datetime(text: str) -> datetime:
    """ISO 8601 date-time; naive means UTC."""
    try:
        value = datetime.fromisoformat(text.strip().replace("Z", "+00:00"))
    except ValueError:
        raise ResetError(f"--to-datetime {text!r}: expected ISO 8601, e.g. 2024-05-01T12:00:00Z") from None
    return value if value.tzinfo else value.replace(tzinfo=UTC)


@dataclass(frozen=True)
class PlanRow:
    """One partition of a reset plan."""

    topic: str
    partition: int
    current: int | None
    new: int
    start: int
    end: int
    #: why the wanted offset was moved into the log, e.g. "wanted 900, after log end 640"
    clamped: str | None = None

    @property
    def to_reread(self) -> int:
        """Records the group will read again (0 if it moves forward)."""
        current = self.current if self.current is not None else self.start
        return max(0, current - self.new)

    @property
    def to_skip(self) -> int:
        """Records the group will skip (never read) because the offset moves forward."""
        current = self.current if self.current is not None else self.start
        return max(0, self.new - current)

    def to_dict(self) -> dict[str, Any]:
        return {"topic": self.topic, "partition": self.partition, "current": self.current, "new": self.new,
                "log_start": self.start, "log_end": self.end, "to_reread": self.to_reread,
                "to_skip": self.to_skip, "clamped": self.clamped}


@dataclass(frozen=True)
class ResetPlan:
    """A planned reset of ``group`` (apply it with :func:`execute_reset`)."""

    group: str
    target: ResetTarget
    rows: tuple[PlanRow, ...]
    group_state: GroupDescription
    created_at: float = field(default_factory=lambda: datetime.now(UTC).timestamp())

    @property
    def to_reread(self) -> int:
        return sum(r.to_reread for r in self.rows)

    @property
    def to_skip(self) -> int:
        return sum(r.to_skip for r in self.rows)

    @property
    def clamped(self) -> list[PlanRow]:
        return [r for r in self.rows if r.clamped]

    def to_dict(self) -> dict[str, Any]:
        return {"group": self.group, "target": self.target.describe(), "group_state": self.group_state.state,
                "active_members": len(self.group_state.members), "to_reread": self.to_reread,
                "to_skip": self.to_skip, "rows": [r.to_dict() for r in self.rows]}


async def _offsets_for_time(settings: Settings, tps: list[TopicPartition], when: datetime) -> dict[TopicPartition, int | None]:
    consumer = plain_consumer(settings)
    await consumer.start()
    try:
        found = await consumer.offsets_for_times({tp: int(when.timestamp() * 1000) for tp in tps})
    finally:
        await consumer.stop()
    return {tp: (None if meta is None else meta.offset) for tp, meta in found.items()}


async def plan_reset(settings: Settings, group: str, topics: list[tuple[str, list[int] | None]],
                     target: ResetTarget) -> ResetPlan:
    """Compute the new offset of every chosen partition (nothing is changed)."""
    if not topics:
        raise ResetError("name at least one --topic")
    description = await describe_group(settings, group)
    committed = await committed_offsets(settings, group)
    logs = await log_offsets(settings, list(dict.fromkeys(t for t, _ in topics)))
    chosen: list[tuple[str, int]] = []
    for topic, partitions in topics:
        have = sorted(p for t, p in logs if t == topic)
        if partitions is None:
            chosen.extend((topic, p) for p in have)
            continue
        missing = [p for p in partitions if p not in have]
        if missing:
            raise ResetError(f"topic {topic!r} has no partition {', '.join(map(str, missing))} "
                             f"(it has {have[0]}..{have[-1]})")
        chosen.extend((topic, p) for p in partitions)
    chosen = list(dict.fromkeys(chosen))

    by_time: dict[TopicPartition, int | None] = {}
    if target.mode in ("datetime", "duration"):
        when = target.value if target.mode == "datetime" else datetime.now(UTC) - target.value
        by_time = await _offsets_for_time(settings, [TopicPartition(t, p) for t, p in chosen], when)

    rows = []
    for topic, partition in chosen:
        start, end = logs[(topic, partition)]
        current = committed.get((topic, partition))
        if target.mode == "earliest":
            wanted = start
        elif target.mode == "latest":
            wanted = end
        elif target.mode == "offset":
            wanted = int(target.value)
        elif target.mode == "shift":
            wanted = (current if current is not None else start) + int(target.value)
        else:
            found = by_time.get(TopicPartition(topic, partition))
            wanted = end if found is None else found
        new, note = wanted, None
        if wanted < start:
            new, note = start, f"wanted {wanted}, before log start {start}"
        elif wanted > end:
            new, note = end, f"wanted {wanted}, after log end {end}"
        rows.append(PlanRow(topic, partition, current, new, start, end, note))
    return ResetPlan(group, target, tuple(rows), description)


def refuse_if_active(description: GroupDescription) -> None:
    """Raise :class:`GroupActiveError` if the group has members."""
    if description.active:
        raise GroupActiveError(
            f"consumer group {description.group!r} has {len(description.members)} active member(s) "
            f"(state {description.state}); offsets can only be reset while it is inactive: stop its workers first")


async def execute_reset(settings: Settings, plan: ResetPlan, *, reprocess: bool = False) -> None:
    """Commit the plan's new offsets for the group (re-checking that it is inactive).

    With ``reprocess``, records the re-read ranges as reprocess windows (see
    :mod:`streams.kafka.reprocess_windows`); without it, clears earlier windows of these partitions.
    """
    from streams.kafka.reprocess_windows import Window, clear_windows, save_windows

    refuse_if_active(await describe_group(settings, plan.group))
    from aiokafka.structs import OffsetAndMetadata

    consumer = plain_consumer(settings, group_id=plan.group)
    await consumer.start()
    try:
        tps = [TopicPartition(r.topic, r.partition) for r in plan.rows]
        consumer.assign(tps)
        await consumer.commit({TopicPartition(r.topic, r.partition): OffsetAndMetadata(r.new, "streams offsets reset")
                               for r in plan.rows})
    finally:
        await consumer.stop()
    if reprocess:
        await save_windows(settings, [
            Window(plan.group, r.topic, r.partition, r.new, r.current if r.current is not None else r.start,
                   plan.created_at)
            for r in plan.rows if r.to_reread > 0])
    else:
        await clear_windows(settings, plan.group, [(r.topic, r.partition) for r in plan.rows])

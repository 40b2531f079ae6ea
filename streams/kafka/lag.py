"""Consumer lag of a group, read from the broker.

Lag is the number of records a consumer group has not consumed yet: per
partition, *log-end offset − committed offset*. Both numbers come from the
broker (the group coordinator's committed offsets, the partition leaders' end
offsets), never from a worker, so this works for any group — running, stopped,
or one that belongs to another application.

::

    lag = await group_lag(settings, "reference-app")
    print(lag.total_lag, lag.to_dict())

    async for sample in watch_lag(settings, "reference-app", interval=2.0):
        print(sample.total_lag, sample.rate, sample.eta)   # rate and ETA from two samples

A partition the group never committed has ``committed = None`` and ``lag =
None`` (as Kafka's ``kafka-consumer-groups`` prints ``-``); its ``backlog`` is
what a new consumer starting from the earliest offset would read.
"""

from __future__ import annotations

import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field, replace
from typing import Any

from aiokafka import TopicPartition

from streams.kafka.admin import committed_offsets, topic_partitions
from streams.kafka.clients import plain_consumer
from streams.kafka.groups import GroupDescription, describe_group
from streams.settings import Settings


@dataclass(frozen=True)
class PartitionLag:
    """Lag of one group on one partition (rates only after two samples)."""

    group: str
    topic: str
    partition: int
    committed: int | None
    end: int
    start: int
    member: str | None = None
    #: records/s the committed offset advanced since the previous sample
    rate: float | None = None
    #: records/s the log end advanced since the previous sample
    produce_rate: float | None = None

    @property
    def lag(self) -> int | None:
        """log-end − committed; ``None`` when the group has no committed offset here."""
        return None if self.committed is None else max(0, self.end - self.committed)

    @property
    def backlog(self) -> int:
        """Records still to read: the lag, or the whole retained log if nothing was committed."""
        return self.lag if self.lag is not None else max(0, self.end - self.start)

    @property
    def eta(self) -> float | None:
        """Seconds until caught up at the current rates (0 when caught up; None when not catching up)."""
        return _eta(self.backlog, self.rate, self.produce_rate)

    def to_dict(self) -> dict[str, Any]:
        return {
            "group": self.group, "topic": self.topic, "partition": self.partition,
            "committed": self.committed, "end": self.end, "start": self.start, "lag": self.lag,
            "backlog": self.backlog, "member": self.member, "rate": _round(self.rate),
            "produce_rate": _round(self.produce_rate), "eta_seconds": _round(self.eta),
        }


@dataclass(frozen=True)
class GroupLag:
    """Lag of a group over the partitions it consumes (or the topics asked for), with totals."""

    group: str
    state: str
    members: int
    sampled_at: float
    partitions: tuple[PartitionLag, ...] = field(default_factory=tuple)
    #: seconds between this sample and the one its rates come from
    interval: float | None = None

    @property
    def total_lag(self) -> int:
        """Sum of the partitions' lag (partitions without a committed offset count their backlog)."""
        return sum(p.backlog for p in self.partitions)

    @property
    def rate(self) -> float | None:
        rates = [p.rate for p in self.partitions if p.rate is not None]
        return sum(rates) if rates else None

    @property
    def produce_rate(self) -> float | None:
        rates = [p.produce_rate for p in self.partitions if p.produce_rate is not None]
        return sum(rates) if rates else None

    @property
    def eta(self) -> float | None:
        return _eta(self.total_lag, self.rate, self.produce_rate)

    def only(self, *topics: str) -> "GroupLag":
        """The same sample restricted to ``topics`` (e.g. without Faust's changelog topics)."""
        return replace(self, partitions=tuple(p for p in self.partitions if p.topic in topics))

    def topic_lag(self, topic: str) -> int:
        """Total backlog of the group on one topic."""
        return sum(p.backlog for p in self.partitions if p.topic == topic)

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready dict (``streams lag --json``)."""
        return {
            "group": self.group, "state": self.state, "members": self.members,
            "sampled_at": self.sampled_at, "interval": _round(self.interval),
            "total_lag": self.total_lag, "rate": _round(self.rate), "produce_rate": _round(self.produce_rate),
            "eta_seconds": _round(self.eta),
            "partitions": [p.to_dict() for p in self.partitions],
        }


def _round(value: float | None) -> float | None:
    return None if value is None else round(value, 3)


def _eta(backlog: int, rate: float | None, produce_rate: float | None) -> float | None:
    if backlog <= 0:
        return 0.0
    if rate is None:
        return None
    net = rate - (produce_rate or 0.0)
    return backlog / net if net > 0 else None


async def log_offsets(settings: Settings, topics: list[str]) -> dict[tuple[str, int], tuple[int, int]]:
    """(log-start, log-end) offset of every partition of ``topics``; a missing topic raises LookupError."""
    consumer = plain_consumer(settings)
    await consumer.start()
    try:
        tps: list[TopicPartition] = []
        for topic in topics:
            found = await topic_partitions(consumer, topic)
            if not found:
                raise LookupError(f"topic {topic!r} does not exist")
            tps.extend(found)
        if not tps:
            return {}
        ends = await consumer.end_offsets(tps)
        starts = await consumer.beginning_offsets(tps)
        return {(tp.topic, tp.partition): (starts[tp], ends[tp]) for tp in tps}
    finally:
        await consumer.stop()


async def group_lag(settings: Settings, group: str, topics: list[str] | None = None) -> GroupLag:
    """Committed offset, log-end offset and lag of ``group`` per partition.

    Without ``topics``: every partition the group has a committed offset for or
    holds now (what ``kafka-consumer-groups --describe`` lists). With ``topics``:
    every partition of those topics, committed or not.
    """
    description: GroupDescription = await describe_group(settings, group)
    committed = await committed_offsets(settings, group)
    if topics:
        wanted = list(dict.fromkeys(topics))
    else:
        seen = {t for t, _ in committed}
        for member in description.members:
            seen.update(t for t, _ in member.partitions)
        wanted = sorted(seen)
    offsets = await log_offsets(settings, wanted) if wanted else {}
    held = {tp for m in description.members for tp in m.partitions}
    rows = []
    for (topic, partition), (start, end) in sorted(offsets.items()):
        key = (topic, partition)
        if not topics and key not in committed and key not in held:
            continue
        owner = description.owner_of(topic, partition)
        rows.append(PartitionLag(group, topic, partition, committed.get(key), end, start,
                                 member=f"{owner.client_id}@{owner.host}" if owner else None))
    return GroupLag(group, description.state, len(description.members), time.time(), tuple(rows))


def with_rates(previous: GroupLag, current: GroupLag) -> GroupLag:
    """``current`` with consumption and production rates measured since ``previous``."""
    dt = current.sampled_at - previous.sampled_at
    if dt <= 0:
        return current
    before = {(p.topic, p.partition): p for p in previous.partitions}
    rows = []
    for p in current.partitions:
        old = before.get((p.topic, p.partition))
        if old is None:
            rows.append(p)
            continue
        consumed_from = old.committed if old.committed is not None else old.start
        consumed_to = p.committed if p.committed is not None else p.start
        rows.append(replace(p, rate=max(0, consumed_to - consumed_from) / dt,
                            produce_rate=max(0, p.end - old.end) / dt))
    return replace(current, partitions=tuple(rows), interval=dt)


async def watch_lag(settings: Settings, group: str, topics: list[str] | None = None, *,
                    interval: float = 2.0, count: int | None = None) -> AsyncIterator[GroupLag]:
    """Sample the group's lag every ``interval`` seconds; from the second sample on,
    each carries rates and an ETA measured against the previous one."""
    import asyncio

    previous: GroupLag | None = None
    n = 0
    while count is None or n < count:
        started = time.monotonic()
        current = await group_lag(settings, group, topics)
        yield current if previous is None else with_rates(previous, current)
        previous = current
        n += 1
        await asyncio.sleep(max(0.0, interval - (time.monotonic() - started)))

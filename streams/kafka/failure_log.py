"""The failure log: read, filter and replay dead letters (``streams dlq ...``).

Dead letters live in ``<topic>.dlq`` (see :mod:`streams.consume.dead_letters`). Reading
never commits anything: the dead-letter topic is the durable failure log and
stays as it is. Replaying publishes the original key, value and headers back to
the original topic (or another one) with a ``replay.of`` header naming the
dead letter; the ``message_id`` is unchanged, so the handler's processed-ID table
still deduplicates, and a message that was parked (outcome ``dead_lettered``) is
handled again exactly because it is a replay.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from streams import tracing
from streams.errors import DecodeError
from streams.kafka.admin import read_record, read_topic
from streams.kafka.clients import durable_producer, plain_consumer, read_ranges
from streams.kafka.names import H_REPLAY_OF, H_VALUE_OMITTED, dead_letter_topic, source_of_dead_letter_topic
from streams.messages.registry import DEFAULT_LIMITS, DecodeLimits, parse_json
from streams.settings import Settings


@dataclass
class DeadLetter:
    """One parked record."""

    dlq_topic: str
    partition: int
    offset: int
    key: bytes | None
    value: bytes | None
    headers: dict[str, bytes]
    timestamp_ms: int
    #: the bounds a value is parsed within (for its message_id / message_type): a letter is often
    #: parked *because* its value is over them, and reading it must not fail the way handling did
    limits: DecodeLimits = field(default=DEFAULT_LIMITS, repr=False, compare=False)

    def header(self, name: str) -> str | None:
        raw = self.headers.get(name)
        return raw.decode("utf-8", errors="replace") if raw is not None else None

    @property
    def ref(self) -> str:
        return f"{self.dlq_topic}@{self.partition}:{self.offset}"

    @property
    def original_topic(self) -> str:
        return self.header("dlq.original.topic") or source_of_dead_letter_topic(self.dlq_topic)

    @property
    def message_id(self) -> str | None:
        return self.header("message_id") or self._from_value("message_id")

    @property
    def message_type(self) -> str | None:
        return self.header("message_type") or self._from_value("message_type")

    @property
    def failed_at(self) -> datetime | None:
        text = self.header("dlq.failed_at")
        try:
            return datetime.fromisoformat(text) if text else None
        except ValueError:  # written by something else than this framework
            return None

    def _from_value(self, name: str) -> str | None:
        try:
            data = parse_json(self.value, self.limits)
        except DecodeError:  # not JSON, too large, too deep: the headers are all there is
            return None
        value = data.get(name) if isinstance(data, dict) else None
        return value if isinstance(value, str) else None

    def summary(self) -> dict[str, Any]:
        return {
            "ref": self.ref,
            "message_id": self.message_id,
            "message_type": self.message_type,
            "reason": self.header("dlq.reason"),
            "error": self.header("dlq.error.type"),
            "attempts": self.header("dlq.attempts"),
            "original": f"{self.original_topic}[{self.header('dlq.original.partition')}]"
                        f"@{self.header('dlq.original.offset')}",
            "failed_at": self.header("dlq.failed_at"),
        }

    def details(self) -> dict[str, Any]:
        out = self.summary()
        out["key"] = self.key.decode("utf-8", errors="replace") if self.key is not None else None
        out["value"] = (self.value or b"").decode("utf-8", errors="replace")
        out["headers"] = {k: (v or b"").decode("utf-8", errors="replace") for k, v in self.headers.items()}
        return out


@dataclass
class Filter:
    """Which dead letters to select (all given conditions must hold)."""

    message_types: set[str] = field(default_factory=set)
    message_ids: set[str] = field(default_factory=set)
    reasons: set[str] = field(default_factory=set)
    since: datetime | None = None
    until: datetime | None = None

    def matches(self, dl: DeadLetter) -> bool:
        if self.message_types and dl.message_type not in self.message_types:
            return False
        if self.message_ids and dl.message_id not in self.message_ids:
            return False
        if self.reasons and dl.header("dlq.reason") not in self.reasons:
            return False
        if self.since or self.until:
            at = dl.failed_at
            if at is None or (self.since and at < self.since) or (self.until and at > self.until):
                return False
        return True


def dlq_topic_name(topic: str) -> str:
    """Accept a source topic or its dead-letter topic; return the dead-letter topic."""
    return dead_letter_topic(topic)


async def read_dead_letters(settings: Settings, topic: str, flt: Filter | None = None,
                            limit: int | None = None) -> list[DeadLetter]:
    """All dead letters of ``topic`` present now (up to the current end), filtered."""
    name = dlq_topic_name(topic)
    limits = DecodeLimits(settings.max_value_bytes, settings.max_nesting_depth)
    try:
        records = await read_topic(settings, name)
    except LookupError:
        raise LookupError(f"dead-letter topic {name!r} does not exist") from None
    out: list[DeadLetter] = []
    for r in records:
        dl = DeadLetter(name, r.partition, r.offset, r.key, r.value, dict(r.headers or ()),
                        r.timestamp, limits)
        if flt is None or flt.matches(dl):
            out.append(dl)
    out.sort(key=lambda d: (d.timestamp_ms, d.partition, d.offset))
    return out[:limit] if limit else out


async def replay(settings: Settings, letters: Iterable[DeadLetter], to_topic: str | None = None) -> int:
    """Publish dead letters back to their original topic (same key, value, headers)."""
    # a letter may have been parked because it is near the size limit: let the broker decide
    producer = durable_producer(settings, max_request_size=16 * 1024 * 1024)
    await producer.start()
    count = 0
    try:
        for dl in letters:
            headers = [(k, v) for k, v in dl.headers.items() if not k.startswith("dlq.") and k != H_REPLAY_OF]
            headers.append((H_REPLAY_OF, dl.ref.encode()))
            value = dl.value if H_VALUE_OMITTED not in dl.headers else await original_value(settings, dl)
            topic = to_topic or dl.original_topic
            # a new trace, linked to the one the letter was parked in (tracing on)
            replaying = tracing.start_send(topic, dl.message_id or "", None, operation="replay",
                                           links=tracing.link_to(dl.headers.get(tracing.TRACEPARENT),
                                                                 dl.headers.get(tracing.TRACESTATE)),
                                           replay_of=dl.ref)
            if replaying is not None:
                headers = tracing.with_context(headers, replaying.get_span_context())
            try:
                await producer.send_and_wait(topic, value=value, key=dl.key, headers=headers)
            except BaseException as exc:
                tracing.end(replaying, exc if isinstance(exc, Exception) else None)
                raise
            tracing.end(replaying)
            count += 1
    finally:
        await producer.stop()
    return count


async def original_value(settings: Settings, dl: DeadLetter) -> bytes | None:
    """The value of a letter parked without it (``dlq.value_omitted``), read from where
    it came from; ``LookupError`` once retention has removed it there."""
    partition, offset = dl.header("dlq.original.partition"), dl.header("dlq.original.offset")
    if partition is None or offset is None:
        raise LookupError(f"{dl.ref} was parked without its value and does not say where it came from")
    record = await read_record(settings, dl.original_topic, int(partition), int(offset))
    if record is None:
        raise LookupError(f"{dl.ref} was parked without its value, and {dl.original_topic}[{partition}]@{offset} "
                          "no longer holds it (retention)")
    return record.value


async def dead_letter_overview(settings: Settings, topic: str, recent: int = 10) -> dict[str, Any]:
    """How many dead letters ``topic`` holds (per partition, from its offsets) and the
    ``recent`` newest ones (read from each partition's tail), for the web views.

    Counts are log-end minus log-start offsets: exact for dead letters written by
    ``at_least_once`` workers; under ``exactly_once`` transaction markers take
    offsets too, so the count is an upper bound. A missing topic raises LookupError.
    """

    from streams.kafka.admin import topic_partitions

    name = dlq_topic_name(topic)
    limits = DecodeLimits(settings.max_value_bytes, settings.max_nesting_depth)
    consumer = plain_consumer(settings)
    await consumer.start()
    try:
        tps = await topic_partitions(consumer, name)
        if not tps:
            raise LookupError(f"dead-letter topic {name!r} does not exist")
        ends = await consumer.end_offsets(tps)
        starts = await consumer.beginning_offsets(tps)
        per_partition = {tp.partition: ends[tp] - starts[tp] for tp in tps}
        letters: list[DeadLetter] = []
        tails = {tp: max(starts[tp], ends[tp] - recent) for tp in tps if recent > 0 and ends[tp] > starts[tp]}
        read = await read_ranges(consumer, {tp: (start, ends[tp]) for tp, start in tails.items()})
        for records in read.values():
            letters.extend(DeadLetter(name, r.partition, r.offset, r.key, r.value, dict(r.headers or ()), r.timestamp,
                                      limits) for r in records)
    finally:
        await consumer.stop()
    letters.sort(key=lambda d: (d.timestamp_ms, d.partition, d.offset), reverse=True)
    return {
        "topic": name,
        "source": source_of_dead_letter_topic(name),
        "count": sum(per_partition.values()),
        "per_partition": per_partition,
        "recent": [{**d.summary(), "detail": (d.header("dlq.error.message") or "")[:300]}
                   for d in letters[:recent]],
    }

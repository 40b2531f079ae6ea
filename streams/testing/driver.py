"""``TestDriver``: an app's handlers run in-process, the broker replaced by in-memory topics.

What runs is the worker's own code from the record on: each record goes through the
same :class:`~streams.consume.runner.HandlerRunner` as on a broker — decode, the
processed-ID table, the effects table, attempts and in-place retries, retry-topic
copies, dead letters, outputs held until an attempt succeeds. What is replaced:

* the **transport**: records are appended to in-memory topics
  (:mod:`streams.testing.transport`), which the producer's size limit still guards;
* the **tables** (processed IDs and the app's own): an in-memory store per partition
  (:mod:`streams.testing.store`), fresh for each driver; their changelog writes are
  kept as records of the changelog topic;
* **time** for delayed retries and in-place backoffs: :class:`ManualClock`. A retry
  copy is handled when :meth:`TestDriver.advance` moves the clock past its due time; a
  backoff between in-place attempts moves the clock instead of sleeping. Waits that a
  sink guard or the effects database asks for are real (their clocks are).

Records written to a topic the app consumes (an output another handler of the app
reads) are handled after the record that wrote them, in order. With ``database=``,
``effects=`` handlers record processed messages in that PostgreSQL database.

What it does not prove: anything of Kafka — offsets and commits, consumer groups and
rebalancing, exactly-once transactions, recovery after a crash, pauses, lag. See
``docs/contracts.md``.
"""

from __future__ import annotations

import asyncio
import heapq
import itertools
import time
from contextlib import ExitStack
from dataclasses import dataclass, field, replace
from types import SimpleNamespace
from typing import TYPE_CHECKING, Any

from streams.consume import waiting
from streams.consume.context import ConsumeContext
from streams.consume.dead_letters import DeadLetters
from streams.consume.effects import Effects
from streams.consume.headers import headers_dict
from streams.consume.retry_topics import RetryTopics
from streams.consume.runner import HandlerRunner
from streams.consume.transactions import Transactions
from streams.errors import ConfigurationError
from streams.faust_compat.detached_tables import current_record, detached
from streams.faust_compat.record_headers import read_header_names
from streams.kafka.names import DLQ_SUFFIX, H_RETRY_DUE, H_RETRY_LEVEL
from streams.metrics import Metrics
from streams.testing.store import PartitionedMemoryStore
from streams.testing.transport import CapturingPublisher, MemoryTopics, Record

if TYPE_CHECKING:
    from pydantic import SecretStr

    from streams.app import StreamsApp
    from streams.messages.envelope import Envelope
    from streams.messages.registry import DecodeLimits


class ManualClock:
    """Epoch seconds that move only when told: :meth:`advance` (and the driver's backoffs)."""

    def __init__(self, start: float | None = None) -> None:
        self._now = time.time() if start is None else float(start)

    def __call__(self) -> float:
        return self._now

    def advance(self, seconds: float) -> None:
        if seconds < 0:
            raise ValueError("the clock does not go back")
        self._now += seconds


@dataclass(frozen=True)
class Delivered:
    """A record handed to the app and what each handler of its topic made of it:
    ``handled``, ``duplicate``, ``ignored``, ``retry_scheduled`` or ``dead_lettered``."""

    record: Record
    outcomes: dict[str, str]

    @property
    def outcome(self) -> str:
        """The outcome, when one handler took the record."""
        if len(self.outcomes) != 1:
            raise ValueError(f"{len(self.outcomes)} handlers took the record: see .outcomes")
        return next(iter(self.outcomes.values()))


@dataclass(frozen=True)
class Parked:
    """A dead letter, read from its ``dlq.*`` headers (the same headers a worker writes)."""

    record: Record
    reason: str
    handler: str
    attempts: int
    error_type: str
    error_message: str
    original: tuple[str, int, int]
    value_omitted: int | None

    @classmethod
    def of(cls, record: Record) -> "Parked":
        h = record.header
        omitted = h("dlq.value_omitted")
        return cls(record, h("dlq.reason") or "", h("dlq.agent") or "", int(h("dlq.attempts") or 0),
                   h("dlq.error.type") or "", h("dlq.error.message") or "",
                   (h("dlq.original.topic") or "", int(h("dlq.original.partition") or -1),
                    int(h("dlq.original.offset") or -1)), None if omitted is None else int(omitted))


@dataclass(frozen=True)
class Retry:
    """A copy on a retry topic: its level, when it is due, what failed."""

    record: Record
    level: int
    due: float
    error: str


@dataclass(frozen=True)
class Wait:
    """A wait a handler's record asked for: ``real`` ones were slept, the others moved the clock."""

    seconds: float
    why: str
    real: bool


@dataclass
class _Route:
    runners: list[tuple[HandlerRunner, str]] = field(default_factory=list)


class _Waits:
    """The driver's side of :mod:`streams.consume.waiting`."""

    def __init__(self, driver: "TestDriver") -> None:
        self.driver = driver

    async def wait(self, seconds: float, pause: Any, why: str) -> None:
        real = bool(why)  # a sink guard or the effects database: they count real time
        self.driver.waits.append(Wait(seconds, why or "backoff", real))
        if real and seconds > 0:
            await asyncio.sleep(seconds)
        else:
            await asyncio.sleep(0)
        self.driver.clock.advance(max(0.0, seconds))


class TestDriver:
    """Runs ``app``'s handlers on records given to it (``async with TestDriver(app) as driver``)."""

    __test__ = False  # not a pytest test class

    def __init__(self, app: "StreamsApp", *, database: str | None = None,
                 decode_limits: "DecodeLimits | None" = None, clock: ManualClock | None = None) -> None:
        """``database``: PostgreSQL URL for the effects tables of ``effects=`` handlers (default: the
        app's ``STREAMS_DATABASE_URL``); ``decode_limits``: bounds on record values (default: the app's)."""
        self.app = app
        self.clock = clock or ManualClock()
        self.metrics = Metrics()
        self.topics = MemoryTopics(self._partitions_of)
        self.outcomes: list[tuple[str, Delivered]] = []
        self.waits: list[Wait] = []
        self._database = database
        self._decode_limits = decode_limits or app.decode_limits
        self._routes: dict[str, _Route] = {}
        self._queue: list[Record] = []
        self._due: list[tuple[float, int, Record]] = []
        self._seq = itertools.count()
        self._effects: dict[int, Effects] = {}
        self._stack: ExitStack | None = None

    # --- set-up -----------------------------------------------------------------------
    async def __aenter__(self) -> "TestDriver":
        self.start()
        return self

    async def __aexit__(self, *exc: Any) -> None:
        await self.close()

    def start(self) -> None:
        """Detach the app's tables onto fresh in-memory stores and build the handlers' runners."""
        if self._stack is not None:
            return
        app = self.app
        transactions = Transactions(app.faust, app.committed, enabled=False)
        publisher = CapturingPublisher(app.faust, transactions, self.topics, self._written,
                                       app.faust.conf.producer_max_request_size)
        ctx = ConsumeContext(app.app_id, app.settings, app.faust, app.registry, self._decode_limits, self.metrics,
                             transactions, publisher, DeadLetters(publisher, _TopicName),
                             RetryTopics(publisher, _TopicName, clock=self.clock), app.committed)
        for spec in app.handlers.values():
            runner = HandlerRunner(replace(spec, effects=self._effects_for(spec.effects)), ctx)
            for topic in spec.source_topics():
                self._routes.setdefault(topic, _Route()).runners.append((runner, spec.name))
            if spec.processed is not None:
                spec.processed.forget_assignment()
        self._stack = ExitStack()
        for table in app.faust.tables.values():
            store = PartitionedMemoryStore("memory://", app.faust, table, table_name=table.name,
                                           key_type=table.key_type, value_type=table.value_type,
                                           key_serializer=table.key_serializer,
                                           value_serializer=table.value_serializer, options=table.options)
            self._stack.enter_context(detached(table, store, self._changelog_write, self._routes))

    async def close(self) -> None:
        """Give the tables back to the app and close the effects' connections."""
        if self._stack is not None:
            self._stack.close()
            self._stack = None
        for effects in self._effects.values():
            await effects.close()
        self._effects.clear()

    def _effects_for(self, effects: Effects | None) -> Effects | None:
        """The driver's own pool on the effects table (on this event loop; ``database`` if given)."""
        if effects is None:
            return None
        own = self._effects.get(id(effects))
        if own is None:
            settings = effects.settings
            if self._database is not None:
                settings = settings.model_copy(update={"database_url": _secret(self._database)})
            own = self._effects[id(effects)] = Effects(settings, table=effects.table, retention=effects.retention,
                                                       pool_size=2)
        return own

    def _partitions_of(self, topic: str) -> int:
        app = self.app
        for name in (topic, topic.removesuffix(DLQ_SUFFIX), topic.rsplit(".retry.", 1)[0]):
            if name in app.topics:
                return app.topics[name].partitions
        for table in app.faust.tables.values():
            if table.changelog_topic.get_topic_name() == topic:
                return table.partitions or app.settings.topic_partitions
        return app.settings.topic_partitions

    # --- records in -------------------------------------------------------------------
    def _topic_name(self, topic: Any) -> str:
        name = getattr(topic, "name", topic)
        if name not in self._routes and self.app.topic_name(name) in self._routes:
            name = self.app.topic_name(name)
        if name not in self._routes:
            raise ConfigurationError(f"no handler of {self.app.app_id!r} consumes {name!r} "
                                     f"(its topics: {', '.join(sorted(self._routes)) or 'none'})")
        return name

    async def send(self, topic: Any, message: "Envelope", *, partition: int | None = None) -> Delivered:
        """Hand ``message`` to the handlers of ``topic`` (a declared topic or its name) as a producer
        of this framework writes it; returns what they made of it."""
        key, value, headers = message.to_record()
        return await self.send_raw(topic, value, key=key, headers=headers, partition=partition)

    async def send_raw(self, topic: Any, value: bytes | None, *, key: bytes | None = None,
                       headers: Any = (), partition: int | None = None, offset: int | None = None) -> Delivered:
        """Hand a raw record to the handlers of ``topic``: any bytes (None: a tombstone), header
        names as bytes or text (names that are not UTF-8 are read as a worker reads them)."""
        self._require_started()
        record = self.topics.append(self._topic_name(topic), key, value, read_header_names(headers), partition,
                                    offset)
        delivered = await self._deliver(record)
        await self._drain()
        return delivered

    async def advance(self, seconds: float) -> list[Delivered]:
        """Move the clock and handle the retry copies that came due, in due order."""
        self.clock.advance(seconds)
        return await self.run_due()

    async def run_due(self) -> list[Delivered]:
        """Handle the retry copies due by the clock now (and what they write to the app's topics)."""
        self._require_started()
        done = []
        while self._due and self._due[0][0] <= self.clock():
            _due, _seq, record = heapq.heappop(self._due)
            done.append(await self._deliver(record))
            await self._drain()
        return done

    def _require_started(self) -> None:
        if self._stack is None:
            raise RuntimeError("the driver is not started: use `async with TestDriver(app) as driver`")

    # --- the lane ---------------------------------------------------------------------
    async def _deliver(self, record: Record) -> Delivered:
        """The record through every handler of its topic, side by side (as a worker's lane does)."""
        route = self._routes[record.topic]
        headers = headers_dict(record)
        token = waiting.waits_of(_Waits(self))
        try:
            with current_record(record):
                if len(route.runners) == 1:
                    results = [await route.runners[0][0].process(record, headers)]
                else:
                    results = list(await asyncio.gather(*(runner.process(record, headers)
                                                          for runner, _ in route.runners)))
        finally:
            waiting.reset(token)
        delivered = Delivered(record, {name: outcome for (_, name), outcome in zip(route.runners, results,
                                                                                    strict=True)})
        self.outcomes.extend((name, delivered) for name in delivered.outcomes)
        return delivered

    async def _drain(self) -> None:
        while self._queue:
            await self._deliver(self._queue.pop(0))

    def _written(self, record: Record) -> None:
        if record.topic not in self._routes:
            return
        if record.header(H_RETRY_LEVEL):
            try:
                due = float(record.header(H_RETRY_DUE) or 0)
            except ValueError:
                due = 0.0
            heapq.heappush(self._due, (due, next(self._seq), record))
        else:
            self._queue.append(record)

    def _changelog_write(self, topic: str, key: bytes | None, value: bytes | None, headers: Any,
                         partition: int | None) -> asyncio.Future:
        items = list(headers.items()) if hasattr(headers, "items") else list(headers or [])
        record = self.topics.append(topic, key, value, items, partition)
        future: asyncio.Future = asyncio.get_running_loop().create_future()
        future.set_result(SimpleNamespace(topic_partition=_TP(topic, record.partition), offset=record.offset))
        return future

    # --- what came out ----------------------------------------------------------------
    def records(self, topic: Any) -> list[Record]:
        """Every record of ``topic`` (a declared topic or a full name): inputs and what was written."""
        return self.topics.of(getattr(topic, "name", topic))

    def outputs(self, topic: Any = None) -> list[Record]:
        """What the handlers sent (``app.send``): every topic but dead-letter, retry and changelog
        topics, and the records given to the driver."""
        fed = {id(d.record) for _, d in self.outcomes}
        changelogs = {t.changelog_topic.get_topic_name() for t in self.app.faust.tables.values()}
        names = [getattr(topic, "name", topic)] if topic is not None else list(self.topics.records)
        return [r for name in names for r in self.topics.of(name)
                if id(r) not in fed and not r.topic.endswith(DLQ_SUFFIX) and ".retry." not in r.topic
                and r.topic not in changelogs]

    def messages(self, topic: Any) -> list["Envelope"]:
        """The envelopes sent to ``topic``, decoded through the app's registry."""
        return [self.app.registry.decode(r.value) for r in self.outputs(topic)]

    def parked(self, topic: Any = None) -> list[Parked]:
        """Dead letters (of ``topic``'s dead-letter topic, or all), with their reasons."""
        names = ([getattr(topic, "name", topic)] if topic is not None else
                 [t for t in self.topics.records if t.endswith(DLQ_SUFFIX)])
        return [Parked.of(r) for name in names for r in self.topics.of(name if name.endswith(DLQ_SUFFIX)
                                                                           else name + DLQ_SUFFIX)]

    def retries(self) -> list[Retry]:
        """Copies written to retry topics (handled or still waiting for their due time)."""
        return [Retry(r, int(r.header(H_RETRY_LEVEL) or 0), float(r.header(H_RETRY_DUE) or 0),
                      r.header("retry.error") or "")
                for name, records in self.topics.records.items() if ".retry." in name for r in records]

    def pending_retries(self) -> list[Retry]:
        """Retry copies not handled yet (not due by the clock)."""
        waiting_ids = {id(record) for _, _, record in self._due}
        return [r for r in self.retries() if id(r.record) in waiting_ids]

    def duplicates(self) -> list[tuple[str, Record]]:
        """(handler, record) of every record skipped as a duplicate."""
        return [(name, d.record) for name, d in self.outcomes if d.outcomes[name] == "duplicate"]

    def counts(self) -> dict[str, int]:
        """The handlers' counters (``handled``, ``duplicate``, ``retried`` ...) summed over handlers."""
        totals: dict[str, int] = {}
        for row in self.metrics.snapshot():
            totals[row["name"]] = totals.get(row["name"], 0) + row["value"]
        return totals


class _TopicName:
    """What :class:`~streams.consume.dead_letters.DeadLetters` declares: only its name is read."""

    def __init__(self, name: str, **options: Any) -> None:
        self.name = name

    def get_topic_name(self) -> str:
        return self.name


@dataclass(frozen=True)
class _TP:
    topic: str
    partition: int


def _secret(url: str) -> "SecretStr":
    from pydantic import SecretStr

    return SecretStr(url)

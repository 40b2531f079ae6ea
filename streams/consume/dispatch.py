"""Records of the handlers' topics, from each fetch to one task per partition.

:meth:`BatchDispatcher.install` wraps the Faust consumer's ``_wait_next_records``
(what its fetcher calls for every fetch): the records of topics routed here are
taken out of the fetched map before Faust turns them into events, and queued per
partition. One task per partition works its queue in order, at most
``batch_max_records`` records at a time (:meth:`BatchDispatcher._handle`), so
partitions proceed concurrently while each keeps its order.

What Faust expects of an event consumer, kept here:

* **backpressure**: a partition with ``STREAMS_STREAM_BUFFER_MAXSIZE`` records
  queued leaves the fetches (Faust's own ``on_buffer_full``) until half of them
  are done;
* **rebalances**: Faust clears its stream buffers when partitions are revoked
  and seeks every partition back to its committed offset; the dispatcher drops
  its queued (not yet started) batches at the same moment, takes no fetch while
  the consumer's flow is stopped, and a batch being handled is tracked like an
  unacknowledged message, so Faust's revocation waits for it before it commits.
  No fetched record is dropped otherwise: Faust also clears its own buffers
  when it resumes after a recovery (records fetched after its seek, lost to its
  streams: what the gap guard's idle check recovers on the events path); the
  dispatcher keeps its queues then;
* **acknowledgements**: a batch's offsets are acknowledged together, once every
  write of the batch is durable; Faust's commit then passes them.
"""

from __future__ import annotations

import asyncio
import logging
import weakref
from collections import deque
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from faust.types import TP

from streams.consume import waiting
from streams.consume.changelog import ChangelogBatch
from streams.consume.runner import changelog_writes_durable
from streams.consume.waiting import PartitionRevoked
from streams.faust_compat import fetches
from streams.faust_compat.consumer_fixes import ack_offsets

if TYPE_CHECKING:
    from streams.app import StreamsApp
    from streams.consume.gap_guard import GapGuard
    from streams.consume.pausing import SourcePause
    from streams.consume.runner import HandlerRunner

log = logging.getLogger(__name__)


def _faust_tp(tp: Any) -> TP:
    """Faust's partition sets (edited by ``on_buffer_full``/``on_buffer_drop``) accept only its
    own ``TP``; the fetched records' keys are aiokafka's ``TopicPartition``, which its
    transactional commit requires in turn, so the dispatcher keeps those and converts here."""
    return TP(tp.topic, tp.partition)


@dataclass
class Route:
    """Where the records of one topic go: every handler of the topic (an event topic may have
    several), each of which handles every record."""

    handlers: list[tuple["HandlerRunner", str]]
    #: the gap guard of the topic's partitions (the fetch is one for all its handlers)
    guard: "GapGuard"
    name: str
    #: a retry topic: each record waits for its due time, one at a time
    wait_until_due: bool = False


class InFlight:
    """A batch being handled, in the consumer's set of unacknowledged messages, so that
    Faust's revocation waits for it (``Consumer.wait_empty``)."""

    __slots__ = ("__weakref__", "acked", "refcount", "tp")

    def __init__(self, tp: Any) -> None:
        self.tp = tp
        self.acked = False
        self.refcount = 1


class StandInEvent:
    """Faust's current event for a record handled here: table writes read ``event.message``
    (its topic, partition and offset) to find their changelog partition."""

    __slots__ = ("__weakref__", "message")

    def __init__(self, record: Any) -> None:
        self.message = record


class BatchLane:
    """One batch of one partition being handled: its records in order, through every handler
    of the topic, written and acknowledged together — and cut where a record must wait.

    The batch holds the commit barrier (under ``exactly_once``; taken before the handlers take
    any other resource, such as a database connection, so a batch waiting at the barrier holds
    nothing else) and an :class:`InFlight` marker that Faust's revocation waits for. When a
    handler must wait (:func:`streams.consume.waiting.wait`) the lane first finishes the
    records before the waiting one (their changelog writes durable, their offsets
    acknowledged), gives the barrier and the marker up, waits, and takes both again — or, if
    the partition was revoked meanwhile, raises :class:`PartitionRevoked` and leaves the rest
    unacknowledged for the next owner. Handlers of one topic go side by side record by record,
    so a cut always falls between records (see the README's exactly-once section for what a
    cut means for a second handler that had finished the waiting record)."""

    def __init__(self, dispatcher: "BatchDispatcher", route: Route, tp: Any, records: list[Any],
                 generation: int) -> None:
        self.dispatcher = dispatcher
        self.app = dispatcher.app
        self.route = route
        self.tp = tp
        self.records = records
        self.generation = generation
        self.runners = [runner for runner, _ in route.handlers]
        #: first record not yet acknowledged; the record being handled
        self.start = 0
        self.position = 0
        self._marker = InFlight(tp)
        self._released = False
        #: handlers inside this record, and those of them not waiting
        self._inside = 0
        self._running = 0
        self._transition = asyncio.Lock()
        self._scope: Any = None
        self._changelog: ChangelogBatch | None = None

    async def run(self) -> None:
        app = self.app
        fetches.hold_revocation(app.faust, self._marker)
        token = waiting.waits_of(self)
        try:
            async with app.transactions.scope(self.tp.topic, self.tp.partition) as scope:
                self._scope = scope
                if app.transactions.enabled:
                    await scope.enter_writing()
                with ChangelogBatch(app) as changelog:
                    self._changelog = changelog
                    for position, record in enumerate(self.records):
                        self.position = position
                        await self._through_handlers(record)
                    await self._finish(len(self.records))
        finally:
            waiting.reset(token)
            self._marker.acked = True
            fetches.release_revocation(app.faust, self._marker)

    async def _through_handlers(self, record: Any) -> None:
        from faust.streams import _current_event

        stand_in = StandInEvent(record)
        token = _current_event.set(weakref.ref(stand_in))  # type: ignore[arg-type]  # what table writes read of it
        try:
            if len(self.runners) == 1:
                await self._process(self.runners[0], record)
                return
            # the handlers of one topic go side by side, one record at a time; a revocation stops them all
            tasks = [asyncio.ensure_future(self._process(runner, record)) for runner in self.runners]
            try:
                await asyncio.gather(*tasks)
            except BaseException:
                for task in tasks:
                    task.cancel()
                await asyncio.gather(*tasks, return_exceptions=True)
                raise
        finally:
            _current_event.reset(token)

    async def _process(self, runner: "HandlerRunner", record: Any) -> None:
        self._inside += 1
        self._running += 1
        try:
            if self.route.wait_until_due:
                await runner.wait_until_due(record)
            await runner.process(record)
        finally:
            self._inside -= 1
            self._running -= 1
        if self._running == 0 and self._inside > 0:
            await self._cut()  # the other handlers of this record are waiting: nobody needs the barrier now

    async def wait(self, seconds: float, pause: "SourcePause | None", why: str) -> None:
        """See :mod:`streams.consume.waiting`."""
        self._running -= 1
        try:
            if self._running == 0:
                await self._cut()
            if pause is not None:
                revoked = await waiting.first_of(pause.hold(seconds, why), self.dispatcher.revoked)
            elif seconds > 0:
                revoked = await waiting.first_of(asyncio.sleep(seconds), self.dispatcher.revoked)
            else:
                revoked = False
            if revoked:
                raise PartitionRevoked(f"{self.tp.topic}[{self.tp.partition}]")
        finally:
            self._running += 1
        await self._resume()

    async def _cut(self) -> None:
        """Finish the records before the current one and give the barrier and the revocation up."""
        async with self._transition:
            if self._released:
                return
            await self._finish(self.position)
            await self._scope.release()
            self._marker.acked = True
            fetches.release_revocation(self.app.faust, self._marker)
            self._released = True

    async def _resume(self) -> None:
        """Take the revocation hold and the barrier again, unless the partition was revoked."""
        async with self._transition:
            if not self._released:
                return
            faust = self.app.faust
            await faust.flow_control.acquire()  # not while a rebalance is under way
            if self.generation != self.dispatcher.generation or self.tp not in faust.consumer.assignment():
                raise PartitionRevoked(f"{self.tp.topic}[{self.tp.partition}]")
            self._marker = InFlight(self.tp)
            fetches.hold_revocation(faust, self._marker)
            self._released = False
            if self.app.transactions.enabled:
                await self._scope.enter_writing()

    async def _finish(self, end: int) -> None:
        """Make the writes so far durable and acknowledge records ``start .. end - 1``."""
        app = self.app
        assert self._changelog is not None
        futures = [*await self._changelog.send(), *(f for runner in self.runners for f in runner.take_pending())]
        last = self.records[max(end, 1) - 1]
        if not await changelog_writes_durable(app.faust, last, futures):
            raise WorkerStopping(f"{self.tp.topic}[{self.tp.partition}]")
        await self._scope.flush()
        if end > self.start:
            done = self.records[self.start:end]
            self.route.guard.handled(self.tp, done[-1].offset)
            ack_offsets(app.faust.consumer, self.tp, [r.offset for r in done])
            self.start = end


class WorkerStopping(Exception):
    """A changelog write failed: the worker is stopping (see ``changelog_writes_durable``);
    nothing more of the batch is acknowledged."""


class BatchDispatcher:
    """Takes routed topics' records out of Faust's delivery and handles them per partition."""

    def __init__(self, app: "StreamsApp") -> None:
        self.app = app
        self.routes: dict[str, Route] = {}
        self.max_batch = app.settings.batch_max_records
        self.max_buffered = app.settings.stream_buffer_maxsize
        self._queues: dict[Any, deque[list[Any]]] = {}
        self._queued: dict[Any, int] = {}
        self._wakeups: dict[Any, asyncio.Event] = {}
        self._workers: dict[Any, asyncio.Task] = {}
        self._buffer_full: set[Any] = set()
        self._installed = False
        self._stopping = False
        #: bumped whenever a rebalance drops queued batches (see BatchLane)
        self._generation = 0
        self._revoked = asyncio.Event()

    def route(self, topic: str, runner: "HandlerRunner", name: str, *, wait_until_due: bool = False) -> None:
        """Send the records of ``topic`` to ``runner`` too (the topic's gap guard is made with its first)."""
        route = self.routes.get(topic)
        if route is None:
            guard = runner.guard(name)
            guard.topic_name = topic
            self.routes[topic] = Route([(runner, name)], guard, name, wait_until_due)
        else:
            route.handlers.append((runner, name))
            route.name = f"{route.name}+{name}"

    # --- the consumer side ---------------------------------------------------------------
    def install(self) -> None:
        """Wrap the consumer's fetch (once; on the first assignment, when it exists)."""
        if self._installed or not self.routes:
            return
        fetches.intercept_fetches(self.app.faust, lambda topic: topic in self.routes, self.feed)
        self._installed = True

    def feed(self, tp: Any, records: list[Any]) -> None:
        """Queue a fetch of ``tp``; its worker handles it in order."""
        if not records or self._stopping:
            return
        if not fetches.flow_active(self.app.faust):
            # a rebalance is under way: Faust seeks every partition back to its committed offset
            # (when its fetch finds the flow stopped, and on assignment), so these come again
            return
        self._queues.setdefault(tp, deque()).append(records)
        self._queued[tp] = self._queued.get(tp, 0) + len(records)
        if self._queued[tp] >= self.max_buffered and tp not in self._buffer_full:
            self._buffer_full.add(tp)
            self.app.faust.consumer.on_buffer_full(_faust_tp(tp))
        wakeup = self._wakeups.get(tp)
        if wakeup is None:
            wakeup = self._wakeups[tp] = asyncio.Event()
        wakeup.set()
        worker = self._workers.get(tp)
        if worker is None or worker.done():
            self._workers[tp] = asyncio.ensure_future(self._work(tp))

    def clear(self) -> None:
        """Drop every queued batch when Faust clears its buffers because a rebalance started
        (every partition is then sought back to its committed offset). Faust also clears them
        when it resumes the flow after a recovery; queued batches were fetched after its seek
        then, so they stay."""
        if self.app.faust.flow_control.is_active():
            return
        self.drop(set(self._queues))

    def keep_only(self, assigned: set[Any]) -> None:
        """After an assignment: forget the queues of partitions this worker no longer has."""
        self.drop({tp for tp in self._queues if tp not in assigned})

    def drop(self, tps: set[Any]) -> None:
        consumer = self.app.faust.consumer
        if tps:
            self._next_generation()
        for tp in tps:
            self._queues[tp].clear()
            self._queued[tp] = 0
        for tp in tps & self._buffer_full:
            consumer.on_buffer_drop(_faust_tp(tp))
        self._buffer_full -= tps
        if tps:
            for route in self.routes.values():
                route.guard.reset()

    def _take(self, tp: Any, limit: int) -> list[Any]:
        queue = self._queues.get(tp)
        out: list[Any] = []
        while queue and len(out) < limit:
            head = queue[0]
            room = limit - len(out)
            if len(head) <= room:
                out.extend(queue.popleft())
            else:
                out.extend(head[:room])
                queue[0] = head[room:]
        self._queued[tp] = max(0, self._queued.get(tp, 0) - len(out))
        if tp in self._buffer_full and self._queued[tp] <= self.max_buffered // 2:
            self._buffer_full.discard(tp)
            self.app.faust.consumer.on_buffer_drop(_faust_tp(tp))
        return out

    async def _work(self, tp: Any) -> None:
        route = self.routes[tp.topic]
        wakeup = self._wakeups[tp]
        try:
            while not self._stopping:
                if not self._queued.get(tp):
                    wakeup.clear()
                    await wakeup.wait()
                    continue
                await self.app.faust.flow_control.acquire()  # not while a rebalance is under way
                records = self._take(tp, 1 if route.wait_until_due else self.max_batch)
                if not records:
                    continue
                await self._handle(route, tp, records)
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            # Not a handler error (those are retried and parked inside runner.process): Kafka or the
            # state store failed under these records. Their offsets are not acknowledged; stop the
            # worker, and a restarted one handles them again from the committed offset.
            log.exception("%s: processing failed outside the handler (%r); stopping the worker", route.name, exc)
            await self.app.faust.crash(exc)

    async def _handle(self, route: Route, tp: Any, records: list[Any]) -> None:
        """One batch of one partition: handled in order, written, then acknowledged at once
        (or in parts, where a record waits: see :class:`BatchLane`)."""
        generation = self.generation
        missing = await route.guard.missing_before(records[0], tp)
        if missing:
            records = missing + records
        lane = BatchLane(self, route, tp, records, generation)
        try:
            await lane.run()
        except WorkerStopping:
            return  # a changelog write failed: the worker is stopping, nothing more is acknowledged
        except PartitionRevoked:
            log.info("%s: %s[%d] was revoked while a record waited; %d record(s) from offset %d are left to "
                     "its next owner", route.name, tp.topic, tp.partition, len(records) - lane.start,
                     records[lane.start].offset)

    # --- rebalances -------------------------------------------------------------------------
    @property
    def generation(self) -> int:
        """How many times queued batches were dropped (rebalances) so far."""
        return self._generation

    @property
    def revoked(self) -> asyncio.Event:
        """Set when queued batches are dropped (a rebalance): waiting batches give their records up."""
        return self._revoked

    def _next_generation(self) -> None:
        self._generation += 1
        self._revoked.set()
        self._revoked = asyncio.Event()

    async def stop(self) -> None:
        self._stopping = True
        for worker in self._workers.values():
            worker.cancel()
        for route in self.routes.values():
            await route.guard.close()

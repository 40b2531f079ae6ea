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
* **commits**: besides Faust's timer (``STREAMS_BROKER_COMMIT_INTERVAL``), a commit
  follows soon after a partition has handled everything fetched for it (at most one such
  commit per :data:`CAUGHT_UP_COMMIT_SPACING`): what a worker handled before its traffic
  paused is committed then, not up to a commit interval later.
"""

from __future__ import annotations

import asyncio
import logging
from collections import deque
from itertools import pairwise
from typing import TYPE_CHECKING, Any

from faust.types import TP

from streams.consume.lane import BatchLane, InFlight, Revocations, Route
from streams.faust_compat import fetches
from streams.faust_compat.consumer_fixes import ack_offsets, add_gaps

if TYPE_CHECKING:
    from streams.consume.runner import HandlerRunner
    from streams.consume.transactions import Transactions

log = logging.getLogger(__name__)

#: seconds after a partition caught up before the commit (partitions catching up together share it)
CAUGHT_UP_COMMIT_DELAY = 0.05
#: at least this many seconds between two caught-up commits (the timer's commits come on top)
CAUGHT_UP_COMMIT_SPACING = 0.5


def _faust_tp(tp: Any) -> TP:
    """Faust's partition sets (edited by ``on_buffer_full``/``on_buffer_drop``) accept only its
    own ``TP``; the fetched records' keys are aiokafka's ``TopicPartition``, which its
    transactional commit requires in turn, so the dispatcher keeps those and converts here."""
    return TP(tp.topic, tp.partition)


class BatchDispatcher:
    """Takes routed topics' records out of Faust's delivery and handles them per partition."""

    def __init__(self, faust_app: Any, transactions: "Transactions", *, max_batch: int, max_buffered: int) -> None:
        """``max_batch``: records per batch (STREAMS_BATCH_MAX_RECORDS); ``max_buffered``: records a
        partition may have queued before it leaves the fetches (STREAMS_STREAM_BUFFER_MAXSIZE)."""
        self.faust = faust_app
        self.transactions = transactions
        self.routes: dict[str, Route] = {}
        self.max_batch = max_batch
        self.max_buffered = max_buffered
        self._queues: dict[Any, deque[list[Any]]] = {}
        self._queued: dict[Any, int] = {}
        self._wakeups: dict[Any, asyncio.Event] = {}
        self._workers: dict[Any, asyncio.Task] = {}
        self._buffer_full: set[Any] = set()
        self._installed = False
        self._stopping = False
        self._caught_up_commit: asyncio.Task | None = None
        self._last_caught_up_commit = float("-inf")
        #: bumped whenever a rebalance drops queued batches: a waiting batch then gives its records up
        self.revocations = Revocations()

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
        fetches.intercept_fetches(self.faust, lambda topic: topic in self.routes, self.feed)
        self._installed = True

    def feed(self, tp: Any, records: list[Any]) -> None:
        """Queue a fetch of ``tp``; its worker handles it in order."""
        if not records or self._stopping:
            return
        if not fetches.flow_active(self.faust):
            # a rebalance is under way: Faust seeks every partition back to its committed offset
            # (when its fetch finds the flow stopped, and on assignment), so these come again
            return
        jumps = ([] if records[-1].offset - records[0].offset == len(records) - 1  # contiguous: the usual case
                 else [(a.offset + 1, b.offset) for a, b in pairwise(records) if b.offset > a.offset + 1])
        if jumps:  # transaction markers (or aborted records) between them: commits may pass those offsets
            add_gaps(self.faust.consumer, tp, jumps)
            self.routes[tp.topic].guard.note_gaps(tp, jumps)
        self._queues.setdefault(tp, deque()).append(records)
        self._queued[tp] = self._queued.get(tp, 0) + len(records)
        if self._queued[tp] >= self.max_buffered and tp not in self._buffer_full:
            self._buffer_full.add(tp)
            self.faust.consumer.on_buffer_full(_faust_tp(tp))
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
        if self.faust.flow_control.is_active():
            return
        self.drop(set(self._queues))

    def keep_only(self, assigned: set[Any]) -> None:
        """After an assignment: forget the queues of partitions this worker no longer has."""
        self.drop({tp for tp in self._queues if tp not in assigned})

    def drop(self, tps: set[Any]) -> None:
        consumer = self.faust.consumer
        if tps:
            self.revocations.bump()
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
            if out and head[0].offset != out[-1].offset + 1:
                break  # a jump between two fetches starts the next batch: the gap guard checks it
            room = limit - len(out)
            if len(head) <= room:
                out.extend(queue.popleft())
            else:
                out.extend(head[:room])
                queue[0] = head[room:]
        self._queued[tp] = max(0, self._queued.get(tp, 0) - len(out))
        if tp in self._buffer_full and self._queued[tp] <= self.max_buffered // 2:
            self._buffer_full.discard(tp)
            self.faust.consumer.on_buffer_drop(_faust_tp(tp))
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
                await self.faust.flow_control.acquire()  # not while a rebalance is under way
                records = self._take(tp, 1 if route.wait_until_due else self.max_batch)
                if not records:
                    continue
                await self._handle(route, tp, records)
                if not self._queued.get(tp):
                    self._caught_up()
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            # Not a handler error (those are retried and parked inside runner.process): Kafka or the
            # state store failed under these records. Their offsets are not acknowledged; stop the
            # worker, and a restarted one handles them again from the committed offset.
            log.exception("%s: processing failed outside the handler (%r); stopping the worker", route.name, exc)
            await self.faust.crash(exc)

    async def _handle(self, route: Route, tp: Any, records: list[Any]) -> None:
        """One batch of one partition: handled in order, written, then acknowledged at once
        (or in parts, where a record waits: see :class:`~streams.consume.lane.BatchLane`)."""
        generation = self.revocations.generation
        checking = InFlight(tp)  # the batch is in hand from here: a revocation (or a stop's last commit) waits
        fetches.hold_revocation(self.faust, checking)
        try:
            missing = await route.guard.missing_before(records[0], tp)
        finally:
            checking.acked = True
            fetches.release_revocation(self.faust, checking)
        if missing:
            records = missing + records
        consumer = self.faust.consumer

        def acknowledge(done: list[Any]) -> None:
            ack_offsets(consumer, tp, [r.offset for r in done])

        await BatchLane(self.faust, self.transactions, self.revocations, route, tp, records, generation,
                        acknowledge).run()

    def _caught_up(self) -> None:
        """A partition handled everything fetched for it: commit soon (one task at a time)."""
        if self._caught_up_commit is None or self._caught_up_commit.done():
            self._caught_up_commit = asyncio.ensure_future(self._commit_caught_up())

    async def _commit_caught_up(self) -> None:
        loop = asyncio.get_running_loop()
        await asyncio.sleep(max(CAUGHT_UP_COMMIT_DELAY,
                                self._last_caught_up_commit + CAUGHT_UP_COMMIT_SPACING - loop.time()))
        if self._stopping or not fetches.flow_active(self.faust):
            return  # a rebalance or a stop commits on its own
        self._last_caught_up_commit = loop.time()
        # shielded: a stop does not cut a commit (or its transaction) in half
        commit = asyncio.ensure_future(self.faust.consumer.commit())
        commit.add_done_callback(lambda done: done.cancelled() or done.exception())  # seen if cut off by a stop
        try:
            await asyncio.shield(commit)
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # noqa: BLE001 - the timer's next commit tries again
            log.warning("commit after catching up failed: %r (the next commit retries)", exc)

    async def stop(self) -> None:
        self._stopping = True
        if self._caught_up_commit is not None:
            self._caught_up_commit.cancel()
        for worker in self._workers.values():
            worker.cancel()
        for route in self.routes.values():
            await route.guard.close()

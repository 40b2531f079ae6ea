"""One partition's records through its handlers: the handling both consume paths share.

A :class:`BatchLane` takes a list of records of one partition (a fetch's worth on the
batch path, one delivered message and any the gap guard read back on the events path)
and puts each through every handler of the topic — decode, dedup, attempts, outputs,
dead letters — then makes the writes durable and acknowledges the records. Where a
record has to wait (:mod:`streams.consume.waiting`) the lane finishes what came before
it and gives the commit barrier and the partition's revocation up for the wait.
"""

from __future__ import annotations

import asyncio
import inspect
import logging
import weakref
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from streams.consume import waiting
from streams.consume.changelog import ChangelogBatch
from streams.consume.headers import headers_dict
from streams.consume.waiting import PartitionRevoked
from streams.faust_compat import fetches

if TYPE_CHECKING:
    from streams.consume.gap_guard import GapGuard
    from streams.consume.pausing import SourcePause
    from streams.consume.runner import HandlerRunner
    from streams.consume.transactions import Transactions

log = logging.getLogger(__name__)
#: worker crashes under way (see _stop_after_failed_write)
_CRASHES: set[asyncio.Future] = set()


class Revocations:
    """Counts the rebalances that dropped queued records (``generation``); ``revoked`` is set at
    each, so that waiting lanes give their records up."""

    def __init__(self) -> None:
        self.generation = 0
        self.revoked = asyncio.Event()

    def bump(self) -> None:
        self.generation += 1
        self.revoked.set()
        self.revoked = asyncio.Event()


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
    so a cut always falls between records (see docs/guarantees.md for what a
    cut means for a second handler that had finished the waiting record)."""

    def __init__(self, faust_app: Any, transactions: "Transactions", revocations: "Revocations", route: Route,
                 tp: Any, records: list[Any], generation: int, acknowledge: Callable[[list[Any]], Any],
                 also_held: tuple[Any, ...] = ()) -> None:
        """``acknowledge(records)`` acknowledges finished records to Faust's consumer (may return an
        awaitable); ``also_held``: what else keeps the partition's revocation waiting while the lane
        works (the events path: Faust's own message), given up with the lane's marker during a wait."""
        self.faust = faust_app
        self.transactions = transactions
        self.revocations = revocations
        self.acknowledge = acknowledge
        self.also_held = also_held
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
        """Handle the records; a revocation during a wait, or a failed changelog write, leaves the
        rest unacknowledged (logged) for the partition's next owner or a restarted worker."""
        try:
            await self._run()
        except WorkerStopping:
            return  # a changelog write failed: the worker is stopping, nothing more is acknowledged
        except PartitionRevoked:
            log.info("%s: %s[%d] was revoked while a record waited; %d record(s) from offset %d are left to "
                     "its next owner", self.route.name, self.tp.topic, self.tp.partition,
                     len(self.records) - self.start, self.records[self.start].offset)

    async def _run(self) -> None:
        fetches.hold_revocation(self.faust, self._marker)
        token = waiting.waits_of(self)
        try:
            async with self.transactions.scope(self.tp.topic, self.tp.partition) as scope:
                self._scope = scope
                if self.transactions.enabled:
                    await scope.enter_writing()
                with ChangelogBatch(self.transactions, self.faust) as changelog:
                    self._changelog = changelog
                    for position, record in enumerate(self.records):
                        self.position = position
                        await self._through_handlers(record)
                    await self._finish(len(self.records))
        finally:
            waiting.reset(token)
            self._marker.acked = True
            fetches.release_revocation(self.faust, self._marker)

    async def _through_handlers(self, record: Any) -> None:
        from faust.streams import _current_event

        stand_in = StandInEvent(record)
        token = _current_event.set(weakref.ref(stand_in))  # type: ignore[arg-type]  # what table writes read of it
        headers = headers_dict(record)  # read once for every step and handler
        try:
            if len(self.runners) == 1:
                await self._process(self.runners[0], record, headers)
                return
            # the handlers of one topic go side by side, one record at a time; a revocation stops them all
            tasks = [asyncio.ensure_future(self._process(runner, record, headers)) for runner in self.runners]
            try:
                await asyncio.gather(*tasks)
            except BaseException:
                for task in tasks:
                    task.cancel()
                await asyncio.gather(*tasks, return_exceptions=True)
                raise
        finally:
            _current_event.reset(token)

    async def _process(self, runner: "HandlerRunner", record: Any, headers: dict[str, bytes]) -> None:
        self._inside += 1
        self._running += 1
        try:
            if self.route.wait_until_due:
                await runner.wait_until_due(record, headers)
            await runner.process(record, headers)
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
                revoked = await waiting.first_of(pause.hold(seconds, why), self.revocations.revoked)
            elif seconds > 0:
                revoked = await waiting.first_of(asyncio.sleep(seconds), self.revocations.revoked)
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
            fetches.release_revocation(self.faust, self._marker)
            for held in self.also_held:
                fetches.release_revocation(self.faust, held)
            self._released = True

    async def _resume(self) -> None:
        """Take the revocation hold and the barrier again, unless the partition was revoked."""
        async with self._transition:
            if not self._released:
                return
            faust = self.faust
            await faust.flow_control.acquire()  # not while a rebalance is under way
            if self.generation != self.revocations.generation or self.tp not in faust.consumer.assignment():
                raise PartitionRevoked(f"{self.tp.topic}[{self.tp.partition}]")
            self._marker = InFlight(self.tp)
            fetches.hold_revocation(faust, self._marker)
            for held in self.also_held:
                fetches.hold_revocation(faust, held)
            self._released = False
            if self.transactions.enabled:
                await self._scope.enter_writing()

    async def _finish(self, end: int) -> None:
        """Make the writes so far durable and acknowledge records ``start .. end - 1``."""
        assert self._changelog is not None
        futures = [*await self._changelog.send(), *(f for runner in self.runners for f in runner.take_pending())]
        last = self.records[max(end, 1) - 1]
        if not await changelog_writes_durable(self.faust, last, futures):
            raise WorkerStopping(f"{self.tp.topic}[{self.tp.partition}]")
        await self._scope.flush()
        if end > self.start:
            done = self.records[self.start:end]
            self.route.guard.handled(self.tp, done[-1].offset)
            acked = self.acknowledge(done)
            if inspect.isawaitable(acked):
                await acked
            self.start = end


class WorkerStopping(Exception):
    """A changelog write failed: the worker is stopping (see ``changelog_writes_durable``);
    nothing more of the batch is acknowledged."""


async def changelog_writes_durable(faust_app: Any, record: Any, pending: list[Any]) -> bool:
    """Wait for ``record``'s changelog writes; on a failure stop the worker with an error
    and return False (do not acknowledge ``record``): its partition's commits could never pass the
    record anyway, and a restarted worker (Kubernetes, systemd) handles it again from the committed
    offset, as Kafka Streams does with a failed task."""
    for future in pending:
        try:
            await future
        except BaseException:  # noqa: BLE001 - reported through the futures below
            _stop_after_failed_write(faust_app, record, pending)
            return False
    return True


def _stop_after_failed_write(faust_app: Any, message: Any, futures: list[Any]) -> None:
    errors = {"cancelled" if f.cancelled() else repr(f.exception()) for f in futures
              if f.done() and (f.cancelled() or f.exception() is not None)}
    reason = RuntimeError(f"changelog write failed for {message.topic}[{message.partition}]@{message.offset}: "
                          + ", ".join(sorted(errors)))
    log.error("%s; not acknowledging it and stopping the worker, so that a restart handles it again "
              "from the committed offset", reason)
    # not awaited here: it stops this very agent (the reference keeps the task from being collected)
    task = asyncio.ensure_future(faust_app.crash(reason))
    _CRASHES.add(task)
    task.add_done_callback(_CRASHES.discard)

"""How one record goes through a handler: decode, deduplicate, run with retries,
schedule a delayed retry or park it — and always let the partition move on.

Order of work for a record of a handler's source (or retry) topic:

1. decode through the registry (or the topic's own decoder: change events,
   :mod:`streams.cdc.changes`); failure → dead letter (``dlq.reason`` = the
   decode reason), the offset moves on; a change topic's tombstone is acked;
2. a registered type the handler does not take → acked and counted ``ignored``;
3. idempotent handlers look the ``message_id`` up in the processed-ID table:
   ``handled`` → skipped and counted ``duplicate``; ``dead_lettered`` → skipped
   unless the record is a replay from the dead-letter topic;
4. the handler runs; on error it is retried in place with backoff
   (``RetryPolicy.max_attempts``); a permanent error skips the retries;
5. still failing: if the policy has delayed retries left, the record goes to
   ``<topic>.retry.<n>`` and is tried again there after its delay without
   blocking the source partition; otherwise it is parked in ``<topic>.dlq``;
6. the outcome (``handled`` / ``dead_lettered``) is written to the processed-ID
   table, in the same partition, before the offset can be committed.

With ``at_least_once``, a crash after step 4 and before the offset commit that
follows step 6 runs the handler again for that record on restart (if the
local table write of step 6 survived the crash, the repeat is suppressed).
With ``exactly_once``, steps 5–6, the handler's Kafka outputs sent through
:meth:`StreamsApp.send` and the offset commit are one Kafka transaction per
partition; effects outside Kafka are still at-least-once.
"""

from __future__ import annotations

import asyncio
import logging
import time
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

from streams.consume import waiting
from streams.consume.dedup import DEAD_LETTERED, HANDLED
from streams.consume.delivery import Delivery
from streams.consume.effects import AlreadyProcessed, DatabaseUnavailable
from streams.consume.gap_guard import GapGuard
from streams.consume.headers import Origin, headers_dict, origin_of, record_origin
from streams.consume.outputs import AttemptOutputs, staging
from streams.consume.pausing import SourcePause
from streams.consume.sink import SinkThrottled
from streams.errors import DecodeError
from streams.kafka.names import H_RETRY_DUE
from streams.messages.envelope import HEADER_MESSAGE_ID, HEADER_MESSAGE_TYPE
from streams.messages.registry import MessageIdFallback

if TYPE_CHECKING:
    from streams.app import StreamsApp
    from streams.consume.spec import HandlerSpec

log = logging.getLogger(__name__)
#: worker crashes under way (see _stop_after_failed_write)
_CRASHES: set[asyncio.Future] = set()


class HandlerRunner:
    """Runs one handler over records of its source and retry topics."""

    def __init__(self, app: "StreamsApp", spec: "HandlerSpec") -> None:
        self.app = app
        self.spec = spec
        self.metrics = app.metrics
        self.guards: list[GapGuard] = []
        self._pending: list[Any] = []
        #: pauses the handler's source (and retry) partitions while its sink cannot take more
        self.sink_pause = SourcePause(app, spec.source_topics(), spec.name)

    def _note(self, future: Any) -> None:
        """Keep a changelog write's future (None: written with the batch, see streams.consume)."""
        if future is not None:
            self._pending.append(future)

    def take_pending(self) -> list[Any]:
        """Futures of the changelog writes the last record made (see ``ack_when_durable``)."""
        pending, self._pending = self._pending, []
        return pending

    def guard(self, name: str) -> GapGuard:
        """A gap guard for one of this handler's agents (source or retry level)."""
        g = GapGuard(self.app, name)
        self.guards.append(g)
        return g

    def _count(self, name: str, origin: Origin) -> None:
        self.metrics.inc(name, self.spec.name, origin.topic, origin.partition)

    async def wait_until_due(self, message: Any) -> None:
        """On a retry topic: sleep until the record's due time (records of one level
        share one delay, so the head of the partition is always due first). A due
        time that cannot be read counts as due now."""
        try:
            due = float(headers_dict(message).get(H_RETRY_DUE) or 0)
        except ValueError:
            due = 0.0
        delay = due - time.time()
        if delay > 0:
            await waiting.wait(delay)  # outside the commit barrier (streams.consume.waiting)

    async def process(self, msg: Any) -> str:
        """Handle one record (a Faust message, or an aiokafka record read by the gap
        guard) inside the Faust event of its partition; returns the outcome. Its
        processing time goes to the ``streams_processing_seconds`` histogram."""
        started = time.perf_counter()
        try:
            origin = origin_of(msg, on_retry_topic=msg.topic != self.spec.topic.name)
        except DecodeError as exc:
            origin = record_origin(msg)
            outcome = await self._park_undecodable(msg, origin, exc)
        else:
            outcome = await self._process(msg, origin)
        self.metrics.observe(self.spec.name, origin.topic, time.perf_counter() - started)
        return outcome

    def _fallback_id(self, msg: Any, origin: Origin) -> str | None:
        """What stands in for a missing ``message_id`` on this topic (None: refuse the record)."""
        mode = self.spec.topic.message_id_fallback
        if mode is MessageIdFallback.REJECT:
            return None
        header = headers_dict(msg).get(HEADER_MESSAGE_ID)
        if header:
            try:
                text = header.decode("utf-8")
            except UnicodeDecodeError:
                text = ""
            if 0 < len(text) <= 200:
                return text
        if mode is MessageIdFallback.OFFSET:
            return f"{origin.topic}-{origin.partition}@{origin.offset}"
        return None

    async def _park_undecodable(self, msg: Any, origin: Origin, exc: DecodeError) -> str:
        exc.at(origin.topic, origin.partition, origin.offset)
        log.error("undecodable record parked in %s: %s", self.spec.topic.dead_letter_name, exc)
        await self.app.dead_letters.park(self.spec, msg, origin, reason=exc.reason.value, error=exc, attempts=0)
        self._count("dead_lettered", origin)
        return "dead_lettered"

    async def _process(self, msg: Any, origin: Origin) -> str:
        spec = self.spec
        try:
            decoder = spec.topic.decoder
            if decoder is not None:
                envelope = decoder.decode(msg.value, msg.key)
            else:
                header = headers_dict(msg).get(HEADER_MESSAGE_TYPE)
                envelope = self.app.registry.decode(msg.value, limits=self.app.decode_limits,
                                                    fallback_id=self._fallback_id(msg, origin),
                                                    message_type=header.decode("utf-8", "replace") if header else None)
        except DecodeError as exc:
            return await self._park_undecodable(msg, origin, exc)
        if envelope is None:  # a tombstone on a change-event topic
            self._count("tombstone", origin)
            return "ignored"
        if envelope.message_type not in spec.message_types:
            self._count("ignored", origin)
            return "ignored"

        processed = spec.processed
        windows = self.app.reprocess_windows
        #: when this is a forced reprocess (streams offsets reset --reprocess): its window's start
        reprocess_since: float | None = None

        def forces(handled_at: float) -> bool:
            return (origin.level == 0 and windows is not None
                    and windows.forces(origin.topic, origin.partition, origin.offset, handled_at))

        if processed is not None:
            await self.app.transactions.purge_aborted_once(processed, msg.partition)
            processed.maybe_sweep(msg.partition)
            entry = processed.get(envelope.message_id)
            if entry is not None and forces(entry.at):
                reprocess_since = windows.since(origin.topic, origin.partition)
                entry = None
            if entry is not None and (entry.outcome == HANDLED or not origin.replayed):
                if entry.partition == msg.partition and entry.offset == origin.offset:
                    # this very record was handled by a worker that died before its changelog
                    # write left the process (the local RocksDB kept it): write it again
                    self._note(processed.record(envelope.message_id, entry.outcome, msg.partition,
                                                          origin.offset, entry.attempts, msg.topic, msg.offset))
                self._count("duplicate", origin)
                log.debug("duplicate %s %s skipped (%s at %s)", envelope.message_type, envelope.message_id,
                          entry.outcome, entry.at)
                return "duplicate"

        effects = spec.effects
        consumer = f"{self.app.app_id}:{spec.name}"
        if effects is not None:
            # consulted even when the processed-ID entry forces a reprocess: an effect already applied
            # again in this window (by a worker that died before its entry was written, or a stale one)
            # is not applied a third time
            done = await self._effect_of(effects, consumer, envelope.message_id, origin)
            if done is not None and forces(done.at):
                reprocess_since = windows.since(origin.topic, origin.partition)
            elif done is not None:  # its effect committed with its processed id: skip it
                return await self._already_processed(msg, origin, envelope, done.outputs)
        if reprocess_since is not None:
            self._count("reprocessed", origin)

        attempts = origin.attempts_before
        first_failure = origin.first_failure
        policy = spec.retry
        tries_here = 0
        sinks = spec.sinks
        while True:
            if sinks:
                await self._wait_for_sinks(origin)
            attempts += 1
            tries_here += 1
            delivery = Delivery(origin.topic, origin.partition, origin.offset, attempts, envelope.message_id,
                                origin.level, origin.replayed, consumer, effects, reprocess_since is not None,
                                reprocess_since)
            outputs = AttemptOutputs(consumer, envelope.message_id)
            try:
                with staging(outputs):
                    await spec.fn(envelope, delivery)
                await self.app.send_outputs(outputs.items)  # only a successful attempt's outputs leave
            except asyncio.CancelledError:
                raise
            except AlreadyProcessed:  # another delivery of it committed its effect meanwhile
                done = await effects.processed(consumer, envelope.message_id) if effects else None
                return await self._already_processed(msg, origin, envelope, done.outputs if done else [])
            except SinkThrottled as exc:  # the downstream said "slow down": wait, same message, no attempt used
                attempts -= 1
                tries_here -= 1
                self._count("sink_throttled", origin)
                await waiting.wait(exc.retry_after, pause=self.sink_pause, why=f"{spec.name}: {exc}")
                continue
            except Exception as exc:  # noqa: BLE001 - a handler error must not stop the partition
                # every guard hears of the failure (a list, not a short-circuiting generator)
                if sinks and any([guard.on_failure(exc) for guard in sinks]):  # noqa: C419
                    # the downstream's failure, not the message's: it waits for recovery, no attempt used
                    attempts -= 1
                    tries_here -= 1
                    self._count("sink_failures", origin)
                    log.warning("%s: downstream failed on %s %s: %r (%s)", spec.name, envelope.message_type,
                                envelope.message_id, exc, ", ".join(repr(g) for g in sinks))
                    await waiting.wait(policy.delay(1))
                    continue
                first_failure = first_failure or time.time()
                if policy.should_retry(exc, tries_here):
                    delay = policy.delay(tries_here)
                    self._count("retried", origin)
                    log.warning("%s failed on %s %s (attempt %d): %r; retrying in %.2fs", spec.name,
                                envelope.message_type, envelope.message_id, attempts, exc, delay)
                    await waiting.wait(delay)
                    continue
                if policy.is_retryable(exc) and origin.level < len(policy.delayed_retries):
                    await self.app.retry_topics.schedule(spec, msg, origin, attempts, first_failure, exc,
                                                         envelope.message_id)
                    self._count("retry_scheduled", origin)
                    log.warning("%s failed on %s %s (attempt %d): %r; delayed retry %d in %.1fs", spec.name,
                                envelope.message_type, envelope.message_id, attempts, exc, origin.level + 1,
                                policy.delayed_retries[origin.level])
                    return "retry_scheduled"
                log.error("%s gave up on %s %s from %s[%d]@%d after %d attempt(s): %r", spec.name,
                          envelope.message_type, envelope.message_id, origin.topic, origin.partition,
                          origin.offset, attempts, exc)
                await self.app.dead_letters.park(spec, msg, origin, reason="handler_error", error=exc,
                                                 attempts=attempts, envelope=envelope, first_failure=first_failure)
                if processed is not None:
                    self._note(processed.record(envelope.message_id, DEAD_LETTERED, msg.partition,
                                                          origin.offset, attempts, msg.topic, msg.offset))
                self._count("dead_lettered", origin)
                return "dead_lettered"
            for guard in sinks:
                guard.on_success()
            if processed is not None:
                self._note(processed.record(envelope.message_id, HANDLED, msg.partition,
                                                      origin.offset, attempts, msg.topic, msg.offset))
            self._count("handled", origin)
            return "handled"

    async def _effect_of(self, effects: Any, consumer: str, message_id: str, origin: Origin) -> Any:
        """The message's row in the effects table (None: not processed). While the database does not
        answer, the handler's source partitions pause and the lookup is tried again (backing off up
        to 30 s): an outage of the effects database stops no worker and parks nothing."""
        failures = 0
        while True:
            try:
                return await effects.processed(consumer, message_id)
            except DatabaseUnavailable as exc:
                failures += 1
                delay = min(30.0, 0.5 * 2 ** min(failures, 6))
                self._count("effects_unavailable", origin)
                why = f"{self.spec.name}: the effects database is unavailable ({str(exc).strip()[:200]})"
                log.warning("%s; %s[%d]@%d waits %.1fs and looks again", why, origin.topic, origin.partition,
                            origin.offset, delay)
                await waiting.wait(delay, pause=self.sink_pause, why=why)

    async def _already_processed(self, msg: Any, origin: Origin, envelope: Any, outputs: list[Any]) -> str:
        """A message whose effect transaction committed before: its recorded Kafka outputs are
        sent again (under exactly_once the first sends may have been aborted with their Kafka
        transaction), it is noted in the processed-ID table and counted ``duplicate``."""
        for output in outputs:
            await self.app.publish_to(output.topic, output.key, output.value, output.headers)
        processed = self.spec.processed
        if processed is not None:
            self._note(processed.record(envelope.message_id, HANDLED, msg.partition, origin.offset,
                                                  0, msg.topic, msg.offset))
        self._count("duplicate", origin)
        log.debug("%s: %s %s already processed (effect committed before); %d output(s) sent again",
                  self.spec.name, envelope.message_type, envelope.message_id, len(outputs))
        return "duplicate"

    async def _wait_for_sinks(self, origin: Origin) -> None:
        """Until every sink guard lets a call out: short waits sleep, longer ones pause the partitions."""
        while True:
            wait, why = 0.0, ""
            for guard in self.spec.sinks:
                wait = guard.acquire()
                if wait > 0:
                    why = repr(guard)
                    break
            if wait <= 0:
                return
            if wait < 0.5:
                await waiting.wait(wait)
                continue
            self._count("sink_pauses", origin)
            await waiting.wait(wait, pause=self.sink_pause, why=why)


def ack_when_durable(stream: Any, event: Any, pending: list[Any]) -> Any:
    """Acknowledge ``event`` once the changelog writes it caused are acknowledged by
    the broker (at once if there are none). Returns an awaitable for the no-wait case.

    A write that failed (the broker stayed unreachable past the producer's own
    retries) leaves ``event`` unacknowledged, and the worker is stopped with an
    error: its partitions' commits could never pass the record anyway, and a
    restarted worker (Kubernetes, systemd) handles it again from the committed
    offset, as Kafka Streams does with a failed task."""

    def failed(futures: list[Any]) -> bool:
        return any(f.cancelled() or f.exception() is not None for f in futures)

    if not any(not f.done() for f in pending):
        if failed(pending):
            return _stop_after_failed_write(stream.app, event.message, pending)
        return stream.ack(event)
    waiting = list(pending)

    def on_done(_: Any) -> None:
        if all(f.done() for f in waiting):
            if failed(waiting):
                _stop_after_failed_write(stream.app, event.message, waiting)
                return
            event.ack()

    for f in waiting:
        f.add_done_callback(on_done)
    return _done()


async def changelog_writes_durable(faust_app: Any, record: Any, pending: list[Any]) -> bool:
    """Wait for ``record``'s changelog writes; on a failure stop the worker as
    :func:`ack_when_durable` does and return False (do not acknowledge ``record``)."""
    for future in pending:
        try:
            await future
        except BaseException:  # noqa: BLE001 - reported through the futures below
            _stop_after_failed_write(faust_app, record, pending)
            return False
    return True


def _stop_after_failed_write(faust_app: Any, message: Any, futures: list[Any]) -> Any:
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
    return _done()


async def _done() -> None:
    return None


def iso(ts: float | None) -> str:
    return datetime.fromtimestamp(ts or time.time(), UTC).isoformat()

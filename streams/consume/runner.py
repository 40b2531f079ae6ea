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
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

from streams import tracing
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
    from streams.consume.context import ConsumeContext
    from streams.consume.spec import HandlerSpec

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class _Seen:
    """What the processed checks found: an outcome if the message is skipped, and the start of
    the reprocess window if it is handled again on purpose."""

    outcome: str | None
    reprocess_since: float | None = None


class HandlerRunner:
    """Runs one handler over records of its source and retry topics."""

    def __init__(self, spec: "HandlerSpec", ctx: "ConsumeContext") -> None:
        self.spec = spec
        self.ctx = ctx
        #: who records the messages as processed: ``<app id>:<handler>``
        self.consumer = f"{ctx.app_id}:{spec.name}"
        self.metrics = ctx.metrics
        self.guards: list[GapGuard] = []
        self._pending: list[Any] = []
        #: pauses the handler's source (and retry) partitions while its sink cannot take more
        self.sink_pause = SourcePause(ctx.faust, spec.source_topics(), spec.name)

    def _note(self, future: Any) -> None:
        """Keep a changelog write's future (None: written with the batch, see streams.consume)."""
        if future is not None:
            self._pending.append(future)

    def take_pending(self) -> list[Any]:
        """Futures of the changelog writes the last record made (see :meth:`~streams.consume.lane.BatchLane`)."""
        pending, self._pending = self._pending, []
        return pending

    def guard(self, name: str) -> GapGuard:
        """A gap guard for one of this handler's agents (source or retry level)."""
        g = GapGuard(name, self.ctx.faust, self.ctx.settings, self.ctx.committed)
        self.guards.append(g)
        return g

    def _count(self, name: str, origin: Origin) -> None:
        self.metrics.inc(name, self.spec.name, origin.topic, origin.partition)

    async def wait_until_due(self, message: Any, headers: dict[str, bytes] | None = None) -> None:
        """On a retry topic: wait until the record's due time (records of one level share one
        delay, so the head of the partition is always due first), outside the commit barrier
        (:mod:`streams.consume.waiting`). A due time that cannot be read counts as due now."""
        headers = headers_dict(message) if headers is None else headers
        try:
            due = float(headers.get(H_RETRY_DUE) or 0)
        except ValueError:
            due = 0.0
        delay = due - time.time()
        if delay > 0:
            await waiting.wait(delay)

    async def process(self, msg: Any, headers: dict[str, bytes] | None = None) -> str:
        """Handle one record (a Faust message, or an aiokafka record read by the gap guard) inside
        the Faust event of its partition; returns the outcome. ``headers``: the record's headers
        as :func:`~streams.consume.headers.headers_dict` reads them, if the caller has them. Its
        processing time goes to the ``streams_processing_seconds`` histogram. With tracing on
        (:mod:`streams.tracing`) it runs inside the record's consumer span."""
        headers = headers_dict(msg) if headers is None else headers
        if tracing.enabled():
            return await tracing.process(self, msg, headers)
        return await self.handle_record(msg, headers)

    async def handle_record(self, msg: Any, headers: dict[str, bytes]) -> str:
        """:meth:`process` without its span."""
        started = time.perf_counter()
        try:
            origin = origin_of(msg, on_retry_topic=msg.topic != self.spec.topic.name, headers=headers)
        except DecodeError as exc:
            origin = record_origin(msg)
            outcome = await self._park_undecodable(msg, headers, origin, exc)
        else:
            outcome = await self._handle(msg, headers, origin)
        self.metrics.observe(self.spec.name, origin.topic, time.perf_counter() - started)
        return outcome

    async def _handle(self, msg: Any, headers: dict[str, bytes], origin: Origin) -> str:
        """Decode, check whether it was processed already, run the attempts."""
        try:
            envelope = self._decode(msg, headers, origin)
        except DecodeError as exc:
            return await self._park_undecodable(msg, headers, origin, exc)
        if envelope is None:  # a tombstone on a change-event topic
            self._count("tombstone", origin)
            return "ignored"
        if envelope.message_type not in self.spec.message_types:
            self._count("ignored", origin)
            return "ignored"
        tracing.note_message(envelope)
        seen = await self._seen(msg, origin, envelope)
        if seen.outcome is not None:
            return seen.outcome
        return await self._attempts(msg, headers, origin, envelope, seen.reprocess_since)

    def _decode(self, msg: Any, headers: dict[str, bytes], origin: Origin) -> Any:
        """The record's envelope (None: a tombstone of a change-event topic), or DecodeError."""
        decoder = self.spec.topic.decoder
        if decoder is not None:
            return decoder.decode(msg.value, msg.key)
        header = headers.get(HEADER_MESSAGE_TYPE)
        return self.ctx.registry.decode(msg.value, limits=self.ctx.decode_limits,
                                        fallback_id=self._fallback_id(headers, origin),
                                        message_type=header.decode("utf-8", "replace") if header else None)

    def _fallback_id(self, headers: dict[str, bytes], origin: Origin) -> str | None:
        """What stands in for a missing ``message_id`` on this topic (None: refuse the record)."""
        mode = self.spec.topic.message_id_fallback
        if mode is MessageIdFallback.REJECT:
            return None
        header = headers.get(HEADER_MESSAGE_ID)
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

    async def _park_undecodable(self, msg: Any, headers: dict[str, bytes], origin: Origin,
                                exc: DecodeError) -> str:
        exc.at(origin.topic, origin.partition, origin.offset)
        log.error("undecodable record parked in %s: %s", self.spec.topic.dead_letter_name, exc)
        await self.ctx.dead_letters.park(self.spec, msg, origin, reason=exc.reason.value, error=exc, attempts=0,
                                         headers=headers)
        self._count("dead_lettered", origin)
        return "dead_lettered"

    async def _seen(self, msg: Any, origin: Origin, envelope: Any) -> "_Seen":
        """Whether the message was processed already (the processed-ID table; the effects table
        for handlers with ``effects=``): its outcome if it is skipped, and when its reprocess
        window opened if it is handled again on purpose (streams offsets reset --reprocess)."""
        spec = self.spec
        windows = self.ctx.reprocess_windows

        def window_start(handled_at: float) -> float | None:
            if origin.level != 0 or windows is None or not windows.forces(
                    origin.topic, origin.partition, origin.offset, handled_at):
                return None
            return windows.since(origin.topic, origin.partition)

        reprocess_since: float | None = None
        processed = spec.processed
        if processed is not None:
            await self.ctx.transactions.purge_aborted_once(processed, msg.partition)
            processed.maybe_sweep(msg.partition)
            entry = processed.get(envelope.message_id, msg.partition)
            if entry is not None:
                reprocess_since = window_start(entry.at)
            if entry is not None and reprocess_since is None and (entry.outcome == HANDLED or not origin.replayed):
                if entry.partition == msg.partition and entry.offset == origin.offset:
                    # this very record was handled by a worker that died before its changelog
                    # write left the process (the local RocksDB kept it): write it again
                    self._note(processed.record(envelope.message_id, entry.outcome, msg.partition,
                                                origin.offset, entry.attempts, msg.topic, msg.offset))
                self._count("duplicate", origin)
                log.debug("duplicate %s %s skipped (%s at %s)", envelope.message_type, envelope.message_id,
                          entry.outcome, entry.at)
                return _Seen("duplicate")
        effects = spec.effects
        if effects is not None:
            # consulted even when the processed-ID entry forces a reprocess: an effect already applied
            # again in this window (by a worker that died before its entry was written, or a stale one)
            # is not applied a third time
            done = await self._effect_of(effects, self.consumer, envelope.message_id, origin)
            if done is not None:
                reprocess_since = window_start(done.at)
                if reprocess_since is None:  # its effect committed with its processed id: skip it
                    return _Seen(await self._already_processed(msg, origin, envelope, done.outputs))
        if reprocess_since is not None:
            self._count("reprocessed", origin)
        return _Seen(None, reprocess_since)

    async def _attempts(self, msg: Any, headers: dict[str, bytes], origin: Origin, envelope: Any,
                        reprocess_since: float | None) -> str:
        """Run the handler until an attempt succeeds, then record the outcome; on failure retry in
        place, wait for the sink, schedule a delayed retry or park the message."""
        spec, policy, sinks, effects = self.spec, self.spec.retry, self.spec.sinks, self.spec.effects
        attempts = origin.attempts_before
        first_failure = origin.first_failure
        tries_here = 0
        while True:
            if sinks:
                await self._wait_for_sinks(origin)
            attempts += 1
            tries_here += 1
            delivery = Delivery(origin.topic, origin.partition, origin.offset, attempts, envelope.message_id,
                                origin.level, origin.replayed, self.consumer, effects, reprocess_since is not None,
                                reprocess_since)
            outputs = AttemptOutputs(self.consumer, envelope.message_id)
            try:
                with staging(outputs):
                    await spec.fn(envelope, delivery)
                await self.ctx.publisher.publish_all(outputs.items)  # only a successful attempt's outputs leave
            except asyncio.CancelledError:
                raise
            except AlreadyProcessed:  # another delivery of it committed its effect meanwhile
                done = await effects.processed(self.consumer, envelope.message_id) if effects else None
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
                tracing.record_failure(exc, attempt=attempts)
                if policy.should_retry(exc, tries_here):
                    delay = policy.delay(tries_here)
                    self._count("retried", origin)
                    log.warning("%s failed on %s %s (attempt %d): %r; retrying in %.2fs", spec.name,
                                envelope.message_type, envelope.message_id, attempts, exc, delay)
                    await waiting.wait(delay)
                    continue
                return await self._gave_up(msg, headers, origin, envelope, exc, attempts, first_failure)
            for guard in sinks:
                guard.on_success()
            self._record(envelope, HANDLED, msg, origin, attempts)
            self._count("handled", origin)
            return "handled"

    async def _gave_up(self, msg: Any, headers: dict[str, bytes], origin: Origin, envelope: Any,
                       exc: BaseException, attempts: int, first_failure: float) -> str:
        """The in-place attempts are used up: the next delayed-retry level, or the dead-letter topic."""
        spec, policy = self.spec, self.spec.retry
        if policy.is_retryable(exc) and origin.level < len(policy.delayed_retries):
            await self.ctx.retry_topics.schedule(spec, msg, origin, attempts, first_failure, exc,
                                                 envelope.message_id, headers=headers)
            self._count("retry_scheduled", origin)
            log.warning("%s failed on %s %s (attempt %d): %r; delayed retry %d in %.1fs", spec.name,
                        envelope.message_type, envelope.message_id, attempts, exc, origin.level + 1,
                        policy.delayed_retries[origin.level])
            return "retry_scheduled"
        log.error("%s gave up on %s %s from %s[%d]@%d after %d attempt(s): %r", spec.name,
                  envelope.message_type, envelope.message_id, origin.topic, origin.partition,
                  origin.offset, attempts, exc)
        await self.ctx.dead_letters.park(spec, msg, origin, reason="handler_error", error=exc, attempts=attempts,
                                         envelope=envelope, first_failure=first_failure, headers=headers)
        self._record(envelope, DEAD_LETTERED, msg, origin, attempts)
        self._count("dead_lettered", origin)
        return "dead_lettered"

    def _record(self, envelope: Any, outcome: str, msg: Any, origin: Origin, attempts: int) -> None:
        """The outcome in the processed-ID table (idempotent handlers), in the record's partition."""
        processed = self.spec.processed
        if processed is not None:
            self._note(processed.record(envelope.message_id, outcome, msg.partition, origin.offset, attempts,
                                        msg.topic, msg.offset))

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
            await self.ctx.publisher.publish(output.topic, output.key, output.value, output.headers)
        self._record(envelope, HANDLED, msg, origin, 0)
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
                await waiting.wait(wait, why=why)
                continue
            self._count("sink_pauses", origin)
            await waiting.wait(wait, pause=self.sink_pause, why=why)


def iso(ts: float | None) -> str:
    return datetime.fromtimestamp(ts or time.time(), UTC).isoformat()

"""The events path (``STREAMS_CONSUME_PATH=events``): one Faust agent per handler and topic.

Each record comes through Faust's per-event delivery, one at a time per agent, and is
handled by the same :class:`~streams.consume.lane.BatchLane` as the batch path — a lane
of one message (plus any records the gap guard read back before it). The message is
acknowledged to Faust only once it was handled (or parked) and its writes are durable,
so a stop or crash mid-handler never commits past it. While no record arrives the
agent checks for records Faust read but never delivered
(:meth:`~streams.consume.gap_guard.GapGuard.undelivered_tail`) and handles them.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from streams.consume.lane import BatchLane, Revocations, Route

if TYPE_CHECKING:
    from streams.consume.runner import HandlerRunner
    from streams.consume.transactions import Transactions

log = logging.getLogger(__name__)


def agent_body(runner: "HandlerRunner", name: str, topic_name: str, faust_app: Any, transactions: "Transactions",
               revocations: Revocations, *, wait_until_due: bool = False) -> Callable[[Any], Any]:
    """The body of the Faust agent ``name`` of ``runner``'s handler on ``topic_name`` (its source
    topic, or one of its retry topics with ``wait_until_due``)."""
    guard = runner.guard(name)
    guard.topic_name = topic_name
    route = Route([(runner, name)], guard, name, wait_until_due)

    async def handle(stream: Any, tp: Any, records: list[Any], event: Any = None) -> None:
        message = None if event is None else event.message

        def acknowledge(done: list[Any]) -> Any:
            for record in done:
                if record is not message:
                    guard.acknowledge(tp, record.offset)  # read back by the gap guard: Faust never saw it
            return stream.ack(event) if message is not None and done[-1] is message else None

        lane = BatchLane(faust_app, transactions, revocations, route, tp, records, revocations.generation,
                         acknowledge, also_held=() if message is None else (message,))
        await lane.run()

    async def agent(stream: Any) -> None:
        stream = stream.noack()
        events = stream.events().__aiter__()
        upcoming: asyncio.Future | None = None
        try:
            while True:
                if upcoming is None:
                    upcoming = asyncio.ensure_future(events.__anext__())
                done, _ = await asyncio.wait({upcoming}, timeout=guard.idle_check_interval)
                if not done:
                    if not wait_until_due:
                        for tp, records in await guard.undelivered_tail():
                            await handle(stream, tp, records)
                    continue
                try:
                    event = upcoming.result()
                except StopAsyncIteration:
                    break
                finally:
                    upcoming = None
                stream._set_current_event(event)  # noqa: SLF001 - it was set in the fetching task's context
                missing = await guard.missing_before(event.message)
                await handle(stream, event.message.tp, [*missing, event.message], event)
        except Exception as exc:
            # Not a handler error (those are retried and parked inside runner.process): Kafka or the
            # state store failed under this record. Faust would restart just this agent and leave the
            # record unacknowledged, so the partition's commits would stop for good; stop the worker
            # instead, and a restarted one handles the record again from the committed offset.
            log.exception("%s: processing failed outside the handler (%r); stopping the worker", name, exc)
            await stream.app.crash(exc)
            await asyncio.Future()  # until the stopping worker cancels this agent
        finally:
            if upcoming is not None:
                upcoming.cancel()
            await guard.close()

    agent.__name__ = agent.__qualname__ = name.replace("-", "_")
    agent.__doc__ = f"Envelope handler {name} on {topic_name}."
    return agent

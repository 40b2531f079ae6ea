"""Waits of a record's handling, taken outside the commit barrier and given up on revocation.

A record may have to wait: for its due time on a retry topic, between in-place
attempts, for a sink guard (a rate limit, an open circuit breaker, a downstream that
answered "slow down"). On the batch path a batch holds the commit barrier (under
``exactly_once``) and delays revocation of its partition while it is handled, so a
wait inside it would stop every commit of the worker and hold the group's rebalance
for as long as it lasts. :func:`wait` therefore asks the batch being handled
(:class:`~streams.consume.dispatch.BatchLane`) to

1. finish what it has done so far: the changelog writes of the records before the
   waiting one are sent and acknowledged by the broker, those records' offsets are
   acknowledged (so the next commit passes them), and the commit barrier and the
   revocation hold are released;
2. wait — for a pause, with the handler's source partitions paused;
3. take the barrier and the revocation hold again and go on with the same record, or,
   if the partition was revoked meanwhile, give the rest of the batch up (not
   acknowledged: its next owner reads it again from the committed offset) by raising
   :class:`PartitionRevoked`.

Outside a batch (the events path, a record the gap guard read back) it simply waits.
"""

from __future__ import annotations

import asyncio
import contextvars
from typing import TYPE_CHECKING, Any, Protocol

if TYPE_CHECKING:
    from streams.consume.pausing import SourcePause


class PartitionRevoked(Exception):
    """The partition of the waiting record was revoked during the wait: the rest of its batch
    is given up, unacknowledged, for the partition's next owner."""


class Waits(Protocol):
    """What a batch being handled does around a wait (see :class:`~streams.consume.dispatch.BatchLane`)."""

    async def wait(self, seconds: float, pause: "SourcePause | None", why: str) -> None: ...


_current: contextvars.ContextVar[Waits | None] = contextvars.ContextVar("streams_waits", default=None)


def waits_of(batch: Waits | None) -> contextvars.Token:
    """Make ``batch`` the one :func:`wait` asks in this task (reset with the token)."""
    return _current.set(batch)


def reset(token: contextvars.Token) -> None:
    _current.reset(token)


async def wait(seconds: float, *, pause: "SourcePause | None" = None, why: str = "") -> None:
    """Wait ``seconds`` (with ``pause``: keep the handler's source partitions paused meanwhile)
    outside the commit barrier; raises :class:`PartitionRevoked` if the partition was revoked."""
    batch = _current.get()
    if batch is not None:
        await batch.wait(seconds, pause, why)
    elif pause is not None:
        await pause.hold(seconds, why)
    elif seconds > 0:
        await asyncio.sleep(seconds)


async def first_of(work: Any, revoked: asyncio.Event) -> bool:
    """Run ``work`` (an awaitable) unless ``revoked`` is set first; True if it was."""
    task = asyncio.ensure_future(work)
    stop = asyncio.ensure_future(revoked.wait())
    try:
        await asyncio.wait({task, stop}, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for fut in (task, stop):
            if not fut.done():
                fut.cancel()
        await asyncio.gather(task, stop, return_exceptions=True)
    error = task.exception() if task.done() and not task.cancelled() else None
    if error is not None:
        raise error
    return stop.done() and not stop.cancelled()

"""The batch path's two hooks into Faust's consumer: its fetched records, and what a
revocation waits for.

Faust has no public hook between the fetch and its per-event delivery;
``Consumer._wait_next_records`` is the one place every fetched record passes.
And a rebalance waits until ``Consumer._unacked_messages`` is empty, so a batch
being handled registers a marker there until its offsets are acknowledged.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from streams.faust_compat.private import faust_consumer, require


def intercept_fetches(faust_app: Any, wanted: Callable[[str], bool], feed: Callable[[Any, list[Any]], None]) -> None:
    """Hand the records of every topic ``wanted`` accepts to ``feed(tp, records)`` as they are
    fetched, before Faust's delivery sees them (the rest go on to Faust)."""
    consumer = faust_consumer(faust_app)
    original = require(consumer, "_wait_next_records")

    async def _wait_next_records(timeout: float) -> Any:
        records, active = await original(timeout)
        if records:
            for tp in [tp for tp in records if wanted(tp.topic)]:
                feed(tp, records.pop(tp))
        return records, active

    consumer._wait_next_records = _wait_next_records


def hold_revocation(faust_app: Any, marker: Any) -> None:
    """A rebalance waits (like for an unacknowledged message) until :func:`release_revocation`."""
    require(faust_consumer(faust_app), "_unacked_messages").add(marker)


def release_revocation(faust_app: Any, marker: Any) -> None:
    require(faust_consumer(faust_app), "_unacked_messages").discard(marker)


def flow_active(faust_app: Any) -> bool:
    """False while a rebalance is under way (Faust then seeks back to the committed offsets)."""
    return bool(faust_consumer(faust_app).flow_active)

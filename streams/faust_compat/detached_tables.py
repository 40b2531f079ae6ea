"""Faust tables run without a worker: what the test driver (:mod:`streams.testing`) needs of them.

A handler writes to a table inside a record's handling; Faust finds the partition of
the write in its current event, keeps the value in the table's store and sends it to
the changelog topic. Without a worker there is no event, no store opened by the
worker and no producer. :func:`current_record` makes a record Faust's current event
(as :class:`~streams.consume.lane.BatchLane` does for the batch path), and
:func:`detached` runs a table on another store with its changelog writes handed to a
callable, until the block ends. The private names used are listed in
:mod:`streams.faust_compat.private`.
"""

from __future__ import annotations

import asyncio
import weakref
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from typing import Any

from faust.streams import _current_event

from streams.faust_compat import table_changelog


class _StandInEvent:
    """Faust's current event for a record: table writes read ``event.message``."""

    __slots__ = ("__weakref__", "message")

    def __init__(self, record: Any) -> None:
        self.message = record


@contextmanager
def current_record(record: Any) -> Iterator[None]:
    """Make ``record`` (topic, partition, offset) Faust's current event in this block."""
    stand_in = _StandInEvent(record)
    token = _current_event.set(weakref.ref(stand_in))  # type: ignore[arg-type]  # what table code reads of it
    try:
        yield
    finally:
        _current_event.reset(token)


def current_partition() -> int | None:
    """The partition of Faust's current event (None outside a record's handling)."""
    ref = _current_event.get(None)
    event = ref() if ref is not None else None
    return None if event is None else event.message.partition


@contextmanager
def detached(table: Any, store: Any, send: Callable[..., asyncio.Future], topics: Iterable[str]) -> Iterator[None]:
    """Run ``table`` on ``store`` with its changelog writes given to ``send(topic, key, value, headers,
    partition)`` (which returns a future of the write's metadata: ``topic_partition``, ``offset``);
    writes from records of ``topics`` need no consumer metadata. Restored when the block ends."""
    had_send = "send_changelog" in table.__dict__
    saved_send = table.__dict__.get("send_changelog")
    saved_data = table._data
    verified = table._verified_source_topics_for_partitions
    added = {t for t in topics if t not in verified}
    table._data = store
    table_changelog.send_through(table, send)
    verified.update(added)
    try:
        yield
    finally:
        table._data = saved_data
        if had_send:
            table.send_changelog = saved_send
        else:
            del table.send_changelog
        verified.difference_update(added)

"""Table changelog writes sent by another producer than Faust's buffered one.

Faust's ``Table.send_changelog`` sends each write through ``app.producer.send_soon``,
a buffered, non-transactional producer: under ``exactly_once`` processed-ID entries
and every table update would be written outside the transaction of the record that
made them (or lost with the buffer when the worker dies).
:func:`send_through` replaces a table's ``send_changelog`` (on the instance) with one
that serializes the write exactly as Faust does and hands it to ``send`` — the
transactional write of the record being handled
(:meth:`streams.consume.transactions.Transactions.send_soon`). The public and private
names it relies on are listed in :mod:`streams.faust_compat.private` and checked at
start-up.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from types import MethodType, SimpleNamespace
from typing import Any


class ChangelogFuture(asyncio.Future):
    """What the replaced ``Table.send_changelog`` returns: the write's future, with the
    ``message.partition`` Faust's table code reads from it."""

    def __init__(self, partition: int | None) -> None:
        super().__init__()
        self.message = SimpleNamespace(partition=partition)


def send_through(table: Any, send: Callable[..., asyncio.Future]) -> None:
    """Make ``table`` send its changelog writes with ``send(topic, key, value, headers, partition)``
    (which returns a future of the RecordMetadata)."""

    def send_changelog(self: Any, partition: int | None, key: Any, value: Any,
                       key_serializer: Any = None, value_serializer: Any = None) -> asyncio.Future:
        topic = self.changelog_topic
        raw_key, headers = topic.prepare_key(key, key_serializer or self.key_serializer)
        raw_value, headers = topic.prepare_value(value, value_serializer or self.value_serializer,
                                                 headers=headers)
        sent = send(topic.get_topic_name(), raw_key, raw_value, headers, partition)
        out = ChangelogFuture(partition)

        def chain(task: asyncio.Future) -> None:
            if task.cancelled():
                out.cancel()
            elif (error := task.exception()) is not None:
                out.set_exception(error)
            else:
                out.set_result(task.result())
                self._on_changelog_sent(out)  # Faust's offset book-keeping reads out.result()

        sent.add_done_callback(chain)
        return out

    table.send_changelog = MethodType(send_changelog, table)

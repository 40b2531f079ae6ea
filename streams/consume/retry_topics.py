"""Non-blocking retries through delay topics (Spring Kafka's retry-topic pattern).

A policy ``RetryPolicy(delayed_retries=(5, 60))`` gives a handler's source topic
``T`` two retry topics, ``T.retry.1`` (5 s) and ``T.retry.2`` (60 s). A message
that still fails after its in-place attempts is copied to the next level with a
due time and the source partition moves on at once; the level's agent waits
until the record is due and runs the handler again. After the last level the
message is dead-lettered.

Each level has one fixed delay, so due times grow along a partition and the
agent only ever waits for the head. Records are sent to the *same partition
number* as their source record, which keeps them co-partitioned with the
handler's processed-ID table.

Ordering trade-off: while a message waits in a retry topic, later messages
with the same key are handled from the source topic — per-key order is given
up for the messages that needed a delayed retry. Use in-place retries only
(the default) where per-key order matters more than partition throughput.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from streams import tracing
from streams.consume.headers import Origin, headers_dict
from streams.kafka.names import (
    H_ORIGIN_OFFSET,
    H_ORIGIN_PARTITION,
    H_ORIGIN_TOPIC,
    H_RETRY_ATTEMPTS,
    H_RETRY_DUE,
    H_RETRY_FIRST_FAILURE,
    H_RETRY_LEVEL,
    retry_topic,
)
from streams.messages.envelope import HEADER_MESSAGE_ID

if TYPE_CHECKING:
    from streams.consume.publishing import Publisher
    from streams.consume.spec import HandlerSpec


class RetryTopics:
    """Declares the retry topics of handlers and schedules records onto them."""

    def __init__(self, publisher: "Publisher", declare_topic: Callable[..., Any],
                 clock: Callable[[], float] = time.time) -> None:
        """``clock()``: epoch seconds the due times count from (the test driver's controllable clock)."""
        self.publisher = publisher
        self.declare_topic = declare_topic
        self.clock = clock
        self._topics: dict[str, Any] = {}

    def declare(self, spec: "HandlerSpec") -> list[Any]:
        """Faust topics of ``spec``'s retry levels (created by the worker on start)."""
        out = []
        for level in range(1, len(spec.retry.delayed_retries) + 1):
            name = retry_topic(spec.topic.name, level)
            if name not in self._topics:
                self._topics[name] = self.declare_topic(
                    name, partitions=spec.topic.partitions, key_serializer="raw", value_serializer="raw",
                    internal=True,
                )
            out.append(self._topics[name])
        return out

    def topics(self) -> list[Any]:
        return list(self._topics.values())

    async def schedule(self, spec: "HandlerSpec", message: Any, origin: Origin, attempts: int,
                       first_failure: float, error: BaseException, message_id: str,
                       headers: dict[str, bytes] | None = None) -> None:
        """Copy ``message`` to the next retry level, due after that level's delay. The copy
        carries ``message_id`` as a header (it may have been derived, see ``MessageIdFallback``)."""
        level = origin.level + 1
        delay = spec.retry.delayed_retries[origin.level]
        record_headers = headers_dict(message) if headers is None else headers
        out = [(k, v) for k, v in record_headers.items() if not k.startswith("retry.")]
        if HEADER_MESSAGE_ID not in record_headers:
            out.append((HEADER_MESSAGE_ID, message_id.encode()))
        out += [
            (H_RETRY_LEVEL, str(level).encode()),
            (H_RETRY_DUE, f"{self.clock() + delay:.3f}".encode()),
            (H_RETRY_ATTEMPTS, str(attempts).encode()),
            (H_RETRY_FIRST_FAILURE, f"{first_failure:.3f}".encode()),
            (H_ORIGIN_TOPIC, origin.topic.encode()),
            (H_ORIGIN_PARTITION, str(origin.partition).encode()),
            (H_ORIGIN_OFFSET, str(origin.offset).encode()),
            ("retry.error", f"{type(error).__name__}: {error}"[:1000].encode("utf-8", "replace")),
        ]
        topic = retry_topic(spec.topic.name, level)
        await self.publisher.publish(topic, message.key, message.value, tracing.output_headers(out),
                                     partition=origin.partition)

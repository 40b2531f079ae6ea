"""Dead letters: records that cannot be handled are parked, never dropped.

Every source topic ``T`` has a dead-letter topic ``T.dlq``. A parked record
keeps its original key, value and headers (so it can be replayed byte for byte,
with its ``message_id``) and gains ``dlq.*`` headers saying why and where:

==========================  ==================================================
``dlq.reason``              ``not_json`` / ``not_envelope`` / ``unknown_type`` /
                            ``kind_mismatch`` / ``invalid_payload`` / ``handler_error``
``dlq.error.type``          exception class
``dlq.error.message``       exception text (first 2,000 characters)
``dlq.traceback``           last frames of the traceback (digest)
``dlq.original.topic``      source topic
``dlq.original.partition``  source partition
``dlq.original.offset``     source offset
``dlq.attempts``            handler attempts made (0: never decoded)
``dlq.agent``               handler that gave up
``dlq.first_failed_at``     ISO-8601 time of the first failure
``dlq.failed_at``           ISO-8601 time it was parked (last failure)
``dlq.value_omitted``       only when the producer refused the value as too large
                            for a dead letter: its size; the value stays in the
                            source topic (``dlq.original.*``), where a replay reads it
==========================  ==================================================

The park waits for the broker's acknowledgement before the source offset can
be committed, so a crash never loses the record: at worst it is parked twice.
``streams dlq list|show|replay`` reads and replays them (:mod:`streams.kafka.failure_log`).
"""

from __future__ import annotations

import logging
import time
import traceback
from collections.abc import Callable
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

from aiokafka.errors import MessageSizeTooLargeError

from streams import tracing
from streams.consume.headers import Origin, headers_dict
from streams.faust_compat.record_headers import BAD_HEADER_NAMES
from streams.kafka.names import H_REPLAY_OF, H_VALUE_OMITTED, dead_letter_topic

if TYPE_CHECKING:
    from streams.consume.publishing import Publisher
    from streams.consume.spec import HandlerSpec
    from streams.messages.envelope import Envelope

log = logging.getLogger(__name__)

_MAX_TEXT = 2000


def traceback_digest(exc: BaseException, frames: int = 6) -> str:
    """The last ``frames`` frames of ``exc``'s traceback, one line each."""
    tb = traceback.extract_tb(exc.__traceback__)[-frames:]
    return " | ".join(f"{f.filename.rsplit('/', 1)[-1]}:{f.lineno} in {f.name}" for f in tb)


def _iso(ts: float) -> str:
    return datetime.fromtimestamp(ts, UTC).isoformat()


def _too_large(exc: BaseException | None) -> bool:
    """Whether ``exc`` (or what caused it: Faust wraps producer errors) says the record is too large."""
    while exc is not None:
        if isinstance(exc, MessageSizeTooLargeError):
            return True
        exc = exc.__cause__ or exc.__context__
    return False


class DeadLetters:
    """Publishes parked records to ``<topic>.dlq``; ``declare_topic`` makes the Faust topic the
    worker creates on start (``faust.App.topic``)."""

    def __init__(self, publisher: "Publisher", declare_topic: Callable[..., Any]) -> None:
        self.publisher = publisher
        self.declare_topic = declare_topic
        self._topics: dict[str, Any] = {}

    def topic_for(self, source: str, partitions: int) -> Any:
        if source not in self._topics:
            self._topics[source] = self.declare_topic(
                dead_letter_topic(source),
                partitions=partitions,
                key_serializer="raw",
                value_serializer="raw",
                internal=True,
            )
        return self._topics[source]

    def topics(self) -> list[Any]:
        """The dead-letter topics declared so far (created by the worker on start)."""
        return list(self._topics.values())

    async def park(
        self,
        spec: "HandlerSpec",
        message: Any,
        origin: Origin,
        *,
        reason: str,
        error: BaseException,
        attempts: int,
        envelope: "Envelope | None" = None,
        first_failure: float | None = None,
        headers: dict[str, bytes] | None = None,
    ) -> None:
        """Send ``message`` (a Faust Message) to its dead-letter topic and wait for the ack
        (``headers``: its headers as :func:`~streams.consume.headers.headers_dict` reads them, if read)."""
        now = time.time()
        record_headers = headers_dict(message) if headers is None else headers
        out = [
            (k, v) for k, v in record_headers.items()
            if not k.startswith(("dlq.", "retry.")) and k not in (H_REPLAY_OF, BAD_HEADER_NAMES)
        ]
        extra = {
            "dlq.reason": reason,
            "dlq.error.type": type(error).__name__,
            "dlq.error.message": str(error)[:_MAX_TEXT],
            "dlq.traceback": traceback_digest(error),
            "dlq.original.topic": origin.topic,
            "dlq.original.partition": str(origin.partition),
            "dlq.original.offset": str(origin.offset),
            "dlq.attempts": str(attempts),
            "dlq.agent": spec.name,
            "dlq.first_failed_at": _iso(first_failure or now),
            "dlq.failed_at": _iso(now),
        }
        if envelope is not None and not any(k == "message_id" for k, _ in out):
            out.append(("message_id", envelope.message_id.encode()))
        out.extend((k, v.encode("utf-8", errors="replace")) for k, v in extra.items())
        out = tracing.output_headers(out)  # the trace of the attempts that failed
        topic = self.topic_for(spec.topic.name, spec.topic.partitions).get_topic_name()
        try:
            await self.publisher.publish(topic, message.key, message.value, out)
        except Exception as exc:
            if not _too_large(exc):
                raise
            # the record plus the dlq.* headers is more than the producer may send: park a letter
            # without the value; the value itself stays at dlq.original.* for a replay to read
            size = len(message.value or b"")
            log.error("the dead letter of %s[%d]@%d is too large to send (%r); parking it without its "
                      "%d-byte value", origin.topic, origin.partition, origin.offset, exc, size)
            await self.publisher.publish(topic, message.key, None,
                                   [*out, (H_VALUE_OMITTED, str(size).encode())])

"""Outputs of a handler: sent only when its attempt succeeds, with ids derived from the input.

A handler sends follow-up messages with :meth:`streams.app.StreamsApp.send`. Inside a
handler they are not sent at once: each attempt collects its outputs, and they leave
only when the attempt succeeds — so an attempt that fails, is retried, dead-lettered or
whose database transaction does not commit publishes nothing (under ``exactly_once``
they then join the partition's transaction with the input's offset; under
``at_least_once`` they are sent once the handler returned, i.e. after the effect's
database commit).

Every output whose envelope was made without an explicit ``message_id`` gets one derived
from the handler, the input's ``message_id`` and the output's position among the
attempt's outputs (:func:`output_message_id`). The same input handled again (a
redelivery after a crash, a retry) therefore produces outputs with the same ids, so a
copy downstream is always recognised by the consumer's processed-ID table.
"""

from __future__ import annotations

import contextvars
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from streams import tracing

if TYPE_CHECKING:
    from streams.messages.envelope import Envelope

#: namespace of derived output ids (uuid5)
OUTPUT_NAMESPACE = uuid.UUID("8f6c1d1e-4b7a-5e0c-9a51-6f2d3c1b7e42")


@dataclass(frozen=True)
class Output:
    """A Kafka message a handler sent (raw record)."""

    topic: str
    key: bytes | None
    value: bytes | None
    headers: list[tuple[str, bytes]] = field(default_factory=list)

    def to_json(self) -> dict[str, Any]:
        return {"topic": self.topic, "key": None if self.key is None else self.key.hex(),
                "value": None if self.value is None else self.value.hex(),
                "headers": [[k, v.hex()] for k, v in self.headers]}

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> "Output":
        return cls(data["topic"], None if data["key"] is None else bytes.fromhex(data["key"]),
                   None if data["value"] is None else bytes.fromhex(data["value"]),
                   [(k, bytes.fromhex(v)) for k, v in data.get("headers", [])])


class AttemptOutputs:
    """The outputs one attempt of a handler sent, held until the attempt succeeds."""

    __slots__ = ("consumer", "input_id", "items")

    def __init__(self, consumer: str, input_id: str) -> None:
        self.consumer = consumer
        self.input_id = input_id
        self.items: list[Output] = []

    def add(self, topic: str, envelope: "Envelope") -> Output:
        """Hold ``envelope`` for ``topic``; an envelope made without an explicit ``message_id``
        gets the id derived from the input and its position."""
        if "message_id" not in envelope.model_fields_set:
            envelope = envelope.model_copy(
                update={"message_id": output_message_id(self.consumer, self.input_id, len(self.items))})
        key, value, headers = envelope.to_record()
        output = Output(topic, key, value, tracing.output_headers(headers))
        self.items.append(output)
        return output


#: the outputs of the handler attempt running in this task (None: not in a handler)
_staged: contextvars.ContextVar[AttemptOutputs | None] = contextvars.ContextVar("streams_attempt_outputs",
                                                                                default=None)


def staged() -> AttemptOutputs | None:
    """The outputs of the handler attempt running in this task, if any."""
    return _staged.get()


@contextmanager
def staging(outputs: AttemptOutputs) -> Iterator[AttemptOutputs]:
    """Collect what ``StreamsApp.send`` sends in this block into ``outputs``."""
    token = _staged.set(outputs)
    try:
        yield outputs
    finally:
        _staged.reset(token)


def output_message_id(consumer: str, input_id: str, position: int) -> str:
    """The ``message_id`` of output number ``position`` (0-based) that handler ``consumer``
    (``<app id>:<handler>``) sends for the input message ``input_id``."""
    return str(uuid.uuid5(OUTPUT_NAMESPACE, f"{consumer}\n{input_id}\n{position}"))

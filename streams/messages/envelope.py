"""The message envelope: what every message on a ``streams`` topic looks like.

An envelope carries a unique ``message_id`` (fixed when the message is created,
kept through retries, replays and relays, so consumers can deduplicate), a
``message_type`` that names the payload schema, a ``kind`` (event or command),
when it occurred, an ordering ``key`` and the ``payload``.

On Kafka it is JSON in the record value; the key becomes the record key (and so
the partition: same key, same partition, same order), and ``message_id``,
``message_type`` and ``kind`` are repeated as record headers so tools can route
or filter without parsing the value.

Events and commands:

* an **event** says something happened ("OrderPlaced"); it has no fixed receiver
  and any number of consumer groups may react to it;
* a **command** asks one service to do something ("GrantPoints"); exactly one
  consumer group owns a command topic.
"""

from __future__ import annotations

import json
import uuid
from datetime import UTC, datetime
from enum import StrEnum
from typing import Any, Generic, TypeVar

from pydantic import BaseModel, ConfigDict, Field, field_validator

#: Kafka header names written with every envelope.
HEADER_MESSAGE_ID = "message_id"
HEADER_MESSAGE_TYPE = "message_type"
HEADER_KIND = "kind"
HEADER_CONTENT_TYPE = "content-type"
#: the payload's schema version, in the envelope's ``headers`` and as a record header (absent: 1)
SCHEMA_VERSION = "schema_version"
CONTENT_TYPE = "application/vnd.streams.envelope+json; version=1"

P = TypeVar("P")


class Kind(StrEnum):
    """Whether a message reports a fact (event) or asks for an action (command)."""

    EVENT = "event"
    COMMAND = "command"


def new_message_id() -> str:
    """A fresh unique message id (UUID4, text)."""
    return str(uuid.uuid4())


def utcnow() -> datetime:
    return datetime.now(UTC)


class Envelope(BaseModel, Generic[P]):
    """One message. ``payload`` is a dict on the wire and a typed model once decoded
    through a :class:`~streams.messages.registry.MessageRegistry`."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    message_id: str = Field(default_factory=new_message_id, min_length=1, max_length=200)
    message_type: str = Field(min_length=1, max_length=200)
    kind: Kind = Kind.EVENT
    occurred_at: datetime = Field(default_factory=utcnow)
    key: str | None = Field(None, max_length=1000, description="Ordering key: Kafka record key.")
    payload: P
    source: str | None = Field(None, description="The service that produced the message.")
    correlation_id: str | None = Field(None, description="Ties together messages of one business flow.")
    causation_id: str | None = Field(None, description="message_id of the message that caused this one.")
    trace_id: str | None = None
    headers: dict[str, str] = Field(default_factory=dict, description="Extra string headers.")

    @field_validator("occurred_at")
    @classmethod
    def _aware(cls, value: datetime) -> datetime:
        return value if value.tzinfo else value.replace(tzinfo=UTC)

    # --- wire format -------------------------------------------------------
    def payload_dict(self) -> Any:
        """The payload as plain JSON-ready data."""
        payload = self.payload
        if isinstance(payload, BaseModel):
            return payload.model_dump(mode="json")
        return payload

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready dict (what goes on the wire)."""
        data = self.model_dump(mode="json", exclude={"payload"})
        data["payload"] = self.payload_dict()
        return data

    def to_json(self) -> bytes:
        """Serialized record value."""
        return json.dumps(self.to_dict(), separators=(",", ":"), ensure_ascii=False).encode("utf-8")

    def kafka_key(self) -> bytes | None:
        """Record key: the ordering key, UTF-8."""
        return self.key.encode("utf-8") if self.key is not None else None

    def kafka_headers(self) -> list[tuple[str, bytes]]:
        """Record headers: id, type and kind repeated for routing without parsing."""
        out = [
            (HEADER_MESSAGE_ID, self.message_id.encode()),
            (HEADER_MESSAGE_TYPE, self.message_type.encode()),
            (HEADER_KIND, self.kind.value.encode()),
            (HEADER_CONTENT_TYPE, CONTENT_TYPE.encode()),
        ]
        if SCHEMA_VERSION in self.headers:
            out.append((SCHEMA_VERSION, self.headers[SCHEMA_VERSION].encode()))
        return out

    def to_record(self) -> tuple[bytes | None, bytes, list[tuple[str, bytes]]]:
        """(key, value, headers) for a Kafka producer."""
        return self.kafka_key(), self.to_json(), self.kafka_headers()


def event(message_type: str, payload: Any, *, key: str | None = None, **fields: Any) -> Envelope:
    """Build an event envelope."""
    return Envelope(message_type=message_type, kind=Kind.EVENT, payload=payload, key=key, **fields)


def command(message_type: str, payload: Any, *, key: str | None = None, **fields: Any) -> Envelope:
    """Build a command envelope."""
    return Envelope(message_type=message_type, kind=Kind.COMMAND, payload=payload, key=key, **fields)

"""Exceptions the framework raises, each saying what is wrong and where."""

from __future__ import annotations

from enum import StrEnum
from typing import Any


class StreamsError(Exception):
    """Base class of the framework's errors."""


class ConfigurationError(StreamsError):
    """The application is declared wrongly (refused at start-up)."""


class DecodeReason(StrEnum):
    """Why a record could not be turned into a typed envelope."""

    NOT_JSON = "not_json"  # empty, not UTF-8, or not parseable JSON
    TOO_LARGE = "too_large"  # value longer than STREAMS_MAX_VALUE_BYTES
    TOO_DEEP = "too_deep"  # JSON nested deeper than STREAMS_MAX_NESTING_DEPTH
    BAD_HEADERS = "bad_headers"  # framework headers (retry.*) that cannot be read
    NOT_ENVELOPE = "not_envelope"  # JSON, but not a valid envelope
    UNKNOWN_TYPE = "unknown_type"  # envelope whose message_type no one registered
    KIND_MISMATCH = "kind_mismatch"  # envelope says event, registry says command (or back)
    INVALID_PAYLOAD = "invalid_payload"  # payload fails its model's validation
    NOT_CHANGE_EVENT = "not_change_event"  # on a change-event topic: JSON, but not a Debezium change event
    UNKNOWN_TABLE = "unknown_table"  # a change of a table the topic was not declared with
    SCHEMA_CHANGE = "schema_change"  # a changed row the table's model no longer accepts


class DecodeError(StreamsError):
    """A record could not be decoded. ``reason`` tells which class of failure;
    ``details`` carries pydantic's error list where there is one; ``where``
    names the topic/partition/offset once known."""

    def __init__(
        self,
        reason: DecodeReason,
        message: str,
        *,
        details: list[dict[str, Any]] | None = None,
        message_type: str | None = None,
        message_id: str | None = None,
        where: str | None = None,
    ) -> None:
        self.reason = reason
        self.message = message
        self.details = details or []
        self.message_type = message_type
        self.message_id = message_id
        self.where = where
        super().__init__(str(self))

    def at(self, topic: str, partition: int, offset: int) -> "DecodeError":
        """Record where the bad record sits (returns self)."""
        self.where = f"{topic}[{partition}]@{offset}"
        self.args = (str(self),)
        return self

    def __str__(self) -> str:
        parts = [f"{self.reason.value}: {self.message}"]
        if self.message_type:
            parts.append(f"message_type={self.message_type!r}")
        if self.message_id:
            parts.append(f"message_id={self.message_id!r}")
        if self.where:
            parts.append(f"at {self.where}")
        text = " ".join(parts)
        for err in self.details[:10]:
            loc = ".".join(str(p) for p in err.get("loc", ())) or "(root)"
            text += f"\n  - {loc}: {err.get('msg')}"
        return text

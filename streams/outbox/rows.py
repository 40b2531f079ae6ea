"""A claimed outbox row, as the relays read and publish it, and what a publish did with a batch of them."""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime

from streams.messages.envelope import (
    CONTENT_TYPE,
    HEADER_CONTENT_TYPE,
    HEADER_KIND,
    HEADER_MESSAGE_ID,
    HEADER_MESSAGE_TYPE,
    SCHEMA_VERSION,
    Envelope,
    Kind,
)
from streams.tracing import TRACEPARENT, TRACESTATE

#: header naming the outbox row a record was published from
HEADER_OUTBOX_ID = "outbox_id"

#: the envelope fields an outbox row's ``meta`` may carry (the envelope forbids any other)
_META_FIELDS = ("source", "correlation_id", "causation_id", "trace_id")
_KINDS = {k.value: k.value.encode() for k in Kind}
_CONTENT_TYPE = CONTENT_TYPE.encode()


def _json_encoder() -> Callable[[object], str]:
    """``json.dumps(value, separators=(",", ":"), ensure_ascii=False)`` (what the envelope writes),
    with the C encoder made once instead of on every call (that took half of the call)."""
    plain = json.JSONEncoder(separators=(",", ":"), ensure_ascii=False, check_circular=False)
    try:
        from json.encoder import c_encode_basestring, c_make_encoder  # type: ignore[attr-defined]

        chunks = c_make_encoder(None, plain.default, c_encode_basestring, None, ":", ",", False, False, True)
    except (ImportError, TypeError):  # no C accelerator: the encoder's own path
        return plain.encode
    return lambda value: "".join(chunks(value, 0))


#: a JSON value as the envelope writes it (circular structures cannot come out of a jsonb column)
_to_json = _json_encoder()


def _is_text(value: object, longest: int) -> bool:
    return type(value) is str and 0 < len(value) <= longest


def _plain_strings(mapping: object) -> bool:
    return type(mapping) is dict and all(type(k) is str and type(v) is str for k, v in mapping.items())


def _json_time(value: object) -> str | None:
    """``value`` as the envelope writes it (``…Z`` for UTC), or None when only the envelope
    model knows how (naive, or an offset with seconds)."""
    if type(value) is not datetime or value.tzinfo is None:
        return None
    text = value.isoformat()  # …±HH:MM, or …±HH:MM:SS[.ffffff] for an offset with seconds
    if text[-6] not in "+-":
        return None
    return text[:-6] + "Z" if text.endswith("+00:00") else text


@dataclass
class OutboxRow:
    """One claimed outbox row."""

    id: int
    message_id: str
    message_type: str
    kind: str
    topic: str
    key: str | None
    payload: object
    headers: dict
    meta: dict
    occurred_at: datetime
    fail_count: int
    #: the W3C trace context the writer stored (None: written outside a trace)
    traceparent: str | None = None
    tracestate: str | None = None

    def envelope(self) -> Envelope:
        return Envelope(message_id=self.message_id, message_type=self.message_type, kind=Kind(self.kind),
                        occurred_at=self.occurred_at, key=self.key, payload=self.payload,
                        headers=self.headers or {}, **(self.meta or {}))

    def record(self) -> tuple[bytes | None, bytes, list[tuple[str, bytes]]]:
        """(key, value, headers) as the relay sends it (with the stored trace context, if any).

        The bytes are those of ``self.envelope().to_record()``; a row the envelope model accepts
        as it is (the usual case) is written without building the model, any other row goes
        through it (and its validation error, if any, is raised)."""
        fast = self._fast_record()
        if fast is not None:
            key, value, headers = fast
        else:
            key, value, headers = self.envelope().to_record()
        headers.append((HEADER_OUTBOX_ID, str(self.id).encode()))
        if self.traceparent:
            headers.append((TRACEPARENT, self.traceparent.encode()))
            if self.tracestate:
                headers.append((TRACESTATE, self.tracestate.encode()))
        return key, value, headers

    def _fast_record(self) -> tuple[bytes | None, bytes, list[tuple[str, bytes]]] | None:
        """What :meth:`Envelope.to_record` gives for this row, built directly; None unless every
        field is already what the envelope model would accept unchanged."""
        meta, headers = self.meta or {}, self.headers or {}
        occurred_at = _json_time(self.occurred_at)
        if (occurred_at is None or self.kind not in _KINDS or not _is_text(self.message_id, 200)
                or not _is_text(self.message_type, 200)
                or not (self.key is None or (type(self.key) is str and len(self.key) <= 1000))
                or not _plain_strings(headers) or type(meta) is not dict
                or any(k not in _META_FIELDS or not (v is None or type(v) is str) for k, v in meta.items())):
            return None
        value = {"message_id": self.message_id, "message_type": self.message_type, "kind": self.kind,
                 "occurred_at": occurred_at, "key": self.key, "source": meta.get("source"),
                 "correlation_id": meta.get("correlation_id"), "causation_id": meta.get("causation_id"),
                 "trace_id": meta.get("trace_id"), "headers": headers, "payload": self.payload}
        out = [(HEADER_MESSAGE_ID, self.message_id.encode()), (HEADER_MESSAGE_TYPE, self.message_type.encode()),
               (HEADER_KIND, _KINDS[self.kind]), (HEADER_CONTENT_TYPE, _CONTENT_TYPE)]
        if SCHEMA_VERSION in headers:
            out.append((SCHEMA_VERSION, headers[SCHEMA_VERSION].encode()))
        return (None if self.key is None else self.key.encode("utf-8"),
                _to_json(value).encode("utf-8"), out)


@dataclass
class PublishResult:
    """What happened to one batch."""

    sent: list[OutboxRow] = field(default_factory=list)
    failed: list[tuple[OutboxRow, BaseException]] = field(default_factory=list)
    #: rows not handed to the producer before the batch's time ran out (left as they are)
    unsent: list[OutboxRow] = field(default_factory=list)

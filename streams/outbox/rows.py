"""A claimed outbox row, as the relays read and publish it, and what a publish did with a batch of them."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime

from streams.messages.envelope import Envelope, Kind
from streams.tracing import TRACEPARENT, TRACESTATE

#: header naming the outbox row a record was published from
HEADER_OUTBOX_ID = "outbox_id"


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
        """(key, value, headers) as the relay sends it (with the stored trace context, if any)."""
        env = self.envelope()
        key, value, headers = env.to_record()
        headers = [*headers, (HEADER_OUTBOX_ID, str(self.id).encode())]
        if self.traceparent:
            headers.append((TRACEPARENT, self.traceparent.encode()))
            if self.tracestate:
                headers.append((TRACESTATE, self.tracestate.encode()))
        return key, value, headers


@dataclass
class PublishResult:
    """What happened to one batch."""

    sent: list[OutboxRow] = field(default_factory=list)
    failed: list[tuple[OutboxRow, BaseException]] = field(default_factory=list)
    #: rows not handed to the producer before the batch's time ran out (left as they are)
    unsent: list[OutboxRow] = field(default_factory=list)

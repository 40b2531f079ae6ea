"""What a handler is: its topic and the policy it was declared with."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

from streams.consume.dedup import ProcessedIds
from streams.consume.delivery import Delivery
from streams.consume.effects import Effects
from streams.consume.retry import RetryPolicy
from streams.kafka.names import retry_topics
from streams.messages.envelope import Envelope, Kind
from streams.messages.registry import MessageIdFallback

Handler = Callable[[Envelope, Delivery], Awaitable[None]]


@dataclass
class StreamTopic:
    """A declared topic: its full name (prefix applied), kind and Faust topic."""

    name: str
    kind: Kind
    partitions: int
    faust_topic: Any
    dead_letter_name: str
    #: what stands in for a missing message_id (default: refuse the record)
    message_id_fallback: MessageIdFallback = MessageIdFallback.REJECT
    #: turns a record into an envelope instead of the registry (change-event topics:
    #: streams.cdc.changes.ChangeDecoder); None: records are envelopes
    decoder: Any = None
    #: the message types a handler of this topic takes when it names none
    message_types: tuple[str, ...] = ()


@dataclass
class HandlerSpec:
    """A declared handler: its topic, message types, policy and Faust agents."""

    name: str
    topic: StreamTopic
    message_types: frozenset[str]
    fn: Handler
    retry: RetryPolicy
    processed: ProcessedIds | None = None
    #: guards of the handler's downstream (circuit breaker, rate limiter; see streams.consume.sink)
    sinks: tuple[Any, ...] = ()
    #: the processed-messages table its effect transactions record into (streams.consume.effects)
    effects: Effects | None = None
    agents: list[Any] = field(default_factory=list, repr=False)

    def source_topics(self) -> list[str]:
        """The topics it consumes: its source topic, then one per delayed-retry level."""
        return [self.topic.name, *retry_topics(self.topic.name, len(self.retry.delayed_retries))]

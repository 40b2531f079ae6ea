"""What a RabbitMQ or Redis Streams consumer shares: running an app's handlers without Faust.

A handler declared on a :class:`~streams.app.StreamsApp` (``@app.handler(topic, ...)``) runs the
same way whatever the broker: :class:`~streams.consume.runner.HandlerRunner` decodes the record
with the app's registry and limits, checks the effects table, runs the attempts, and parks what
cannot be handled with the same ``dlq.*`` headers. A broker consumer hands it
:class:`BrokerRecord` s and acknowledges each one after ``process`` returned (the effect, the
dead letter or the retry copy is then written), so a crash before the acknowledgement delivers
the message again and the effects table makes the repeat a no-op.

What differs per broker is where writes go (:class:`BrokerWrites`: dead letters, delayed-retry
copies and the handler's outputs) and what a record's position is. What the Kafka path has and
these do not:

* the processed-ID table (RocksDB with a Kafka changelog) belongs to Kafka partitions: on these
  brokers a handler drops repeats only with ``effects=`` (the processed-messages table in
  PostgreSQL); a handler without it is at-least-once;
* ``exactly_once`` (Kafka transactions) does not apply: outputs are sent after the attempt
  succeeded, before the acknowledgement.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
from dataclasses import dataclass, field
from typing import Any

from streams.consume.context import ConsumeContext
from streams.consume.dead_letters import DeadLetters
from streams.consume.retry_topics import RetryTopics
from streams.consume.runner import HandlerRunner
from streams.errors import ConfigurationError

log = logging.getLogger(__name__)


@dataclass
class BrokerRecord:
    """A message of a RabbitMQ queue or a Redis stream, shaped as the runner reads records.

    ``topic``: the topic it belongs to (a retry level's name for a delayed-retry copy);
    ``partition``: the RabbitMQ lane, 0 for a Redis stream; ``offset``: the Redis entry id as one
    number (milliseconds << 20 | sequence), -1 on RabbitMQ (a queue has no positions)."""

    topic: str
    partition: int
    offset: int
    key: bytes | None
    value: bytes | None
    headers: list[tuple[str, bytes]] = field(default_factory=list)


class _Named:
    """What :class:`DeadLetters` / :class:`RetryTopics` declare: a name (no Faust topic here)."""

    def __init__(self, name: str) -> None:
        self.name = name

    def get_topic_name(self) -> str:
        return self.name


def _declare(name: str, **_: Any) -> _Named:
    return _Named(name)


class BrokerWrites:
    """The consume path's writes (``ctx.publisher``) on one broker: subclasses say where a topic
    name (a dead-letter topic, a retry level, an output topic) goes, and send."""

    async def publish(self, topic: str, key: bytes | None, value: bytes | None, headers: Any,
                      partition: int | None = None) -> None:
        """Write one record and wait for the broker's acknowledgement."""
        raise NotImplementedError

    async def publish_all(self, outputs: list[Any]) -> None:
        for output in outputs:
            await self.publish(output.topic, output.key, output.value, output.headers)

    async def close(self) -> None:
        return None


class Sleeps:
    """Waits of a record (between attempts, for a sink) on these brokers: the consumer simply takes
    no new message meanwhile (RabbitMQ's prefetch keeps what the broker pushes bounded; a Redis
    consumer reads only when it asks)."""

    async def wait(self, seconds: float, pause: Any, why: str) -> None:
        if seconds > 0:
            await asyncio.sleep(seconds)


def runners(app: Any, writes: BrokerWrites, handlers: list[str] | None, *, broker: str,
            offsets: bool) -> list[HandlerRunner]:
    """A runner per handler of ``app`` (those named in ``handlers``; None: all), wired to ``writes``.

    Refused with a sentence saying why: a handler whose topic's missing ``message_id`` would be
    replaced by an offset on a broker without offsets (``offsets`` False)."""
    names = list(app.handlers) if handlers is None else handlers
    unknown = [n for n in names if n not in app.handlers]
    if unknown:
        raise ConfigurationError(f"no handler named {', '.join(map(repr, unknown))} in the app "
                                 f"(known: {', '.join(app.handlers) or 'none'})")
    ctx = ConsumeContext(app.app_id, app.settings, None, app.registry, app.decode_limits, app.metrics,
                         app.transactions, writes,  # type: ignore[arg-type]  # the publisher's interface
                         DeadLetters(writes, _declare),  # type: ignore[arg-type]
                         RetryTopics(writes, _declare), None)  # type: ignore[arg-type]
    out = []
    for name in names:
        spec = app.handlers[name]
        if not offsets and spec.topic.message_id_fallback.value == "offset":
            raise ConfigurationError(
                f"handler {name!r}: its topic stands in an offset for a missing message_id, but a {broker} queue "
                "has no offsets (a redelivered message would get another id): use message_id_fallback "
                "'header' or 'reject'")
        # the processed-ID table is Kafka's (RocksDB + changelog): here, repeats are dropped by effects=
        out.append(HandlerRunner(dataclasses.replace(spec, processed=None, agents=[]), ctx))
    return out


def delays_per_topic(by_topic: dict[str, list[HandlerRunner]], level: str) -> dict[str, tuple[float, ...]]:
    """The delayed-retry delays of each topic, which its handlers must share: on these brokers a
    retry level is one ``level`` (a queue, a stream) per topic and group. Different delays on one
    topic are refused with a sentence saying why."""
    out: dict[str, tuple[float, ...]] = {}
    for topic, topic_runners in by_topic.items():
        delays = {r.spec.retry.delayed_retries for r in topic_runners} - {()}
        if len(delays) > 1:
            raise ConfigurationError(
                f"the handlers of {topic!r} have different delayed retries ({sorted(delays)}): a retry level is "
                f"one {level} per topic and group; give them the same delays")
        out[topic] = next(iter(delays), ())
    return out

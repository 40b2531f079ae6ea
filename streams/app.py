"""``StreamsApp``: a Faust app configured from :class:`~streams.settings.Settings`,
with typed topics and envelope handlers.

::

    registry = MessageRegistry()
    app = StreamsApp("reference-app", registry=registry)
    orders = app.topic("orders.order-placed", kind=Kind.EVENT)

    @app.handler(orders, "OrderPlaced")
    async def push_seller(message: Envelope[OrderPlaced], delivery: Delivery) -> None:
        ...

Each handler becomes one Faust agent consuming its topic in the app's consumer
group (group id = app id). Records are decoded through the registry; the
handler sees only the message types it declared. A record that cannot be
decoded, and a message whose handler keeps failing, is parked on the topic's
dead-letter topic (see :mod:`streams.deadletter`) and the partition moves on.

Topic conventions, enforced where they can be:

* an **event topic** may be consumed by any number of consumer groups and, in
  one app, by any number of handlers;
* a **command topic** has exactly one owning group, and in that app exactly one
  handler per command type: declaring a second one raises
  :class:`~streams.errors.ConfigurationError` at start-up. Handlers of a command
  type must sit on a command topic, and of an event type on an event topic.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import faust

from streams.deadletter import DeadLetters
from streams.envelope import Envelope, Kind
from streams.errors import ConfigurationError, DecodeError
from streams.metrics import Metrics
from streams.registry import MessageRegistry
from streams.retry import RetryPolicy
from streams.settings import SecurityProtocol, Settings, load_settings

if TYPE_CHECKING:
    from streams.kafka_admin import TopicSpec

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Delivery:
    """Where a message came from. ``idempotency_key`` is the message id: pass it
    to downstream APIs so that a repeated delivery cannot repeat their effect."""

    topic: str
    partition: int
    offset: int
    attempt: int
    idempotency_key: str


Handler = Callable[[Envelope, Delivery], Awaitable[None]]


@dataclass
class StreamTopic:
    """A declared topic: its full name (prefix applied), kind and Faust topic."""

    name: str
    kind: Kind
    partitions: int
    faust_topic: Any
    dead_letter_name: str


@dataclass
class HandlerSpec:
    name: str
    topic: StreamTopic
    message_types: frozenset[str]
    fn: Handler
    retry: RetryPolicy
    agent: Any = field(default=None, repr=False)


class StreamsApp:
    """A Faust app built from settings, with typed envelope handlers."""

    def __init__(
        self,
        app_id: str | None = None,
        *,
        registry: MessageRegistry,
        settings: Settings | None = None,
        **faust_options: Any,
    ) -> None:
        self.settings = settings or load_settings()
        self.registry = registry
        # STREAMS_APP_ID (or an explicit settings value) wins over the id given in code.
        explicit = "app_id" in self.settings.model_fields_set
        self.app_id = self.settings.app_id if explicit or app_id is None else app_id
        self.metrics = Metrics()
        self.topics: dict[str, StreamTopic] = {}
        self.handlers: dict[str, HandlerSpec] = {}
        self._command_owner: dict[str, str] = {}
        self.data_dir.mkdir(parents=True, exist_ok=True)
        self.faust = faust.App(self.app_id, **{**self._faust_config(), **faust_options})
        self.dead_letters = DeadLetters(self)
        self.faust.task(self._declare_dead_letter_topics)

    # --- configuration --------------------------------------------------------
    @property
    def data_dir(self) -> Path:
        """Local state folder of this worker (RocksDB tables live here)."""
        if self.settings.worker_data_dir is not None:
            return self.settings.worker_data_dir.expanduser().resolve()
        return self.settings.home_path / "worker" / self.app_id

    def _faust_config(self) -> dict[str, Any]:
        s = self.settings
        conf: dict[str, Any] = {
            "broker": [f"kafka://{server}" for server in s.bootstrap_servers.split(",")],
            "broker_client_id": s.kafka_client_id,
            "store": s.store,
            "datadir": str(self.data_dir),
            "topic_partitions": s.topic_partitions,
            "topic_replication_factor": s.topic_replication_factor,
            "processing_guarantee": s.processing_guarantee.value,
            "broker_commit_interval": s.broker_commit_interval,
            "stream_buffer_maxsize": s.stream_buffer_maxsize,
            "web_enabled": s.web_enabled,
            "web_bind": s.web_host,
            "web_port": s.web_port,
            "web_host": s.web_host,
            "consumer_auto_offset_reset": "earliest",
            "topic_disable_leader": False,
        }
        credentials = self._credentials()
        if credentials is not None:
            conf["broker_credentials"] = credentials
        return conf

    def _credentials(self) -> Any:
        s = self.settings
        proto = s.kafka_security_protocol
        if proto is SecurityProtocol.PLAINTEXT:
            return None
        if proto is SecurityProtocol.SSL:
            return faust.SSLCredentials(s.ssl_context())
        return faust.SASLCredentials(
            username=s.kafka_sasl_username,
            password=s.kafka_sasl_password.get_secret_value() if s.kafka_sasl_password else None,
            mechanism=s.kafka_sasl_mechanism.value if s.kafka_sasl_mechanism else None,
            ssl_context=s.ssl_context() if proto is SecurityProtocol.SASL_SSL else None,
        )

    # --- declarations ---------------------------------------------------------
    def topic_name(self, name: str) -> str:
        """Full topic name with the configured prefix."""
        return f"{self.settings.topic_prefix}{name}"

    def topic(self, name: str, *, kind: Kind, partitions: int | None = None, **options: Any) -> StreamTopic:
        """Declare a topic carrying envelopes. The worker creates it (with
        ``partitions``) if it does not exist; records are raw bytes decoded by
        the registry."""
        full = self.topic_name(name)
        if full in self.topics:
            existing = self.topics[full]
            if existing.kind is not kind:
                raise ConfigurationError(f"topic {full!r} declared both as {existing.kind.value} and {kind.value}")
            return existing
        count = partitions or self.settings.topic_partitions
        ft = self.faust.topic(
            full,
            partitions=count,
            key_serializer="raw",
            value_serializer="raw",
            internal=True,  # the worker declares (creates) it on start-up
            **options,
        )
        topic = StreamTopic(full, kind, count, ft, dead_letter_name=f"{full}.dlq")
        self.topics[full] = topic
        return topic

    def table(self, name: str, *, partitions: int | None = None, default: Any = None,
              **options: Any) -> Any:
        """Declare a Faust table (RocksDB through rocksdict by default) backed by the
        compacted changelog ``<app id>-<name>-changelog``.

        Keep it co-partitioned with the topic whose handler writes it: same
        partition count, and key it by the record key (a write inside a handler
        goes to the changelog partition of the message being handled).
        """
        kwargs: dict[str, Any] = {
            "partitions": partitions or self.settings.topic_partitions,
            "default": default,
            **options,
        }
        if self.settings.store.startswith("rocksdb://"):
            # Faust's default block cache is 2 GiB per database: size it for small machines.
            kwargs.setdefault("options", {
                "block_cache_size": self.settings.rocksdb_block_cache_mb * 1024 * 1024,
                "write_buffer_size": 8 * 1024 * 1024,
                "max_write_buffer_number": 2,
            })
        return self.faust.Table(name, **kwargs)

    def handler(
        self,
        topic: StreamTopic,
        *message_types: str,
        name: str | None = None,
        retry: RetryPolicy | None = None,
    ) -> Callable[[Handler], Handler]:
        """Declare ``fn(envelope, delivery)`` as the handler of ``message_types`` on ``topic``."""
        if not message_types:
            raise ConfigurationError("a handler needs at least one message type")

        def register(fn: Handler) -> Handler:
            handler_name = name or fn.__name__
            if handler_name in self.handlers:
                raise ConfigurationError(f"two handlers are named {handler_name!r}")
            for message_type in message_types:
                try:
                    spec = self.registry.spec(message_type)
                except DecodeError:
                    raise ConfigurationError(
                        f"handler {handler_name!r}: message type {message_type!r} is not registered"
                    ) from None
                if spec.kind is not topic.kind:
                    raise ConfigurationError(
                        f"handler {handler_name!r}: {message_type!r} is a {spec.kind.value} but "
                        f"topic {topic.name!r} is a {topic.kind.value} topic"
                    )
                if spec.kind is Kind.COMMAND:
                    owner = self._command_owner.get(message_type)
                    if owner is not None:
                        raise ConfigurationError(
                            f"command {message_type!r} already has a handler ({owner!r}); "
                            f"a command has exactly one owner, refusing {handler_name!r}"
                        )
                    self._command_owner[message_type] = handler_name
            self.dead_letters.topic_for(topic.name, topic.partitions)
            spec_ = HandlerSpec(handler_name, topic, frozenset(message_types), fn, retry or RetryPolicy())
            spec_.agent = self.faust.agent(topic.faust_topic, name=handler_name)(self._make_agent(spec_))
            self.handlers[handler_name] = spec_
            return fn

        return register

    async def _declare_dead_letter_topics(self) -> None:
        for dlq in self.dead_letters.topics():
            await dlq.maybe_declare()

    def topic_specs(self) -> list["TopicSpec"]:
        """Every topic this app declares (sources and their dead-letter topics)."""
        from streams.kafka_admin import TopicSpec

        rf = self.settings.topic_replication_factor
        out = []
        for t in self.topics.values():
            out.append(TopicSpec(t.name, t.partitions, rf))
            out.append(TopicSpec(t.dead_letter_name, t.partitions, rf))
        return out

    async def ensure_topics(self) -> list[str]:
        """Create the app's topics on the broker if missing (producers call this
        before the first worker ran); returns the names created."""
        from streams.kafka_admin import ensure_topics

        return await ensure_topics(self.settings, self.topic_specs())

    # --- the agent loop -------------------------------------------------------
    def _make_agent(self, spec: HandlerSpec):
        async def agent(stream):
            async for event in stream.events():
                await self.process(spec, event)

        agent.__name__ = spec.name
        agent.__qualname__ = spec.name
        agent.__doc__ = f"Envelope handler {spec.name} for {sorted(spec.message_types)} on {spec.topic.name}."
        return agent

    async def process(self, spec: HandlerSpec, event: Any) -> None:
        """Decode one record and run the handler with retries; park it on failure."""
        msg = event.message
        tp = (msg.topic, msg.partition)
        try:
            envelope = self.registry.decode(event.value)
        except DecodeError as exc:
            exc.at(msg.topic, msg.partition, msg.offset)
            log.error("undecodable record parked in %s: %s", spec.topic.dead_letter_name, exc)
            await self.dead_letters.park(spec, msg, reason=exc.reason.value, error=exc, attempts=0)
            self.metrics.inc("dead_lettered", spec.name, *tp)
            return
        if envelope.message_type not in spec.message_types:
            self.metrics.inc("ignored", spec.name, *tp)
            return
        attempt = 0
        first_failure: float | None = None
        while True:
            attempt += 1
            delivery = Delivery(msg.topic, msg.partition, msg.offset, attempt, envelope.message_id)
            try:
                await spec.fn(envelope, delivery)
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # noqa: BLE001 - a handler error must not stop the partition
                loop = asyncio.get_running_loop()
                first_failure = first_failure or loop.time()
                if spec.retry.should_retry(exc, attempt):
                    delay = spec.retry.delay(attempt)
                    self.metrics.inc("retried", spec.name, *tp)
                    log.warning(
                        "handler %s failed on %s %s (attempt %d/%d): %r; retrying in %.2fs",
                        spec.name, envelope.message_type, envelope.message_id, attempt,
                        spec.retry.max_attempts, exc, delay,
                    )
                    await asyncio.sleep(delay)
                    continue
                log.error(
                    "handler %s gave up on %s %s at %s[%d]@%d after %d attempt(s): %r",
                    spec.name, envelope.message_type, envelope.message_id,
                    msg.topic, msg.partition, msg.offset, attempt, exc,
                )
                await self.dead_letters.park(
                    spec, msg, reason="handler_error", error=exc, attempts=attempt, envelope=envelope
                )
                self.metrics.inc("dead_lettered", spec.name, *tp)
                return
            self.metrics.inc("handled", spec.name, *tp)
            return

    # --- running ------------------------------------------------------------
    def main(self, argv: list[str] | None = None) -> None:
        """Run Faust's command line for this app (``streams worker`` calls this)."""
        import sys

        if argv is not None:
            sys.argv = ["streams", *argv]
        self.faust.main()

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
group (group id = app id), plus one per delayed-retry level. Records are decoded
through the registry; the handler sees only the message types it declared and,
being idempotent by default, each ``message_id`` once (processed-ID table, see
:mod:`streams.consume.dedup`). A record that cannot be decoded, and a message whose
handler keeps failing, is parked on the topic's dead-letter topic (see
:mod:`streams.consume.dead_letters`) and the partition moves on. The whole path of one
record is described in :mod:`streams.consume.runner`.

Topic conventions, enforced where they can be:

* an **event topic** may be consumed by any number of consumer groups and, in
  one app, by any number of handlers;
* a **command topic** has exactly one owning group, and in that app exactly one
  handler per command type: declaring a second one raises
  :class:`~streams.errors.ConfigurationError` at start-up. Handlers of a command
  type must sit on a command topic, and of an event type on an event topic.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

import faust
from pydantic import BaseModel

from streams import tracing
from streams.consume.committed import CommittedAtAssignment
from streams.consume.context import ConsumeContext
from streams.consume.dead_letters import DeadLetters
from streams.consume.dedup import ProcessedIds
from streams.consume.dispatch import BatchDispatcher
from streams.consume.effects import Effects, capture_output
from streams.consume.events import agent_body
from streams.consume.lane import Revocations
from streams.consume.lifecycle import run_worker
from streams.consume.outputs import Output
from streams.consume.outputs import staged as staged_outputs
from streams.consume.publishing import Publisher
from streams.consume.retry import RetryPolicy
from streams.consume.retry_topics import RetryTopics
from streams.consume.runner import HandlerRunner
from streams.consume.spec import Handler, HandlerSpec, StreamTopic
from streams.consume.transactions import Transactions
from streams.errors import ConfigurationError, DecodeError
from streams.faust_compat import diagnostics, private
from streams.faust_compat.startup import before_ready
from streams.faust_compat.subscriptions import (
    SubscriptionWatch,
    install_changelog_check,
    install_creation_wait,
)
from streams.kafka.names import dead_letter_topic, retry_topic
from streams.messages.envelope import Envelope, Kind
from streams.messages.registry import DecodeLimits, MessageIdFallback, MessageRegistry
from streams.metrics import Metrics
from streams.settings import SecurityProtocol, Settings, load_settings

if TYPE_CHECKING:
    from streams.kafka.admin import TopicSpec

log = logging.getLogger(__name__)


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
        #: bounds on record values the handlers accept (larger or deeper ones are parked)
        self.decode_limits = DecodeLimits(self.settings.max_value_bytes, self.settings.max_nesting_depth)
        self.topics: dict[str, StreamTopic] = {}
        self.handlers: dict[str, HandlerSpec] = {}
        self._command_owner: dict[str, str] = {}
        self.data_dir.mkdir(parents=True, exist_ok=True)
        private.check_classes()  # every private name of Faust/aiokafka used here still exists
        self.faust = faust.App(self.app_id, **{**self._faust_config(), **faust_options})
        #: the group's committed offsets as of the last assignment
        self.committed = CommittedAtAssignment(self.settings, self.app_id)
        #: exactly_once routing: every write of a record in the transaction of its offset
        self.transactions = Transactions(self.faust, self.committed,
                                         enabled=self.settings.processing_guarantee.value == "exactly_once")
        self.publisher = Publisher(self.faust, self.transactions)
        self.dead_letters = DeadLetters(self.publisher, self.faust.topic)
        self.retry_topics = RetryTopics(self.publisher, self.faust.topic)
        #: what the runners and the dispatcher use of the app
        self.context = ConsumeContext(self.app_id, self.settings, self.faust, self.registry, self.decode_limits,
                                      self.metrics, self.transactions, self.publisher, self.dead_letters,
                                      self.retry_topics, self.committed)
        #: the batch consume path (streams.consume); None with STREAMS_CONSUME_PATH=events
        self.dispatcher: BatchDispatcher | None = None
        from streams.faust_compat import consumer_fixes

        #: rebalances that dropped records under way (the events path's; the dispatcher keeps its own)
        self.revocations = Revocations()
        consumer_fixes.install_cleared_events_fix(self.faust, on_clear=self._on_clear)
        if self.transactions.enabled:
            consumer_fixes.install_recovery_fix(self.faust, self.settings)
        if self.settings.restore_path == "batch":  # table restores in write batches (streams.faust_compat.restore)
            from streams.faust_compat import restore

            restore.install(self.faust)
        self._outputs: list[Any] = []
        #: output topic → the message types its handlers send there; outbox topic → what the service writes
        self.output_types: dict[str, tuple[str, ...]] = {}
        self.outbox_routes: dict[str, tuple[str, ...]] = {}
        self._effects: Effects | None = None
        self._effects_purged: list[Effects] = []
        self._runners: list[HandlerRunner] = []
        before_ready(self.faust, self._declare_topics, "DeclareTopics")
        if self.settings.consume_path == "batch":
            self.dispatcher = BatchDispatcher(self.faust, self.transactions, max_batch=self.settings.batch_max_records,
                                              max_buffered=self.settings.stream_buffer_maxsize)
        if self.dispatcher is not None:
            self.faust.on_before_shutdown.connect(self._stop_dispatcher)  # type: ignore[arg-type]  # async receivers are awaited
        # topics are in the brokers' metadata before the group forms, and a worker never sits idle
        # on a topic its group could not see when it formed (streams.faust_compat.subscriptions)
        install_creation_wait(self.faust, self.settings)
        install_changelog_check()
        self.subscriptions = SubscriptionWatch(self.faust, creates_topics=self.settings.create_topics)
        self.faust.task(self.subscriptions.run)
        self.faust.on_partitions_assigned.connect(self._on_assigned)  # type: ignore[arg-type]  # async receivers are awaited
        #: the worker's web views (table contents, health, metrics, the dashboard): set by the
        #: ``streams worker`` command, which serves them (streams.web); the app itself never imports the web layer
        self.web: Any = None

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
            # replicas (and min.insync.replicas) follow the cluster when unset: see streams.faust_compat.subscriptions
            "topic_replication_factor": s.topic_replication_factor or 1,
            "processing_guarantee": s.processing_guarantee.value,
            "broker_commit_interval": s.broker_commit_interval,
            "broker_session_timeout": s.broker_session_timeout,
            "broker_heartbeat_interval": s.broker_heartbeat_interval,
            "stream_buffer_maxsize": s.stream_buffer_maxsize,
            "consumer_max_fetch_size": s.consumer_max_fetch_size,
            "broker_max_poll_records": s.broker_max_poll_records,
            "table_standby_replicas": s.standby_replicas,
            "web_enabled": s.web_enabled,
            "web_bind": s.web_host,
            "web_port": s.web_port,
            "web_host": s.web_advertised_host or s.web_host,
            "consumer_auto_offset_reset": "earliest",
            "topic_allow_declare": s.create_topics,
            "topic_disable_leader": True,  # the leader topic serves on_leader timers, which no agent uses
        }
        if s.group_instance_id:  # static membership (KIP-345): aiokafka's group_instance_id
            conf["consumer_group_instance_id"] = s.group_instance_id
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

    def topic(self, name: str, *, kind: Kind, partitions: int | None = None,
              message_id_fallback: MessageIdFallback | str | None = None, **options: Any) -> StreamTopic:
        """Declare a topic carrying envelopes. The worker creates it (with
        ``partitions``) if it does not exist; records are raw bytes decoded by
        the registry. ``message_id_fallback`` (default: ``STREAMS_MESSAGE_ID_FALLBACK``,
        itself ``reject``) says what stands in for a missing ``message_id`` on this
        topic: see :class:`~streams.messages.registry.MessageIdFallback`."""
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
        fallback = MessageIdFallback(message_id_fallback or self.settings.message_id_fallback)
        topic = StreamTopic(full, kind, count, ft, dead_letter_name=dead_letter_topic(full), message_id_fallback=fallback)
        self.topics[full] = topic
        return topic

    def changes(self, name: str, row: type[BaseModel] | None = None, *, table: str | None = None,
                tables: dict[str, type[BaseModel]] | None = None, partitions: int | None = None) -> StreamTopic:
        """Declare a topic of Debezium change events (``<prefix>.<schema>.<table>``): its handlers
        get ``Envelope[ChangeEvent[row]]`` with a message_id made from the change's log position
        (see :mod:`streams.cdc.changes`). ``table`` (``schema.table``) defaults to the topic name's
        last two parts; ``tables`` maps several tables to their row models (a routed topic)."""
        from streams.cdc.changes import ChangeDecoder, change_message_type

        if tables is None:
            if row is None:
                raise ConfigurationError(f"changes({name!r}): give the row model (or tables={{...}})")
            table = table or ".".join(name.split(".")[-2:])
            tables = {table: row}
        decoder = ChangeDecoder(tables, self.decode_limits)
        for table_name in tables:
            self.registry.register(change_message_type(table_name), decoder.event_model(table_name), Kind.EVENT)
        topic = self.topic(name, kind=Kind.EVENT, partitions=partitions)
        if topic.decoder is not None and set(topic.decoder.tables) != set(tables):
            raise ConfigurationError(f"topic {topic.name!r} is declared twice with different tables")
        topic.decoder = decoder
        topic.message_types = decoder.message_types
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
                "write_buffer_size": self.settings.rocksdb_write_buffer_mb * 1024 * 1024,
                "max_write_buffer_number": 2,
            })
        table = self.faust.Table(name, **kwargs)
        self.transactions.patch_table(table)
        return table

    def handler(
        self,
        topic: StreamTopic,
        *message_types: str,
        name: str | None = None,
        retry: RetryPolicy | None = None,
        idempotent: bool = True,
        sink: Any = None,
        effects: Effects | None = None,
    ) -> Callable[[Handler], Handler]:
        """Declare ``fn(envelope, delivery)`` as the handler of ``message_types`` on ``topic``.

        ``idempotent`` (default) keeps a processed-ID table for the handler and
        skips messages whose ``message_id`` it already handled. ``retry`` sets
        in-place attempts and optional delayed retry topics. ``sink`` (a
        :class:`~streams.consume.sink.CircuitBreaker`, :class:`~streams.consume.sink.RateLimiter`
        or a tuple of them) guards the handler's downstream: while it says wait,
        the handler's partitions pause on this worker (see :mod:`streams.consume.sink`).
        ``effects`` (:meth:`effects`) gives the handler ``delivery.transaction()``: its
        database writes commit together with the message's processed id, and a
        processed message is skipped before the handler runs (see :mod:`streams.consume.effects`).
        """
        message_types = message_types or topic.message_types
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
            hspec = HandlerSpec(handler_name, topic, frozenset(message_types), fn, retry or RetryPolicy(),
                                sinks=tuple(sink) if isinstance(sink, (tuple, list)) else
                                (() if sink is None else (sink,)), effects=effects)
            if effects is not None and effects not in self._effects_purged:
                self._effects_purged.append(effects)

                async def purge_processed_messages() -> None:
                    await effects.run_purge()

                self.faust.task(purge_processed_messages)
            if idempotent:
                hspec.processed = ProcessedIds(self.table, handler_name, topic.partitions,
                                               retention=self.settings.dedup_retention)
            runner = HandlerRunner(hspec, self.context)
            self._runners.append(runner)
            retry_topics = self.retry_topics.declare(hspec)
            if self.dispatcher is not None:
                # the batch path: Faust subscribes to the topics, the dispatcher takes their records
                self.faust.topics.add(topic.faust_topic)
                self.dispatcher.route(topic.name, runner, handler_name)
                for level, faust_retry_topic in enumerate(retry_topics, start=1):
                    self.faust.topics.add(faust_retry_topic)
                    self.dispatcher.route(retry_topic(topic.name, level), runner, f"{handler_name}-retry-{level}",
                                          wait_until_due=True)
            else:  # the events path: one Faust agent per handler and topic
                sources = [(topic.faust_topic, handler_name, topic.name, False)] + [
                    (faust_retry_topic, f"{handler_name}-retry-{level}", retry_topic(topic.name, level), True)
                    for level, faust_retry_topic in enumerate(retry_topics, start=1)]
                for faust_topic, agent_name, topic_name, due in sources:
                    body = agent_body(runner, agent_name, topic_name, self.faust, self.transactions, self.revocations,
                                      wait_until_due=due)
                    hspec.agents.append(self.faust.agent(faust_topic, name=agent_name)(body))
            self.handlers[handler_name] = hspec
            return fn

        return register

    def output(self, name: str, *, kind: Kind, partitions: int | None = None,
               message_types: tuple[str, ...] = ()) -> StreamTopic:
        """Declare a topic the app only writes to (created by the worker on start); ``message_types``:
        what its handlers send there (for the AsyncAPI document, :mod:`streams.asyncapi`)."""
        topic = self.topic(name, kind=kind, partitions=partitions)
        self._outputs.append(topic)
        self.output_types[topic.name] = self._registered(message_types)
        return topic

    def outbox_route(self, name: str, *message_types: str, partitions: int | None = None) -> StreamTopic:
        """Declare that this app's service writes ``message_types`` to topic ``name`` through the
        outbox (:mod:`streams.outbox`; the relay publishes them): for the AsyncAPI document and
        :meth:`topic_specs`. The worker does not write there itself."""
        types = self._registered(message_types)
        kinds = {self.registry.spec(t).kind for t in types}
        if len(kinds) != 1:
            raise ConfigurationError(f"outbox route {name!r}: give message types of one kind (got {sorted(types)})")
        topic = self.topic(name, kind=kinds.pop(), partitions=partitions)
        self.outbox_routes[topic.name] = types
        return topic

    def _registered(self, message_types: tuple[str, ...]) -> tuple[str, ...]:
        unknown = [t for t in message_types if t not in self.registry]
        if unknown:
            raise ConfigurationError(f"message types {unknown} are not registered (known: {self.registry.types()})")
        return tuple(message_types)

    def effects(self, **options: Any) -> Effects:
        """The app's processed-messages table in ``STREAMS_DATABASE_URL`` (PostgreSQL, or MySQL / MariaDB), for
        handlers declared with ``effects=`` (one per app; ``options`` go to
        :class:`~streams.consume.effects.Effects` the first time)."""
        if self._effects is None:
            self._effects = Effects(self.settings, **options)
        return self._effects

    async def send(self, topic: StreamTopic, envelope: Envelope) -> None:
        """Publish an envelope. From a handler, it is held until the handler's attempt succeeds
        and only then sent (an attempt that fails, is retried or parked sends nothing), with a
        ``message_id`` derived from the input's unless the envelope was given one (see
        :mod:`streams.consume.outputs`); under ``exactly_once`` it joins the transaction of
        the message being handled. Inside ``delivery.transaction()`` it is also recorded with
        the processed id, to be sent again if a redelivery is skipped (see
        :mod:`streams.consume.effects`). Outside a handler it is sent at once and the broker's
        ack awaited."""
        attempt = staged_outputs()
        if attempt is not None:
            capture_output(attempt.add(topic.name, envelope))
            return
        key, value, headers = envelope.to_record()
        headers = tracing.output_headers(headers)
        capture_output(Output(topic.name, key, value, headers))
        await self.publisher.publish(topic.name, key, value, headers)

    async def publish(self, topic: str, key: bytes | None, value: bytes | None, headers: Any,
                      partition: int | None = None) -> None:
        """Write one raw record to ``topic`` (full name) and wait for the broker's ack (under
        ``exactly_once``, from a handler: in the transaction of the record being handled)."""
        await self.publisher.publish(topic, key, value, headers, partition)

    async def _declare_topics(self) -> None:
        """Create every topic this app writes to but does not consume (Faust only creates the ones
        it subscribes to), before the worker says it is ready; and ``kill -USR1 <worker pid>``
        logs where every asyncio task waits."""
        diagnostics.install_stack_dump(self.faust, self.transactions.barrier)
        for t in [*self.dead_letters.topics(), *self.retry_topics.topics(), *(o.faust_topic for o in self._outputs)]:
            await t.maybe_declare()

    def _on_clear(self) -> None:
        """Faust cleared its buffers: at the start of a rebalance (not when it resumes after a
        recovery), records under way are given up to the partitions' next owners."""
        if self.dispatcher is not None:
            self.dispatcher.clear()
        elif not self.faust.flow_control.is_active():
            self.revocations.bump()

    async def _stop_dispatcher(self, sender: Any = None, **kwargs: Any) -> None:
        """After the consumer stopped (Faust waited for the batches in hand): stop the workers."""
        if self.dispatcher is not None:
            await self.dispatcher.stop()

    async def _on_assigned(self, sender: Any = None, assigned: Any = None, **kwargs: Any) -> None:
        from streams.faust_compat import consumer_fixes

        private.check_consumer(self.faust.consumer)
        consumer_fixes.install(self.faust.consumer)
        consumer_fixes.forget_delivery_starts(self.faust.consumer)
        self.transactions.install()
        if self.dispatcher is not None:
            self.dispatcher.install()
            self.dispatcher.keep_only(set(self.faust.consumer.assignment()))
        self.committed.forget()
        if self.handlers:
            from streams.kafka.reprocess_windows import load_windows

            try:
                self.context.reprocess_windows = await load_windows(self.settings, self.app_id)
            except Exception as exc:  # noqa: BLE001 - without windows, dedup simply stays on
                log.error("could not read the reprocess windows: %r", exc)
            if self.context.reprocess_windows:
                log.warning("reprocess windows active: %s", sorted(self.context.reprocess_windows.windows))
        for hspec in self.handlers.values():
            if hspec.processed is not None:
                hspec.processed.forget_assignment()
        for runner in self._runners:
            for guard in runner.guards:
                guard.reset()

    def topic_specs(self) -> list["TopicSpec"]:
        """Every topic this app declares (sources, outputs, retry and dead-letter topics)."""
        from streams.kafka.admin import TopicSpec

        rf = self.settings.topic_replication_factor  # None: the cluster's default (kafka.admin.new_topic)
        out = []
        for t in self.topics.values():
            out.append(TopicSpec(t.name, t.partitions, rf))
            out.append(TopicSpec(t.dead_letter_name, t.partitions, rf))
        for hspec in self.handlers.values():
            out.extend(TopicSpec(name, hspec.topic.partitions, rf) for name in hspec.source_topics()[1:])
        return out

    async def ensure_topics(self) -> list[str]:
        """Create the app's topics on the broker if missing (producers call this
        before the first worker ran); returns the names created."""
        from streams.kafka.admin import ensure_topics

        return await ensure_topics(self.settings, self.topic_specs())

    # --- running ------------------------------------------------------------
    def main(self, argv: list[str] | None = None) -> None:
        """Run Faust's command line for this app (``streams worker`` calls this); see
        :mod:`streams.consume.lifecycle` for what a worker notes of an unclean stop."""
        tracing.configure(service_name=self.app_id)
        run_worker(self.faust, self.data_dir, self.transactions, argv)

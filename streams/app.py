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

import asyncio
import logging
import os
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

import faust
from pydantic import BaseModel

from streams.consume.dead_letters import DeadLetters
from streams.consume.dedup import ProcessedIds
from streams.consume.dispatch import BatchDispatcher
from streams.consume.effects import Effects, capture_output
from streams.consume.outputs import Output
from streams.consume.outputs import staged as staged_outputs
from streams.consume.retry import RetryPolicy
from streams.consume.retry_topics import RetryTopics
from streams.consume.runner import (
    HandlerRunner,
    ack_when_durable,
    changelog_writes_durable,
)
from streams.consume.spec import Handler, HandlerSpec, StreamTopic
from streams.consume.transactions import Transactions
from streams.errors import ConfigurationError, DecodeError
from streams.faust_compat import diagnostics, private
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
        self.dead_letters = DeadLetters(self)
        self.retry_topics = RetryTopics(self)
        #: exactly_once routing: every write of a record in the transaction of its offset
        self.transactions = Transactions(self)
        #: the batch consume path (streams.consume); None with STREAMS_CONSUME_PATH=events
        self.dispatcher: BatchDispatcher | None = None
        from streams.faust_compat import consumer_fixes

        consumer_fixes.install_cleared_events_fix(self.faust, on_clear=lambda: self.dispatcher and self.dispatcher.clear())
        if self.transactions.enabled:
            consumer_fixes.install_recovery_fix(self.faust, self.settings)
        if self.settings.restore_path == "batch":  # table restores in write batches (streams.faust_compat.restore)
            from streams.faust_compat import restore

            restore.install(self.faust)
        self._outputs: list[Any] = []
        self._effects: Effects | None = None
        self._effects_purged: list[Effects] = []
        self._raw_topics: dict[str, Any] = {}
        self._runners: list[HandlerRunner] = []
        self._committed_at_assignment: dict[tuple[str, int], int] | None = None
        #: offset ranges to handle again on purpose (streams.consume.reprocess), read on each assignment
        self.reprocess_windows: Any = None
        self.faust.task(self._declare_topics)
        #: the batch consume path (streams.consume); None with STREAMS_CONSUME_PATH=events
        self.dispatcher = BatchDispatcher(self) if self.settings.consume_path == "batch" else None
        if self.dispatcher is not None:
            self.faust.on_before_shutdown.connect(self._stop_dispatcher)  # type: ignore[arg-type]  # async receivers are awaited
        # topics are in the brokers' metadata before the group forms, and a worker never sits idle
        # on a topic its group could not see when it formed (streams.faust_compat.subscriptions)
        install_creation_wait(self.faust, self.settings)
        install_changelog_check()
        self.subscriptions = SubscriptionWatch(self)
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
                hspec.processed = ProcessedIds(self, handler_name, topic.partitions,
                                               retention=self.settings.dedup_retention)
            runner = HandlerRunner(self, hspec)
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
            else:
                hspec.agents.append(self.faust.agent(topic.faust_topic, name=handler_name)(
                    _agent_fn(runner, handler_name, f"{handler_name} on {topic.name}", topic.name)))
                for level, faust_retry_topic in enumerate(retry_topics, start=1):
                    agent_name = f"{handler_name}-retry-{level}"
                    hspec.agents.append(self.faust.agent(faust_retry_topic, name=agent_name)(
                        _agent_fn(runner, agent_name, f"{handler_name} on {retry_topic(topic.name, level)}",
                                  retry_topic(topic.name, level),
                                  wait_until_due=True)))
            self.handlers[handler_name] = hspec
            return fn

        return register

    def output(self, name: str, *, kind: Kind, partitions: int | None = None) -> StreamTopic:
        """Declare a topic the app only writes to (created by the worker on start)."""
        topic = self.topic(name, kind=kind, partitions=partitions)
        self._outputs.append(topic)
        return topic

    def effects(self, **options: Any) -> Effects:
        """The app's processed-messages table in PostgreSQL (``STREAMS_DATABASE_URL``), for
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
        capture_output(Output(topic.name, key, value, headers))
        await self.publish(topic.faust_topic, key, value, headers)

    async def send_outputs(self, outputs: list[Output]) -> None:
        """Send a succeeded attempt's outputs (in order) and wait for the broker's acks; under
        ``exactly_once`` in the transaction of the message being handled."""
        if not outputs:
            return
        if self.transactions.enabled:
            sent = [self.transactions.send_soon(o.topic, o.key, o.value, o.headers) for o in outputs]
        else:
            sent = [await self._raw_topic(o.topic).send(key=o.key, value=o.value, headers=o.headers)
                    for o in outputs]
        await asyncio.gather(*sent)

    def _raw_topic(self, topic: str) -> Any:
        faust_topic = self._raw_topics.get(topic)
        if faust_topic is None:
            faust_topic = self._raw_topics[topic] = self.faust.topic(topic, key_serializer="raw",
                                                                     value_serializer="raw")
        return faust_topic

    async def publish_to(self, topic: str, key: bytes | None, value: bytes | None, headers: Any) -> None:
        """:meth:`publish` to a topic given by its full name."""
        await self.publish(self._raw_topic(topic), key, value, headers)

    async def publish(self, faust_topic: Any, key: bytes | None, value: bytes | None, headers: Any,
                      partition: int | None = None) -> None:
        """Write one raw record from a handler and wait for the broker's ack (under
        ``exactly_once``: in the transaction of the record being handled)."""
        if self.transactions.enabled:
            await self.transactions.send(faust_topic.get_topic_name(), key, value, headers, partition)
            return
        fut = await faust_topic.send(key=key, value=value, headers=headers, partition=partition)
        await fut

    async def _declare_topics(self) -> None:
        """Create every topic this app writes to but does not consume (Faust only
        creates the ones it subscribes to). Also: ``kill -USR1 <worker pid>`` logs
        the stack of every asyncio task (for a worker that seems stuck)."""
        import signal

        global _DEBUG_APP
        _DEBUG_APP = self
        try:
            asyncio.get_running_loop().add_signal_handler(signal.SIGUSR1, _log_task_stacks)
        except (NotImplementedError, RuntimeError):
            pass
        for t in [*self.dead_letters.topics(), *self.retry_topics.topics(), *(o.faust_topic for o in self._outputs)]:
            await t.maybe_declare()

    async def _stop_dispatcher(self, sender: Any = None, **kwargs: Any) -> None:
        """After the consumer stopped (Faust waited for the batches in hand): stop the workers."""
        if self.dispatcher is not None:
            await self.dispatcher.stop()

    async def committed_offset(self, topic: str, partition: int) -> int | None:
        """The group's committed offset of ``topic[partition]`` as the broker had it when
        the partitions were last assigned (None: never committed). Read once per assignment;
        Faust's own copy is filled only after its recovery, while records may already flow."""
        if self._committed_at_assignment is None:
            from streams.kafka.admin import committed_offsets

            self._committed_at_assignment = await committed_offsets(self.settings, self.app_id)
        return self._committed_at_assignment.get((topic, partition))

    async def _on_assigned(self, sender: Any = None, assigned: Any = None, **kwargs: Any) -> None:
        from streams.faust_compat import consumer_fixes

        private.check_consumer(self.faust.consumer)
        consumer_fixes.install(self.faust.consumer)
        consumer_fixes.forget_delivery_starts(self.faust.consumer)
        self.transactions.install()
        if self.dispatcher is not None:
            self.dispatcher.install()
            self.dispatcher.keep_only(set(self.faust.consumer.assignment()))
        self._committed_at_assignment = None
        if self.handlers:
            from streams.consume.reprocess import load_windows

            try:
                self.reprocess_windows = await load_windows(self.settings, self.app_id)
            except Exception as exc:  # noqa: BLE001 - without windows, dedup simply stays on
                log.error("could not read the reprocess windows: %r", exc)
            if self.reprocess_windows:
                log.warning("reprocess windows active: %s", sorted(self.reprocess_windows.windows))
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
        """Run Faust's command line for this app (``streams worker`` calls this).

        Under ``exactly_once`` a worker that did not stop cleanly (crash, SIGKILL)
        leaves processed-ID entries of aborted transactions in its local RocksDB; a
        marker file in the data dir tells a clean stop from an unclean one, and after
        an unclean one those entries are dropped (see :mod:`streams.consume.transactions`).
        """
        import sys

        if argv is not None:
            sys.argv = ["streams", *argv]
        marker = self.data_dir / ".worker-running"
        if marker.exists():
            self.transactions.unclean_start = True
            if self.transactions.enabled:
                log.warning("exactly_once: the last worker on %s did not stop cleanly; entries of its aborted "
                            "transactions will be dropped from the local processed-ID tables", self.data_dir)
        marker.write_text(str(os.getpid()))
        try:
            self.faust.main()
        except SystemExit as exc:
            if exc.code in (0, None):
                marker.unlink(missing_ok=True)
            raise



class _StandInEvent:
    """The current event for records the gap guard handles outside Faust's delivery:
    Faust's table code only reads ``event.message`` (partition, topic, offset)."""

    __slots__ = ("__weakref__", "message")

    def __init__(self, record: Any) -> None:
        self.message = record


class _RecordAt:
    """Where a batch of recovered records belongs: their partition's ``tp``, topic and partition."""

    __slots__ = ("partition", "topic", "tp")

    def __init__(self, tp: Any, record: Any) -> None:
        self.tp, self.topic, self.partition = tp, record.topic, record.partition


def _log_task_stacks() -> None:
    """Log where every asyncio task waits (its await chain, innermost last)."""
    lines: list[str] = []
    for task in asyncio.all_tasks():
        chain: list[str] = []
        coro: Any = task.get_coro()
        while coro is not None:
            frame = getattr(coro, "cr_frame", None) or getattr(coro, "gi_frame", None)
            if frame is not None:
                chain.append(f"{frame.f_code.co_filename.rsplit('site-packages/', 1)[-1]}:{frame.f_lineno}"
                             f" {frame.f_code.co_name}")
            coro = getattr(coro, "cr_await", None) or getattr(coro, "gi_yieldfrom", None)
        lines.append(f"{task.get_name()[:60]}: " + " -> ".join(chain))
    import gc
    import types

    ours = []
    for obj in gc.get_objects():  # suspended coroutines of this framework (chains above stop at wrappers)
        if isinstance(obj, types.CoroutineType) and obj.cr_frame is not None:
            code = obj.cr_frame.f_code
            if "/streams/" in code.co_filename or "/agents/" in code.co_filename:
                ours.append(f"{code.co_filename.rsplit('/', 2)[-2:]}:{obj.cr_frame.f_lineno} {code.co_name}"
                            f" awaiting {type(obj.cr_await).__name__}")
    log.warning("asyncio task stacks (SIGUSR1):\n%s\nsuspended framework coroutines:\n%s",
                "\n".join(sorted(lines)), "\n".join(sorted(ours)))
    if _DEBUG_APP is not None:
        try:
            diagnostics.log_consumer_state(_DEBUG_APP.faust, _DEBUG_APP.transactions.barrier, log)
        except Exception as exc:  # noqa: BLE001
            log.warning("consumer state unavailable: %r", exc)


_DEBUG_APP: "StreamsApp | None" = None


def _agent_fn(runner: HandlerRunner, name: str, doc: str, topic_name: str, *, wait_until_due: bool = False):
    """The Faust agent body: one record at a time, in partition order, acknowledged
    only once it was handled (or parked), so a stop or crash mid-handler never
    commits past it. While no record arrives it checks for records Faust read but
    never delivered (:meth:`GapGuard.undelivered_tail`) and handles them."""
    guard = runner.guard(name)
    guard.topic_name = topic_name
    transactions = runner.app.transactions

    async def handle(stream, message, records, ack):
        # exactly_once: each record's writes and its offset are one transaction (no-op otherwise); a
        # record takes the commit barrier at its first write and gives it up once it is acknowledged
        for record in records:
            async with transactions.scope(message.topic, message.partition) as scope:
                await runner.process(record)
                if not await changelog_writes_durable(stream.app, record, runner.take_pending()):
                    return
                await scope.flush()
                guard.acknowledge(message.tp, record.offset)
        if ack is None:
            return
        async with transactions.scope(message.topic, message.partition) as scope:
            await runner.process(message)
            if transactions.enabled:
                if not await changelog_writes_durable(stream.app, message, runner.take_pending()):
                    return
                await scope.flush()
                await stream.ack(ack)
            else:
                await ack_when_durable(stream, ack, runner.take_pending())

    async def agent(stream):
        stream = stream.noack()
        events = stream.events().__aiter__()
        upcoming: asyncio.Future | None = None
        try:
            while True:
                if upcoming is None:
                    upcoming = asyncio.ensure_future(events.__anext__())
                done, _ = await asyncio.wait({upcoming}, timeout=guard.idle_check_interval)
                if not done:
                    if not wait_until_due:
                        for tp, records in await guard.undelivered_tail():
                            stand_in = _StandInEvent(records[0])
                            stream._set_current_event(stand_in)  # noqa: SLF001 - table writes read it
                            await handle(stream, _RecordAt(tp, records[0]), records, None)
                    continue
                try:
                    event = upcoming.result()
                except StopAsyncIteration:
                    break
                finally:
                    upcoming = None
                stream._set_current_event(event)  # noqa: SLF001 - it was set in the fetching task's context
                if wait_until_due:
                    await runner.wait_until_due(event.message)
                await handle(stream, event.message, await guard.missing_before(event.message), event)
        except Exception as exc:
            # Not a handler error (those are retried and parked inside runner.process): Kafka or the
            # state store failed under this record. Faust would restart just this agent and leave the
            # record unacknowledged, so the partition's commits would stop for good; stop the worker
            # instead, and a restarted one handles the record again from the committed offset.
            log.exception("%s: processing failed outside the handler (%r); stopping the worker", name, exc)
            await stream.app.crash(exc)
            await asyncio.Future()  # until the stopping worker cancels this agent
        finally:
            if upcoming is not None:
                upcoming.cancel()
            await guard.close()

    agent.__name__ = agent.__qualname__ = name.replace("-", "_")
    agent.__doc__ = f"Envelope handler {doc}."
    return agent

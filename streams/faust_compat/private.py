"""Every private name of faust-streaming, mode, aiokafka and rocksdict the framework uses.

The framework corrects and extends Faust at a few places Faust has no public
hook for (see :mod:`streams.faust_compat.consumer_fixes`,
:mod:`~streams.faust_compat.subscriptions`, :mod:`~streams.faust_compat.record_headers`,
:mod:`streams.consume.dispatch`). Each private name it reads or replaces is
listed in :data:`NAMES`, with why, and was checked against the versions in
:data:`CHECKED_AGAINST`. At start-up :func:`check_classes` asserts that every
class-level name exists, and :func:`check_instance` does the same for the
attributes an object gets in its ``__init__`` (the consumer's offsets
bookkeeping, the aiokafka client behind a consumer): an upgrade that renames
one stops the worker with :class:`IncompatibleLibrary`, naming the attribute and
the installed version, instead of silently switching a guard off. Code reads
them through :func:`require`, never ``getattr`` with a default.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass
from importlib import metadata
from typing import Any, cast

from faust.tables.manager import TableManager
from faust.transport.consumer import Consumer as FaustConsumer
from faust.transport.drivers.aiokafka import Producer as FaustProducer
from faust.web.drivers.aiohttp import Web as AiohttpWeb

from streams.errors import StreamsError

#: the library versions every name below was checked against
CHECKED_AGAINST = {"faust-streaming": "0.15.3", "mode-streaming": "0.7.1", "aiokafka": "0.14.0",
                   "rocksdict": "0.3.29"}


class IncompatibleLibrary(StreamsError):
    """A private name the framework relies on is missing from the installed library."""


@dataclass(frozen=True)
class PrivateName:
    """One private attribute of a library class the framework reads or replaces."""

    owner: str  #: ``module:Class``
    name: str
    why: str
    #: set in ``__init__`` (checked on an instance), not defined on the class
    instance: bool = False

    @property
    def library(self) -> str:
        top = self.owner.split(".", 1)[0]
        return {"faust": "faust-streaming", "mode": "mode-streaming"}.get(top, top)


_CONSUMER = "faust.transport.consumer:Consumer"
_AIOKAFKA_CONSUMER = "aiokafka.consumer.consumer:AIOKafkaConsumer"

NAMES: tuple[PrivateName, ...] = (
    # Faust's consumer: offsets bookkeeping (commit computation, gap guard, batch acknowledgement)
    PrivateName(_CONSUMER, "_new_offset", "replaced: commit offset over distinct acked offsets"),
    PrivateName(_CONSUMER, "_wait_next_records", "wrapped: the batch path takes its topics' records"),
    PrivateName(_CONSUMER, "_new_topicpartition", "the TP type its producer's transaction expects"),
    PrivateName(_CONSUMER, "_acked", "batch acknowledgement; diagnostics", instance=True),
    PrivateName(_CONSUMER, "_acked_index", "batch acknowledgement", instance=True),
    PrivateName(_CONSUMER, "_gap", "commit computation; diagnostics", instance=True),
    PrivateName(_CONSUMER, "_committed_offset", "batch acknowledgement; diagnostics", instance=True),
    PrivateName(_CONSUMER, "_read_offset", "gap guard: the consumer's position", instance=True),
    PrivateName(_CONSUMER, "_active_partitions", "diagnostics", instance=True),
    PrivateName(_CONSUMER, "_paused_partitions", "gap guard and pausing skip paused partitions", instance=True),
    PrivateName(_CONSUMER, "_unacked_messages", "what a revocation waits for (batch markers)", instance=True),
    PrivateName(_CONSUMER, "_n_acked", "counted like Faust's own ack", instance=True),
    PrivateName(_CONSUMER, "_commit_fut", "a commit asked for while another runs waits and commits"),
    PrivateName("faust.transport.consumer:ThreadDelegateConsumer", "_thread",
                "the aiokafka consumer runs in Faust's consumer thread", instance=True),
    PrivateName("faust.transport.drivers.aiokafka:AIOKafkaConsumerThread", "_consumer",
                "the aiokafka consumer itself", instance=True),
    # Faust's aiokafka driver, tables, recovery
    PrivateName("faust.transport.drivers.aiokafka:Transport", "_create_topic",
                "wrapped: wait for the brokers' metadata after creating a topic"),
    PrivateName("faust.transport.drivers.aiokafka:Producer", "_transaction_producers",
                "exactly_once: the partition's transactional producer"),
    PrivateName("faust.transport.drivers.aiokafka:Producer", "_ensure_producer",
                "changelog batches go straight to its aiokafka producer"),
    PrivateName("faust.tables.base:Collection", "_verify_source_topic_partitions",
                "wrapped: a changelog not yet in metadata is not a partition mismatch"),
    PrivateName("faust.tables.base:Collection", "send_changelog",
                "replaced per table: changelog writes in the record's transaction (table_changelog)"),
    PrivateName("faust.tables.base:Collection", "_on_changelog_sent", "the table's offset book-keeping"),
    PrivateName("faust.tables.recovery:Recovery", "_build_offsets", "replaced: exactly_once restore end"),
    PrivateName("faust.tables.recovery:Recovery", "_build_highwaters", "replaced: stable end offsets"),
    PrivateName("faust.tables.recovery:Recovery", "_set_recovery_ended",
                "batch restore: ends the active restore as Faust's recovery loop does"),
    PrivateName("faust.tables.recovery:Recovery", "_last_flush_at", "batch restore: Faust's flush watchdog"),
    PrivateName("faust.tables.recovery:Recovery", "_active_events_received_at",
                "batch restore: Faust's per-partition event watchdog", instance=True),
    PrivateName("faust.tables.recovery:Recovery", "_standby_events_received_at",
                "batch restore: Faust's per-partition event watchdog", instance=True),
    PrivateName("faust.streams:Stream", "_set_current_event", "table writes of a handler find its partition"),
    PrivateName("faust.tables.base:Collection", "_data", "the test driver runs a table on its own store"),
    PrivateName("faust.tables.base:Collection", "_verified_source_topics_for_partitions",
                "the test driver's table writes need no consumer metadata", instance=True),
    PrivateName("mode.utils.queues:FlowControlEvent", "_queues", "the queues a rebalance clears", instance=True),
    # the RocksDB store behind tables
    PrivateName("faust.stores.rocksdb:Store", "_dbs", "per-partition table views", instance=True),
    PrivateName("faust.stores.rocksdb:Store", "_db_for_partition",
                "processed ids of one partition; batch restore writes a partition's database"),
    PrivateName("faust.stores.rocksdb:Store", "_visible_items", "per-partition table views"),
    PrivateName("faust.stores.rocksdb:Store", "_visible_keys", "per-partition table sizes"),
    PrivateName("faust.stores.rocksdb:Store", "_decode_key", "per-partition table views"),
    PrivateName("faust.stores.rocksdb:Store", "_decode_value", "per-partition table views"),
    PrivateName("faust.stores.base:Store", "_encode_key",
                "processed ids: key bytes encoded once for the lookup, the local write and the changelog"),
    PrivateName("faust.stores.base:Store", "_encode_value",
                "processed ids: value bytes encoded once for the local write and the changelog"),
    # aiokafka
    PrivateName(_AIOKAFKA_CONSUMER, "_client", "metadata refresh while a topic is missing", instance=True),
    PrivateName(_AIOKAFKA_CONSUMER, "_coordinator", "the group's subscription", instance=True),
    PrivateName(_AIOKAFKA_CONSUMER, "_fetcher", "diagnostics: fetch positions", instance=True),
    PrivateName("aiokafka.consumer.fetcher:Fetcher", "_subscriptions", "diagnostics: fetch positions",
                instance=True),
    PrivateName("aiokafka.consumer.group_coordinator:GroupCoordinator", "_group_subscription",
                "topics the group leader assigns", instance=True),
    PrivateName("aiokafka.admin.client:AIOKafkaAdminClient", "_client",
                "the admin client's connections to every broker", instance=True),
    PrivateName("aiokafka.producer.producer:AIOKafkaProducer", "_txn_manager",
                "exactly_once: add a changelog partition to the open transaction", instance=True),
    PrivateName("aiokafka.record.default_records:_DefaultRecordBatchPy", "_maybe_uncompress",
                "header names that are not UTF-8: the batch read again"),
)


def _version(library: str) -> str:
    try:
        return metadata.version(library)
    except metadata.PackageNotFoundError:
        return "not installed"


def _missing(owner: str, name: str) -> IncompatibleLibrary:
    library = PrivateName(owner, name, "").library
    return IncompatibleLibrary(
        f"{owner.replace(':', '.')}.{name} is missing: the framework relies on it and was checked against "
        f"{library} {CHECKED_AGAINST.get(library, '?')}, but {library} {_version(library)} is installed "
        f"(see streams.faust_compat.private)")


def _load(owner: str) -> type:
    module, _, cls = owner.partition(":")
    return getattr(importlib.import_module(module), cls)


def check_classes(names: tuple[PrivateName, ...] = NAMES) -> None:
    """Assert that every class-level private name exists (raises :class:`IncompatibleLibrary`)."""
    for entry in names:
        if not entry.instance and not hasattr(_load(entry.owner), entry.name):
            raise _missing(entry.owner, entry.name)


def check_instance(obj: Any, names: tuple[PrivateName, ...] = NAMES) -> None:
    """Assert that ``obj`` has every instance-level private name listed for its classes."""
    for entry in names:
        if entry.instance and isinstance(obj, _load(entry.owner)) and not hasattr(obj, entry.name):
            raise _missing(entry.owner, entry.name)


def require(obj: Any, name: str) -> Any:
    """``obj.<name>`` for a listed private name; :class:`IncompatibleLibrary` if it is gone."""
    try:
        return getattr(obj, name)
    except AttributeError:
        cls = type(obj) if not isinstance(obj, type) else obj
        raise _missing(f"{cls.__module__}:{cls.__qualname__}", name) from None


def check_consumer(consumer: Any) -> None:
    """:func:`check_instance` on a running Faust consumer and the aiokafka objects behind it
    (its consumer thread, the aiokafka consumer, its group coordinator and fetcher)."""
    check_instance(consumer)
    thread = require(consumer, "_thread")
    check_instance(thread)
    inner = require(thread, "_consumer")
    check_instance(inner)
    for part in ("_coordinator", "_fetcher"):
        check_instance(require(inner, part))


def faust_consumer(faust_app: Any) -> FaustConsumer:
    """The app's consumer as Faust's concrete class (its ``ConsumerT`` lacks what is read here)."""
    return cast(FaustConsumer, faust_app.consumer)


def faust_producer(faust_app: Any) -> FaustProducer:
    """The app's producer as the concrete class of Faust's aiokafka driver."""
    return cast(FaustProducer, faust_app.producer)


def table_manager(faust_app: Any) -> TableManager:
    """The app's table manager as Faust's concrete class (it has the recovery service)."""
    return cast(TableManager, faust_app.tables)


def web_server(faust_app: Any) -> AiohttpWeb:
    """The app's web server as Faust's aiohttp driver (it has the aiohttp application)."""
    return cast(AiohttpWeb, faust_app.web)

"""Keeps a worker from sitting idle on topics its consumer group could not see.

A consumer group's leader assigns partitions from its own copy of the cluster
metadata. A topic missing from that copy when the group forms — created a
moment earlier and not yet in the broker's metadata, or not created at all yet
(``STREAMS_CREATE_TOPICS=false``, topics managed elsewhere) — is skipped
("Ignoring missing topic"), and aiokafka refreshes its metadata only every
few minutes, so the worker says Ready and consumes nothing of it. Faust also
reads a changelog topic's partition count from that copy and stops the worker
with ``PartitionsMismatch`` ("… has 0 partitions").

Two measures, both installed by :class:`~streams.app.StreamsApp`:

* whatever creates topics waits until every broker's metadata shows them
  (:func:`streams.kafka.admin.wait_for_topic_metadata`; Faust's own topic
  creation is wrapped by :func:`install_creation_wait`), so on start-up the
  group never forms before its topics are visible;
* :class:`SubscriptionWatch` checks every few seconds that each subscribed
  topic is in the consumer's metadata with its partitions. If one is not, it
  refreshes the metadata; once the topic shows up, the group leader's
  coordinator sees its metadata change and rejoins, and the new assignment
  includes the topic. A worker waiting for topics says so in the log and in
  ``/health/ready``.
"""

from __future__ import annotations

import asyncio
import logging
import weakref
from typing import TYPE_CHECKING, Any

from streams.kafka.admin import wait_for_topic_metadata

if TYPE_CHECKING:
    from streams.settings import Settings

log = logging.getLogger(__name__)


#: Faust app -> the settings its topics are created with
_SETTINGS: "weakref.WeakKeyDictionary[Any, Settings]" = weakref.WeakKeyDictionary()


def install_creation_wait(faust_app: Any, settings: "Settings") -> None:
    """Make Faust's topic creation return only once the brokers' metadata shows the topic,
    and give the topics ``faust_app`` creates the settings' replication defaults.

    Faust creates the topics a worker subscribes to (sources, table changelogs,
    dead-letter and retry topics) right before subscribing; its creation returns
    when the controller accepted the topic, not when the brokers know it. Its
    replication factor is one number for every cluster; unless
    ``STREAMS_TOPIC_REPLICATION_FACTOR`` says otherwise, topics get three replicas
    where there are three brokers (fewer on a smaller cluster) and
    ``min.insync.replicas`` two (see :meth:`Settings.replication`)."""
    from faust.transport.drivers.aiokafka import Transport

    _SETTINGS[faust_app] = settings
    if getattr(Transport, "_streams_creation_wait", False):
        return
    original = Transport._create_topic

    async def _create_topic(self: Any, owner: Any, client: Any, topic: str, partitions: int, replication: int,
                            **kwargs: Any) -> None:
        app_settings = _SETTINGS.get(getattr(owner, "app", None))
        if app_settings is not None:
            replication, min_isr = app_settings.replication(len(client.cluster.brokers()) or 1)
            if replication > 1:
                kwargs["config"] = {"min.insync.replicas": str(min_isr), **(kwargs.get("config") or {})}
        await original(self, owner, client, topic, partitions, replication, **kwargs)
        if owner.should_stop:
            return
        await wait_for_topic_metadata(client, {topic: None})
        await client.force_metadata_update()  # the creating client knows it from now on, too

    Transport._create_topic = _create_topic
    Transport._streams_creation_wait = True


def install_changelog_check() -> None:
    """Keep a changelog the consumer's metadata does not show yet from stopping the worker.

    Faust compares a table's changelog partition count with its source topic's the
    first time a handler writes the table, from the consumer coordinator's metadata;
    a changelog missing there counts as 0 partitions and raises ``PartitionsMismatch``.
    A count of 0 now means "not known yet": the check is skipped until the count is
    known (and the :class:`SubscriptionWatch` refreshes the metadata meanwhile); the
    changelog write itself waits for the topic like any producer send."""
    from faust.tables.base import Collection

    if getattr(Collection, "_streams_changelog_check", False):
        return
    original = Collection._verify_source_topic_partitions

    def _verify_source_topic_partitions(self: Any, source_topic: str) -> None:
        if source_topic in self._verified_source_topics_for_partitions:
            return  # checked before (or a test driver's table: streams.faust_compat.detached_tables)
        if not self.app.consumer.topic_partitions(self.changelog_topic_name):
            if getattr(self, "_streams_warned", False):
                return
            self._streams_warned = True
            log.warning("table %s: its changelog %s is not in the consumer's metadata yet; writing to it "
                        "waits until it is", self.name, self.changelog_topic_name)
            return  # not cached as verified: checked again at the next write
        self._streams_warned = False
        original(self, source_topic)

    Collection._verify_source_topic_partitions = _verify_source_topic_partitions
    Collection._streams_changelog_check = True


class SubscriptionWatch:
    """Refreshes the consumer's metadata while a subscribed topic is missing from it."""

    #: seconds between checks; while the same topics stay missing the pause doubles up to
    #: :attr:`max_interval` (each refresh makes aiokafka log every missing topic)
    interval = 2.0
    max_interval = 10.0

    def __init__(self, faust_app: Any, *, creates_topics: bool) -> None:
        """``creates_topics``: whether workers create missing topics (STREAMS_CREATE_TOPICS), for the message."""
        self.faust = faust_app
        self.creates_topics = creates_topics
        #: subscribed topics the consumer's metadata does not show (as of the last check)
        self.missing: list[str] = []
        self.refreshes = 0
        self._reported: tuple[str, ...] = ()

    def _consumer(self) -> Any:
        """Faust's aiokafka consumer and the thread it runs in (None before the worker starts it)."""
        thread = self.faust.consumer._thread
        return thread, thread._consumer

    def missing_topics(self) -> list[str]:
        """Topics the group subscribes to (the leader: the whole group's) without partitions
        in this consumer's metadata."""
        _, consumer = self._consumer()
        if consumer is None:
            return []
        coordinator = consumer._coordinator
        wanted = set(coordinator._group_subscription or ()) | set(consumer.subscription())
        cluster = consumer._client.cluster
        return sorted(t for t in wanted if not cluster.partitions_for_topic(t))

    async def check(self) -> list[str]:
        """One check: refresh the metadata if a subscribed topic is missing; returns the missing ones."""
        thread, consumer = self._consumer()
        if consumer is None:
            return []
        self.missing = self.missing_topics()
        if tuple(self.missing) != self._reported:
            if self.missing:
                log.warning("waiting for topic(s) %s: not in the cluster metadata yet%s; no partition of them is "
                            "assigned until they appear", ", ".join(self.missing),
                            "" if self.creates_topics else " (STREAMS_CREATE_TOPICS=false: create them)")
            elif self._reported:
                log.info("topic(s) %s now in the cluster metadata; the group rebalances to assign them",
                         ", ".join(self._reported))
            self._reported = tuple(self.missing)
        if self.missing:
            self.refreshes += 1
            await thread.call_thread(consumer._client.force_metadata_update)
        return self.missing

    async def run(self) -> None:
        """Check every :attr:`interval` seconds until the worker stops."""
        pause = self.interval
        while True:
            await asyncio.sleep(pause)
            before = self.missing
            try:
                missing = await self.check()
                pause = min(pause * 2, self.max_interval) if missing and missing == before else self.interval
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # noqa: BLE001 - the next check tries again
                log.warning("subscription check failed: %r", exc)

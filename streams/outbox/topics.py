"""Rows whose topic does not exist: they wait alone, are said once, and are parked after a bound.

A producer's ``send`` to a topic missing from the cluster waits for it up to its request
timeout, refreshing metadata every 100 ms and logging an error each time, and a batch that
awaits such a send holds every row behind it. So the relay never sends to a topic it has not
seen: before it publishes a claimed batch it asks a broker about the topics its producer does
not know yet (one metadata request, :func:`streams.kafka.admin.probe_topics`), and

* rows of a **missing** topic are left pending, untouched (no attempt, no ``fail_count``);
  the relay's claims leave the topic out from then on, so they hold back nothing but
  themselves: rows of every other topic flow, and since Kafka orders a key only within a
  topic's partition, per-key order needs nothing more. The relay stamps
  ``topic_missing_since`` on them (``streams outbox status`` counts them per topic), says
  once which topic is missing and how many rows wait, asks again every
  :data:`RECHECK_INTERVAL` seconds, and lets them flow, in id order, once the topic exists;
* a row still waiting ``relay_missing_topic_wait`` seconds after it was stamped is **parked**
  (``status = 'failed'``, reason in ``last_error``); ``streams outbox retry --topic T``
  re-queues it once the topic exists;
* a topic name Kafka refuses (``InvalidTopicError``) is parked at once;
* topics the relay could not ask about (no broker answered) or that are being created wait
  for the next check, unstamped.

The relay does not create topics: it cannot know the partition count the consuming app
declares (a source co-partitioned with a table must have the table's count, or the worker
stops with ``PartitionsMismatch``); the app that consumes a topic creates it
(``STREAMS_CREATE_TOPICS``), or ``streams topics create``. A broker with
``auto.create.topics.enable`` creates a topic when the relay asks about it, as it would on a send.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from datetime import timedelta
from typing import TYPE_CHECKING

import psycopg
from aiokafka.errors import InvalidTopicError, UnknownTopicOrPartitionError
from psycopg import sql

from streams.db import first_row
from streams.kafka.admin import probe_topics
from streams.settings import Settings

if TYPE_CHECKING:
    from aiokafka.client import AIOKafkaClient

    from streams.outbox.rows import OutboxRow

log = logging.getLogger(__name__)

#: seconds between two checks of a topic found missing (or not checkable)
RECHECK_INTERVAL = 5.0
#: seconds between two reminders that a topic is still missing
REMIND_INTERVAL = 600.0


@dataclass
class MissingTopic:
    """What this relay knows of one missing topic."""

    topic: str
    checked_at: float
    said_at: float | None = None
    parked_since_said: int = 0
    park_said: bool = False


@dataclass
class Sorted:
    """A claimed batch, split by what its topics allow."""

    send: list[OutboxRow] = field(default_factory=list)
    #: rows of a missing or unverified topic: left pending as they are
    wait: list[OutboxRow] = field(default_factory=list)
    #: rows Kafka can never take (invalid topic name), with the reason
    park: list[tuple[OutboxRow, BaseException]] = field(default_factory=list)


def invalid_name(topic: str) -> InvalidTopicError:
    """The reason a row for ``topic`` (a name Kafka refuses) is parked."""
    return InvalidTopicError(f"invalid topic name {topic!r}: Kafka refuses it (legal: up to 249 of a-z A-Z 0-9 . _ -)")


class TopicWatch:
    """The relay's view of which target topics exist (see the module docstring)."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.table = sql.Identifier(settings.outbox_table)
        self.missing: dict[str, MissingTopic] = {}
        #: topics no broker could be asked about (or being created) → when to ask again
        self.unverified: dict[str, float] = {}
        self._unverified_said = 0.0

    def excluded(self) -> list[str]:
        """Topics the relay's claims leave out for now."""
        now = time.monotonic()
        self.unverified = {t: until for t, until in self.unverified.items() if until > now}
        return sorted({*self.missing, *self.unverified})

    async def sort(self, client: AIOKafkaClient, rows: list[OutboxRow]) -> Sorted:
        """Split ``rows``: topics the producer knows are sent; the others are asked about first."""
        out = Sorted()
        unknown = {topic for topic in {r.topic for r in rows}
                   if topic not in self.missing and client.cluster.partitions_for_topic(topic) is None}
        answers: dict[str, type[BaseException] | None] = {}
        if unknown:
            try:
                answers = dict(await probe_topics(client, unknown))
            except Exception as exc:  # noqa: BLE001 - no broker answers: ask again later
                self._cannot_check(unknown, exc)
                answers = dict.fromkeys(unknown, TimeoutError)
        now = time.monotonic()
        for topic, error in answers.items():
            if error is UnknownTopicOrPartitionError:
                self.missing[topic] = MissingTopic(topic, checked_at=0.0)  # stamped at the next maintain()
            elif error is not None and error is not InvalidTopicError:
                self.unverified.setdefault(topic, now + RECHECK_INTERVAL)
        for row in rows:
            error = answers.get(row.topic)
            if row.topic in self.missing or (error is not None and error is not InvalidTopicError):
                out.wait.append(row)
            elif error is InvalidTopicError:
                out.park.append((row, invalid_name(row.topic)))
            else:
                out.send.append(row)
        return out

    def _cannot_check(self, topics: set[str], exc: BaseException) -> None:
        now = time.monotonic()
        for topic in topics:
            self.unverified[topic] = now + RECHECK_INTERVAL
        if now - self._unverified_said >= REMIND_INTERVAL:
            self._unverified_said = now
            log.warning("cannot ask Kafka whether topic(s) %s exist (%s: %s); their rows wait, checked again "
                        "every %.0fs", ", ".join(sorted(topics)), type(exc).__name__, exc, RECHECK_INTERVAL)

    # --- book-keeping in the outbox table --------------------------------------------------
    async def maintain(self, conn: psycopg.AsyncConnection, client: AIOKafkaClient,
                       lanes: list[int] | None) -> None:
        """For each missing topic due for a check: ask again; stamp, park or release its rows
        (of ``lanes``; None: every lane) and say what happened."""
        now = time.monotonic()
        due = [m for m in self.missing.values() if now - m.checked_at >= RECHECK_INTERVAL]
        if not due:
            return
        try:
            answers = await probe_topics(client, [m.topic for m in due])
        except Exception as exc:  # noqa: BLE001 - no broker answers: nothing is decided, ask again later
            log.debug("topic re-check failed: %s", exc)
            for m in due:
                m.checked_at = time.monotonic()
            return
        for m in due:
            m.checked_at = time.monotonic()
            if answers.get(m.topic) is UnknownTopicOrPartitionError:
                await self._still_missing(conn, m, lanes)
            else:
                del self.missing[m.topic]
                await self._appeared(conn, m, lanes)

    def _lanes(self, lanes: list[int] | None) -> tuple[sql.Composable, dict]:
        if lanes is None:
            return sql.SQL("TRUE"), {}
        return sql.SQL("lane = ANY(%(lanes)s)"), {"lanes": lanes}

    async def _still_missing(self, conn: psycopg.AsyncConnection, m: MissingTopic, lanes: list[int] | None) -> None:
        wait = self.settings.relay_missing_topic_wait
        reason = (f"topic {m.topic!r} does not exist (waited {wait:.0f}s: STREAMS_RELAY_MISSING_TOPIC_WAIT); "
                  f"create it, then `streams outbox retry --topic {m.topic}`")
        parked = await self._stamp_and_park(conn, m.topic, lanes, reason)
        m.parked_since_said += parked
        now = time.monotonic()
        rows, since = await self._waiting(conn, m.topic) if (
            m.said_at is None or (parked and not m.park_said) or now - m.said_at >= REMIND_INTERVAL) else (0, "")
        if m.said_at is None:
            log.warning("topic %r does not exist: %d row(s) wait in the outbox (since %s); rows of other topics "
                        "flow. Create it (or start the app that consumes it); a row still waiting after %.0fs "
                        "is parked", m.topic, rows, since, wait)
        elif parked and not m.park_said:
            m.park_said = True
            log.error("topic %r still does not exist: parked %d row(s) that waited %.0fs (`streams outbox retry "
                      "--topic %s` once it exists); %d row(s) wait", m.topic, parked, wait, m.topic, rows)
        elif now - m.said_at >= REMIND_INTERVAL:
            log.warning("topic %r still does not exist: %d row(s) wait (since %s); %d parked in the last %.0fs",
                        m.topic, rows, since, m.parked_since_said, now - m.said_at)
        else:
            await self._forget_if_done(conn, m, lanes)
            return
        m.said_at, m.parked_since_said = now, 0
        await self._forget_if_done(conn, m, lanes)

    async def _forget_if_done(self, conn: psycopg.AsyncConnection, m: MissingTopic, lanes: list[int] | None) -> None:
        """Stop watching a topic none of whose rows waits here any more (all parked): a new row
        for it starts a new watch, said again."""
        if not await self._has_pending(conn, m.topic, lanes):
            del self.missing[m.topic]

    async def _appeared(self, conn: psycopg.AsyncConnection, m: MissingTopic, lanes: list[int] | None) -> None:
        released = await self._release(conn, m.topic, lanes)
        if m.said_at is not None:
            log.info("topic %r exists now: its %d waiting row(s) flow", m.topic, released)

    # --- the SQL of the book-keeping (PostgreSQL; streams.outbox.mysql_relay has MySQL's) -----------
    async def _stamp_and_park(self, conn: psycopg.AsyncConnection, topic: str, lanes: list[int] | None,
                              reason: str) -> int:
        """Stamp the topic's unstamped pending rows; park those waiting past the bound; returns how many."""
        in_lanes, params = self._lanes(lanes)
        params |= {"topic": topic, "wait": timedelta(seconds=self.settings.relay_missing_topic_wait),
                   "reason": reason}
        await conn.execute(sql.SQL(
            "UPDATE {t} SET topic_missing_since = now() WHERE status = 'pending' AND topic = %(topic)s "
            "AND topic_missing_since IS NULL AND {lanes}").format(t=self.table, lanes=in_lanes), params)
        cur = await conn.execute(sql.SQL(
            "UPDATE {t} SET status = 'failed', failed_at = now(), last_error = %(reason)s "
            "WHERE status = 'pending' AND topic = %(topic)s AND topic_missing_since <= now() - %(wait)s "
            "AND {lanes}").format(t=self.table, lanes=in_lanes), params)
        return max(cur.rowcount, 0)

    async def _has_pending(self, conn: psycopg.AsyncConnection, topic: str, lanes: list[int] | None) -> bool:
        in_lanes, params = self._lanes(lanes)
        cur = await conn.execute(sql.SQL(
            "SELECT EXISTS (SELECT 1 FROM {t} WHERE status = 'pending' AND topic = %(topic)s AND {lanes})"
        ).format(t=self.table, lanes=in_lanes), params | {"topic": topic})
        return bool(first_row(await cur.fetchone())[0])

    async def _release(self, conn: psycopg.AsyncConnection, topic: str, lanes: list[int] | None) -> int:
        """Clear the stamps of the topic's waiting rows; returns how many."""
        in_lanes, params = self._lanes(lanes)
        cur = await conn.execute(sql.SQL(
            "UPDATE {t} SET topic_missing_since = NULL WHERE status = 'pending' AND topic = %(topic)s "
            "AND topic_missing_since IS NOT NULL AND {lanes}").format(t=self.table, lanes=in_lanes),
            params | {"topic": topic})
        return max(cur.rowcount, 0)

    async def _waiting(self, conn: psycopg.AsyncConnection, topic: str) -> tuple[int, str]:
        """Pending rows of ``topic`` in the whole outbox, and since when the first one waits."""
        cur = await conn.execute(sql.SQL(
            "SELECT count(*), min(topic_missing_since) FROM {t} WHERE status = 'pending' AND topic = %s"
        ).format(t=self.table), (topic,))
        count, since = first_row(await cur.fetchone())
        return count, since.isoformat(timespec="seconds") if since else "now"

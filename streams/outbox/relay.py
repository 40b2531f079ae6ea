"""The message relay: publishes committed outbox rows to Kafka.

How it works (status mode, the default):

* **Lanes.** Every row has a ``lane`` (a hash of its key, :data:`~streams.outbox.schema.LANES`
  lanes). A relay owns lanes through PostgreSQL session advisory locks, and only
  the owner of a lane publishes its rows. Relays count each other through a shared
  "member" lock and each takes ``ceil(lanes / relays)`` lanes; a relay that dies
  loses its connection and so its locks, and the others take its lanes over.
  Since all rows of one key live in one lane, **one relay at a time publishes a
  key, in ``id`` order**: that is how several relays keep per-key order.
* **Claims.** In one transaction a relay selects pending rows of its lanes
  (``ORDER BY id … FOR UPDATE SKIP LOCKED``), publishes them with an idempotent
  ``acks=all`` producer, waits for every acknowledgement, marks them ``done`` and
  commits. (The ``UPDATE … done`` runs while Kafka acknowledges, after a savepoint; it is
  kept only if every row was acknowledged, else rolled back to the savepoint and the rows
  are settled one by one: either way the commit comes after the acknowledgements.) A crash
  before the commit leaves the rows pending: the next owner sends them again with the same
  ``message_id`` (consumers drop the copy).
* **Failures.** A failed row gets ``fail_count + 1``, ``failed_at`` and a retry time
  (exponential backoff); rows of the same key wait behind it (no overtaking). After
  ``relay_max_attempts`` attempts, or at once for a row Kafka can never take (too
  large, invalid topic name), it is parked (``status = 'failed'``) and its key flows
  again; ``streams outbox retry`` re-queues it.
* **Missing topics.** Rows of a topic that does not exist are never sent: they wait
  alone, without an attempt, and are parked after ``relay_missing_topic_wait``
  (:mod:`streams.outbox.topics`).
* **Bounded batches and stop.** Handing a batch to the producer and waiting for its
  acknowledgements takes at most ``relay_publish_timeout``; rows not handed over by
  then stay pending as they were. After ``stop()`` (SIGTERM) the batch in hand may
  finish for ``relay_stop_timeout`` seconds, else it is abandoned (rolled back: its
  rows stay pending, none is marked done without an acknowledgement) and the relay
  returns.
* **Wake-ups.** A ``LISTEN`` on the outbox channel wakes the relay as soon as a
  writer commits; a poll every ``relay_poll_interval`` seconds covers lost
  notifications.

Pointer mode (``relay_mode=pointer``) lives in :mod:`streams.outbox.pointer`.
"""

from __future__ import annotations

import asyncio
import logging
import math
import os
import socket
import time
from collections import Counter
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import timedelta

import psycopg
from psycopg import sql

from streams.db import first_row
from streams.outbox.brokers import RoutedPublisher
from streams.outbox.rows import OutboxRow, PublishResult
from streams.outbox.schema import LANES, channel
from streams.outbox.to_kafka import PERMANENT_ERRORS, describe_error
from streams.outbox.topics import TopicWatch
from streams.settings import Settings, redact_url

log = logging.getLogger(__name__)

#: extra Kafka header carrying the outbox row id (ordering checks, tracing back to the row)

_ROW_COLUMNS = ("id", "message_id", "message_type", "kind", "topic", "key", "payload", "headers", "meta",
                "occurred_at", "fail_count", "traceparent", "tracestate")

@dataclass
class RelayCounters:
    """What this relay process did (also logged at shutdown)."""

    published: int = 0
    failed_attempts: int = 0
    parked: int = 0
    batches: int = 0
    purged: int = 0


def backoff_delay(settings: Settings, fail_count: int) -> float:
    """Seconds before attempt ``fail_count + 1``: doubling from ``relay_backoff_initial``, capped."""
    return min(settings.relay_backoff_max, settings.relay_backoff_initial * 2 ** max(fail_count - 1, 0))


class Relay:
    """Publishes the outbox (status mode). ``await relay.run()`` until ``relay.stop()``.

    ``held_topics`` is an optional callable returning topics to hold back for now
    (the lag gate uses it); rows for them stay pending.
    """

    def __init__(self, settings: Settings, *, name: str | None = None,
                 held_topics: Callable[[], Awaitable[set[str]]] | None = None) -> None:
        self.settings = settings
        self.table = settings.outbox_table
        self.name = name or f"{socket.gethostname()}-{os.getpid()}"
        self.publisher = RoutedPublisher(settings)
        self.counters = RelayCounters()
        self.held_topics = held_topics
        self.lanes: set[int] = set()
        self._conn: psycopg.AsyncConnection | None = None
        self._listener: asyncio.Task | None = None
        self._wake = asyncio.Event()
        self._stopping = asyncio.Event()
        self._lock_class: int | None = None
        self._last_purge = 0.0
        self._last_rebalance = 0.0
        self._stop_deadline = math.inf
        self._t = sql.Identifier(self.table)
        self._claims: dict[bool, sql.Composed] = {}
        self.topics = TopicWatch(settings)

    # --- lifecycle ----------------------------------------------------------
    def stop(self) -> None:
        """Ask the relay to return from :meth:`run`: the batch in hand may finish within
        ``relay_stop_timeout``, else it is abandoned and its rows stay pending."""
        if not self._stopping.is_set():
            self._stop_deadline = time.monotonic() + self.settings.relay_stop_timeout
        self._stopping.set()
        self._wake.set()

    async def run(self) -> RelayCounters:
        """Publish until stopped; survives database and broker outages."""
        work = asyncio.create_task(self._work(), name=f"relay-{self.name}")
        stopping = asyncio.create_task(self._stopping.wait())
        try:
            await asyncio.wait([work, stopping], return_when=asyncio.FIRST_COMPLETED)
            if not work.done():
                await asyncio.wait([work], timeout=max(self._stop_deadline - time.monotonic(), 0))
            if not work.done():
                log.warning("relay %s: the batch in hand did not finish within STREAMS_RELAY_STOP_TIMEOUT (%.0fs); "
                            "abandoned, its rows stay pending", self.name, self.settings.relay_stop_timeout)
                work.cancel()
                try:
                    await work
                except asyncio.CancelledError:
                    pass
            else:
                work.result()  # a fatal error (RelayError) leaves run() here
        finally:
            stopping.cancel()
            if not work.done():  # run() itself was cancelled
                work.cancel()
                await asyncio.gather(work, return_exceptions=True)
            await self._disconnect()
            # stopping: what is left of the stop timeout (1 s at least) for the producer to close
            left = self._stop_deadline - time.monotonic() if self._stopping.is_set() else None
            await self.publisher.stop(max(left, 1.0) if left is not None else None)
            log.info("relay %s stopped: %s", self.name, self.counters)
        return self.counters

    async def _work(self) -> None:
        if not await self.publisher.start(self._stopping):
            return
        log.info("relay %s started (table %s, database %s, brokers: %s)", self.name, self.table,
                 redact_url(self.settings.dsn), self.publisher.describe())
        delay = 0.5
        while not self._stopping.is_set():
            try:
                await self._connect()
                delay = 0.5
                await self._loop()
            except self.connection_errors() as exc:
                log.warning("database connection lost (%s); reconnecting in %.1fs", describe_error(exc), delay)
                # let sends already handed to the producer land before our lanes can change hands
                await self._flush_quietly()
                await self._disconnect()
                await self._sleep(delay)
                delay = min(delay * 2, 5.0)

    def connection_errors(self) -> tuple[type[BaseException], ...]:
        """What a lost database connection raises (the relay reconnects after it)."""
        return (psycopg.OperationalError, psycopg.InterfaceError)

    @property
    def conn(self) -> psycopg.AsyncConnection:
        """The relay's database connection (while it runs)."""
        if self._conn is None:
            raise RelayError(f"relay {self.name} is not connected")
        return self._conn

    async def _connect(self) -> None:
        self._conn = await psycopg.AsyncConnection.connect(
            self.settings.dsn, autocommit=True, connect_timeout=5, application_name=f"streams-relay {self.name}")
        cur = await self._conn.execute("SELECT hashtext(%s) & 2147483647", (f"streams-relay:{self.table}",))
        self._lock_class = first_row(await cur.fetchone())[0]
        cur = await self._conn.execute("SELECT to_regclass(%s) IS NOT NULL", (self.table,))
        if not first_row(await cur.fetchone())[0]:
            raise RelayError(f"the outbox table {self.table!r} does not exist in {redact_url(self.settings.dsn)}; "
                             "run `streams outbox migrate` first")
        cur = await self._conn.execute("SELECT count(*) FROM pg_attribute WHERE attrelid = to_regclass(%s) "
                                       "AND attname = 'traceparent'", (self.table,))
        if not first_row(await cur.fetchone())[0]:
            raise RelayError(f"the outbox table {self.table!r} has an older schema than this relay; "
                             "run `streams outbox migrate` first")
        # member lock: relays count each other by it
        await self._conn.execute("SELECT pg_advisory_lock_shared(%s, -1)", (self._lock_class,))
        self.lanes = set()
        self._last_rebalance = 0.0
        self._listener = asyncio.create_task(self._listen(), name="outbox-listen")

    async def _disconnect(self) -> None:
        if self._listener is not None:
            self._listener.cancel()
            await asyncio.gather(self._listener, return_exceptions=True)
            self._listener = None
        if self._conn is not None:
            try:
                await self._conn.close()  # releases every advisory lock (lanes)
            except Exception:  # noqa: BLE001
                pass
            self._conn = None
        self.lanes = set()

    async def _listen(self) -> None:
        """Set the wake-up event on every NOTIFY (own connection; reconnects quietly)."""
        while True:
            try:
                async with await psycopg.AsyncConnection.connect(
                        self.settings.dsn, autocommit=True, connect_timeout=5) as conn:
                    await conn.execute(sql.SQL("LISTEN {}").format(sql.Identifier(channel(self.table))))
                    self._wake.set()  # rows may have arrived while not listening
                    async for _ in conn.notifies():
                        self._wake.set()
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # noqa: BLE001 - polling covers the gap
                log.debug("LISTEN connection failed: %s", describe_error(exc))
                await asyncio.sleep(1.0)

    async def _sleep(self, seconds: float) -> None:
        try:
            await asyncio.wait_for(self._stopping.wait(), seconds)
        except TimeoutError:
            pass

    async def _flush_quietly(self) -> None:
        if self.publisher.producer is not None:
            try:
                await asyncio.wait_for(self.publisher.producer.flush(), self.settings.relay_publish_timeout)
            except Exception:  # noqa: BLE001
                pass

    # --- main loop ------------------------------------------------------------
    async def _loop(self) -> None:
        while not self._stopping.is_set():
            now = time.monotonic()
            if now - self._last_rebalance > 2.0:
                await self._rebalance()
                self._last_rebalance = now
            if now - self._last_purge > 30.0:
                self.counters.purged += await self._purge()
                self._last_purge = now
            await self._check_missing_topics()
            self._wake.clear()  # before the claim: a NOTIFY during the batch wakes the next round
            handled = await self.publish_batch()
            if handled >= self.settings.relay_batch_size:
                continue  # more may be waiting
            try:
                await asyncio.wait_for(self._wake.wait(), self._idle_wait())
            except TimeoutError:
                pass

    async def _purge(self) -> int:
        return await purge_done(self.conn, self.settings)

    async def _check_missing_topics(self) -> None:
        if self.topics.missing and self.publisher.producer is not None:
            await self.topics.maintain(self.conn, self.publisher.producer.client, self._topic_lanes())

    def _topic_lanes(self) -> list[int] | None:
        """Lanes whose rows this relay stamps or parks when their topic is missing (None: all)."""
        return sorted(self.lanes)

    def _idle_wait(self) -> float:
        # poll sooner while lanes are not settled yet
        return min(self.settings.relay_poll_interval, 2.0)

    async def _rebalance(self) -> None:
        """Hold ``ceil(LANES / relays)`` lanes: give surplus back, try to take missing ones."""
        conn = self.conn
        cur = await conn.execute(
            "SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND granted "
            "AND database = (SELECT oid FROM pg_database WHERE datname = current_database()) "
            "AND classid = %s::bigint::oid AND objid = 4294967295::bigint::oid AND objsubid = 2",
            (self._lock_class,))
        members = max(1, first_row(await cur.fetchone())[0])
        target = math.ceil(LANES / members)
        if len(self.lanes) > target:
            for lane in sorted(self.lanes, reverse=True)[: len(self.lanes) - target]:
                await conn.execute("SELECT pg_advisory_unlock(%s, %s)", (self._lock_class, lane))
                self.lanes.discard(lane)
        elif len(self.lanes) < target:
            start = hash(self.name) % LANES
            for i in range(LANES):
                if len(self.lanes) >= target:
                    break
                lane = (start + i) % LANES
                if lane in self.lanes:
                    continue
                cur = await conn.execute("SELECT pg_try_advisory_lock(%s, %s)", (self._lock_class, lane))
                if first_row(await cur.fetchone())[0]:
                    self.lanes.add(lane)
        log.debug("relay %s: %d relay(s), owns %d lane(s)", self.name, members, len(self.lanes))

    def _claim_sql(self, held: bool) -> sql.Composed:
        """The claim: pending rows of the owned lanes in ``id`` order, but none with an earlier
        pending row of its key that waits for a retry or (``held``) whose topic is held back.

        The two "earlier row" checks are separate so each has an index of its own (schema v5):
        the retry check reads only rows that failed an attempt (``next_attempt_at`` is
        ``-infinity`` until then), the held check runs only while a topic is held."""
        if held not in self._claims:
            held_check = sql.SQL(
                "AND NOT EXISTS (SELECT 1 FROM {t} h WHERE h.status = 'pending' AND h.key = o.key "
                "               AND h.id < o.id AND h.topic = ANY(%(held)s)) ").format(t=self._t) if held else sql.SQL("")
            self._claims[held] = sql.SQL(
                "SELECT {cols} FROM {t} o "
                "WHERE o.status = 'pending' AND o.lane = ANY(%(lanes)s) AND o.next_attempt_at <= now() "
                "AND o.topic <> ALL(%(skipped)s) "
                "AND NOT EXISTS (SELECT 1 FROM {t} e WHERE e.status = 'pending' "
                "               AND e.next_attempt_at > '-infinity' AND e.key = o.key "
                "               AND e.id < o.id AND e.next_attempt_at > now()) "
                "{held_check}"
                "ORDER BY o.id LIMIT %(n)s FOR UPDATE SKIP LOCKED"
            ).format(cols=sql.SQL(", ").join(sql.Identifier("o", c) for c in _ROW_COLUMNS), t=self._t,
                     held_check=held_check)
        return self._claims[held]

    async def publish_batch(self) -> int:
        """Claim, publish and settle one batch of the owned lanes; returns rows handled."""
        if not self.lanes:
            return 0
        held = sorted(await self.held_topics()) if self.held_topics else []
        # a missing topic's rows are left out, and hold back nothing else: Kafka orders a key
        # only within one topic (a held topic's rows also hold back their key's later rows)
        skipped = sorted({*held, *self.topics.excluded()})
        conn = self.conn
        async with conn.transaction():
            cur = await conn.execute(self._claim_sql(bool(held)), {
                "lanes": sorted(self.lanes), "held": held, "skipped": skipped, "n": self.settings.relay_batch_size})
            rows = [OutboxRow(*r) for r in await cur.fetchall()]
            if not rows:
                return 0
            batch = await self.publisher.sort(self.topics, rows)
            if batch.send and not batch.park:
                result, marked = await self._publish_and_mark(conn, batch.send)
            else:
                result = await self.publisher.publish(batch.send) if batch.send else PublishResult()
                marked = False
            result.failed += batch.park
            await self._settle(conn, result, marked=marked)
        self.counters.batches += 1
        return len(rows)

    async def _publish_and_mark(self, conn: psycopg.AsyncConnection, rows: list[OutboxRow]
                                ) -> tuple[PublishResult, bool]:
        """Publish ``rows`` and, while Kafka acknowledges them, mark them done in the claim's
        transaction after a savepoint: kept if every row was acknowledged (the transaction
        commits only after that), rolled back to the savepoint otherwise (then the rows are
        settled one by one). Returns the result and whether the rows are marked."""
        publishing = asyncio.ensure_future(self.publisher.publish(rows))
        try:
            await conn.execute("SAVEPOINT streams_relay_done")
            await self._mark_done(conn, rows)
            result = await publishing
        except BaseException:
            publishing.cancel()  # records not handed over stay out; the transaction rolls back
            await asyncio.gather(publishing, return_exceptions=True)
            raise
        if len(result.sent) == len(rows):
            await conn.execute("RELEASE SAVEPOINT streams_relay_done")
            return result, True
        await conn.execute("ROLLBACK TO SAVEPOINT streams_relay_done")
        return result, False

    async def _mark_done(self, conn: psycopg.AsyncConnection, rows: list[OutboxRow]) -> None:
        await conn.execute(sql.SQL(
            "UPDATE {} SET status = 'done', processed_at = now() WHERE id = ANY(%s)").format(self._t),
            ([r.id for r in rows],))

    async def _settle(self, conn: psycopg.AsyncConnection, result: PublishResult, *, marked: bool = False) -> None:
        """Mark the sent rows done (unless ``marked`` already) and count the failed ones."""
        if result.sent:
            if not marked:
                await self._mark_done(conn, result.sent)
            self.counters.published += len(result.sent)
            report = getattr(self.held_topics, "published", None)
            if report is not None:
                for topic, count in Counter(r.topic for r in result.sent).items():
                    report(topic, count)
        for row, exc in result.failed:
            await record_failure(conn, self.settings, row, exc)
            self.counters.failed_attempts += 1
            if isinstance(exc, PERMANENT_ERRORS) or row.fail_count + 1 >= self.settings.relay_max_attempts:
                self.counters.parked += 1
        if result.failed:
            first = result.failed[0]
            log.warning("%d of %d row(s) not published (first: id %d → %s: %s)", len(result.failed),
                        len(result.failed) + len(result.sent), first[0].id, first[0].topic, describe_error(first[1]))


class RelayError(RuntimeError):
    """The relay cannot run (e.g. no outbox table)."""


async def record_failure(conn: psycopg.AsyncConnection, settings: Settings, row: OutboxRow,
                         exc: BaseException) -> bool:
    """Count a failed attempt on ``row``; park it when it cannot or may no longer be retried.

    Returns True when the row was parked."""
    attempts = row.fail_count + 1
    park = isinstance(exc, PERMANENT_ERRORS) or attempts >= settings.relay_max_attempts
    reason = describe_error(exc)
    if park and not isinstance(exc, PERMANENT_ERRORS):
        reason = f"gave up after {attempts} attempt(s): {reason}"
    await conn.execute(sql.SQL(
        "UPDATE {} SET fail_count = %(n)s, failed_at = now(), last_error = %(err)s, "
        "next_attempt_at = now() + %(delay)s, status = CASE WHEN %(park)s THEN 'failed' ELSE status END "
        "WHERE id = %(id)s").format(sql.Identifier(settings.outbox_table)),
        {"n": attempts, "err": reason, "delay": timedelta(seconds=backoff_delay(settings, attempts)),
         "park": park, "id": row.id})
    if park:
        log.error("outbox row %d (message %s → %s) parked: %s", row.id, row.message_id, row.topic, reason)
    return park


async def purge_done(conn: psycopg.AsyncConnection, settings: Settings) -> int:
    """Delete done rows older than ``relay_retention`` in small batches; returns rows deleted."""
    t = sql.Identifier(settings.outbox_table)
    total = 0
    while True:
        cur = await conn.execute(sql.SQL(
            "DELETE FROM {t} WHERE id IN (SELECT id FROM {t} WHERE status = 'done' "
            "AND processed_at < now() - %(keep)s LIMIT %(n)s)").format(t=t),
            {"keep": timedelta(seconds=settings.relay_retention), "n": settings.relay_purge_batch})
        total += cur.rowcount
        if cur.rowcount < settings.relay_purge_batch:
            return total


"""The message relay on MySQL 8 / MariaDB: PostgreSQL's relay (:mod:`streams.outbox.relay`) with
MySQL's locks.

* **Lanes with ``GET_LOCK``.** A relay owns a lane by holding the named lock
  ``streams-outbox:<hash of database.table>:l<lane>``; named locks belong to the
  session, so a relay that dies (its connection closes) loses its lanes at once
  and the others take them over, as with PostgreSQL's session advisory locks.
  Relays count each other by member locks (``…:m<slot>``, one slot each; MySQL
  has no shared named locks): ``IS_USED_LOCK`` on every slot gives the count,
  and each relay holds ``ceil(lanes / relays)`` lanes. All rows of a key share a
  lane, so one relay at a time publishes a key, in ``id`` order.
* **Claims with ``FOR UPDATE SKIP LOCKED``** in ``READ COMMITTED`` (no gap locks:
  the writers' inserts never wait for a relay): pending rows of the owned lanes,
  in ``id`` order, none behind an earlier row of its key that waits for a retry;
  published, acknowledged, marked ``done``, committed — or, after a crash,
  rolled back by the server and sent again by the lane's next owner (same
  ``message_id``).
* **No NOTIFY in MySQL**: the relay polls every ``relay_poll_interval`` seconds
  when a batch comes back short (at most 2 s).

Failures, parking, missing topics, bounded batches, stop, the brokers a row's topic routes to
(``STREAMS_BROKER_ROUTES``: Kafka, RabbitMQ, Redis Streams, :mod:`streams.outbox.brokers`) and the
stored trace context sent with each record work as on PostgreSQL; only the SQL differs. Pointer mode: :class:`MySqlPointerRelay`.
"""

from __future__ import annotations

import json
import logging
import math
from collections import Counter
from datetime import UTC, datetime
from typing import Any

from streams import mysql
from streams.outbox.mysql_schema import SCHEMA_VERSION, lock_name
from streams.outbox.relay import _ROW_COLUMNS, Relay, RelayError, backoff_delay
from streams.outbox.rows import OutboxRow, PublishResult
from streams.outbox.schema import LANES
from streams.outbox.to_kafka import PERMANENT_ERRORS, describe_error
from streams.outbox.topics import TopicWatch
from streams.settings import Settings, redact_url

log = logging.getLogger(__name__)

#: member slots relays take (more relays than lanes would own nothing)
MEMBER_SLOTS = LANES

_COLS = ", ".join(f"o.`{c}`" for c in _ROW_COLUMNS)


def _in(values: list) -> str:
    """``(%s, %s, …)`` for ``values`` (never empty: callers handle that)."""
    return "(" + ", ".join(["%s"] * len(values)) + ")"


def _lanes_clause(lanes: list[int] | None) -> tuple[str, list]:
    if lanes is None:
        return "TRUE", []
    if not lanes:
        return "FALSE", []
    return f"lane IN {_in(lanes)}", list(lanes)


def to_row(values: tuple) -> OutboxRow:
    """An outbox row as MySQL returns it (JSON as text, UTC times without a zone)."""
    (id_, message_id, message_type, kind, topic, key, payload, headers, meta, occurred_at, fail_count,
     traceparent, tracestate) = values
    return OutboxRow(id_, message_id, message_type, kind, topic, key, json.loads(payload),
                     json.loads(headers) if headers else {}, json.loads(meta) if meta else {},
                     occurred_at.replace(tzinfo=UTC), fail_count, traceparent, tracestate)


class MySqlTopicWatch(TopicWatch):
    """:class:`~streams.outbox.topics.TopicWatch` with its book-keeping in MySQL's SQL."""

    async def _stamp_and_park(self, conn: Any, topic: str, lanes: list[int] | None, reason: str) -> int:
        t = self.settings.outbox_table
        clause, params = _lanes_clause(lanes)
        await mysql.execute(conn, f"UPDATE `{t}` SET topic_missing_since = UTC_TIMESTAMP(6) WHERE status = 'pending' "
                                  f"AND topic = %s AND topic_missing_since IS NULL AND {clause}", [topic, *params])
        return await mysql.execute(
            conn, f"UPDATE `{t}` SET status = 'failed', failed_at = UTC_TIMESTAMP(6), last_error = %s "
                  f"WHERE status = 'pending' AND topic = %s AND topic_missing_since <= UTC_TIMESTAMP(6) - "
                  f"INTERVAL %s MICROSECOND AND {clause}",
            [reason, topic, int(self.settings.relay_missing_topic_wait * 1e6), *params])

    async def _has_pending(self, conn: Any, topic: str, lanes: list[int] | None) -> bool:
        clause, params = _lanes_clause(lanes)
        rows = await mysql.fetch(conn, f"SELECT EXISTS (SELECT 1 FROM `{self.settings.outbox_table}` WHERE "
                                       f"status = 'pending' AND topic = %s AND {clause})", [topic, *params])
        return bool(rows[0][0])

    async def _release(self, conn: Any, topic: str, lanes: list[int] | None) -> int:
        clause, params = _lanes_clause(lanes)
        return await mysql.execute(conn, f"UPDATE `{self.settings.outbox_table}` SET topic_missing_since = NULL "
                                         f"WHERE status = 'pending' AND topic = %s AND topic_missing_since IS NOT "
                                         f"NULL AND {clause}", [topic, *params])

    async def _waiting(self, conn: Any, topic: str) -> tuple[int, str]:
        rows = await mysql.fetch(conn, f"SELECT count(*), min(topic_missing_since) FROM "
                                       f"`{self.settings.outbox_table}` WHERE status = 'pending' AND topic = %s",
                                 [topic])
        count, since = rows[0]
        return count, since.replace(tzinfo=UTC).isoformat(timespec="seconds") if since else "now"


async def record_failure(conn: Any, settings: Settings, row: OutboxRow, exc: BaseException) -> bool:
    """MySQL's :func:`streams.outbox.relay.record_failure`: count the attempt, park the row when it
    cannot or may no longer be retried; returns True when it was parked."""
    attempts = row.fail_count + 1
    park = isinstance(exc, PERMANENT_ERRORS) or attempts >= settings.relay_max_attempts
    reason = describe_error(exc)
    if park and not isinstance(exc, PERMANENT_ERRORS):
        reason = f"gave up after {attempts} attempt(s): {reason}"
    await mysql.execute(
        conn, f"UPDATE `{settings.outbox_table}` SET fail_count = %s, failed_at = UTC_TIMESTAMP(6), last_error = %s, "
              "next_attempt_at = UTC_TIMESTAMP(6) + INTERVAL %s MICROSECOND, "
              "status = IF(%s, 'failed', status) WHERE id = %s",
        [attempts, reason, int(backoff_delay(settings, attempts) * 1e6), park, row.id])
    if park:
        log.error("outbox row %d (message %s → %s) parked: %s", row.id, row.message_id, row.topic, reason)
    return park


async def purge_done(conn: Any, settings: Settings) -> int:
    """Delete done rows older than ``relay_retention`` in batches; returns rows deleted."""
    total = 0
    while True:
        n = await mysql.execute(
            conn, f"DELETE FROM `{settings.outbox_table}` WHERE status = 'done' AND processed_at < "
                  "UTC_TIMESTAMP(6) - INTERVAL %s SECOND LIMIT %s",
            [int(settings.relay_retention), settings.relay_purge_batch])
        total += n
        if n < settings.relay_purge_batch:
            return total


async def check_table(conn: Any, settings: Settings) -> None:
    """Raise :class:`RelayError` unless the outbox table exists at this release's schema version."""
    from streams.outbox.schema import _VERSION_TEXT

    rows = await mysql.fetch(conn, "SELECT table_comment FROM information_schema.tables WHERE "
                                   "table_schema = DATABASE() AND table_name = %s", [settings.outbox_table])
    where = redact_url(settings.dsn)
    if not rows:
        raise RelayError(f"the outbox table {settings.outbox_table!r} does not exist in {where}; "
                         "run `streams outbox migrate` first")
    if rows[0][0] != _VERSION_TEXT.format(SCHEMA_VERSION):
        raise RelayError(f"the outbox table {settings.outbox_table!r} has another schema than this relay "
                         f"({rows[0][0]!r}); run `streams outbox migrate` first")


class MySqlRelay(Relay):
    """Publishes an outbox in MySQL / MariaDB (status mode); see the module docstring."""

    def __init__(self, settings: Settings, **kwargs: Any) -> None:
        super().__init__(settings, **kwargs)
        self.topics = MySqlTopicWatch(settings)
        self._my: Any = None
        self._prefix = ""
        self.member_slot: int | None = None

    def connection_errors(self) -> tuple[type[BaseException], ...]:
        return mysql.connection_errors()

    @property
    def mconn(self) -> Any:
        """The relay's asyncmy connection (while it runs)."""
        if self._my is None:
            raise RelayError(f"relay {self.name} is not connected")
        return self._my

    def lock(self, what: str) -> str:
        return self._prefix + what

    async def _connect(self) -> None:
        self._my = await mysql.connect_async(self.settings.dsn)
        database = (await mysql.fetch(self._my, "SELECT DATABASE()"))[0][0]
        self._prefix = lock_name(database, self.table, "")
        await check_table(self._my, self.settings)
        self.member_slot = None
        for slot in range(MEMBER_SLOTS):  # member lock: relays count each other by it
            if (await mysql.fetch(self._my, "SELECT GET_LOCK(%s, 0)", [self.lock(f"m{slot}")]))[0][0] == 1:
                self.member_slot = slot
                break
        if self.member_slot is None:
            log.warning("relay %s: %d relays run already; this one stands by", self.name, MEMBER_SLOTS)
        self.lanes = set()
        self._last_rebalance = 0.0
        self._wake.set()

    async def _disconnect(self) -> None:
        if self._my is not None:
            await mysql.close_async(self._my)  # the server releases every named lock of the session
            self._my = None
        self.lanes = set()

    async def _purge(self) -> int:
        return await purge_done(self.mconn, self.settings)

    async def _check_missing_topics(self) -> None:
        if self.topics.missing and self.publisher.producer is not None:
            await self.topics.maintain(self.mconn, self.publisher.producer.client, self._topic_lanes())

    async def _rebalance(self) -> None:
        """Hold ``ceil(LANES / relays)`` lanes: give surplus back, try to take missing ones."""
        conn = self.mconn
        if self.member_slot is None:
            return
        names = [self.lock(f"m{slot}") for slot in range(MEMBER_SLOTS)]
        query = "SELECT " + " + ".join(["(IS_USED_LOCK(%s) IS NOT NULL)"] * len(names))
        members = max(1, int((await mysql.fetch(conn, query, names))[0][0]))
        target = math.ceil(LANES / members)
        if len(self.lanes) > target:
            for lane in sorted(self.lanes, reverse=True)[: len(self.lanes) - target]:
                await mysql.fetch(conn, "SELECT RELEASE_LOCK(%s)", [self.lock(f"l{lane}")])
                self.lanes.discard(lane)
        elif len(self.lanes) < target:
            start = hash(self.name) % LANES
            for i in range(LANES):
                if len(self.lanes) >= target:
                    break
                lane = (start + i) % LANES
                if lane in self.lanes:
                    continue
                if (await mysql.fetch(conn, "SELECT GET_LOCK(%s, 0)", [self.lock(f"l{lane}")]))[0][0] == 1:
                    self.lanes.add(lane)
        log.debug("relay %s: %d relay(s), owns %d lane(s)", self.name, members, len(self.lanes))

    async def publish_batch(self) -> int:
        """Claim, publish and settle one batch of the owned lanes; returns rows handled."""
        if not self.lanes:
            return 0
        held = sorted(await self.held_topics()) if self.held_topics else []
        skipped = sorted({*held, *self.topics.excluded()})
        lanes = sorted(self.lanes)
        t = self.table
        query = (f"SELECT {_COLS} FROM `{t}` o WHERE o.status = 'pending' AND o.lane IN {_in(lanes)} "
                 "AND o.next_attempt_at <= UTC_TIMESTAMP(6) "
                 + (f"AND o.topic NOT IN {_in(skipped)} " if skipped else "")
                 + f"AND NOT EXISTS (SELECT 1 FROM `{t}` e WHERE e.status = 'pending' AND e.`key` = o.`key` "
                 "AND e.id < o.id AND (e.next_attempt_at > UTC_TIMESTAMP(6)"
                 + (f" OR e.topic IN {_in(held)}" if held else "") + ")) "
                 "ORDER BY o.id LIMIT %s FOR UPDATE SKIP LOCKED")
        conn = self.mconn
        await conn.begin()
        try:
            rows = [to_row(r) for r in await mysql.fetch(conn, query, [*lanes, *skipped, *held,
                                                                       self.settings.relay_batch_size])]
            if rows:
                batch = await self.publisher.sort(self.topics, rows)
                result = await self.publisher.publish(batch.send) if batch.send else PublishResult()
                result.failed += batch.park
                await self._settle_rows(conn, result)
            await conn.commit()
        except BaseException:
            try:
                await conn.rollback()
            except Exception:  # noqa: BLE001 - a broken connection rolls back on the server
                pass
            raise
        if rows:
            self.counters.batches += 1
        return len(rows)

    async def _settle_rows(self, conn: Any, result: PublishResult) -> None:
        if result.sent:
            ids = [r.id for r in result.sent]
            await mysql.execute(conn, f"UPDATE `{self.table}` SET status = 'done', processed_at = UTC_TIMESTAMP(6) "
                                      f"WHERE id IN {_in(ids)}", ids)
            self.counters.published += len(result.sent)
            report = getattr(self.held_topics, "published", None)
            if report is not None:
                for topic, count in Counter(r.topic for r in result.sent).items():
                    report(topic, count)
        for row, exc in result.failed:
            parked = await record_failure(conn, self.settings, row, exc)
            self.counters.failed_attempts += 1
            self.counters.parked += parked
        if result.failed:
            first = result.failed[0]
            log.warning("%d of %d row(s) not published (first: id %d → %s: %s)", len(result.failed),
                        len(result.failed) + len(result.sent), first[0].id, first[0].topic, describe_error(first[1]))


def utc_naive(moment: datetime) -> datetime:
    """``moment`` as MySQL's ``DATETIME`` columns hold it here: UTC, no zone."""
    return moment.astimezone(UTC).replace(tzinfo=None)


async def purge_below_pointer(conn: Any, settings: Settings) -> int:
    """Pointer mode's purge on MySQL: sent rows (at or below every cursor) older than the retention."""
    t = settings.outbox_table
    low = (await mysql.fetch(conn, f"SELECT min(last_id) FROM `{t}_cursor`"))[0][0]
    if low is None:
        return 0
    total = 0
    while True:
        n = await mysql.execute(
            conn, f"DELETE FROM `{t}` WHERE id <= %s AND occurred_at < UTC_TIMESTAMP(6) - INTERVAL %s SECOND "
                  "AND (status = 'done' OR (status = 'pending' AND fail_count = 0)) LIMIT %s",
            [low, int(settings.relay_retention), settings.relay_purge_batch])
        total += n
        if n < settings.relay_purge_batch:
            return total


class MySqlPointerRelay(MySqlRelay):
    """Pointer mode on MySQL / MariaDB: one elected relay (``GET_LOCK``) records the last sent id.

    Ids are taken before commit here too, so the pointer never passes a gap it cannot explain:
    the batch reads in a consistent snapshot (``REPEATABLE READ``), then lists the transactions
    running at that moment (``information_schema.innodb_trx``: needs the ``PROCESS``
    privilege). A gap is passed only when a snapshot taken after every one of them ended still
    does not show it (the transaction rolled back, or a failed insert used the id). Unlike
    PostgreSQL's ``pg_snapshot_xip``, the list is read just after the snapshot, not with it, so
    a gap always waits one more batch (a transaction that committed in between shows then).
    """

    def __init__(self, *args: Any, cursor: str = "default", **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.cursor = cursor
        self.leader = False
        self.gap: tuple[int, list[int]] | None = None
        self.gap_settled = False
        self.skipped_gaps = 0

    async def _connect(self) -> None:
        self.leader = False
        self.gap = None
        await super()._connect()

    async def _rebalance(self) -> None:
        if not self.leader:
            self.leader = (await mysql.fetch(self.mconn, "SELECT GET_LOCK(%s, 0)", [self.lock("leader")]))[0][0] == 1
            if self.leader:
                log.info("relay %s publishes the outbox in pointer mode (cursor %r)", self.name, self.cursor)

    def _topic_lanes(self) -> list[int] | None:
        return None  # the leader publishes every lane

    async def _purge(self) -> int:
        return await purge_below_pointer(self.mconn, self.settings)

    async def _check_gap(self) -> None:
        if self.gap is not None and not self.gap_settled:
            xids = self.gap[1]
            running = (await mysql.fetch(self.mconn, "SELECT count(*) FROM information_schema.innodb_trx "
                                                     f"WHERE trx_id IN {_in(xids)}", xids))[0][0] if xids else 0
            self.gap_settled = running == 0

    def _may_skip_gap(self, start: int, in_progress: list[int]) -> bool:
        if self.gap is None or self.gap[0] != start:
            self.gap, self.gap_settled = (start, in_progress), False  # settles at the next batch at the earliest
            log.debug("pointer waits at id %d for %d transaction(s)", start, len(in_progress))
            return False
        if self.gap_settled:
            self.skipped_gaps += 1
            self.gap = None
            return True
        return False

    async def publish_batch(self) -> int:
        if not self.leader:
            return 0
        await self._check_gap()  # before the snapshot below
        conn, t = self.mconn, self.table
        cols = ", ".join(f"`{c}`" for c in _ROW_COLUMNS)
        n = self.settings.relay_batch_size
        await mysql.execute(conn, "SET TRANSACTION ISOLATION LEVEL REPEATABLE READ")
        await mysql.execute(conn, "START TRANSACTION WITH CONSISTENT SNAPSHOT")
        try:
            in_progress = [int(r[0]) for r in await mysql.fetch(
                conn, "SELECT trx_id FROM information_schema.innodb_trx WHERE trx_mysql_thread_id <> CONNECTION_ID()")]
            await mysql.execute(conn, f"INSERT IGNORE INTO `{t}_cursor` (name, last_id, updated_at) "
                                      "VALUES (%s, 0, UTC_TIMESTAMP(6))", [self.cursor])
            last_id = int((await mysql.fetch(conn, f"SELECT last_id FROM `{t}_cursor` WHERE name = %s",
                                             [self.cursor]))[0][0])
            fresh = await mysql.fetch(conn, f"SELECT {cols}, status FROM `{t}` WHERE id > %s ORDER BY id LIMIT %s",
                                      [last_id, n])
            requeued = [to_row(r) for r in await mysql.fetch(
                conn, f"SELECT {cols} FROM `{t}` WHERE id <= %s AND status = 'pending' AND fail_count > 0 "
                      "AND next_attempt_at <= UTC_TIMESTAMP(6) ORDER BY id LIMIT %s", [last_id, n])]
            walked: list[tuple[OutboxRow, str]] = []
            expected = last_id + 1
            for *values, status in fresh:
                row = to_row(tuple(values))
                if row.id != expected and not self._may_skip_gap(expected, in_progress):
                    break
                walked.append((row, status))
                expected = row.id + 1
            batch = await self.publisher.sort(self.topics,
                                              [row for row, status in walked if status == "pending"] + requeued)
            waiting = {row.id for row in batch.wait}
            stop_at = next((i for i, (row, _) in enumerate(walked) if row.id in waiting), None)
            if stop_at is not None:  # the pointer stops before a row whose topic is missing
                cut = walked[stop_at][0].id
                walked = walked[:stop_at]
                batch.send = [row for row in batch.send if row.id < cut]
                batch.park = [(row, exc) for row, exc in batch.park if row.id < cut]
            result = await self.publisher.publish(batch.send) if batch.send else PublishResult()
            result.failed += batch.park
            new_last = await self._settle_pointer(conn, walked, requeued, result, last_id)
            progressed = len(walked) + sum(1 for row in requeued if row.id not in waiting)
            if new_last != last_id:
                await mysql.execute(conn, f"UPDATE `{t}_cursor` SET last_id = %s, updated_at = UTC_TIMESTAMP(6) "
                                          "WHERE name = %s", [new_last, self.cursor])
            await conn.commit()
        except BaseException:
            try:
                await conn.rollback()
            except Exception:  # noqa: BLE001
                pass
            raise
        self.counters.batches += 1
        return progressed

    async def _settle_pointer(self, conn: Any, walked: list[tuple[OutboxRow, str]], requeued: list[OutboxRow],
                              result: PublishResult, last_id: int) -> int:
        failed = {row.id for row, _ in result.failed}
        blocked_at = min((row.id for row in result.unsent if row.id > last_id), default=None)
        for row, exc in result.failed:
            parked = await record_failure(conn, self.settings, row, exc)
            self.counters.failed_attempts += 1
            self.counters.parked += parked
            if not parked and row.id > last_id and (blocked_at is None or row.id < blocked_at):
                blocked_at = row.id
        sent_ids = {r.id for r in result.sent}
        self.counters.published += len(sent_ids)
        # rows with an earlier failure on record are marked done, so they are not taken for re-queued ones
        requeued_sent = sorted({r.id for r in [*requeued, *(w for w, _ in walked)]
                                if r.fail_count > 0 and r.id not in failed and r.id in sent_ids})
        if requeued_sent:
            await mysql.execute(conn, f"UPDATE `{self.table}` SET status = 'done', processed_at = UTC_TIMESTAMP(6) "
                                      f"WHERE id IN {_in(requeued_sent)}", requeued_sent)
        if result.failed:
            row, exc = result.failed[0]
            log.warning("%d row(s) not published (first: id %d: %s)", len(result.failed), row.id, describe_error(exc))
        if blocked_at is not None:
            return blocked_at - 1
        return walked[-1][0].id if walked else last_id

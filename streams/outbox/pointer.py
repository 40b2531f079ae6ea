"""Pointer mode: the relay records the last id it has sent instead of marking rows.

Rows are never updated on success; one row in ``<outbox>_cursor`` holds the last
sent id. The trap of this scheme is that ids are taken *before* commit: a
transaction holding id 10 may commit after one holding id 11, and a relay that
already moved its pointer to 11 would skip 10 for ever.

This relay never moves past a gap it cannot explain. The outbox's insert
trigger takes the writing transaction's xid *before* the id, so a row whose id is
missing below a visible id belongs to a transaction that was in progress when
the relay took its snapshot (or to one that rolled back). The relay remembers
the transactions in progress at that snapshot (``pg_snapshot_xip``) and waits
until every one of them has ended (``pg_xact_status``); a snapshot taken after
that shows the missing row if it committed, and if it still is not there it
never will be, so the gap is skipped. The cost: a long-running transaction
anywhere in the cluster delays the pointer past a gap (status mode has no such
wait).

Only one relay publishes in pointer mode at a time (an advisory lock elects it);
others stand by and take over when it dies. Parked rows (``status = 'failed'``)
are passed over; ``streams outbox retry`` re-queues them and the relay then sends
them on their own (after later rows of their key: re-queueing gives up order).

One pointer orders the whole table, so a row whose topic does not exist stops it,
as a failed row does: the rows before it are sent, nothing after it, and nothing is
attempted for it (no ``fail_count``); it waits (said once, counted by ``streams
outbox status``) until its topic exists or ``relay_missing_topic_wait`` parks it,
and the pointer passes it then. Status mode lets the other topics flow meanwhile.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from datetime import timedelta

import psycopg
from psycopg import sql

from streams.db import first_row
from streams.outbox.relay import (
    _ROW_COLUMNS,
    PERMANENT_ERRORS,
    PublishResult,
    Relay,
    describe_error,
    record_failure,
)
from streams.outbox.rows import OutboxRow
from streams.settings import Settings

log = logging.getLogger(__name__)


@dataclass
class Gap:
    """Missing ids starting at ``start``, seen while transactions ``xids`` were in progress."""

    start: int
    xids: list[str]
    settled: bool = False


async def purge_below_pointer(conn: psycopg.AsyncConnection, settings: Settings) -> int:
    """Delete sent rows (at or below every cursor) older than ``relay_retention``; returns rows deleted."""
    t = sql.Identifier(settings.outbox_table)
    cur = await conn.execute(sql.SQL("SELECT min(last_id) FROM {}").format(
        sql.Identifier(f"{settings.outbox_table}_cursor")))
    low = first_row(await cur.fetchone())[0]
    if low is None:
        return 0
    total = 0
    while True:
        cur = await conn.execute(sql.SQL(
            "DELETE FROM {t} WHERE id IN (SELECT id FROM {t} WHERE id <= %(low)s "
            "AND occurred_at < now() - %(keep)s AND (status = 'done' OR (status = 'pending' AND fail_count = 0)) "
            "LIMIT %(n)s)").format(t=t),
            {"low": low, "keep": timedelta(seconds=settings.relay_retention), "n": settings.relay_purge_batch})
        total += cur.rowcount
        if cur.rowcount < settings.relay_purge_batch:
            return total


class PointerRelay(Relay):
    """Publishes the outbox in pointer mode (see the module docstring)."""

    def __init__(self, *args, cursor: str = "default", **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.cursor = cursor
        self.leader = False
        self.gap: Gap | None = None
        self.skipped_gaps = 0

    async def _connect(self) -> None:
        self.leader = False
        self.gap = None
        await super()._connect()

    async def _rebalance(self) -> None:
        if not self.leader:
            cur = await self.conn.execute("SELECT pg_try_advisory_lock(%s, -2)", (self._lock_class,))
            self.leader = first_row(await cur.fetchone())[0]
            if self.leader:
                log.info("relay %s publishes the outbox in pointer mode (cursor %r)", self.name, self.cursor)

    async def _purge(self) -> int:
        return await purge_below_pointer(self.conn, self.settings)

    async def _check_gap(self) -> None:
        if self.gap is not None and not self.gap.settled:
            cur = await self.conn.execute(
                "SELECT count(*) FROM unnest(%s::xid8[]) AS x WHERE pg_xact_status(x) = 'in progress'",
                (self.gap.xids,))
            if first_row(await cur.fetchone())[0] == 0:
                self.gap.settled = True

    async def publish_batch(self) -> int:
        if not self.leader:
            return 0
        await self._check_gap()  # before the snapshot below
        conn = self.conn
        t = sql.Identifier(self.table)
        cols = sql.SQL(", ").join(map(sql.Identifier, _ROW_COLUMNS))
        try:
            async with conn.transaction():
                await conn.execute("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ")
                cur = await conn.execute("SELECT ARRAY(SELECT x::text FROM pg_snapshot_xip(pg_current_snapshot()) x)")
                in_progress: list[str] = first_row(await cur.fetchone())[0]
                cursor_t = sql.Identifier(f"{self.table}_cursor")
                await conn.execute(sql.SQL("INSERT INTO {} (name) VALUES (%s) ON CONFLICT DO NOTHING").format(cursor_t),
                                   (self.cursor,))
                cur = await conn.execute(sql.SQL("SELECT last_id FROM {} WHERE name = %s").format(cursor_t),
                                         (self.cursor,))
                last_id = first_row(await cur.fetchone())[0]
                n = self.settings.relay_batch_size
                cur = await conn.execute(sql.SQL(
                    "SELECT {cols}, status FROM {t} WHERE id > %s ORDER BY id LIMIT %s").format(cols=cols, t=t),
                    (last_id, n))
                fresh = await cur.fetchall()
                cur = await conn.execute(sql.SQL(
                    "SELECT {cols} FROM {t} WHERE id <= %s AND status = 'pending' AND fail_count > 0 "
                    "AND next_attempt_at <= now() ORDER BY id LIMIT %s").format(cols=cols, t=t), (last_id, n))
                requeued = [OutboxRow(*r) for r in await cur.fetchall()]

                walked, expected = [], last_id + 1
                for *values, status in fresh:
                    row = OutboxRow(*values)
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
                # rows the pointer passed or re-queued rows tried (a pointer held at a missing topic: none)
                progressed = len(walked) + sum(1 for row in requeued if row.id not in waiting)
                if new_last != last_id:
                    await conn.execute(sql.SQL("UPDATE {} SET last_id = %s, updated_at = now() WHERE name = %s")
                                       .format(cursor_t), (new_last, self.cursor))
        except psycopg.errors.SerializationFailure:
            return 0
        self.counters.batches += 1
        return progressed

    def _may_skip_gap(self, start: int, in_progress: list[str]) -> bool:
        """Whether the ids from ``start`` up to the next visible row can never appear any more."""
        if self.gap is None or self.gap.start != start:
            self.gap = Gap(start, in_progress, settled=not in_progress)
            if not self.gap.settled:
                log.debug("pointer waits at id %d for %d transaction(s)", start, len(in_progress))
        if self.gap.settled:
            self.skipped_gaps += 1
            self.gap = None
            return True
        return False

    def _topic_lanes(self) -> list[int] | None:
        return None  # the leader publishes every lane

    async def _settle_pointer(self, conn, walked, requeued, result: PublishResult, last_id: int) -> int:
        failed = {row.id: exc for row, exc in result.failed}
        # rows not handed to the producer in time: the pointer stops before the first of them
        blocked_at = min((row.id for row in result.unsent if row.id > last_id), default=None)
        for row, exc in result.failed:
            parked = await record_failure(conn, self.settings, row, exc)
            self.counters.failed_attempts += 1
            self.counters.parked += parked
            if not parked and row.id > last_id and (blocked_at is None or row.id < blocked_at):
                blocked_at = row.id
        sent_ids = [r.id for r in result.sent]
        self.counters.published += len(sent_ids)
        # rows with an earlier failure on record are marked done, so they are not taken for re-queued ones
        requeued_sent = [r.id for r in [*requeued, *(w for w, _ in walked)] if r.fail_count > 0 and r.id not in failed
                         and r.id in set(sent_ids)]
        if requeued_sent:
            await conn.execute(sql.SQL("UPDATE {} SET status = 'done', processed_at = now() WHERE id = ANY(%s)")
                               .format(sql.Identifier(self.table)), (requeued_sent,))
        if result.failed:
            row, exc = result.failed[0]
            log.warning("%d row(s) not published (first: id %d: %s)", len(result.failed), row.id, describe_error(exc))
        if blocked_at is not None:
            return blocked_at - 1
        return walked[-1][0].id if walked else last_id


__all__ = ["PERMANENT_ERRORS", "PointerRelay"]

"""The relay's lag and health figures, read from the database (any process can ask)."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from datetime import datetime

import psycopg
from psycopg import sql

from streams.db import first_row
from streams.settings import Settings


@dataclass(frozen=True)
class OutboxStats:
    """One reading of the outbox.

    ``pending``: rows waiting to be published (``retrying`` of them after a failed
    attempt); ``oldest_pending_age_s``: age of the oldest waiting row (0 when none);
    ``failed``: parked rows (need ``streams outbox retry``); ``published_last_minute``
    and ``publish_rate``: rows marked done in the last 60 s and that per second;
    ``waiting``: pending rows a relay found waiting for their topic to exist, and
    ``waiting_topics`` those per topic (``{topic: {"rows": n, "since": first stamp}}``).
    In pointer mode ``pending`` counts rows above the relay's last sent id.
    """

    table: str
    exists: bool
    pending: int = 0
    retrying: int = 0
    oldest_pending_age_s: float = 0.0
    failed: int = 0
    done: int = 0
    published_last_minute: int = 0
    publish_rate: float = 0.0
    last_published_at: datetime | None = None
    pointer: dict[str, int] | None = None
    waiting: int = 0
    waiting_topics: dict[str, dict] = field(default_factory=dict)

    def to_dict(self) -> dict:
        out = asdict(self)
        out["last_published_at"] = self.last_published_at.isoformat() if self.last_published_at else None
        out["waiting_topics"] = {t: {"rows": w["rows"], "since": w["since"].isoformat() if w["since"] else None}
                                 for t, w in self.waiting_topics.items()}
        return out


_QUERY = """
SELECT
  count(*) FILTER (WHERE status = 'pending'),
  count(*) FILTER (WHERE status = 'pending' AND fail_count > 0),
  coalesce(extract(epoch FROM now() - min(occurred_at) FILTER (WHERE status = 'pending')), 0),
  count(*) FILTER (WHERE status = 'failed'),
  count(*) FILTER (WHERE status = 'done'),
  count(*) FILTER (WHERE status = 'done' AND processed_at > now() - interval '60 seconds'),
  max(processed_at)
FROM {table}
"""


async def outbox_stats(settings: Settings) -> OutboxStats:
    """Figures for the configured outbox (``STREAMS_OUTBOX_TABLE`` in ``STREAMS_DATABASE_URL``)."""
    if settings.database_dialect == "mysql":
        from streams import mysql

        conn = await mysql.connect_async(settings.dsn)
        try:
            return await read_stats_mysql(conn, settings.outbox_table)
        finally:
            await mysql.close_async(conn)
    async with await psycopg.AsyncConnection.connect(settings.dsn, autocommit=True, connect_timeout=5) as conn:
        return await read_stats(conn, settings.outbox_table)


async def read_stats(conn: psycopg.AsyncConnection, table: str = "streams_outbox") -> OutboxStats:
    """Figures for ``table`` on an open async connection."""
    cur = await conn.execute("SELECT to_regclass(%s) IS NOT NULL", (table,))
    if not first_row(await cur.fetchone())[0]:
        return OutboxStats(table=table, exists=False)
    cur = await conn.execute(sql.SQL(_QUERY).format(table=sql.Identifier(table)))
    row = first_row(await cur.fetchone())
    cur = await conn.execute(sql.SQL("SELECT name, last_id FROM {}").format(sql.Identifier(f"{table}_cursor")))
    pointers: dict[str, int] = dict(await cur.fetchall())
    pending, oldest, done, recent = row[0], float(row[2]), row[4], row[5]
    cur = await conn.execute(sql.SQL(
        "SELECT topic, count(*), min(topic_missing_since) FROM {} WHERE status = 'pending' "
        "AND topic_missing_since IS NOT NULL GROUP BY topic ORDER BY topic").format(sql.Identifier(table)))
    waiting = {topic: {"rows": n, "since": since} for topic, n, since in await cur.fetchall()}
    if pointers:  # pointer mode: rows above the lowest pointer are the ones not sent yet
        cur = await conn.execute(sql.SQL(
            "SELECT count(*) FILTER (WHERE id > %(low)s), "
            "coalesce(extract(epoch FROM now() - min(occurred_at) FILTER (WHERE id > %(low)s)), 0), "
            "count(*) FILTER (WHERE id <= %(low)s) "
            "FROM {} WHERE status = 'pending'").format(sql.Identifier(table)), {"low": min(pointers.values())})
        pending, oldest, done = (lambda r: (r[0], float(r[1]), done + r[2]))(first_row(await cur.fetchone()))
    return OutboxStats(
        table=table, exists=True, pending=pending, retrying=row[1], oldest_pending_age_s=round(oldest, 3),
        failed=row[3], done=done, published_last_minute=recent, publish_rate=round(recent / 60.0, 2),
        last_published_at=row[6], pointer=pointers or None,
        waiting=sum(w["rows"] for w in waiting.values()), waiting_topics=waiting,
    )


_MYSQL_QUERY = """
SELECT
  coalesce(sum(status = 'pending'), 0),
  coalesce(sum(status = 'pending' AND fail_count > 0), 0),
  coalesce(timestampdiff(MICROSECOND, min(CASE WHEN status = 'pending' THEN occurred_at END), UTC_TIMESTAMP(6)), 0),
  coalesce(sum(status = 'failed'), 0),
  coalesce(sum(status = 'done'), 0),
  coalesce(sum(status = 'done' AND processed_at > UTC_TIMESTAMP(6) - INTERVAL 60 SECOND), 0),
  max(processed_at)
FROM `{table}`
"""


async def read_stats_mysql(conn, table: str = "streams_outbox") -> OutboxStats:
    """:func:`read_stats` on an asyncmy connection to MySQL / MariaDB."""
    from datetime import UTC

    from streams import mysql

    if not await mysql.fetch(conn, "SELECT 1 FROM information_schema.tables WHERE table_schema = DATABASE() "
                                   "AND table_name = %s", [table]):
        return OutboxStats(table=table, exists=False)
    row = (await mysql.fetch(conn, _MYSQL_QUERY.format(table=table)))[0]
    pointers = {name: int(last) for name, last in await mysql.fetch(conn, f"SELECT name, last_id FROM `{table}_cursor`")}
    pending, oldest, done = int(row[0]), float(row[2]) / 1e6, int(row[4])
    waiting: dict[str, dict] = {topic: {"rows": int(n), "since": since.replace(tzinfo=UTC) if since else None}
               for topic, n, since in await mysql.fetch(
                   conn, f"SELECT topic, count(*), min(topic_missing_since) FROM `{table}` WHERE status = 'pending' "
                         "AND topic_missing_since IS NOT NULL GROUP BY topic ORDER BY topic")}
    if pointers:
        low = min(pointers.values())
        above, age, below = (await mysql.fetch(conn, (
            "SELECT coalesce(sum(id > %s), 0), coalesce(timestampdiff(MICROSECOND, min(CASE WHEN id > %s THEN "
            f"occurred_at END), UTC_TIMESTAMP(6)), 0), coalesce(sum(id <= %s), 0) FROM `{table}` "
            "WHERE status = 'pending'"), [low, low, low]))[0]
        pending, oldest, done = int(above), float(age) / 1e6, done + int(below)
    recent = int(row[5])
    return OutboxStats(
        table=table, exists=True, pending=pending, retrying=int(row[1]), oldest_pending_age_s=round(oldest, 3),
        failed=int(row[3]), done=done, published_last_minute=recent, publish_rate=round(recent / 60.0, 2),
        last_published_at=row[6].replace(tzinfo=UTC) if row[6] else None, pointer=pointers or None,
        waiting=sum(w["rows"] for w in waiting.values()), waiting_topics=waiting,
    )

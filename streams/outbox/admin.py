"""Operator chores on the outbox: list rows, re-queue parked ones, purge old ones."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

import psycopg
from psycopg import sql

from streams.settings import Settings


@dataclass(frozen=True)
class RowFilter:
    """Which rows a command acts on (every given condition must hold)."""

    ids: tuple[int, ...] = ()
    message_ids: tuple[str, ...] = ()
    types: tuple[str, ...] = ()
    topics: tuple[str, ...] = ()
    since: datetime | None = None
    until: datetime | None = None

    def where(self) -> tuple[sql.Composable, dict]:
        parts: list[sql.Composable] = []
        params: dict = {}
        for name, column, values in (("ids", "id", self.ids), ("mids", "message_id", self.message_ids),
                                     ("types", "message_type", self.types), ("topics", "topic", self.topics)):
            if values:
                parts.append(sql.SQL("{} = ANY(%({})s)").format(sql.Identifier(column), sql.SQL(name)))
                params[name] = list(values)
        if self.since:
            parts.append(sql.SQL("occurred_at >= %(since)s"))
            params["since"] = self.since
        if self.until:
            parts.append(sql.SQL("occurred_at < %(until)s"))
            params["until"] = self.until
        return (sql.SQL(" AND ").join(parts) if parts else sql.SQL("TRUE")), params

    def where_mysql(self) -> tuple[str, list]:
        """:meth:`where` for MySQL: a condition with ``%s`` parameters (times as UTC without a zone)."""
        from datetime import UTC

        parts: list[str] = []
        params: list = []
        for column, values in (("id", self.ids), ("message_id", self.message_ids), ("message_type", self.types),
                               ("topic", self.topics)):
            if values:
                parts.append(f"`{column}` IN ({', '.join(['%s'] * len(values))})")
                params += list(values)
        for op, moment in ((">=", self.since), ("<", self.until)):
            if moment is not None:
                parts.append(f"occurred_at {op} %s")
                params.append(moment.astimezone(UTC).replace(tzinfo=None))
        return (" AND ".join(parts) if parts else "TRUE"), params

    @property
    def empty(self) -> bool:
        return not (self.ids or self.message_ids or self.types or self.topics or self.since or self.until)


def list_rows(settings: Settings, status: str | None, flt: RowFilter, limit: int = 50) -> list[dict]:
    """Rows (newest first) with their routing and failure columns."""
    if settings.database_dialect == "mysql":
        return _list_rows_mysql(settings, status, flt, limit)
    where, params = flt.where()
    if status:
        where = sql.SQL("{} AND status = %(status)s").format(where)
        params["status"] = status
    query = sql.SQL(
        "SELECT id, message_id, message_type, topic, key, status, fail_count, occurred_at, processed_at, "
        "failed_at, last_error, topic_missing_since FROM {t} WHERE {w} ORDER BY id DESC LIMIT %(limit)s"
    ).format(t=sql.Identifier(settings.outbox_table), w=where)
    params["limit"] = limit
    with psycopg.connect(settings.dsn, autocommit=True, connect_timeout=5) as conn:
        cur = conn.execute(query, params)
        names = [d.name for d in cur.description or ()]
        return [dict(zip(names, r, strict=False)) for r in cur.fetchall()]


def retry_parked(settings: Settings, flt: RowFilter) -> int:
    """Put parked (failed) rows matching ``flt`` back to pending, due now; returns how many.

    Their ``fail_count`` and ``last_error`` stay as a record of what happened; a row parked
    because its topic did not exist waits for it afresh."""
    if settings.database_dialect == "mysql":
        return _retry_parked_mysql(settings, flt)
    where, params = flt.where()
    query = sql.SQL(
        "UPDATE {t} SET status = 'pending', next_attempt_at = '-infinity', topic_missing_since = NULL "
        "WHERE status = 'failed' AND {w}"
    ).format(t=sql.Identifier(settings.outbox_table), w=where)
    with psycopg.connect(settings.dsn, autocommit=True, connect_timeout=5) as conn:
        with conn.transaction():
            cur = conn.execute(query, params)
            count = cur.rowcount
        if count:
            conn.execute("SELECT pg_notify(%s, '')", (settings.outbox_table,))
        return count


_LIST_COLUMNS = ("id", "message_id", "message_type", "topic", "key", "status", "fail_count", "occurred_at",
                 "processed_at", "failed_at", "last_error", "topic_missing_since")


def _list_rows_mysql(settings: Settings, status: str | None, flt: RowFilter, limit: int) -> list[dict]:
    from datetime import UTC

    from streams import mysql

    where, params = flt.where_mysql()
    if status:
        where += " AND status = %s"
        params.append(status)
    cols = ", ".join(f"`{c}`" for c in _LIST_COLUMNS)
    conn = mysql.connect(settings.dsn)
    try:
        with conn.cursor() as cur:
            cur.execute(f"SELECT {cols} FROM `{settings.outbox_table}` WHERE {where} ORDER BY id DESC LIMIT %s",
                        [*params, limit])
            rows = [dict(zip(_LIST_COLUMNS, r, strict=True)) for r in cur.fetchall()]
    finally:
        conn.close()
    for row in rows:  # UTC, as PostgreSQL's timestamptz reads
        for column in ("occurred_at", "processed_at", "failed_at", "topic_missing_since"):
            if row[column] is not None:
                row[column] = row[column].replace(tzinfo=UTC)
    return rows


def _retry_parked_mysql(settings: Settings, flt: RowFilter) -> int:
    from streams import mysql

    where, params = flt.where_mysql()
    conn = mysql.connect(settings.dsn)
    try:
        with conn.cursor() as cur:
            return cur.execute(
                f"UPDATE `{settings.outbox_table}` SET status = 'pending', next_attempt_at = '1970-01-01', "
                f"topic_missing_since = NULL WHERE status = 'failed' AND {where}", params)
    finally:
        conn.close()

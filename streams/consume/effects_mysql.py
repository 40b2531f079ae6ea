"""The processed-messages table of :mod:`streams.consume.effects` on MySQL 8 / MariaDB.

The same guarantee as on PostgreSQL: the row that says "processed" is written first
in the handler's own transaction, commits with its writes or not at all, and a
second delivery finds it (waiting for the first transaction if that is still open)
and is skipped. What differs is how a transaction learns that *it* wrote the row:

MySQL has no ``INSERT … RETURNING`` (MariaDB's does not report an upsert's outcome),
and the affected-row count of ``ON DUPLICATE KEY UPDATE`` depends on the client's
``FOUND_ROWS`` flag (SQLAlchemy sets it, the drivers do not). So each attempt brings
a random ``attempt`` token: the upsert writes it (and takes the row over) only when
the row is absent, past the retention, or older than a forced reprocess window, and
a locking read of the row then tells whose token it holds. Times are UTC
``DATETIME(6)`` written with ``UTC_TIMESTAMP(6)``, whatever the session's zone.

Connections: asyncmy (the pool here, or one given), PyMySQL (given, synchronous),
SQLAlchemy ``Session`` / ``AsyncSession`` on a ``mysql+pymysql`` / ``mysql+asyncmy``
engine.
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from datetime import UTC, datetime
from typing import Any

from streams import mysql

_DDL = """
CREATE TABLE IF NOT EXISTS `{t}` (
    consumer     VARCHAR(255) NOT NULL,
    message_id   VARCHAR(255) NOT NULL,
    processed_at DATETIME(6) NOT NULL,
    topic        VARCHAR(249) NULL,
    `partition`  INT NULL,
    `offset`     BIGINT NULL,
    outputs      LONGTEXT NULL,
    attempt      CHAR(32) NOT NULL,
    PRIMARY KEY (consumer, message_id),
    KEY `{t}_processed_at` (processed_at)
) ENGINE=InnoDB DEFAULT CHARSET=utf8mb4 COLLATE=utf8mb4_bin
"""

_TAKE_OVER = "attempt = VALUES(attempt)"  # true once the row's attempt was replaced by ours


class MySqlEffects:
    """The statements and the connection pool of one processed-messages table in MySQL."""

    def __init__(self, url: str, table: str, retention: float, pool_size: int) -> None:
        self.url = url
        self.table = table
        self.retention = retention
        self.pool_size = pool_size
        self._idle: list[Any] = []
        self._slots = asyncio.Semaphore(pool_size)
        t = f"`{table}`"
        self.ddl = _DDL.format(t=table)
        # the attempt is replaced first; every other column follows it (assignments run left to right)
        self.claim_sql = (
            f"INSERT INTO {t} (consumer, message_id, topic, `partition`, `offset`, processed_at, attempt) "
            "VALUES (%(consumer)s, %(message_id)s, %(topic)s, %(partition)s, %(offset)s, UTC_TIMESTAMP(6), "
            "%(attempt)s) ON DUPLICATE KEY UPDATE "
            "attempt = IF((%(since)s IS NOT NULL AND processed_at < %(since)s) "
            "OR processed_at <= UTC_TIMESTAMP(6) - INTERVAL %(retention)s MICROSECOND, VALUES(attempt), attempt), "
            f"processed_at = IF({_TAKE_OVER}, UTC_TIMESTAMP(6), processed_at), "
            f"topic = IF({_TAKE_OVER}, VALUES(topic), topic), "
            f"`partition` = IF({_TAKE_OVER}, VALUES(`partition`), `partition`), "
            f"`offset` = IF({_TAKE_OVER}, VALUES(`offset`), `offset`), "
            f"outputs = IF({_TAKE_OVER}, NULL, outputs)")
        self.owner_sql = f"SELECT attempt FROM {t} WHERE consumer = %(consumer)s AND message_id = %(message_id)s " \
                         "FOR UPDATE"
        self.outputs_sql = f"UPDATE {t} SET outputs = %(outputs)s WHERE consumer = %(consumer)s " \
                           "AND message_id = %(message_id)s"
        self.lookup_sql = (f"SELECT outputs, processed_at FROM {t} WHERE consumer = %s AND message_id = %s "
                           "AND processed_at > UTC_TIMESTAMP(6) - INTERVAL %s MICROSECOND")
        self.purge_sql = f"DELETE FROM {t} WHERE processed_at < UTC_TIMESTAMP(6) - INTERVAL %s MICROSECOND LIMIT %s"

    def claim_params(self, consumer: str, message_id: str, where: tuple[str, int, int],
                     reprocess_since: float | None) -> dict[str, Any]:
        """The parameters of :attr:`claim_sql` / :attr:`owner_sql` for one attempt (a fresh token)."""
        since = (datetime.fromtimestamp(reprocess_since, UTC).replace(tzinfo=None)
                 if reprocess_since is not None else None)
        topic, partition, offset = where
        return {"consumer": consumer, "message_id": message_id, "topic": topic, "partition": partition,
                "offset": offset, "attempt": uuid.uuid4().hex, "since": since,
                "retention": int(self.retention * 1e6)}

    # --- the pool (asyncmy, autocommit, READ COMMITTED, UTC) ------------------------
    @asynccontextmanager
    async def connection(self) -> AsyncIterator[Any]:
        """A pooled asyncmy connection; a connection that failed is closed, not pooled again."""
        async with self._slots:
            conn = self._idle.pop() if self._idle else await mysql.connect_async(self.url)
            healthy = False
            try:
                yield conn
                healthy = True
            finally:
                if healthy and conn.get_autocommit() and not conn.server_status & 1:
                    self._idle.append(conn)
                else:
                    await mysql.close_async(conn)

    async def close(self) -> None:
        idle, self._idle = self._idle, []
        for conn in idle:
            await mysql.close_async(conn)

    # --- schema and table-wide chores ------------------------------------------------
    async def ensure_schema(self) -> None:
        async with self.connection() as conn:
            await mysql.execute(conn, self.ddl)

    def migrate_sync(self) -> None:
        conn = mysql.connect(self.url)
        try:
            with conn.cursor() as cur:
                cur.execute(self.ddl)
        finally:
            conn.close()

    async def lookup(self, consumer: str, message_id: str) -> tuple[float, str | None] | None:
        """(processed at, epoch seconds; the outputs' JSON) of a message within the retention."""
        async with self.connection() as conn:
            rows = await mysql.fetch(conn, self.lookup_sql, [consumer, message_id, int(self.retention * 1e6)])
        if not rows:
            return None
        outputs, at = rows[0]
        return at.replace(tzinfo=UTC).timestamp(), outputs

    async def purge(self, batch: int) -> int:
        total = 0
        async with self.connection() as conn:
            while True:
                n = await mysql.execute(conn, self.purge_sql, [int(self.retention * 1e6), batch])
                total += n
                if n < batch:
                    return total

    # --- one attempt, on the connection kinds a handler may give ---------------------
    async def claim_async(self, conn: Any, params: dict[str, Any]) -> bool:
        """Write the row on an asyncmy connection in its open transaction; True if it is ours."""
        await mysql.execute(conn, self.claim_sql, params)
        rows = await mysql.fetch(conn, self.owner_sql, params)
        return bool(rows) and rows[0][0] == params["attempt"]

    def claim_sync(self, conn: Any, params: dict[str, Any]) -> bool:
        """:meth:`claim_async` on a PyMySQL connection."""
        with conn.cursor() as cur:
            cur.execute(self.claim_sql, params)
            cur.execute(self.owner_sql, params)
            row = cur.fetchone()
        return row is not None and row[0] == params["attempt"]

    @staticmethod
    def named(query: str) -> str:
        """``%(name)s`` parameters as SQLAlchemy ``text()``'s ``:name``."""
        import re

        return re.sub(r"%\((\w+)\)s", r":\1", query)


def in_transaction(conn: Any) -> bool:
    """Whether the server says a transaction is open on this asyncmy / PyMySQL session."""
    return bool(conn.server_status & 1)


def is_mysql_connection(conn: Any) -> bool:
    return conn is not None and type(conn).__module__.split(".")[0] in ("asyncmy", "pymysql")


def is_mysql_session(session: Any) -> bool:
    """Whether a SQLAlchemy (Async)Session is bound to a MySQL-family engine."""
    bind = session.get_bind() if hasattr(session, "get_bind") else None
    if bind is None and hasattr(session, "sync_session"):
        bind = session.sync_session.get_bind()
    return bind is not None and bind.dialect.name in ("mysql", "mariadb")

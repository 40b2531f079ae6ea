"""The application's database for handlers and tools: PostgreSQL (psycopg 3) or MySQL / MariaDB.

``STREAMS_DATABASE_URL``'s scheme chooses (:attr:`streams.settings.Settings.database_dialect`):
a ``postgresql://`` URL gives psycopg connections, a ``mysql://`` one asyncmy (async) and
PyMySQL (sync) connections (:mod:`streams.mysql`). :class:`Database` holds one lazily opened
async connection and reopens it after a connection failure, so a database restart costs a
retry, not a worker. Both drivers take ``%s`` placeholders; the SQL itself is the caller's,
in its server's dialect (:attr:`Database.dialect`).
"""

from __future__ import annotations

import asyncio
import itertools
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import psycopg

from streams import mysql as _mysql
from streams.settings import Settings, redact_url


class Database:
    """One async autocommit connection to ``settings.dsn``, reopened on failure."""

    def __init__(self, settings: Settings, *, connect_timeout: float = 5.0) -> None:
        self.settings = settings
        self.connect_timeout = connect_timeout
        self._conn: Any = None
        self._lock = asyncio.Lock()
        #: one statement at a time on the connection: psycopg's connection serialises its users
        #: itself, asyncmy's does not (two tasks' statements interleaved hang both)
        self._busy = asyncio.Lock()

    @property
    def dialect(self) -> str:
        """``postgresql`` or ``mysql`` (MySQL 8, MariaDB): which SQL the server speaks."""
        return self.settings.database_dialect

    @property
    def where(self) -> str:
        """The server, for messages (password removed)."""
        return redact_url(self.settings.dsn)

    async def connection(self) -> Any:
        """The connection: a psycopg ``AsyncConnection`` or an asyncmy ``Connection`` (a closed one
        is replaced: asyncmy closes its connection itself when a statement is cancelled)."""
        async with self._lock:
            if self.dialect == "mysql":
                if self._conn is None or not self._conn.connected:
                    self._conn = await _mysql.connect_async(self.settings.dsn,
                                                            connect_timeout=self.connect_timeout)
            elif self._conn is None or self._conn.closed:
                self._conn = await psycopg.AsyncConnection.connect(
                    self.settings.dsn, autocommit=True, connect_timeout=int(self.connect_timeout)
                )
            return self._conn

    async def execute(self, sql: str, params: Any = None) -> int:
        """Run one statement; returns the row count. A broken connection is dropped."""
        async with self._busy:
            conn = await self.connection()
            try:
                async with conn.cursor() as cur:
                    await cur.execute(sql, params)
                    return cur.rowcount
            except connection_errors():
                await self._discard(conn)
                raise

    async def fetch(self, sql: str, params: Any = None) -> list[tuple]:
        """Run one query; returns its rows. A broken connection is dropped."""
        async with self._busy:
            conn = await self.connection()
            try:
                async with conn.cursor() as cur:
                    await cur.execute(sql, params)
                    return list(await cur.fetchall())
            except connection_errors():
                await self._discard(conn)
                raise

    async def _discard(self, conn: Any) -> None:
        """Drop ``conn`` after it failed, unless it was replaced meanwhile."""
        if self._conn is conn:
            await self.close()

    async def close(self) -> None:
        conn, self._conn = self._conn, None
        if conn is None:
            return
        if self.dialect == "mysql":
            await _mysql.close_async(conn)
        else:
            await conn.close()


def connection_errors() -> tuple[type[BaseException], ...]:
    """What a lost or refused connection raises, in either dialect's drivers."""
    return (psycopg.OperationalError, *_mysql.connection_errors())


def connect(settings: Settings, *, autocommit: bool = False, connect_timeout: float = 5) -> Any:
    """A synchronous connection (scripts, migrations, tests): psycopg, or PyMySQL for ``mysql://``.

    Both have ``cursor()`` (a context manager) and ``close()``; :func:`transaction` opens a
    transaction on either."""
    if settings.database_dialect == "mysql":
        return _mysql.connect(settings.dsn, autocommit=autocommit, connect_timeout=connect_timeout)
    return psycopg.connect(settings.dsn, autocommit=autocommit, connect_timeout=int(connect_timeout))


@contextmanager
def transaction(conn: Any) -> Iterator[Any]:
    """One transaction on a synchronous connection of :func:`connect`: committed when the block
    ends, rolled back when it raises. Yields the connection. Inside a transaction already open
    it is a savepoint on either driver (psycopg's own rule; PyMySQL's ``begin()`` would commit
    the open one)."""
    if isinstance(conn, psycopg.Connection):
        with conn.transaction():
            yield conn
        return
    if conn.server_status & _SERVER_STATUS_IN_TRANS:
        name = f"streams_{next(_savepoints)}"
        query(conn, f"SAVEPOINT {name}")
        try:
            yield conn
        except BaseException:
            query(conn, f"ROLLBACK TO SAVEPOINT {name}")
            raise
        query(conn, f"RELEASE SAVEPOINT {name}")
        return
    conn.begin()
    try:
        yield conn
    except BaseException:
        conn.rollback()
        raise
    conn.commit()


#: MySQL's "a transaction is open" bit of a connection's server status
_SERVER_STATUS_IN_TRANS = 1
_savepoints = itertools.count(1)


def query(conn: Any, sql: str, params: Any = None) -> list[tuple]:
    """Run one statement on a synchronous connection of either dialect; its rows (none for a
    statement that returns none)."""
    with conn.cursor() as cur:
        cur.execute(sql, params)
        return list(cur.fetchall()) if cur.description else []


def first_row(row: tuple[Any, ...] | None, what: str = "the query") -> tuple[Any, ...]:
    """``row`` from a ``fetchone()`` that always has one (an aggregate, a lock call)."""
    if row is None:
        raise RuntimeError(f"{what} returned no row")
    return row

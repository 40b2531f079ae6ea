"""PostgreSQL access for handlers and tools (psycopg 3).

:class:`Database` holds one lazily opened async connection and reopens it after
a connection failure, so a database restart costs a retry, not a worker.
"""

from __future__ import annotations

import asyncio
from typing import Any

import psycopg

from streams.settings import Settings, redact_url


class Database:
    """One async autocommit connection to ``settings.dsn``, reopened on failure."""

    def __init__(self, settings: Settings, *, connect_timeout: float = 5.0) -> None:
        self.settings = settings
        self.connect_timeout = connect_timeout
        self._conn: psycopg.AsyncConnection | None = None
        self._lock = asyncio.Lock()

    @property
    def where(self) -> str:
        """The server, for messages (password removed)."""
        return redact_url(self.settings.dsn)

    async def connection(self) -> psycopg.AsyncConnection:
        async with self._lock:
            if self._conn is None or self._conn.closed:
                self._conn = await psycopg.AsyncConnection.connect(
                    self.settings.dsn, autocommit=True, connect_timeout=int(self.connect_timeout)
                )
            return self._conn

    async def execute(self, sql: str, params: Any = None) -> int:
        """Run one statement; returns the row count. A broken connection is dropped."""
        conn = await self.connection()
        try:
            async with conn.cursor() as cur:
                await cur.execute(sql, params)
                return cur.rowcount
        except psycopg.OperationalError:
            await self.close()
            raise

    async def fetch(self, sql: str, params: Any = None) -> list[tuple]:
        conn = await self.connection()
        try:
            async with conn.cursor() as cur:
                await cur.execute(sql, params)
                return await cur.fetchall()
        except psycopg.OperationalError:
            await self.close()
            raise

    async def close(self) -> None:
        if self._conn is not None:
            try:
                await self._conn.close()
            finally:
                self._conn = None


def connect(settings: Settings, **kwargs: Any) -> psycopg.Connection:
    """A synchronous connection (scripts, migrations, tests)."""
    return psycopg.connect(settings.dsn, **kwargs)


def first_row(row: tuple[Any, ...] | None, what: str = "the query") -> tuple[Any, ...]:
    """``row`` from a ``fetchone()`` that always has one (an aggregate, a lock call)."""
    if row is None:
        raise RuntimeError(f"{what} returned no row")
    return row

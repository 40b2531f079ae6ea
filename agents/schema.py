"""Tables the reference services create on first use (``CREATE ... IF NOT EXISTS``)."""

from __future__ import annotations

import asyncio

import psycopg

from streams import Database


class Schema:
    """DDL run once per process before a handler's first write."""

    def __init__(self, ddl: str) -> None:
        self.ddl = ddl
        self._ready = False
        self._lock = asyncio.Lock()

    async def ensure(self, db: Database) -> None:
        if self._ready:
            return
        async with self._lock:
            if self._ready:
                return
            try:
                await db.execute(self.ddl)
            except (psycopg.errors.UniqueViolation, psycopg.errors.DuplicateTable, psycopg.errors.DuplicateObject):
                # another worker ran the same CREATE ... IF NOT EXISTS at the same moment (a known
                # PostgreSQL race on the catalog): the table is there, which is all we need
                pass
            self._ready = True

    def migrate(self, conn: psycopg.Connection) -> None:
        """The same DDL on a synchronous connection (demo and tests)."""
        with conn.transaction():
            conn.execute(self.ddl)

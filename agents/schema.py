"""Tables the reference services create on first use (``CREATE ... IF NOT EXISTS``), in the SQL of
the database ``STREAMS_DATABASE_URL`` names: PostgreSQL, or MySQL 8 / MariaDB."""

from __future__ import annotations

import asyncio
from typing import Any

import psycopg

from streams import Database
from streams.db import query, transaction


class Schema:
    """DDL run once per process before a handler's first write: one text per dialect
    (``;``-separated statements: MySQL's drivers run one statement per call)."""

    def __init__(self, postgresql: str, mysql: str) -> None:
        self.ddl = {"postgresql": postgresql, "mysql": mysql}
        self._ready = False
        self._lock = asyncio.Lock()

    def statements(self, dialect: str) -> list[str]:
        """The statements of ``dialect`` (``postgresql`` or ``mysql``)."""
        return [s.strip() for s in self.ddl[dialect].split(";") if s.strip()]

    async def ensure(self, db: Database) -> None:
        if self._ready:
            return
        async with self._lock:
            if self._ready:
                return
            for statement in self.statements(db.dialect):
                try:
                    await db.execute(statement)
                except (psycopg.errors.UniqueViolation, psycopg.errors.DuplicateTable, psycopg.errors.DuplicateObject):
                    # another worker ran the same CREATE ... IF NOT EXISTS at the same moment (a known
                    # PostgreSQL race on the catalog): the table is there, which is all we need
                    pass
            self._ready = True

    def migrate(self, conn: Any) -> None:
        """The same DDL on a synchronous connection of :func:`streams.db.connect` (demo and tests)."""
        dialect = "postgresql" if isinstance(conn, psycopg.Connection) else "mysql"
        with transaction(conn):
            for statement in self.statements(dialect):
                query(conn, statement)

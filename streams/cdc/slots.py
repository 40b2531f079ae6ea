"""The PostgreSQL side of a CDC connector: its replication slot and publication.

A logical replication slot keeps every WAL segment from its ``restart_lsn`` on until
its consumer confirms it; a slot nobody reads any more holds WAL forever and fills
the disk. So ``streams cdc status`` shows how far behind the slot is, and
``streams cdc delete`` drops it (and the publication) once the connector is gone.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any

import psycopg
from psycopg import sql

from streams.errors import StreamsError


class SlotError(StreamsError):
    """A replication slot could not be read or dropped (says which and why)."""


@dataclass(frozen=True)
class SlotInfo:
    """One row of ``pg_replication_slots`` with its lag worked out."""

    name: str
    database: str
    plugin: str
    active: bool
    active_pid: int | None
    restart_lsn: str | None
    confirmed_flush_lsn: str | None
    #: bytes of WAL written since the consumer's confirmed position (what it has not acknowledged)
    lag_bytes: int | None
    #: bytes of WAL the server keeps for this slot (from restart_lsn)
    retained_bytes: int | None
    wal_status: str | None

    def as_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)


_SLOTS = """SELECT slot_name, database, plugin, active, active_pid, restart_lsn::text, confirmed_flush_lsn::text,
                  pg_wal_lsn_diff(pg_current_wal_lsn(), confirmed_flush_lsn)::bigint,
                  pg_wal_lsn_diff(pg_current_wal_lsn(), restart_lsn)::bigint, wal_status
             FROM pg_replication_slots"""


def slot_info(conn: psycopg.Connection, slot: str) -> SlotInfo | None:
    """The slot named ``slot`` (None: no such slot)."""
    row = conn.execute(_SLOTS + " WHERE slot_name = %s", (slot,)).fetchone()
    return SlotInfo(*row) if row else None


async def database_slots(conn: psycopg.AsyncConnection) -> list[SlotInfo]:
    """The logical slots of ``conn``'s database (what the workers' ``/metrics`` report)."""
    cur = await conn.execute(_SLOTS + " WHERE database = current_database() ORDER BY slot_name")
    return [SlotInfo(*row) for row in await cur.fetchall()]


def lsn_to_int(lsn: str) -> int:
    """``'0/1A2B3C'`` → the integer Debezium stores in its offsets."""
    high, _, low = lsn.partition("/")
    return (int(high, 16) << 32) + int(low, 16)


def int_to_lsn(value: int) -> str:
    return f"{value >> 32:X}/{value & 0xFFFFFFFF:X}"


def drop_slot(conn: psycopg.Connection, slot: str, *, wait: float = 30.0) -> bool:
    """Drop ``slot`` once no process reads it (a deleted connector's task may take a few
    seconds to close its replication connection). False: there was no such slot.
    Raises :class:`SlotError` naming the process that still holds it after ``wait``."""
    deadline = time.monotonic() + wait
    while True:
        info = slot_info(conn, slot)
        if info is None:
            return False
        if not info.active:
            try:
                conn.execute("SELECT pg_drop_replication_slot(%s)", (slot,))
            except psycopg.errors.ObjectInUse:
                pass  # taken again between the two statements: wait and look again
            except psycopg.errors.UndefinedObject:
                return False
            else:
                return True
        if time.monotonic() >= deadline:
            raise SlotError(
                f"replication slot {slot!r} is still in use by process {info.active_pid} after {wait:.0f}s; "
                "another connector (or client) reads it. Stop that reader, then run the delete again; "
                f"or drop it by hand: SELECT pg_drop_replication_slot('{slot}')")
        time.sleep(0.5)


def drop_publication(conn: psycopg.Connection, publication: str) -> bool:
    """Drop the publication if it exists (in ``conn``'s database); whether it did."""
    row = conn.execute("SELECT 1 FROM pg_publication WHERE pubname = %s", (publication,)).fetchone()
    if row is None:
        return False
    conn.execute(sql.SQL("DROP PUBLICATION IF EXISTS {}").format(sql.Identifier(publication)))
    return True


def check_logical_decoding(conn: psycopg.Connection) -> None:
    """Refuse early, and say how to fix it, when the server cannot do logical decoding."""
    level = conn.execute("SHOW wal_level").fetchone()
    if level is None or level[0] != "logical":
        raise SlotError(f"PostgreSQL runs with wal_level={level[0] if level else '?'}; CDC needs "
                        "wal_level=logical (postgresql.conf, then a restart)")
    row = conn.execute("SELECT rolreplication OR rolsuper FROM pg_roles WHERE rolname = current_user").fetchone()
    if not row or not row[0]:
        raise SlotError("the database user has no REPLICATION attribute: ALTER ROLE <user> REPLICATION")

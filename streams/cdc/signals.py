"""Debezium's signal table: how ``streams cdc`` asks a connector for an incremental snapshot.

A connector created with ``snapshot: incremental`` takes no snapshot when it starts. Its
signal table (``<schema>.<slot>_signal``) is captured with its tables, so a row written
there reaches Debezium through the log like any change: an ``execute-snapshot`` signal
makes it read the tables in chunks (primary-key order) while it keeps streaming, dropping
a chunk's read of a row the log changed meanwhile. The chunks done are kept in the
connector's stored position, so a restart resumes the snapshot; a connector restarted
before any position was stored reads the log from its slot again, the signal included,
and the snapshot starts again from its first chunk.
"""

from __future__ import annotations

import json
import uuid

import psycopg
from psycopg import sql


def _ident(qualified: str) -> sql.Identifier:
    schema, _, table = qualified.partition(".")
    return sql.Identifier(schema, table)


def ensure_signal_table(conn: psycopg.Connection, table: str) -> None:
    """Create the signal table (Debezium's three columns) if it is missing."""
    conn.execute(sql.SQL("CREATE TABLE IF NOT EXISTS {} (id varchar(64) PRIMARY KEY, type varchar(32) NOT NULL, "
                         "data varchar(2048))").format(_ident(table)))


def request_incremental_snapshot(conn: psycopg.Connection, table: str, tables: list[str]) -> str:
    """Write an ``execute-snapshot`` signal for ``tables``; returns its id."""
    signal_id = uuid.uuid4().hex
    conn.execute(sql.SQL("INSERT INTO {} (id, type, data) VALUES (%s, 'execute-snapshot', %s)").format(_ident(table)),
                 (signal_id, json.dumps({"data-collections": tables, "type": "incremental"})))
    return signal_id


def drop_signal_table(conn: psycopg.Connection, table: str) -> bool:
    """Drop the signal table; False if it was not there."""
    exists = conn.execute("SELECT to_regclass(%s) IS NOT NULL", (table,)).fetchone()
    if not exists or not exists[0]:
        return False
    conn.execute(sql.SQL("DROP TABLE {}").format(_ident(table)))
    return True

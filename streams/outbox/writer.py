"""Add a message to the outbox inside the caller's own database transaction.

The row commits with the business change or not at all: a rolled-back
transaction leaves no row, so nothing is published for it. The envelope's
``message_id`` is fixed here, so every copy the relay may ever send carries it
and consumers can drop repeats.

Three flavours for the three ways services talk to PostgreSQL (and the same three take a
MySQL / MariaDB connection: a PyMySQL ``Connection``, an asyncmy ``Connection``, a SQLAlchemy
session on a ``mysql+…`` engine; see :mod:`streams.outbox.mysql_schema`)::

    with conn.transaction():                      # psycopg 3
        conn.execute("UPDATE orders ...")
        write_message(conn, envelope, topic="orders.order-placed")

    async with aconn.transaction():               # psycopg 3 async
        await write_message_async(aconn, envelope, topic=...)

    with Session(engine) as session, session.begin():   # SQLAlchemy 2
        session.add(order)
        write_message_sqlalchemy(session, envelope, topic=...)
"""

from __future__ import annotations

import json
from typing import Any

import psycopg
from psycopg import sql
from psycopg.pq import TransactionStatus

from streams import tracing
from streams.db import first_row
from streams.errors import StreamsError
from streams.kafka.names import topic_name_problem
from streams.messages.envelope import Envelope

_META_FIELDS = ("source", "correlation_id", "causation_id", "trace_id")


class OutboxError(StreamsError):
    """The outbox cannot take this message (bad arguments or no transaction)."""


def row_values(envelope: Envelope, topic: str, key: str | None = None) -> dict[str, Any]:
    """The column values of ``envelope`` as an outbox row (key defaults to the envelope's key);
    ``traceparent`` / ``tracestate`` only when a trace context is current (:mod:`streams.tracing`)."""
    if not isinstance(envelope, Envelope):
        raise OutboxError(f"the outbox takes an Envelope, not {type(envelope).__name__}")
    if not topic or not isinstance(topic, str):
        raise OutboxError("an outbox message needs a target topic")
    if problem := topic_name_problem(topic):
        raise OutboxError(f"{problem}; Kafka would never take the message")
    key = key if key is not None else envelope.key
    meta = {f: getattr(envelope, f) for f in _META_FIELDS if getattr(envelope, f) is not None}
    traceparent, tracestate = tracing.outbox_context(topic, envelope)
    trace_columns = {} if traceparent is None else {"traceparent": traceparent, "tracestate": tracestate}
    return {
        "message_id": envelope.message_id,
        "message_type": envelope.message_type,
        "kind": envelope.kind.value,
        "topic": topic,
        "key": key,
        "payload": json.dumps(envelope.payload_dict(), separators=(",", ":"), ensure_ascii=False),
        "headers": json.dumps(envelope.headers),
        "meta": json.dumps(meta),
        "occurred_at": envelope.occurred_at,
        **trace_columns,
    }


_COLUMNS = ("message_id", "message_type", "kind", "topic", "key", "payload", "headers", "meta", "occurred_at")
#: written only when a trace context is current: a writer without one still works on a v3 table
_TRACE_COLUMNS = ("traceparent", "tracestate")


def _columns(values: dict[str, Any]) -> tuple[str, ...]:
    return (*_COLUMNS, *_TRACE_COLUMNS) if "traceparent" in values else _COLUMNS


def _insert(table: str, values: dict[str, Any]) -> sql.Composed:
    columns = _columns(values)
    return sql.SQL("INSERT INTO {} ({}) VALUES ({}) RETURNING id").format(
        sql.Identifier(table),
        sql.SQL(", ").join(map(sql.Identifier, columns)),
        sql.SQL(", ").join(sql.Placeholder(c) for c in columns),
    )


def _check_in_transaction(conn: psycopg.Connection | psycopg.AsyncConnection) -> None:
    if conn.autocommit and conn.info.transaction_status == TransactionStatus.IDLE:
        raise OutboxError(
            "write the outbox row inside the transaction of the business change "
            "(use `with conn.transaction():`); this autocommit connection has none open"
        )


def _is_mysql(conn: Any) -> bool:
    return type(conn).__module__.split(".")[0] in ("pymysql", "asyncmy")


def _mysql_values(envelope: Envelope, topic: str, key: str | None) -> dict[str, Any]:
    from datetime import UTC

    values = row_values(envelope, topic, key)
    values["occurred_at"] = values["occurred_at"].astimezone(UTC).replace(tzinfo=None)  # DATETIME(6), UTC
    return values


def _check_mysql_transaction(conn: Any) -> None:
    # SERVER_STATUS_IN_TRANS (1): the server says a transaction is open on this session
    if conn.get_autocommit() and not conn.server_status & 1:
        raise OutboxError(
            "write the outbox row inside the transaction of the business change "
            "(`conn.begin()` first); this autocommit connection has none open")


def _write_mysql(conn: Any, envelope: Envelope, topic: str, key: str | None, table: str) -> int:
    from streams.outbox.mysql_schema import insert_sql

    _check_mysql_transaction(conn)
    with conn.cursor() as cur:
        values = _mysql_values(envelope, topic, key)
        cur.execute(insert_sql(table, values), values)
        return cur.lastrowid


def write_message(conn: psycopg.Connection, envelope: Envelope, *, topic: str, key: str | None = None,
                  table: str = "streams_outbox") -> int:
    """Insert ``envelope`` for ``topic`` in ``conn``'s current transaction; returns the row id.
    ``conn``: a psycopg ``Connection``, or a PyMySQL ``Connection`` to MySQL / MariaDB."""
    if _is_mysql(conn):
        return _write_mysql(conn, envelope, topic, key, table)
    _check_in_transaction(conn)
    values = row_values(envelope, topic, key)
    return first_row(conn.execute(_insert(table, values), values).fetchone())[0]


async def write_message_async(conn: psycopg.AsyncConnection, envelope: Envelope, *, topic: str,
                              key: str | None = None, table: str = "streams_outbox") -> int:
    """Async twin of :func:`write_message` (a psycopg ``AsyncConnection`` or an asyncmy ``Connection``)."""
    if _is_mysql(conn):
        from streams.outbox.mysql_schema import insert_sql

        _check_mysql_transaction(conn)
        my_conn: Any = conn
        async with my_conn.cursor() as my_cur:
            values = _mysql_values(envelope, topic, key)
            await my_cur.execute(insert_sql(table, values), values)
            return my_cur.lastrowid
    _check_in_transaction(conn)
    values = row_values(envelope, topic, key)
    cur = await conn.execute(_insert(table, values), values)
    return first_row(await cur.fetchone())[0]


def write_message_sqlalchemy(session: Any, envelope: Envelope, *, topic: str, key: str | None = None,
                             table: str = "streams_outbox") -> int:
    """Insert ``envelope`` through a SQLAlchemy 2 ``Session`` (joins its transaction); returns the row id."""
    from sqlalchemy import text

    if not table.replace("_", "").isalnum():
        raise OutboxError(f"invalid outbox table name {table!r}")
    if session.get_bind().dialect.name in ("mysql", "mariadb"):
        from streams.outbox.mysql_schema import insert_sql

        my_values = _mysql_values(envelope, topic, key)
        statement = insert_sql(table, my_values)
        for column in my_values:
            statement = statement.replace(f"%({column})s", f":{column}")
        session.execute(text(statement), my_values)
        return session.execute(text("SELECT LAST_INSERT_ID()")).scalar_one()
    row = row_values(envelope, topic, key)
    cols = ", ".join(_columns(row))
    values = ", ".join(f"CAST(:{c} AS jsonb)" if c in ("payload", "headers", "meta") else f":{c}"
                       for c in _columns(row))
    result = session.execute(text(f"INSERT INTO {table} ({cols}) VALUES ({values}) RETURNING id"), row)
    return result.scalar_one()

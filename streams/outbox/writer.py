"""Add a message to the outbox inside the caller's own database transaction.

The row commits with the business change or not at all: a rolled-back
transaction leaves no row, so nothing is published for it. The envelope's
``message_id`` is fixed here, so every copy the relay may ever send carries it
and consumers can drop repeats.

Three flavours for the three ways services talk to PostgreSQL::

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


def write_message(conn: psycopg.Connection, envelope: Envelope, *, topic: str, key: str | None = None,
                  table: str = "streams_outbox") -> int:
    """Insert ``envelope`` for ``topic`` in ``conn``'s current transaction; returns the row id."""
    _check_in_transaction(conn)
    values = row_values(envelope, topic, key)
    return first_row(conn.execute(_insert(table, values), values).fetchone())[0]


async def write_message_async(conn: psycopg.AsyncConnection, envelope: Envelope, *, topic: str,
                              key: str | None = None, table: str = "streams_outbox") -> int:
    """Async twin of :func:`write_message`."""
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
    row = row_values(envelope, topic, key)
    cols = ", ".join(_columns(row))
    values = ", ".join(f"CAST(:{c} AS jsonb)" if c in ("payload", "headers", "meta") else f":{c}"
                       for c in _columns(row))
    result = session.execute(text(f"INSERT INTO {table} ({cols}) VALUES ({values}) RETURNING id"), row)
    return result.scalar_one()

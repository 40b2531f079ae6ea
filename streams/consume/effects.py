"""Exactly-once effects in PostgreSQL: the processed message id in the effect's own transaction.

Kafka's guarantees end at Kafka. A handler whose effect is a database write
repeats it whenever its message is delivered again: after a crash under
``at_least_once``, and under ``exactly_once`` after every aborted Kafka
transaction. The source notes' answer, and Eventuate's: record "message
processed" **in the same database transaction as the effect**. Then the effect
and the record commit together or not at all, and a redelivery finds the record
and is skipped, whatever the broker-side guarantee::

    effects = app.effects()                    # the processed-messages table + a connection pool

    @app.handler(orders, "OrderPlaced", effects=effects)
    async def push_seller(message, delivery):
        async with delivery.transaction() as tx:     # psycopg AsyncConnection, transaction open
            await tx.execute("INSERT INTO pushes ...")
            await write_message_async(tx, follow_up, topic="...")   # outbox: exactly-once publication
            await app.send(seller_notified, notified)                # recorded with the processed id

What the framework does:

* before the handler runs it looks the ``message_id`` up in the table
  (``streams_processed_messages``, one row per consumer — app id and handler —
  and message id); a processed message is skipped and counted ``duplicate``;
* ``delivery.transaction()`` opens the transaction and first inserts the row;
  if another delivery of the same message committed in the meantime (a zombie
  worker after a rebalance), the insert finds it — waiting for that transaction
  if it is still open — and the handler is stopped with :class:`AlreadyProcessed`,
  which the framework treats as a duplicate, not as an error;
* Kafka messages the handler sends with ``app.send`` inside the block are stored
  in the row; they leave only after the handler returned, so after the database
  commit (:mod:`streams.consume.outputs`): a transaction that does not commit sends
  nothing. When a redelivery is skipped, they are sent again: under
  ``exactly_once`` the first sends belonged to the aborted Kafka transaction, so
  the outputs appear exactly once; under ``at_least_once`` they may appear twice,
  with the same ``message_id`` (derived from the input's). Table writes made in a
  skipped handler are *not* repeated: derive such state from the outputs, or keep
  it in the database;
* rows expire after ``retention`` seconds (``STREAMS_DEDUP_RETENTION``): an older
  row no longer makes a duplicate, and the worker deletes such rows in batches;
* a forced reprocess (``streams offsets reset --reprocess``) handles a message
  again on purpose: its transaction takes over a row written before the reprocess
  window opened — once: a second delivery in the same window (a worker that died
  after the commit, a stale worker and its successor) finds the new row and is
  skipped;
* while the database does not answer the lookup, the handler's partitions pause
  and the lookup is tried again: an outage parks nothing and stops no worker.

**MySQL 8 / MariaDB.** With a ``mysql://`` ``STREAMS_DATABASE_URL`` the table lives
there (:mod:`streams.consume.effects_mysql` holds its SQL): ``delivery.transaction()``
yields an asyncmy connection from the pool, and the transaction can be given as an
asyncmy or PyMySQL ``Connection`` or a SQLAlchemy session on a ``mysql+…`` engine.
Same guarantees, same tests.

The transaction can also be given: ``async with delivery.transaction(aconn)`` (a
psycopg ``AsyncConnection``), ``with delivery.transaction(conn)`` (a psycopg
``Connection``), ``with delivery.transaction(session)`` (a SQLAlchemy 2
``Session``) and ``async with delivery.transaction(async_session)``
(``AsyncSession``). A session already in a transaction is joined (its owner
commits); otherwise the framework begins and commits it.
"""

from __future__ import annotations

import asyncio
import contextvars
import json
import logging
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import psycopg
from psycopg import sql

from streams import mysql as _mysql
from streams.consume.effects_mysql import MySqlEffects, in_transaction, is_mysql_connection, is_mysql_session
from streams.consume.outputs import Output
from streams.errors import StreamsError

if TYPE_CHECKING:
    from streams.settings import Settings

log = logging.getLogger(__name__)

DEFAULT_TABLE = "streams_processed_messages"

_DDL = """
CREATE TABLE IF NOT EXISTS {table} (
    consumer     text        NOT NULL,
    message_id   text        NOT NULL,
    processed_at timestamptz NOT NULL DEFAULT now(),
    topic        text,
    partition    integer,
    "offset"     bigint,
    outputs      jsonb,
    PRIMARY KEY (consumer, message_id)
);
CREATE INDEX IF NOT EXISTS {index} ON {table} (processed_at);
"""


#: what a database that does not answer raises (psycopg, its pool's timeout; asyncmy and PyMySQL)
DatabaseUnavailable: tuple[type[BaseException], ...] = (psycopg.OperationalError, *_mysql.connection_errors())


class AlreadyProcessed(StreamsError):
    """The message's id is already in the processed-messages table: its effect is done.
    Raised from ``delivery.transaction()``; the framework counts the message as a
    duplicate and moves on (a handler need not catch it)."""

    def __init__(self, consumer: str, message_id: str) -> None:
        self.consumer = consumer
        self.message_id = message_id
        super().__init__(f"message {message_id!r} was already processed by {consumer!r}")


@dataclass(frozen=True)
class Processed:
    """A processed message's row: when (epoch seconds) and the outputs recorded with it."""

    at: float
    outputs: list["Output"]


#: the outputs of the effect transaction open in this task (None: none open)
_capture: contextvars.ContextVar[list[Output] | None] = contextvars.ContextVar("streams_effect_outputs",
                                                                               default=None)


def capture_output(output: Output) -> bool:
    """Record ``output`` with the open effect transaction, if there is one (``app.send`` calls this)."""
    outputs = _capture.get()
    if outputs is None:
        return False
    outputs.append(output)
    return True


class Effects:
    """The processed-messages table of an app in PostgreSQL (or MySQL / MariaDB: the URL's
    dialect), and a small connection pool."""

    def __init__(self, settings: "Settings", *, table: str = DEFAULT_TABLE, retention: float | None = None,
                 pool_size: int = 10) -> None:
        if not table.replace("_", "").isalnum():
            raise ValueError(f"invalid table name {table!r}")
        self.settings = settings
        self.table = table
        self.retention = settings.dedup_retention if retention is None else retention
        self.pool_size = pool_size
        self._pool: Any = None
        self._pool_lock = asyncio.Lock()
        self._schema_ready = False
        #: the MySQL dialect's statements and pool (None: PostgreSQL)
        self.mysql = (MySqlEffects(settings.dsn, table, self.retention, pool_size)
                      if settings.database_dialect == "mysql" else None)
        t = sql.Identifier(table)
        # a row past the retention is taken over; in a forced reprocess, a row written before the
        # reprocess window opened (once: the row then carries a later time, so a second delivery of
        # the message in the same window finds it and is skipped)
        self.insert_sql = sql.SQL(
            'INSERT INTO {t} AS p (consumer, message_id, topic, partition, "offset") VALUES (%s, %s, %s, %s, %s) '
            'ON CONFLICT (consumer, message_id) DO UPDATE SET processed_at = now(), topic = EXCLUDED.topic, '
            'partition = EXCLUDED.partition, "offset" = EXCLUDED."offset", outputs = NULL '
            "WHERE p.processed_at < to_timestamp(CAST(%s AS double precision)) "
            "OR p.processed_at <= now() - make_interval(secs => %s) RETURNING 1").format(t=t)
        self.outputs_sql = sql.SQL("UPDATE {} SET outputs = %s WHERE consumer = %s AND message_id = %s").format(t)
        self._lookup = sql.SQL(
            "SELECT outputs, extract(epoch FROM processed_at) FROM {} WHERE consumer = %s AND message_id = %s "
            "AND processed_at > now() - make_interval(secs => %s)").format(t)
        self._purge = sql.SQL(
            "DELETE FROM {t} WHERE ctid IN (SELECT ctid FROM {t} WHERE processed_at < now() - make_interval("
            "secs => %s) LIMIT %s)").format(t=t)

    # --- schema -------------------------------------------------------------------
    def ddl(self) -> sql.Composed:
        return sql.SQL(_DDL).format(table=sql.Identifier(self.table),
                                    index=sql.Identifier(f"{self.table}_processed_at"))

    def migrate(self, conn: psycopg.Connection) -> None:
        """Create the table (idempotent) through a synchronous connection."""
        with conn.transaction():
            conn.execute(self.ddl())

    def migrate_once(self) -> None:
        """:meth:`migrate` once per process, on a short connection of its own (for the
        synchronous transactions, whose connection may be in any state)."""
        if not self._schema_ready and self.mysql is not None:
            self.mysql.migrate_sync()
            self._schema_ready = True
        if not self._schema_ready:
            with psycopg.connect(self.settings.dsn, autocommit=True) as conn:
                try:
                    conn.execute(self.ddl())
                except (psycopg.errors.UniqueViolation, psycopg.errors.DuplicateTable,
                        psycopg.errors.DuplicateObject):
                    pass
            self._schema_ready = True

    async def ensure_schema(self) -> None:
        """Create the table once per process (two workers racing on it is harmless)."""
        if self._schema_ready:
            return
        if self.mysql is not None:
            await self.mysql.ensure_schema()
            self._schema_ready = True
            return
        pool = await self.pool()
        async with pool.connection() as conn:
            try:
                await conn.execute(self.ddl())
            except (psycopg.errors.UniqueViolation, psycopg.errors.DuplicateTable, psycopg.errors.DuplicateObject):
                pass  # created by another worker at the same moment
        self._schema_ready = True

    async def pool(self) -> Any:
        """The connection pool (opened on first use)."""
        async with self._pool_lock:
            if self._pool is None:
                from psycopg_pool import AsyncConnectionPool

                pool = AsyncConnectionPool(self.settings.dsn, min_size=1, max_size=self.pool_size, open=False,
                                           kwargs={"autocommit": True}, name=f"streams-effects-{self.table}")
                await pool.open(wait=False)
                self._pool = pool
            return self._pool

    async def close(self) -> None:
        if self.mysql is not None:
            await self.mysql.close()
        if self._pool is not None:
            await self._pool.close()
            self._pool = None

    # --- lookups ------------------------------------------------------------------
    async def processed(self, consumer: str, message_id: str) -> "Processed | None":
        """When a message was processed and the outputs recorded with it, or None if it was not
        (or its row is past the retention)."""
        await self.ensure_schema()
        if self.mysql is not None:
            found = await self.mysql.lookup(consumer, message_id)
            if found is None:
                return None
            return Processed(found[0], [Output.from_json(o) for o in json.loads(found[1] or "[]")])
        pool = await self.pool()
        async with pool.connection() as conn:
            cur = await conn.execute(self._lookup, (consumer, message_id, self.retention))
            row = await cur.fetchone()
        if row is None:
            return None
        return Processed(float(row[1]), [Output.from_json(o) for o in (row[0] or [])])

    async def purge(self, batch: int = 5000) -> int:
        """Delete rows older than the retention (in batches); returns how many."""
        await self.ensure_schema()
        if self.mysql is not None:
            return await self.mysql.purge(batch)
        pool = await self.pool()
        total = 0
        async with pool.connection() as conn:
            while True:
                cur = await conn.execute(self._purge, (self.retention, batch))
                total += cur.rowcount
                if cur.rowcount < batch:
                    return total

    async def run_purge(self, interval: float = 60.0) -> None:
        """Purge every ``interval`` seconds until cancelled."""
        while True:
            await asyncio.sleep(interval)
            try:
                removed = await self.purge()
                if removed:
                    log.info("%s: %d processed-message row(s) past the retention deleted", self.table, removed)
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # noqa: BLE001 - the database may be down for a while: try again later
                log.warning("%s: purge failed: %r", self.table, exc)

    def transaction(self, consumer: str, message_id: str, where: tuple[str, int, int],
                    conn: Any = None, *, reprocess_since: float | None = None) -> "EffectTransaction":
        """The transaction of one delivery (see :meth:`streams.consume.delivery.Delivery.transaction`);
        ``reprocess_since``: a reprocess on purpose, whose window opened then: it takes over a row
        written before that time."""
        return EffectTransaction(self, consumer, message_id, where, conn, reprocess_since)


class EffectTransaction:
    """``async with`` / ``with``: a database transaction that starts by recording the message as processed."""

    def __init__(self, effects: Effects, consumer: str, message_id: str, where: tuple[str, int, int],
                 conn: Any, reprocess_since: float | None = None) -> None:
        self.effects = effects
        self.consumer = consumer
        self.message_id = message_id
        self.where = where
        self.conn = conn
        self.reprocess_since = reprocess_since
        self.outputs: list[Output] = []
        self._token: Any = None
        self._stack: list[Any] = []
        self._params: dict[str, Any] = {}  # MySQL: the attempt's claim parameters

    def _row(self) -> tuple:
        return (self.consumer, self.message_id, *self.where, self.reprocess_since, self.effects.retention)

    def _outputs_json(self) -> str:
        return json.dumps([o.to_json() for o in self.outputs])

    def _start_capture(self) -> None:
        self._token = _capture.set(self.outputs)

    def _stop_capture(self) -> None:
        if self._token is not None:
            _capture.reset(self._token)
            self._token = None

    # --- async: psycopg AsyncConnection (given or from the pool), SQLAlchemy AsyncSession ------------
    async def __aenter__(self) -> Any:
        effects = self.effects
        conn = self.conn
        if _is_sqlalchemy(conn):
            return await self._enter_async_session(conn)
        if effects.mysql is not None:
            return await self._enter_mysql(conn)
        await effects.ensure_schema()
        if conn is None:
            pool = await effects.pool()
            cm = pool.connection()
            conn = await cm.__aenter__()
            self._stack.append(("pool", cm))
        tx = conn.transaction()
        await tx.__aenter__()
        self._stack.append(("tx", tx))
        try:
            cur = await conn.execute(effects.insert_sql, self._row())
            if await cur.fetchone() is None:
                raise AlreadyProcessed(self.consumer, self.message_id)
        except BaseException as exc:
            await self._unwind(type(exc), exc, exc.__traceback__)
            raise
        self._conn = conn
        self._start_capture()
        return conn

    async def __aexit__(self, exc_type: Any, exc: Any, tb: Any) -> bool:
        self._stop_capture()
        if exc_type is None and self.outputs:
            try:
                await self._execute_async(self.effects.outputs_sql, (self._outputs_json(), self.consumer,
                                                                 self.message_id))
            except BaseException as err:
                await self._unwind(type(err), err, err.__traceback__)
                raise
        await self._unwind(exc_type, exc, tb)
        return False

    async def _enter_mysql(self, conn: Any) -> Any:
        """An asyncmy connection (given, or from the pool) in a transaction that starts with the row."""
        effects = self.effects
        assert effects.mysql is not None
        if conn is not None and not is_mysql_connection(conn):
            raise TypeError(f"the effects table is in MySQL: give an asyncmy connection, not {type(conn).__name__}")
        await effects.ensure_schema()
        if conn is None:
            cm = effects.mysql.connection()
            conn = await cm.__aenter__()
            self._stack.append(("pool", cm))
        try:
            if not in_transaction(conn):
                await conn.begin()
                self._stack.append(("tx", _MySqlTransaction(conn)))
            self._params = effects.mysql.claim_params(self.consumer, self.message_id, self.where,
                                                      self.reprocess_since)
            if not await effects.mysql.claim_async(conn, self._params):
                raise AlreadyProcessed(self.consumer, self.message_id)
        except BaseException as exc:
            await self._unwind(type(exc), exc, exc.__traceback__)
            raise
        self._conn = conn
        self._start_capture()
        return conn

    async def _unwind(self, exc_type: Any, exc: Any, tb: Any) -> None:
        while self._stack:
            _, cm = self._stack.pop()
            await cm.__aexit__(exc_type, exc, tb)

    async def _enter_async_session(self, session: Any) -> Any:
        from sqlalchemy import text

        await self.effects.ensure_schema()
        if not session.in_transaction():
            tx = session.begin()
            await tx.__aenter__()
            self._stack.append(("tx", tx))
        self._conn = session
        try:
            if self.effects.mysql is not None and is_mysql_session(session):
                my = self.effects.mysql
                self._params = my.claim_params(self.consumer, self.message_id, self.where, self.reprocess_since)
                await session.execute(text(my.named(my.claim_sql)), self._params)
                owner = (await session.execute(text(my.named(my.owner_sql)), self._params)).first()
                if owner is None or owner[0] != self._params["attempt"]:
                    raise AlreadyProcessed(self.consumer, self.message_id)
            else:
                statement, named = _named(self.effects.insert_sql, self._row())
                if (await session.execute(text(statement), named)).first() is None:
                    raise AlreadyProcessed(self.consumer, self.message_id)
        except BaseException as exc:
            await self._unwind(type(exc), exc, exc.__traceback__)
            raise
        self._start_capture()
        return session

    async def _execute_async(self, query: Any, params: tuple) -> Any:
        if self.effects.mysql is not None:  # the outputs, MySQL's statement
            my = self.effects.mysql
            values = {**self._params, "outputs": params[0]}
            if _is_sqlalchemy(self._conn):
                from sqlalchemy import text

                return await self._conn.execute(text(my.named(my.outputs_sql)), values)
            return await _mysql.execute(self._conn, my.outputs_sql, values)
        if _is_sqlalchemy(self._conn):
            from sqlalchemy import text

            statement, named = _named(query, params)
            return await self._conn.execute(text(statement), named)
        return await self._conn.execute(query, params)

    # --- sync: psycopg Connection, SQLAlchemy Session ----------------------------------------------
    def __enter__(self) -> Any:
        conn = self.conn
        if conn is None or isinstance(conn, psycopg.AsyncConnection):
            raise TypeError("a synchronous `with delivery.transaction(conn)` needs a psycopg Connection or a "
                            "SQLAlchemy Session; use `async with delivery.transaction()` otherwise")
        if _is_sqlalchemy(conn):
            return self._enter_session(conn)
        if self.effects.mysql is not None:
            return self._enter_mysql_sync(conn)
        self.effects.migrate_once()
        tx = conn.transaction()
        tx.__enter__()
        self._stack.append(("tx", tx))
        try:
            if conn.execute(self.effects.insert_sql, self._row()).fetchone() is None:
                raise AlreadyProcessed(self.consumer, self.message_id)
        except BaseException as exc:
            self._unwind_sync(type(exc), exc, exc.__traceback__)
            raise
        self._conn = conn
        self._start_capture()
        return conn

    def __exit__(self, exc_type: Any, exc: Any, tb: Any) -> None:
        self._stop_capture()
        if exc_type is None and self.outputs:
            try:
                self._execute_sync(self.effects.outputs_sql, (self._outputs_json(), self.consumer, self.message_id))
            except BaseException as err:
                self._unwind_sync(type(err), err, err.__traceback__)
                raise
        self._unwind_sync(exc_type, exc, tb)

    def _enter_mysql_sync(self, conn: Any) -> Any:
        my = self.effects.mysql
        assert my is not None
        if not is_mysql_connection(conn):
            raise TypeError(f"the effects table is in MySQL: give a PyMySQL connection, not {type(conn).__name__}")
        self.effects.migrate_once()
        try:
            if not in_transaction(conn):
                conn.begin()
                self._stack.append(("tx", _MySqlTransaction(conn)))
            self._params = my.claim_params(self.consumer, self.message_id, self.where, self.reprocess_since)
            if not my.claim_sync(conn, self._params):
                raise AlreadyProcessed(self.consumer, self.message_id)
        except BaseException as exc:
            self._unwind_sync(type(exc), exc, exc.__traceback__)
            raise
        self._conn = conn
        self._start_capture()
        return conn

    def _unwind_sync(self, exc_type: Any, exc: Any, tb: Any) -> None:
        while self._stack:
            _, cm = self._stack.pop()
            cm.__exit__(exc_type, exc, tb)

    def _execute_sync(self, query: Any, params: tuple) -> Any:
        if self.effects.mysql is not None:  # the outputs, MySQL's statement
            my = self.effects.mysql
            values = {**self._params, "outputs": params[0]}
            if _is_sqlalchemy(self._conn):
                from sqlalchemy import text

                return self._conn.execute(text(my.named(my.outputs_sql)), values)
            with self._conn.cursor() as cur:
                return cur.execute(my.outputs_sql, values)
        if _is_sqlalchemy(self._conn):
            from sqlalchemy import text

            statement, named = _named(query, params)
            return self._conn.execute(text(statement), named)
        return self._conn.execute(query, params)

    def _enter_session(self, session: Any) -> Any:
        from sqlalchemy import text

        self.effects.migrate_once()
        if not session.in_transaction():
            tx = session.begin()
            tx.__enter__()
            self._stack.append(("tx", tx))
        self._conn = session
        try:
            if self.effects.mysql is not None and is_mysql_session(session):
                my = self.effects.mysql
                self._params = my.claim_params(self.consumer, self.message_id, self.where, self.reprocess_since)
                session.execute(text(my.named(my.claim_sql)), self._params)
                owner = session.execute(text(my.named(my.owner_sql)), self._params).first()
                if owner is None or owner[0] != self._params["attempt"]:
                    raise AlreadyProcessed(self.consumer, self.message_id)
            else:
                statement, named = _named(self.effects.insert_sql, self._row())
                if session.execute(text(statement), named).first() is None:
                    raise AlreadyProcessed(self.consumer, self.message_id)
        except BaseException as exc:
            self._unwind_sync(type(exc), exc, exc.__traceback__)
            raise
        self._start_capture()
        return session


class _MySqlTransaction:
    """The transaction the framework began on an asyncmy / PyMySQL connection: committed at a clean
    exit, rolled back otherwise (``__aexit__`` for asyncmy, ``__exit__`` for PyMySQL)."""

    def __init__(self, conn: Any) -> None:
        self.conn = conn

    async def __aexit__(self, exc_type: Any, exc: Any, tb: Any) -> None:
        if exc_type is None:
            await self.conn.commit()
        else:
            try:
                await self.conn.rollback()
            except Exception:  # noqa: BLE001 - a broken connection rolls back on the server
                pass

    def __exit__(self, exc_type: Any, exc: Any, tb: Any) -> None:
        if exc_type is None:
            self.conn.commit()
        else:
            try:
                self.conn.rollback()
            except Exception:  # noqa: BLE001
                pass


def _is_sqlalchemy(conn: Any) -> bool:
    return conn is not None and type(conn).__module__.startswith("sqlalchemy.")


def _named(query: sql.Composed, params: tuple) -> tuple[str, dict[str, Any]]:
    """A psycopg query with ``%s`` placeholders as SQLAlchemy ``text()`` with ``:p0, :p1 ...``."""
    text = query.as_string(None)
    parts = text.split("%s")
    statement = "".join(part + (f":p{i}" if i < len(parts) - 1 else "") for i, part in enumerate(parts))
    return statement, {f"p{i}": value for i, value in enumerate(params)}

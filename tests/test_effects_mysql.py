"""Transactional effects (``streams.consume.effects``) on the session's real MariaDB.

The MySQL twin of ``test_effects.py``: the pool's asyncmy connection, a given asyncmy or
PyMySQL connection, SQLAlchemy ``Session`` / ``AsyncSession`` on ``mysql+pymysql`` /
``mysql+asyncmy`` must commit the processed id with the handler's writes, roll both back
together, and refuse a second delivery of the same message. Worker-level proof under
SIGKILLs: ``test_effects_mysql_killed.py``.
"""

from __future__ import annotations

import asyncio
import time

import pytest

from streams import mysql
from streams.consume.delivery import Delivery
from streams.consume.effects import AlreadyProcessed, Effects, Output, capture_output
from streams.messages.envelope import event
from streams.outbox.mysql_schema import migrate
from streams.outbox.writer import write_message, write_message_async
from tests.harness import Isolated
from tests.mysql_helpers import isql

SCHEMA = "CREATE TABLE IF NOT EXISTS effect (message_id varchar(64), note varchar(64))"


def _delivery(effects: Effects, message_id: str, consumer: str = "app:handler") -> Delivery:
    return Delivery("orders", 2, 41, 1, message_id, consumer=consumer, effects=effects)


def _count(iso: Isolated, message_id: str) -> tuple[int, int]:
    """(effect rows, processed rows) of ``message_id``."""
    return (isql(iso, "SELECT count(*) FROM effect WHERE message_id = %s", (message_id,))[0][0],
            isql(iso, "SELECT count(*) FROM streams_processed_messages WHERE message_id = %s", (message_id,))[0][0])


@pytest.fixture
def effects(isolated_mysql: Isolated):
    isql(isolated_mysql, SCHEMA)
    fx = Effects(isolated_mysql.settings)
    assert fx.mysql is not None  # the mysql:// URL chose the dialect
    yield fx


def test_pool_transaction_commits_once_refuses_a_second_delivery_and_rolls_back(isolated_mysql: Isolated,
                                                                                effects: Effects) -> None:
    async def scenario() -> None:
        async with _delivery(effects, "m-1").transaction() as tx:
            await mysql.execute(tx, "INSERT INTO effect VALUES ('m-1', 'first')")
            capture_output(Output("out", b"k", b"v", [("h", b"1")]))
        with pytest.raises(AlreadyProcessed):
            async with _delivery(effects, "m-1").transaction() as tx:
                await mysql.execute(tx, "INSERT INTO effect VALUES ('m-1', 'second')")  # never reached
        assert (await effects.processed("app:handler", "m-1")).outputs == [Output("out", b"k", b"v", [("h", b"1")])]
        assert await effects.processed("app:handler", "m-2") is None
        async with _delivery(effects, "m-1", consumer="other:handler").transaction() as tx:
            await mysql.execute(tx, "INSERT INTO effect VALUES ('m-1', 'other consumer')")
        with pytest.raises(RuntimeError):
            async with _delivery(effects, "m-3").transaction() as tx:
                await mysql.execute(tx, "INSERT INTO effect VALUES ('m-3', 'lost')")
                raise RuntimeError("the handler failed")
        assert await effects.processed("app:handler", "m-3") is None
        async with _delivery(effects, "m-3").transaction() as tx:  # the retry goes through
            await mysql.execute(tx, "INSERT INTO effect VALUES ('m-3', 'retried')")
        await effects.close()
    asyncio.run(scenario())
    assert _count(isolated_mysql, "m-1") == (2, 2)
    assert _count(isolated_mysql, "m-3") == (1, 1)
    assert isql(isolated_mysql, "SELECT note FROM effect WHERE message_id = 'm-3'") == [("retried",)]
    assert isql(isolated_mysql, "SELECT topic, `partition`, `offset` FROM streams_processed_messages "
                                "WHERE consumer = 'app:handler' AND message_id = 'm-1'") == [("orders", 2, 41)]


def test_two_deliveries_at_once_one_wins_on_mariadb(isolated_mysql: Isolated, effects: Effects) -> None:
    """A zombie worker and its successor handle the same message at the same moment: the second
    upsert waits for the first transaction's row lock, then finds the row is not its own."""
    first_in, release = asyncio.Event(), asyncio.Event()

    async def deliver(note: str) -> str:
        try:
            async with _delivery(effects, "m-4").transaction() as tx:
                await mysql.execute(tx, "INSERT INTO effect VALUES ('m-4', %s)", (note,))
                if note == "a":
                    first_in.set()
                    await release.wait()  # open until the second delivery waits on its row
            return "committed"
        except AlreadyProcessed:
            return "skipped"

    async def scenario() -> list[str]:
        first = asyncio.create_task(deliver("a"))
        await first_in.wait()
        second = asyncio.create_task(deliver("b"))
        for _ in range(200):  # until InnoDB shows the second upsert waiting for the first's row lock
            waiting = await asyncio.to_thread(isql, isolated_mysql, "SELECT count(*) FROM information_schema."
                                                                    "innodb_trx WHERE trx_state = 'LOCK WAIT'")
            if waiting[0][0]:
                break
            await asyncio.sleep(0.05)
        else:
            raise AssertionError("the second delivery never waited for the first one's row")
        release.set()
        results = await asyncio.gather(first, second)
        await effects.close()
        return results
    assert asyncio.run(scenario()) == ["committed", "skipped"]
    assert _count(isolated_mysql, "m-4") == (1, 1)


def test_given_asyncmy_and_pymysql_connections_with_the_outbox_in_the_same_transaction(isolated_mysql: Isolated,
                                                                                     effects: Effects) -> None:
    iso = isolated_mysql
    table = iso.settings.outbox_table
    conn = mysql.connect(iso.settings.dsn)
    migrate(conn, table)

    async def scenario() -> None:
        aconn = await mysql.connect_async(iso.settings.dsn)
        with pytest.raises(ValueError):
            async with _delivery(effects, "m-5").transaction(aconn) as tx:
                await mysql.execute(tx, "INSERT INTO effect VALUES ('m-5', 'x')")
                await write_message_async(tx, event("Followed", {"n": 1}, key="k"), topic="t", table=table)
                raise ValueError("rolled back: no effect, no outbox row, no processed id")
        async with _delivery(effects, "m-5").transaction(aconn) as tx:
            await mysql.execute(tx, "INSERT INTO effect VALUES ('m-5', 'y')")
            await write_message_async(tx, event("Followed", {"n": 2}, key="k"), topic="t", table=table)
        with pytest.raises(AlreadyProcessed):
            async with _delivery(effects, "m-5").transaction(aconn):
                pass
        await mysql.close_async(aconn)
        await effects.close()
    asyncio.run(scenario())
    # synchronous PyMySQL
    with _delivery(effects, "m-6").transaction(conn) as tx:
        with tx.cursor() as cur:
            cur.execute("INSERT INTO effect VALUES ('m-6', 'sync')")
        write_message(tx, event("Followed", {"n": 3}, key="k"), topic="t", table=table)
    with pytest.raises(AlreadyProcessed), _delivery(effects, "m-6").transaction(conn):
        pass
    with pytest.raises(KeyError), _delivery(effects, "m-7").transaction(conn) as tx:
        with tx.cursor() as cur:
            cur.execute("INSERT INTO effect VALUES ('m-7', 'rolled back')")
        raise KeyError("handler bug")
    conn.close()
    assert _count(iso, "m-5") == (1, 1)
    assert _count(iso, "m-6") == (1, 1)
    assert _count(iso, "m-7") == (0, 0)
    assert [r[0] for r in isql(iso, f"SELECT payload FROM {table} ORDER BY id")] == ['{"n":2}', '{"n":3}']


def test_sqlalchemy_sessions_sync_and_async_on_mariadb(isolated_mysql: Isolated, effects: Effects) -> None:
    from sqlalchemy import create_engine, text
    from sqlalchemy.ext.asyncio import AsyncSession, create_async_engine
    from sqlalchemy.orm import Session

    iso = isolated_mysql
    url = iso.settings.dsn.replace("mysql://", "mysql+pymysql://", 1)
    engine = create_engine(url)
    with Session(engine) as session:
        with _delivery(effects, "m-8").transaction(session) as tx:
            tx.execute(text("INSERT INTO effect VALUES ('m-8', 'orm')"))
        with pytest.raises(AlreadyProcessed), _delivery(effects, "m-8").transaction(session) as tx:
            tx.execute(text("INSERT INTO effect VALUES ('m-8', 'again')"))
    # a session already in a transaction is joined: its owner commits (or rolls back) both
    with Session(engine) as session:
        session.execute(text("INSERT INTO effect VALUES ('m-9', 'before')"))
        with _delivery(effects, "m-9").transaction(session) as tx:
            tx.execute(text("INSERT INTO effect VALUES ('m-9', 'inside')"))
        session.rollback()
    assert _count(iso, "m-9") == (0, 0)
    engine.dispose()

    async def scenario() -> None:
        aengine = create_async_engine(iso.settings.dsn.replace("mysql://", "mysql+asyncmy://", 1))
        async with AsyncSession(aengine) as session:
            async with _delivery(effects, "m-10").transaction(session) as tx:
                await tx.execute(text("INSERT INTO effect VALUES ('m-10', 'async orm')"))
                capture_output(Output("out", None, b"v"))
            with pytest.raises(AlreadyProcessed):
                async with _delivery(effects, "m-10").transaction(session):
                    pass
        assert (await effects.processed("app:handler", "m-10")).outputs == [Output("out", None, b"v")]
        await aengine.dispose()
        await effects.close()
    asyncio.run(scenario())
    assert _count(iso, "m-8") == (1, 1)
    assert _count(iso, "m-10") == (1, 1)


def test_an_expired_row_or_a_forced_reprocess_takes_the_row_over_and_old_rows_are_purged(
        isolated_mysql: Isolated) -> None:
    iso = isolated_mysql
    isql(iso, SCHEMA)
    fx = Effects(iso.settings, retention=3600)

    async def scenario() -> int:
        async with _delivery(fx, "m-11").transaction() as tx:
            await mysql.execute(tx, "INSERT INTO effect VALUES ('m-11', 'first')")
        with pytest.raises(AlreadyProcessed):
            async with _delivery(fx, "m-11").transaction():
                pass
        window = time.time() + 0.5  # the reprocess window opened after the first handling
        await asyncio.sleep(1.0)
        forced = Delivery("orders", 2, 41, 1, "m-11", consumer="app:handler", effects=fx, reprocessing=True,
                          reprocess_since=window)
        async with forced.transaction() as tx:
            await mysql.execute(tx, "INSERT INTO effect VALUES ('m-11', 'reprocessed')")
        with pytest.raises(AlreadyProcessed):  # once per window: a second forced delivery finds the new row
            async with forced.transaction() as tx:
                await mysql.execute(tx, "INSERT INTO effect VALUES ('m-11', 'reprocessed twice')")
        await asyncio.to_thread(isql, iso, "UPDATE streams_processed_messages SET processed_at = "
                                           "UTC_TIMESTAMP(6) - INTERVAL 2 HOUR WHERE message_id = 'm-11'")
        assert await fx.processed("app:handler", "m-11") is None
        async with _delivery(fx, "m-11").transaction() as tx:
            await mysql.execute(tx, "INSERT INTO effect VALUES ('m-11', 'after expiry')")
        assert await fx.processed("app:handler", "m-11") is not None
        for i in range(7):
            async with _delivery(fx, f"old-{i}").transaction():
                pass
        await asyncio.to_thread(isql, iso, "UPDATE streams_processed_messages SET processed_at = "
                                           "UTC_TIMESTAMP(6) - INTERVAL 2 HOUR WHERE message_id LIKE 'old-%%'")
        removed = await fx.purge(batch=3)
        await fx.close()
        return removed
    assert asyncio.run(scenario()) == 7
    assert [r[0] for r in isql(iso, "SELECT note FROM effect WHERE message_id = 'm-11'")] == [
        "first", "reprocessed", "after expiry"]
    assert _count(iso, "m-11") == (3, 1)
    assert isql(iso, "SELECT message_id FROM streams_processed_messages") == [("m-11",)]

"""Transactional effects (``streams.consume.effects``) on the session's real PostgreSQL.

Each flavour of transaction — the pool's async connection, a given psycopg
``AsyncConnection`` or ``Connection``, a SQLAlchemy ``Session`` or ``AsyncSession`` —
must commit the processed id with the handler's writes, roll both back together,
and refuse a second delivery of the same message. Worker-level proof under
crashes: ``test_chaos.py``.
"""

from __future__ import annotations

import asyncio
import time

import psycopg
import pytest

from streams.consume.delivery import Delivery
from streams.consume.effects import AlreadyProcessed, Effects, Output, capture_output
from streams.messages.envelope import event
from streams.outbox.schema import migrate
from streams.outbox.writer import write_message, write_message_async
from tests.harness import Isolated

SCHEMA = "CREATE TABLE IF NOT EXISTS effect (message_id text, note text)"


def _delivery(effects: Effects, message_id: str, consumer: str = "app:handler") -> Delivery:
    return Delivery("orders", 2, 41, 1, message_id, consumer=consumer, effects=effects)


def _count(iso: Isolated, message_id: str) -> tuple[int, int]:
    """(effect rows, processed rows) of ``message_id``."""
    return (iso.sql("SELECT count(*) FROM effect WHERE message_id = %s", (message_id,))[0][0],
            iso.sql("SELECT count(*) FROM streams_processed_messages WHERE message_id = %s", (message_id,))[0][0])


@pytest.fixture
def effects(isolated: Isolated):
    isolated.sql(SCHEMA)
    fx = Effects(isolated.settings)
    yield fx


def test_pool_transaction_commits_once_and_refuses_a_second_delivery(isolated: Isolated, effects: Effects) -> None:
    async def scenario() -> None:
        async with _delivery(effects, "m-1").transaction() as tx:
            await tx.execute("INSERT INTO effect VALUES ('m-1', 'first')")
            capture_output(Output("out", b"k", b"v", [("h", b"1")]))
        with pytest.raises(AlreadyProcessed):
            async with _delivery(effects, "m-1").transaction() as tx:
                await tx.execute("INSERT INTO effect VALUES ('m-1', 'second')")  # never reached
        assert (await effects.processed("app:handler", "m-1")).outputs == [Output("out", b"k", b"v", [("h", b"1")])]
        assert await effects.processed("app:handler", "m-2") is None
        # another consumer (handler or group) of the same message is independent
        async with _delivery(effects, "m-1", consumer="other:handler").transaction() as tx:
            await tx.execute("INSERT INTO effect VALUES ('m-1', 'other consumer')")
        await effects.close()
    asyncio.run(scenario())
    assert _count(isolated, "m-1") == (2, 2)
    row = isolated.sql("SELECT topic, partition, \"offset\" FROM streams_processed_messages "
                       "WHERE consumer = 'app:handler'")
    assert row == [("orders", 2, 41)]


def test_a_failing_handler_rolls_back_the_processed_id_with_its_writes(isolated: Isolated, effects: Effects) -> None:
    async def scenario() -> None:
        with pytest.raises(RuntimeError):
            async with _delivery(effects, "m-3").transaction() as tx:
                await tx.execute("INSERT INTO effect VALUES ('m-3', 'lost')")
                raise RuntimeError("the handler failed")
        assert await effects.processed("app:handler", "m-3") is None
        async with _delivery(effects, "m-3").transaction() as tx:  # the retry goes through
            await tx.execute("INSERT INTO effect VALUES ('m-3', 'retried')")
        await effects.close()
    asyncio.run(scenario())
    assert _count(isolated, "m-3") == (1, 1)
    assert isolated.sql("SELECT note FROM effect WHERE message_id = 'm-3'") == [("retried",)]


def test_two_deliveries_at_once_one_wins(isolated: Isolated, effects: Effects) -> None:
    """A zombie worker and its successor handle the same message at the same moment: the
    second insert waits for the first transaction and then finds the id."""
    first_in, release = asyncio.Event(), asyncio.Event()

    async def deliver(note: str) -> str:
        try:
            async with _delivery(effects, "m-4").transaction() as tx:
                await tx.execute("INSERT INTO effect VALUES ('m-4', %s)", (note,))
                if note == "a":
                    first_in.set()
                    await release.wait()  # open until the second delivery waits on its row
            return "committed"
        except AlreadyProcessed:
            return "skipped"

    async def lock_waiters() -> int:
        async with await psycopg.AsyncConnection.connect(isolated.settings.dsn, autocommit=True) as conn:
            cur = await conn.execute("SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() "
                                     "AND wait_event_type = 'Lock'")
            return (await cur.fetchone())[0]

    async def scenario() -> list[str]:
        first = asyncio.create_task(deliver("a"))
        await first_in.wait()
        second = asyncio.create_task(deliver("b"))
        for _ in range(200):  # until PostgreSQL shows the second insert waiting for the first's row lock
            if await lock_waiters():
                break
            await asyncio.sleep(0.05)
        else:
            raise AssertionError("the second delivery never waited for the first one's row")
        release.set()
        results = await asyncio.gather(first, second)
        await effects.close()
        return results
    assert asyncio.run(scenario()) == ["committed", "skipped"]
    assert _count(isolated, "m-4") == (1, 1)


def test_given_async_connection_and_the_outbox_in_the_same_transaction(isolated: Isolated,
                                                                       effects: Effects) -> None:
    with psycopg.connect(isolated.settings.dsn, autocommit=True) as conn:
        migrate(conn, isolated.settings.outbox_table)

    async def scenario() -> None:
        async with await psycopg.AsyncConnection.connect(isolated.settings.dsn) as aconn:
            with pytest.raises(ValueError):
                async with _delivery(effects, "m-5").transaction(aconn) as tx:
                    await tx.execute("INSERT INTO effect VALUES ('m-5', 'x')")
                    await write_message_async(tx, event("Followed", {"n": 1}, key="k"), topic="t",
                                              table=isolated.settings.outbox_table)
                    raise ValueError("rolled back: no effect, no outbox row, no processed id")
            async with _delivery(effects, "m-5").transaction(aconn) as tx:
                await tx.execute("INSERT INTO effect VALUES ('m-5', 'y')")
                await write_message_async(tx, event("Followed", {"n": 2}, key="k"), topic="t",
                                          table=isolated.settings.outbox_table)
            with pytest.raises(AlreadyProcessed):
                async with _delivery(effects, "m-5").transaction(aconn):
                    pass
        await effects.close()
    asyncio.run(scenario())
    assert _count(isolated, "m-5") == (1, 1)
    payloads = isolated.sql(f"SELECT payload FROM {isolated.settings.outbox_table}")
    assert payloads == [({"n": 2},)]


def test_sync_psycopg_connection(isolated: Isolated, effects: Effects) -> None:
    with psycopg.connect(isolated.settings.dsn, autocommit=True) as conn:
        migrate(conn, isolated.settings.outbox_table)
    with psycopg.connect(isolated.settings.dsn) as conn:
        with _delivery(effects, "m-6").transaction(conn) as tx:
            tx.execute("INSERT INTO effect VALUES ('m-6', 'sync')")
            write_message(tx, event("Followed", {"n": 3}, key="k"), topic="t", table=isolated.settings.outbox_table)
        with pytest.raises(AlreadyProcessed), _delivery(effects, "m-6").transaction(conn) as tx:
            tx.execute("INSERT INTO effect VALUES ('m-6', 'again')")
        with pytest.raises(KeyError), _delivery(effects, "m-7").transaction(conn) as tx:
            tx.execute("INSERT INTO effect VALUES ('m-7', 'rolled back')")
            raise KeyError("handler bug")
    assert _count(isolated, "m-6") == (1, 1)
    assert _count(isolated, "m-7") == (0, 0)
    assert isolated.sql(f"SELECT payload FROM {isolated.settings.outbox_table}") == [({"n": 3},)]


def test_sqlalchemy_sessions_sync_and_async(isolated: Isolated, effects: Effects) -> None:
    from sqlalchemy import create_engine, text
    from sqlalchemy.ext.asyncio import AsyncSession, create_async_engine
    from sqlalchemy.orm import Session

    url = isolated.settings.dsn.replace("postgresql://", "postgresql+psycopg://", 1)
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
    assert _count(isolated, "m-9") == (0, 0)
    engine.dispose()

    async def scenario() -> None:
        aengine = create_async_engine(url)
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
    assert _count(isolated, "m-8") == (1, 1)
    assert _count(isolated, "m-10") == (1, 1)


def test_rows_past_the_retention_are_purged(isolated: Isolated) -> None:
    isolated.sql(SCHEMA)
    fx = Effects(isolated.settings, retention=3600)

    async def scenario() -> int:
        for i in range(7):
            async with _delivery(fx, f"old-{i}").transaction():
                pass
        async with _delivery(fx, "new").transaction():
            pass
        await asyncio.to_thread(isolated.sql, "UPDATE streams_processed_messages SET processed_at = now() - "
                                "interval '2 hours' WHERE message_id LIKE 'old-%%'")
        removed = await fx.purge(batch=3)
        await fx.close()
        return removed
    assert asyncio.run(scenario()) == 7
    assert isolated.sql("SELECT message_id FROM streams_processed_messages") == [("new",)]


def test_an_expired_row_or_a_forced_reprocess_takes_the_row_over(isolated: Isolated) -> None:
    """Past the retention a message is no longer a duplicate (as in the RocksDB table); a forced
    reprocess (streams offsets reset --reprocess) handles it again on purpose."""
    isolated.sql(SCHEMA)
    fx = Effects(isolated.settings, retention=3600)

    async def scenario() -> None:
        async with _delivery(fx, "m-11").transaction() as tx:
            await tx.execute("INSERT INTO effect VALUES ('m-11', 'first')")
        with pytest.raises(AlreadyProcessed):
            async with _delivery(fx, "m-11").transaction():
                pass
        window = time.time() + 0.5  # the reprocess window opened after the first handling
        await asyncio.sleep(1.0)
        forced = Delivery("orders", 2, 41, 1, "m-11", consumer="app:handler", effects=fx, reprocessing=True,
                          reprocess_since=window)
        async with forced.transaction() as tx:
            await tx.execute("INSERT INTO effect VALUES ('m-11', 'reprocessed')")
        with pytest.raises(AlreadyProcessed):  # once per window: a second forced delivery finds the new row
            async with forced.transaction() as tx:
                await tx.execute("INSERT INTO effect VALUES ('m-11', 'reprocessed twice')")
        await asyncio.to_thread(isolated.sql, "UPDATE streams_processed_messages SET processed_at = now() - "
                                "interval '2 hours' WHERE message_id = 'm-11'")
        assert await fx.processed("app:handler", "m-11") is None
        async with _delivery(fx, "m-11").transaction() as tx:
            await tx.execute("INSERT INTO effect VALUES ('m-11', 'after expiry')")
        assert await fx.processed("app:handler", "m-11") is not None
        await fx.close()
    asyncio.run(scenario())
    assert [r[0] for r in isolated.sql("SELECT note FROM effect WHERE message_id = 'm-11'")] == [
        "first", "reprocessed", "after expiry"]
    assert _count(isolated, "m-11") == (3, 1)

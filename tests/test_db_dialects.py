"""``streams.db`` on both dialects, against the real servers: :class:`~streams.Database` shared by
concurrent tasks (asyncmy's connection hung when two statements interleaved on it), a connection
the server killed replaced on the next statement, and :func:`~streams.db.transaction` committing,
rolling back and nesting as a savepoint alike on psycopg and PyMySQL."""

from __future__ import annotations

import asyncio
from contextlib import closing

import pytest

from streams import Database, db
from tests.helpers import run


@pytest.fixture(params=["postgresql", "mariadb"])
def iso(request):
    return request.getfixturevalue("isolated" if request.param == "postgresql" else "isolated_mysql")


def _kill_query(iso) -> str:
    return "SELECT pg_terminate_backend(%s)" if iso.settings.database_dialect == "postgresql" else "KILL %s"


def test_a_database_shared_by_concurrent_tasks_answers_each(iso) -> None:
    iso.sql("CREATE TABLE shared_counts (n INT NOT NULL)")
    database = Database(iso.settings)

    async def main() -> list[int]:
        async def one(i: int) -> int:
            await database.execute("INSERT INTO shared_counts (n) VALUES (%s)", (i,))
            return (await database.fetch("SELECT count(*) FROM shared_counts WHERE n = %s", (i,)))[0][0]

        try:
            return await asyncio.wait_for(asyncio.gather(*(one(i) for i in range(50))), 60)
        finally:
            await database.close()

    assert run(main()) == [1] * 50
    assert iso.sql("SELECT count(*) FROM shared_counts")[0][0] == 50


def test_a_connection_the_server_killed_is_replaced_on_the_next_statement(iso) -> None:
    database = Database(iso.settings)
    backend = "SELECT pg_backend_pid()" if iso.settings.database_dialect == "postgresql" else "SELECT CONNECTION_ID()"

    async def main() -> tuple[str, int]:
        try:
            first = (await database.fetch(backend))[0][0]
            iso.sql(_kill_query(iso), (first,))
            try:
                await database.fetch("SELECT 1")
                failed = "no error"
            except db.connection_errors() as exc:
                failed = type(exc).__name__
            second = (await database.fetch(backend))[0][0]
            assert second != first
            return failed, (await database.fetch("SELECT 1"))[0][0]
        finally:
            await database.close()

    failed, answer = run(main())
    assert failed != "no error" and answer == 1, failed


def test_transactions_commit_roll_back_and_nest_as_savepoints(iso) -> None:
    iso.sql("CREATE TABLE tx_rows (n INT NOT NULL)")
    with closing(db.connect(iso.settings)) as conn:
        with db.transaction(conn):
            db.query(conn, "INSERT INTO tx_rows (n) VALUES (1)")
        with pytest.raises(RuntimeError), db.transaction(conn):
            db.query(conn, "INSERT INTO tx_rows (n) VALUES (2)")
            raise RuntimeError("rolled back")
        with db.transaction(conn):
            db.query(conn, "INSERT INTO tx_rows (n) VALUES (3)")
            with pytest.raises(RuntimeError), db.transaction(conn):  # a savepoint: only it is undone
                db.query(conn, "INSERT INTO tx_rows (n) VALUES (4)")
                raise RuntimeError("inner rolled back")
            with db.transaction(conn):
                db.query(conn, "INSERT INTO tx_rows (n) VALUES (5)")
        with pytest.raises(RuntimeError), db.transaction(conn):  # the outer one undoes its savepoints too
            with db.transaction(conn):
                db.query(conn, "INSERT INTO tx_rows (n) VALUES (6)")
            raise RuntimeError("outer rolled back")
    assert [n for (n,) in iso.sql("SELECT n FROM tx_rows ORDER BY n")] == [1, 3, 5]

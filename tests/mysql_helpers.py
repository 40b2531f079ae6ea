"""What the MySQL-dialect tests share: a test's own database on the session's MariaDB, SQL on it."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from streams import mysql
from streams.settings import Settings
from tests.harness import Isolated, Servers, isolation


def server_url(url: str) -> str:
    """``url`` without its database part."""
    head, _, _ = url.partition("?")
    return head.rsplit("/", 1)[0] + "/"


def sql(url: str, query: str, params=None) -> list[tuple]:
    """Run one statement (autocommit) on a ``mysql://`` URL; its rows."""
    conn = mysql.connect(url)
    try:
        with conn.cursor() as cur:
            cur.execute(query, params)
            return list(cur.fetchall())
    finally:
        conn.close()


@contextmanager
def mysql_isolation(servers: Servers, mariadb_url: str, name: str, tmp_path: Path) -> Iterator[Isolated]:
    """:func:`tests.harness.isolation` whose database is a fresh one on the MariaDB server."""
    dbname = f"t_{uuid.uuid4().hex[:8]}"
    sql(server_url(mariadb_url), f"CREATE DATABASE `{dbname}` CHARACTER SET utf8mb4")
    url = server_url(mariadb_url) + dbname
    with isolation(servers, name, tmp_path) as iso:
        iso.env["STREAMS_DATABASE_URL"] = url
        iso.settings = Settings(**{k.removeprefix("STREAMS_").lower(): v for k, v in iso.env.items()})
        try:
            yield iso
        finally:
            for w in iso.workers:
                w.kill()
            drop_database(mariadb_url, dbname)


def drop_database(mariadb_url: str, dbname: str) -> None:
    """Drop a test's database after ending the sessions still using it (a failed test may leave a
    transaction open, whose metadata lock would make the DROP wait for ever)."""
    conn = mysql.connect(server_url(mariadb_url))
    try:
        with conn.cursor() as cur:
            cur.execute("SELECT id FROM information_schema.processlist WHERE db = %s AND id <> CONNECTION_ID()",
                        (dbname,))
            for (session,) in cur.fetchall():
                try:
                    cur.execute(f"KILL {int(session)}")
                except Exception:  # noqa: BLE001 - ended meanwhile
                    pass
            cur.execute("SET SESSION lock_wait_timeout = 60")
            cur.execute(f"DROP DATABASE IF EXISTS `{dbname}`")
    finally:
        conn.close()


def isql(iso: Isolated, query: str, params=None) -> list[tuple]:
    """:func:`sql` on the test's own database."""
    return sql(iso.settings.dsn, query, params)

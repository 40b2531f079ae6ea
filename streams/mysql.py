"""MySQL 8 / MariaDB access: a ``mysql://`` URL to asyncmy (async) and PyMySQL (sync) connections.

``STREAMS_DATABASE_URL=mysql://user:password@host:port/database`` (``mariadb://``
is the same) puts the outbox, its relay and the effects table on a MySQL-family
server (:attr:`streams.settings.Settings.database_dialect`). Query parameters:
``unix_socket=/path`` connects through a socket. Every connection made here
runs in UTC (``time_zone = '+00:00'``) and, unless asked otherwise, in
``READ COMMITTED``: the relay's locking reads then take no gap locks that would
block the writers' inserts.

Both drivers are optional dependencies (``pip install 'streams[mysql]'``).
"""

from __future__ import annotations

from typing import Any
from urllib.parse import parse_qs, unquote, urlsplit

from streams.errors import StreamsError

#: the session set-up of every connection the framework opens
INIT_COMMAND = "SET time_zone = '+00:00'"
_READ_COMMITTED = "SET SESSION TRANSACTION ISOLATION LEVEL READ COMMITTED"


class MySqlDriverMissing(StreamsError):
    """A ``mysql://`` URL is configured but asyncmy / PyMySQL is not installed."""


def is_mysql_url(url: str) -> bool:
    """Whether ``url`` names a MySQL-family server."""
    return url.split("://", 1)[0].lower() in ("mysql", "mariadb")


def connect_kwargs(url: str) -> dict[str, Any]:
    """Driver keyword arguments (PyMySQL and asyncmy take the same) for a ``mysql://`` URL."""
    parts = urlsplit(url)
    if not is_mysql_url(url):
        raise ValueError(f"not a mysql:// URL: {parts.scheme}://…")
    kwargs: dict[str, Any] = {"host": parts.hostname or "127.0.0.1", "port": parts.port or 3306,
                              "user": unquote(parts.username or "root"),
                              "password": unquote(parts.password or ""), "charset": "utf8mb4"}
    database = parts.path.lstrip("/")
    if database:
        kwargs["database"] = unquote(database)
    query = parse_qs(parts.query)
    if "unix_socket" in query:
        kwargs["unix_socket"] = query["unix_socket"][0]
    return kwargs


def database_name(url: str) -> str:
    """The database a ``mysql://`` URL names."""
    name = connect_kwargs(url).get("database")
    if not name:
        raise ValueError("the mysql:// URL names no database (…/database)")
    return name


def connect(url: str, *, autocommit: bool = True, connect_timeout: float = 5, **extra: Any) -> Any:
    """A synchronous PyMySQL connection (CLI, migrations, tests)."""
    try:
        import pymysql
    except ImportError:  # pragma: no cover - declared in the mysql extra
        raise MySqlDriverMissing("a mysql:// database needs PyMySQL: pip install 'streams[mysql]'") from None
    conn = pymysql.connect(**connect_kwargs(url), autocommit=autocommit, connect_timeout=connect_timeout,
                           init_command=INIT_COMMAND, **extra)
    with conn.cursor() as cur:
        cur.execute(_READ_COMMITTED)
    return conn


async def connect_async(url: str, *, autocommit: bool = True, connect_timeout: float = 5, **extra: Any) -> Any:
    """An asyncmy connection."""
    try:
        import asyncmy
    except ImportError:  # pragma: no cover - declared in the mysql extra
        raise MySqlDriverMissing("a mysql:// database needs asyncmy: pip install 'streams[mysql]'") from None
    conn = await asyncmy.connect(**connect_kwargs(url), autocommit=autocommit, connect_timeout=connect_timeout,
                                 init_command=INIT_COMMAND, **extra)
    async with conn.cursor() as cur:
        await cur.execute(_READ_COMMITTED)
    return conn


def connection_errors() -> tuple[type[BaseException], ...]:
    """What a lost or refused MySQL connection raises (in either driver)."""
    errors: list[type[BaseException]] = [ConnectionError]
    try:
        import pymysql

        errors += [pymysql.err.OperationalError, pymysql.err.InterfaceError]
    except ImportError:  # pragma: no cover
        pass
    try:
        from asyncmy import errors as asyncmy_errors

        errors += [asyncmy_errors.OperationalError, asyncmy_errors.InterfaceError]
    except ImportError:  # pragma: no cover
        pass
    return tuple(errors)


#: MySQL error numbers the framework reacts to
ER_LOCK_DEADLOCK = 1213
ER_LOCK_WAIT_TIMEOUT = 1205
ER_DUP_ENTRY = 1062
ER_NO_SUCH_TABLE = 1146


def error_code(exc: BaseException) -> int | None:
    """The MySQL error number of a driver exception (None: not a server error)."""
    args = getattr(exc, "args", ())
    return args[0] if args and isinstance(args[0], int) else None


async def fetch(conn: Any, query: str, params: Any = None) -> list[tuple]:
    """Run ``query`` on an asyncmy connection; its rows."""
    async with conn.cursor() as cur:
        await cur.execute(query, params)
        return list(await cur.fetchall())


async def execute(conn: Any, query: str, params: Any = None) -> int:
    """Run ``query`` on an asyncmy connection; the affected row count."""
    async with conn.cursor() as cur:
        return await cur.execute(query, params)


async def close_async(conn: Any) -> None:
    """Close an asyncmy connection, quietly if it is broken already."""
    try:
        await conn.ensure_closed()
    except Exception:  # noqa: BLE001
        conn.close()

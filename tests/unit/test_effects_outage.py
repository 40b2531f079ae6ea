"""Which database errors are an outage of the effects database (wait, no attempt used) and which
are the attempt's own failure (retried, then parked): the exceptions the drivers raise."""

from __future__ import annotations

import psycopg
import pymysql
import pytest
from psycopg_pool import PoolTimeout

from streams.consume.effects import is_outage


@pytest.mark.parametrize("exc", [
    pymysql.err.OperationalError(2013, "Lost connection to MySQL server during query"),
    pymysql.err.OperationalError(2003, "Can't connect to MySQL server on '127.0.0.1'"),
    pymysql.err.OperationalError(2006, "MySQL server has gone away"),
    pymysql.err.OperationalError(1053, "Server shutdown in progress"),
    pymysql.err.InterfaceError(0, ""),
    ConnectionResetError(104, "Connection reset by peer"),
    psycopg.OperationalError("connection failed: Connection refused"),
    psycopg.errors.AdminShutdown("terminating connection due to administrator command"),
    PoolTimeout("couldn't get a connection after 30.00 sec"),
])
def test_a_lost_or_refused_connection_is_an_outage(exc: BaseException) -> None:
    assert is_outage(exc)


@pytest.mark.parametrize("exc", [
    pymysql.err.OperationalError(1213, "Deadlock found when trying to get lock"),
    pymysql.err.OperationalError(1205, "Lock wait timeout exceeded"),
    pymysql.err.OperationalError(1054, "Unknown column 'x' in 'field list'"),
    pymysql.err.IntegrityError(1062, "Duplicate entry"),
    psycopg.errors.DeadlockDetected("deadlock detected"),
    psycopg.errors.SerializationFailure("could not serialize access"),
    psycopg.errors.QueryCanceled("canceling statement due to statement timeout"),
    ValueError("the handler's own bug"),
])
def test_the_transactions_own_failures_are_not(exc: BaseException) -> None:
    assert not is_outage(exc)

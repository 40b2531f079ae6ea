"""The project's own MariaDB (Debian's mariadb-server): start, binlog settings CDC needs, crash recovery."""

from __future__ import annotations

from pathlib import Path

import pytest

from streams import mysql
from streams.dev.mariadb import LocalMariaDB
from streams.dev.process import free_port, port_open
from tests.mysql_helpers import sql


@pytest.fixture
def own_mariadb(tmp_path: Path):
    server = LocalMariaDB(tmp_path / "mariadb", free_port(), database="harness")
    try:
        yield server
    finally:
        server.down()


def test_up_is_ready_for_binlog_cdc_and_survives_a_crash(own_mariadb: LocalMariaDB) -> None:
    own_mariadb.up()
    assert own_mariadb.up() == 0.0
    url = own_mariadb.url
    variables = dict(sql(url, "SHOW GLOBAL VARIABLES WHERE Variable_name IN ('log_bin', 'binlog_format', "
                              "'binlog_row_image', 'gtid_strict_mode', 'server_id', 'bind_address', 'time_zone')"))
    assert variables == {"log_bin": "ON", "binlog_format": "ROW", "binlog_row_image": "FULL",
                         "gtid_strict_mode": "ON", "server_id": "1", "bind_address": "127.0.0.1",
                         "time_zone": "+00:00"}
    sql(url, "CREATE TABLE kept (id int PRIMARY KEY, note varchar(40)) ENGINE=InnoDB")
    sql(url, "INSERT INTO kept VALUES (1, 'committed before the crash')")
    before = sql(url, "SELECT @@gtid_binlog_pos")[0][0]
    assert before  # a GTID for every transaction
    pid = own_mariadb.pid()
    own_mariadb.kill()  # SIGKILL: InnoDB's crash recovery at the next start
    assert not port_open("127.0.0.1", own_mariadb.port)
    own_mariadb.up()
    assert own_mariadb.pid() != pid
    assert sql(url, "SELECT note FROM kept") == [("committed before the crash",)]
    assert sql(url, "SELECT @@gtid_binlog_pos")[0][0] == before  # the binlog survived the crash too
    assert own_mariadb.down() is True
    assert own_mariadb.status()["running"] is False


def test_a_refused_connection_is_a_connection_error(own_mariadb: LocalMariaDB) -> None:
    with pytest.raises(mysql.connection_errors()):
        mysql.connect(own_mariadb.url, connect_timeout=2)

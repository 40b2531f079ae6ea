"""Test harness: one real Kafka broker and one real PostgreSQL server per test session.

Both are the project's own (``streams.dev``), on free ports, with data under
``.streams/test-session`` (wiped at start), and stopped at the end of the session.
``STREAMS_KAFKA_BOOTSTRAP`` / ``STREAMS_DATABASE_URL`` in the environment make
the suite use existing servers instead.

Each test that needs isolation gets its own app id (= consumer group), topic
prefix and database (:func:`isolated`).
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest

from streams.dev.kafka import LocalKafka
from streams.dev.postgres import LocalPostgres
from streams.dev.process import free_port
from tests.harness import (
    ROOT,
    SESSION_HOME,
    BrokerServer,
    Isolated,
    Servers,
    artifact_name,
    distinct_port_pairs,
    isolation,
    remove_dead_sessions,
)

# The suite's settings come from here, not from a developer's .env or shell: only the servers to use
# instead of the suite's own, and where this machine keeps its tools (the same names `make test` reads).
_KEPT = ("STREAMS_KAFKA_BOOTSTRAP", "STREAMS_DATABASE_URL", "STREAMS_RABBITMQ_URL", "STREAMS_REDIS_URL",
         "STREAMS_TOOLS_CACHE", "STREAMS_GO", "STREAMS_CHROMIUM", "STREAMS_SSHD", "STREAMS_RABBITMQ_BIN",
         "STREAMS_REDIS_SERVER")
for _name in [n for n in os.environ if n.startswith("STREAMS_") and n not in _KEPT]:
    del os.environ[_name]


@pytest.fixture(scope="session")
def servers() -> Servers:
    """Start the session's broker and database (in parallel), stop them at the end."""
    external_kafka = os.environ.get("STREAMS_KAFKA_BOOTSTRAP")
    external_db = os.environ.get("STREAMS_DATABASE_URL")
    remove_dead_sessions()
    SESSION_HOME.mkdir(parents=True)
    kafka = None if external_kafka else LocalKafka(
        data_dir=SESSION_HOME / "kafka", cache_dir=ROOT / ".streams" / "cache",
        port=free_port(), controller_port=free_port(),
    )
    postgres = None if external_db else LocalPostgres(root=SESSION_HOME / "postgres", port=free_port())
    out = Servers(
        bootstrap=external_kafka or kafka.bootstrap,
        database_url=external_db or postgres.url,
        kafka=kafka,
        postgres=postgres,
    )
    with ThreadPoolExecutor(2) as pool:
        futures = {}
        if kafka:
            futures["kafka"] = pool.submit(kafka.up)
        if postgres:
            futures["postgres"] = pool.submit(postgres.up)
        for name, fut in futures.items():
            out.timings[name] = fut.result()
    print(f"\n[servers] kafka {out.bootstrap} ({out.timings.get('kafka', 'external')}s), "
          f"postgres ({out.timings.get('postgres', 'external')}s)")
    try:
        yield out
    finally:
        if postgres:
            postgres.down()
        if kafka:
            kafka.down()


@pytest.fixture(scope="session")
def cluster3():
    """A three-node Kafka cluster (KRaft, each node broker and controller) for the tests that
    need replication; started on first use in this test process, stopped at its end."""
    from streams.dev.kafka import LocalKafkaCluster

    if os.environ.get("STREAMS_KAFKA_BOOTSTRAP"):
        pytest.skip("STREAMS_KAFKA_BOOTSTRAP is set: the three-broker tests need the project's own cluster")
    SESSION_HOME.mkdir(parents=True, exist_ok=True)
    cluster = LocalKafkaCluster(data_dir=SESSION_HOME / "kafka3", cache_dir=ROOT / ".streams" / "cache",
                                brokers=3, heap="256m",
                                node_ports=distinct_port_pairs(3))
    took = cluster.up()
    print(f"\n[cluster3] {cluster.bootstrap} ({took:.1f}s)")
    try:
        yield cluster
    finally:
        cluster.down()


@pytest.fixture(scope="session")
def sftp_server():
    """The project's own sshd (SFTP only, key authentication) on a free port, started on first use
    in this test process and stopped at its end. Each test uses its own remote folder."""
    from streams.dev.sftp import LocalSftp

    SESSION_HOME.mkdir(parents=True, exist_ok=True)
    server = LocalSftp(SESSION_HOME / "sftp", free_port())
    took = server.up()
    print(f"\n[sftp] 127.0.0.1:{server.port} ({took:.1f}s), files in {server.files}")
    try:
        yield server
    finally:
        server.down()
        server.remove_files()


@pytest.fixture(scope="session")
def mariadb():
    """The project's own MariaDB server (binlog ROW + GTIDs) on a free port, started on first use in
    this test process and stopped at its end; each test takes a database of its own
    (:func:`isolated_mysql`). ``STREAMS_TEST_MYSQL_URL`` (a server's URL with a user allowed to
    create databases) makes the tests use an existing MySQL 8 / MariaDB server instead."""
    from types import SimpleNamespace

    from streams.dev.mariadb import LocalMariaDB

    external = os.environ.get("STREAMS_TEST_MYSQL_URL")
    if external:
        yield SimpleNamespace(url=external, server=None)
        return
    SESSION_HOME.mkdir(parents=True, exist_ok=True)
    server = LocalMariaDB(SESSION_HOME / "mariadb", free_port())
    took = server.up()
    print(f"\n[mariadb] {server.url} ({took:.1f}s)")
    try:
        yield SimpleNamespace(url=server.url, server=server)
    finally:
        server.down()


@pytest.fixture(scope="session")
def rabbitmq() -> Iterator[BrokerServer]:
    """The AMQP URL of this test process's RabbitMQ: the project's own node (Debian's
    rabbitmq-server) on free ports, started on first use and stopped at the end, or the one
    ``STREAMS_RABBITMQ_URL`` names. Tests share it: each declares its own exchanges and queues."""
    from streams.dev.rabbitmq import LocalRabbitMQ

    if url := os.environ.get("STREAMS_RABBITMQ_URL"):
        yield BrokerServer(url)
        return
    SESSION_HOME.mkdir(parents=True, exist_ok=True)
    node = LocalRabbitMQ(SESSION_HOME / "rabbitmq", free_port(), dist_port=free_port(), epmd_port=free_port())
    took = node.up()
    print(f"\n[rabbitmq] {node.url} ({took:.1f}s)")
    try:
        yield BrokerServer(node.url, node)
    finally:
        node.down()


@pytest.fixture(scope="session")
def redis_server() -> Iterator[BrokerServer]:
    """The URL of this test process's Redis: the project's own server (Debian's redis-server,
    append-only file) on a free port, started on first use and stopped at the end, or the one
    ``STREAMS_REDIS_URL`` names. Tests share it: each uses its own stream names."""
    from streams.dev.redis import LocalRedis

    if url := os.environ.get("STREAMS_REDIS_URL"):
        yield BrokerServer(url)
        return
    SESSION_HOME.mkdir(parents=True, exist_ok=True)
    server = LocalRedis(SESSION_HOME / "redis", free_port())
    took = server.up()
    print(f"\n[redis] {server.url} ({took:.1f}s)")
    try:
        yield BrokerServer(server.url, server)
    finally:
        server.down()


@pytest.fixture
def isolated_mysql(servers: Servers, mariadb, request, tmp_path: Path) -> Iterator[Isolated]:
    """:func:`isolated` with its database on MariaDB (``STREAMS_DATABASE_URL=mysql://…``)."""
    from tests.mysql_helpers import mysql_isolation

    with mysql_isolation(servers, mariadb.url, artifact_name(request.node.name), tmp_path) as iso:
        yield iso


@pytest.fixture(scope="session")
def connect_worker(servers: Servers):
    """One Kafka Connect worker (distributed mode, Debezium's PostgreSQL connector) for this test
    process, started on first use, stopped at its end. The CDC tests share it (one xdist group);
    each creates and deletes its own connectors. It stores source positions every 5 s, so a
    SIGKILL re-sends what it had sent since (what the crash tests need to see)."""
    from streams.dev.connect import LocalConnect

    SESSION_HOME.mkdir(parents=True, exist_ok=True)
    worker = LocalConnect(SESSION_HOME / "connect", ROOT / ".streams" / "cache", servers.bootstrap,
                          port=free_port(), group=f"streams-connect-{os.getpid()}", offset_flush_ms=5000)
    took = worker.up()
    print(f"\n[connect] {worker.url} ({took:.1f}s)")
    try:
        yield worker
    finally:
        worker.down()


@pytest.fixture
def isolated(servers: Servers, request, tmp_path: Path) -> Iterator[Isolated]:
    """Own app id / consumer group, topic prefix, database and state folder; workers stopped after."""
    with isolation(servers, artifact_name(request.node.name), tmp_path) as iso:
        yield iso


@pytest.fixture(scope="module")
def isolated_module(servers: Servers, request, tmp_path_factory) -> Iterator[Isolated]:
    """:func:`isolated` shared by the tests of one module (they must not depend on each other's order)."""
    name = artifact_name(request.module.__name__.rpartition(".")[2])
    with isolation(servers, name, tmp_path_factory.mktemp(name)) as iso:
        yield iso




#: the reference app's modules the test driver's tests import into the test process
IN_PROCESS_AGENTS = ("agents.main", "agents.points", "agents.search_index", "agents.sms")


@pytest.fixture(scope="session")
def in_process_agents(servers: Servers, tmp_path_factory) -> Iterator[Any]:
    """The reference app's services imported into this test process, for the test driver
    (streams.testing): their settings are read once, at import, so ``STREAMS_DATABASE_URL`` (a
    database of their own on the session's PostgreSQL) and ``STREAMS_HOME`` are set for the import
    and restored after it. The SMS provider simulator runs for the session (a test points
    ``agent_settings.sms_provider_url`` at it)."""
    import importlib
    import sys
    from types import SimpleNamespace

    import psycopg

    from agents.sms_provider import SmsProvider
    from tests.harness import admin_url

    early = [m for m in IN_PROCESS_AGENTS if m in sys.modules]
    if early:
        pytest.fail(f"{early} were imported into the test process before in_process_agents set their settings")
    dbname = f"driver_{os.getpid()}"
    with psycopg.connect(admin_url(servers.database_url), autocommit=True) as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{dbname}" WITH (FORCE)')
        conn.execute(f'CREATE DATABASE "{dbname}"')
    url = servers.database_url.rsplit("/", 1)[0] + f"/{dbname}"
    provider = SmsProvider(port=free_port(), rate=10_000, burst=1000).start()
    env = {"STREAMS_DATABASE_URL": url, "STREAMS_HOME": str(tmp_path_factory.mktemp("in-process"))}
    saved = {name: os.environ.get(name) for name in env}
    os.environ.update(env)
    try:
        modules = {name: importlib.import_module(name) for name in IN_PROCESS_AGENTS}
    finally:
        for name, value in saved.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value
    try:
        yield SimpleNamespace(database_url=url, sms_provider=provider, **{n.split(".")[1]: m for n, m in modules.items()})
    finally:
        provider.stop()
        with psycopg.connect(admin_url(servers.database_url), autocommit=True) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{dbname}" WITH (FORCE)')

"""What the tests share: where the servers answer, one test's private corner of them, paths.

The fixtures that create these live in ``conftest.py``; tests import the types and
helpers from here.
"""

from __future__ import annotations

import os
import re
import shutil
import uuid
from collections.abc import Iterator
from contextlib import closing, contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import psycopg

from streams import db
from streams.dev.kafka import LocalKafka
from streams.dev.postgres import LocalPostgres
from streams.dev.process import free_port
from streams.dev.worker import WorkerProcess
from streams.settings import Settings

ROOT = Path(__file__).resolve().parent.parent
SESSIONS = ROOT / ".streams" / "test-session"
# one folder per pytest process, so sessions running side by side do not wipe each other
SESSION_HOME = SESSIONS / str(os.getpid())
ARTIFACTS = ROOT / "test-artifacts"


@dataclass
class Servers:
    """Where the session's Kafka and PostgreSQL answer."""

    bootstrap: str
    database_url: str
    kafka: LocalKafka | None = None
    postgres: LocalPostgres | None = None
    timings: dict[str, float] = field(default_factory=dict)


@dataclass
class BrokerServer:
    """Where a RabbitMQ or Redis of the session answers; ``local`` is the project's own server
    (``LocalRabbitMQ`` / ``LocalRedis``, for restart tests) or None for one named by the environment."""

    url: str
    local: Any = None


@dataclass
class Isolated:
    """One test's private corner of the shared servers."""

    name: str
    settings: Settings
    env: dict[str, str]
    artifacts: Path
    workers: list[WorkerProcess] = field(default_factory=list)

    def worker(self, label: str | None = None, *, args: list[str] | None = None, **extra_env: str) -> WorkerProcess:
        """A worker process for this test's app (not started yet); ``args`` go to ``streams worker``
        (default ``--without-web``)."""
        label = label or f"worker-{len(self.workers) + 1}"
        env = {**self.env, "STREAMS_WORKER_DATA_DIR": str(self.settings.home_path / label), **extra_env}
        proc = WorkerProcess(env, self.artifacts / f"{label}.log", cwd=ROOT, args=args)
        self.workers.append(proc)
        return proc

    def topic(self, name: str) -> str:
        return f"{self.settings.topic_prefix}{name}"

    def sql(self, query: str, params=None) -> list[tuple]:
        """Run one statement (autocommit) on the test's database, PostgreSQL or MySQL; its rows."""
        with closing(db.connect(self.settings, autocommit=True)) as conn:
            return db.query(conn, query, params)


def distinct_port_pairs(n: int) -> list[tuple[int, int]]:
    ports: list[int] = []
    while len(ports) < 2 * n:
        port = free_port()
        if port not in ports:
            ports.append(port)
    return [(ports[2 * i], ports[2 * i + 1]) for i in range(n)]


def artifact_name(node_name: str) -> str:
    """A folder name for a test: its name, shortened to 60 characters; the parameters
    (``[...]``) stay visible, so two parametrisations never share a folder."""
    name = re.sub(r"[^A-Za-z0-9]+", "-", node_name).strip("-")
    if len(name) <= 60:
        return name
    base, _, params = node_name.partition("[")
    tail = re.sub(r"[^A-Za-z0-9]+", "-", params).strip("-")[:20]
    head = re.sub(r"[^A-Za-z0-9]+", "-", base).strip("-")[:59 - len(tail)].strip("-")
    return f"{head}-{tail}" if tail else head


def remove_dead_sessions() -> None:
    """Delete the folders of earlier sessions whose pytest process is gone."""
    if not SESSIONS.is_dir():
        return
    for child in SESSIONS.iterdir():
        if child.name.isdigit() and child.name != str(os.getpid()):
            try:
                os.kill(int(child.name), 0)
                continue  # still running
            except ProcessLookupError:
                pass
            except PermissionError:
                continue
        elif not child.name.isdigit():
            pass  # left by an older layout
        else:
            continue
        shutil.rmtree(child, ignore_errors=True)


def admin_url(url: str) -> str:
    return url.rsplit("/", 1)[0] + "/postgres"


@contextmanager
def isolation(servers: Servers, name: str, tmp_path: Path) -> Iterator[Isolated]:
    """Own app id / consumer group, topic prefix, database and state folder; workers stopped after."""
    suffix = uuid.uuid4().hex[:8]
    dbname = f"t_{suffix}"
    with psycopg.connect(admin_url(servers.database_url), autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{dbname}"')
    db_url = servers.database_url.rsplit("/", 1)[0] + f"/{dbname}"
    env = {
        "STREAMS_KAFKA_BOOTSTRAP": servers.bootstrap,
        "STREAMS_DATABASE_URL": db_url,
        "STREAMS_HOME": str(tmp_path / "home"),
        "STREAMS_APP_ID": f"test-{suffix}",
        "STREAMS_TOPIC_PREFIX": f"t{suffix}.",
        "STREAMS_BROKER_COMMIT_INTERVAL": "0.5",
        # a SIGKILLed worker leaves the group after this, not after 30 s
        "STREAMS_BROKER_SESSION_TIMEOUT": "8",
        "STREAMS_BROKER_HEARTBEAT_INTERVAL": "1",
    }
    settings = Settings(**{k.removeprefix("STREAMS_").lower(): v for k, v in env.items()})
    artifacts = ARTIFACTS / name
    if artifacts.exists():
        shutil.rmtree(artifacts)
    artifacts.mkdir(parents=True)
    iso = Isolated(name, settings, env, artifacts)
    try:
        yield iso
    finally:
        for w in iso.workers:
            w.kill()
        with psycopg.connect(admin_url(servers.database_url), autocommit=True) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{dbname}" WITH (FORCE)')

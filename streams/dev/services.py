"""Bring up (or find) the Kafka broker and PostgreSQL server that settings point at."""

from __future__ import annotations

import logging
from dataclasses import dataclass, field

from streams.dev.kafka import LocalKafka, LocalKafkaCluster
from streams.dev.postgres import LocalPostgres
from streams.dev.process import ServiceError, port_open
from streams.settings import Settings, redact_url

log = logging.getLogger(__name__)


@dataclass
class Services:
    """What :func:`ensure_services` did: which local services it started and how long it took."""

    kafka: LocalKafka | LocalKafkaCluster | None = None
    postgres: LocalPostgres | None = None
    started: list[str] = field(default_factory=list)
    timings: dict[str, float] = field(default_factory=dict)

    def stop_started(self) -> None:
        """Stop only the services this object started (leave pre-existing ones running)."""
        if "postgres" in self.started and self.postgres is not None:
            self.postgres.down()
        if "kafka" in self.started and self.kafka is not None:
            self.kafka.down()
        self.started.clear()


def ensure_services(settings: Settings, *, kafka: bool = True, postgres: bool = True) -> Services:
    """Start the local broker / database unless external ones are configured or they already run."""
    out = Services()
    if kafka:
        if settings.uses_local_kafka:
            kafka_service = LocalKafka.from_settings(settings)
            out.kafka = kafka_service
            took = kafka_service.up()
            if took:
                out.started.append("kafka")
            out.timings["kafka"] = took
        else:
            first = settings.bootstrap_servers.split(",")[0]
            host, port = first.rsplit(":", 1)
            if not port_open(host.strip("[]"), int(port), timeout=3):
                raise ServiceError(f"the Kafka cluster at {settings.bootstrap_servers} does not answer")
    if postgres:
        if settings.uses_local_postgres:
            out.postgres = LocalPostgres.from_settings(settings)
            took = out.postgres.up()
            if took:
                out.started.append("postgres")
            out.timings["postgres"] = took
        elif settings.database_dialect == "mysql":
            from streams import mysql

            try:
                mysql.connect(settings.dsn).close()
            except mysql.connection_errors() as exc:
                raise ServiceError(f"MySQL at {redact_url(settings.dsn)} does not answer: {exc}") from None
        else:
            import psycopg

            try:
                psycopg.connect(settings.dsn, connect_timeout=5).close()
            except psycopg.OperationalError as exc:
                raise ServiceError(
                    f"PostgreSQL at {redact_url(settings.dsn)} does not answer: {str(exc).strip()}"
                ) from None
    return out

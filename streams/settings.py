"""Settings: every knob of the framework, read from ``STREAMS_*`` variables or ``.env``.

One prefix, one place. Values are validated when the settings are built, and a
bad value raises :class:`SettingsError` naming the variable and what is wrong.
Secrets (SASL and key passwords, the database URL) are ``SecretStr``: they print
as ``**********`` and :meth:`Settings.safe_dict` masks them for logs.

Two settings switch from the project's own local services to existing ones:

* ``STREAMS_KAFKA_BOOTSTRAP`` — bootstrap servers of an existing Kafka cluster.
  Unset: the project starts and uses its own single-node broker
  (``streams dev kafka up``) on ``127.0.0.1:STREAMS_LOCAL_KAFKA_PORT``.
* ``STREAMS_DATABASE_URL`` — a PostgreSQL URL, or a ``mysql://`` (``mariadb://``)
  URL of a MySQL 8 / MariaDB server: the URL's scheme chooses the dialect of the
  outbox, the relay and the effects table (:attr:`Settings.database_dialect`).
  Unset: the project starts and uses its own embedded PostgreSQL on
  ``127.0.0.1:STREAMS_LOCAL_POSTGRES_PORT``.
"""

from __future__ import annotations

import re
from enum import StrEnum
from pathlib import Path
from typing import Any, Literal

from pydantic import Field, SecretStr, ValidationError, field_validator, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

ENV_PREFIX = "STREAMS_"

_HOST_PORT = re.compile(r"^[A-Za-z0-9_.\-\[\]:]+:\d{1,5}$")
_APP_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._\-]{0,199}$")


class SettingsError(ValueError):
    """Raised when settings are invalid; the message names each bad variable."""


class SecurityProtocol(StrEnum):
    PLAINTEXT = "PLAINTEXT"
    SSL = "SSL"
    SASL_PLAINTEXT = "SASL_PLAINTEXT"
    SASL_SSL = "SASL_SSL"


class SaslMechanism(StrEnum):
    PLAIN = "PLAIN"
    SCRAM_SHA_256 = "SCRAM-SHA-256"
    SCRAM_SHA_512 = "SCRAM-SHA-512"


class ProcessingGuarantee(StrEnum):
    AT_LEAST_ONCE = "at_least_once"
    EXACTLY_ONCE = "exactly_once"


class LogLevel(StrEnum):
    DEBUG = "debug"
    INFO = "info"
    WARNING = "warning"
    ERROR = "error"
    CRITICAL = "critical"


class Settings(BaseSettings):
    """All framework settings. Environment variables use the ``STREAMS_`` prefix."""

    model_config = SettingsConfigDict(
        env_prefix=ENV_PREFIX,
        env_file=".env",
        env_file_encoding="utf-8",
        extra="ignore",
        case_sensitive=False,
        validate_default=True,
    )

    # --- application -----------------------------------------------------
    app_id: str = Field("streams-app", description="Faust app id; also the consumer group id.")
    topic_prefix: str = Field(
        "", description="Prefix added to every topic the app declares (environment namespacing)."
    )
    topic_partitions: int = Field(4, ge=1, le=10_000, description="Partitions of topics the app creates.")
    topic_replication_factor: int | None = Field(
        None, ge=1, le=32, description="Replicas of the topics the app creates (unset: min(3, brokers)).")
    topic_min_insync_replicas: int | None = Field(
        None, ge=1, le=32, description="min.insync.replicas of the topics the app creates (unset: 2 with 3+ "
        "replicas, else 1).")
    processing_guarantee: ProcessingGuarantee = Field(
        ProcessingGuarantee.AT_LEAST_ONCE,
        description="at_least_once or exactly_once (Kafka transactions: outputs, processed ids and offsets commit together).")
    log_level: LogLevel = Field(LogLevel.INFO, description="Log level of workers, relays and commands.")

    # --- where things live ---------------------------------------------
    home: Path = Field(Path(".streams"), description="Project-local folder for data, logs and caches.")

    # --- Kafka ------------------------------------------------------------
    kafka_bootstrap: str | None = Field(
        None, description="Existing cluster's bootstrap servers (host:port,...). Unset: local broker."
    )
    kafka_security_protocol: SecurityProtocol = Field(
        SecurityProtocol.PLAINTEXT, description="PLAINTEXT, SSL, SASL_PLAINTEXT or SASL_SSL.")
    kafka_sasl_mechanism: SaslMechanism | None = Field(None, description="PLAIN, SCRAM-SHA-256 or SCRAM-SHA-512 (SASL_*).")
    kafka_sasl_username: str | None = Field(None, description="SASL user name.")
    kafka_sasl_password: SecretStr | None = Field(None, description="SASL password (never logged or shown).")
    kafka_ssl_cafile: Path | None = Field(None, description="CA certificate(s) to verify the brokers (PEM).")
    kafka_ssl_certfile: Path | None = Field(None, description="Client certificate for mutual TLS (PEM).")
    kafka_ssl_keyfile: Path | None = Field(None, description="The client certificate's private key (PEM).")
    kafka_ssl_key_password: SecretStr | None = Field(None, description="Password of the private key, if any.")
    kafka_client_id: str = Field("streams", description="Client id the Kafka clients send (broker logs, quotas).")

    # --- the project's own local broker --------------------------------
    local_kafka_port: int = Field(9092, ge=1, le=65535, description="Port of the local broker (`streams dev kafka up`).")
    local_kafka_controller_port: int = Field(9093, ge=1, le=65535, description="KRaft controller port of the local broker.")
    local_kafka_heap: str = Field("512m", description="JVM -Xmx for the local broker.")
    local_kafka_brokers: int | None = Field(
        None, ge=1, le=5, description="Nodes of the local cluster (unset: the size `streams dev kafka up --brokers N` "
        "recorded, else 1).")
    local_kafka_start_timeout: float = Field(90.0, gt=0, description="Seconds the local broker may take to start.")

    # --- PostgreSQL -------------------------------------------------------
    database_url: SecretStr | None = Field(
        None, description="postgresql://user:pass@host:port/db of an existing server, or mysql://user:pass@host:port/db "
        "of a MySQL 8 / MariaDB server (the scheme chooses the dialect). Unset: embedded PostgreSQL."
    )
    local_postgres_port: int = Field(55432, ge=1, le=65535,
                                     description="Port of the local PostgreSQL (`streams dev postgres up`).")
    local_postgres_database: str = Field("streams", description="Database the local PostgreSQL creates and the app uses.")
    local_mariadb_port: int = Field(3307, ge=1, le=65535,
                                    description="Port of the local MariaDB (`streams dev mariadb up`).")
    local_mariadb_database: str = Field("streams", pattern=r"^[A-Za-z0-9_]{1,64}$",
                                        description="Database the local MariaDB creates.")

    # --- SFTP (batch file transfer) ----------------------------------------
    sftp_host: str | None = Field(
        None, description="SFTP server of batch transfer. Unset: the local one (`streams dev sftp up`).")
    sftp_port: int = Field(22, ge=1, le=65535, description="Port of STREAMS_SFTP_HOST.")
    sftp_user: str | None = Field(None, description="Login name (unset: the current user).")
    sftp_key_file: Path | None = Field(None, description="Private key file (unset with the local server: its key).")
    sftp_password: SecretStr | None = Field(None, description="Password, when the server takes one (secret).")
    sftp_known_hosts: Path | None = Field(
        None, description="known_hosts file checked against the server's host key (unset: ~/.ssh/known_hosts; "
        "the local server's own file with the local server).")
    sftp_insecure_no_host_check: bool = Field(
        False, description="Accept any host key (never in production: a man in the middle reads every file).")
    sftp_remote_dir: str = Field("/", description="Remote folder of the transfers (exports land here, imports "
                                                  "read from here; done/ and failed/ are made under it).")
    local_sftp_port: int = Field(2222, ge=1, le=65535, description="Port of the local sshd.")

    # --- Kafka Connect (CDC) -------------------------------------------------
    connect_url: str | None = Field(
        None, description="REST URL of an existing Kafka Connect cluster. Unset: the local worker.")
    local_connect_port: int = Field(8083, ge=1, le=65535, description="REST port of the local Connect worker.")

    # --- RabbitMQ and Redis (other brokers of the outbox relay and of handlers) -------
    rabbitmq_url: SecretStr | None = Field(
        None, description="amqp://user:pass@host:port/vhost of an existing RabbitMQ. Unset: the local node "
        "(`streams dev rabbitmq up`).")
    local_rabbitmq_port: int = Field(5682, ge=1, le=65535, description="AMQP port of the local RabbitMQ node.")
    local_rabbitmq_dist_port: int = Field(
        25682, ge=1, le=65535, description="Erlang distribution port of the local node (rabbitmqctl uses the ten "
        "ports above it).")
    local_rabbitmq_epmd_port: int = Field(4379, ge=1, le=65535, description="Port of the local node's own epmd.")
    rabbitmq_lanes: int = Field(
        8, ge=1, le=1024, description="Lane queues per topic and group on RabbitMQ (murmur2 of the key, as Kafka "
        "partitions; one active consumer per lane keeps a key's order). Publishers and consumers must agree.")
    rabbitmq_prefetch: int = Field(
        100, ge=1, le=65535, description="Unacknowledged messages RabbitMQ may push to each lane's consumer "
        "(basic.qos): the consumer's backpressure.")
    redis_read_count: int = Field(100, ge=1, le=100_000, description="Entries a Redis consumer reads per XREADGROUP.")
    redis_claim_idle: float = Field(
        60.0, gt=0, description="Seconds an entry may stay pending with a consumer (which may have died) before "
        "another consumer of the group takes it over (XAUTOCLAIM).")
    redis_url: SecretStr | None = Field(
        None, description="redis://[:pass@]host:port/db of an existing Redis. Unset: the local server "
        "(`streams dev redis up`).")
    local_redis_port: int = Field(6389, ge=1, le=65535, description="Port of the local Redis server.")
    redis_stream_maxlen: int | None = Field(
        None, ge=1, description="Approximate MAXLEN of the streams the relay appends to (XADD MAXLEN ~ N). Unset: "
        "never trimmed. Trimming drops the oldest entries even if a group has not read them yet.")
    broker_routes: str = Field(
        "", description="Which broker each topic lives on (the relay publishes it there, `streams consume` reads "
        "it there): comma-separated PATTERN=BROKER, fnmatch patterns on the full topic name, first match wins; "
        "brokers: kafka, rabbitmq, redis. Unmatched topics are on Kafka.")

    # --- worker -------------------------------------------------------------
    worker_app: str = Field("agents.main:app", description="module:attribute of the StreamsApp to run.")
    worker_data_dir: Path | None = Field(
        None, description="Local table state of this worker. Unset: <home>/worker/<app id>."
    )
    store: str = Field("rocksdb://", description="Faust table store URL.")
    rocksdb_block_cache_mb: int = Field(
        64, ge=1, le=65536, description="RocksDB block cache of each table partition database (MiB): with the "
        "memtables, what a worker's RSS grows by per partition it holds.")
    rocksdb_write_buffer_mb: int = Field(
        8, ge=1, le=4096, description="RocksDB memtable size of each table partition database (MiB; two per "
        "database).")
    web_host: str = Field("127.0.0.1", description="Address the worker's web server binds to.")
    web_advertised_host: str | None = Field(
        None, description="Host name other workers use to reach this one (table routing). Unset: STREAMS_WEB_HOST. "
        "On Kubernetes, the pod's stable DNS name (the chart sets it).")
    web_port: int = Field(6066, ge=1, le=65535, description="Port of the worker's web views, health and metrics.")
    web_enabled: bool = Field(True, description="Serve the web views (health, metrics, tables) from each worker.")
    web_token: SecretStr | None = Field(
        None, description="Bearer token the web views require (all but /health/*). Unset: no auth.")
    web_lag_cache: float = Field(1.0, ge=0, le=60, description="Seconds a lag reading is reused by the web views.")
    max_value_bytes: int = Field(
        1024 * 1024, ge=1024, description="Largest record value a handler accepts; larger ones are parked (too_large).")
    max_nesting_depth: int = Field(
        64, ge=2, le=500, description="Deepest JSON nesting a handler accepts; deeper values are parked (too_deep).")
    message_id_fallback: Literal["reject", "header", "offset"] = Field(
        "reject", description="An envelope without message_id: reject (park), header (take the message_id "
        "header) or offset (header, else <topic>-<partition>@<offset>).")
    create_topics: bool = Field(
        True, description="The worker creates missing topics at start-up; false: it waits until they exist.")
    dedup_retention: float = Field(
        7 * 24 * 3600.0, gt=0, description="Seconds a processed message id is remembered (default 7 days)."
    )
    group_instance_id: str | None = Field(
        None, pattern=r"^[A-Za-z0-9._\-]{1,249}$",
        description="Static group membership (KIP-345): this worker's stable name in its consumer group, unique "
        "per worker (the Helm chart sets the pod name). A worker restarted within the session timeout gets "
        "its partitions back without a rebalance; a stopped one keeps them until the session timeout. Unset: "
        "dynamic membership (every start and stop rebalances).")
    broker_session_timeout: float = Field(
        30.0, ge=6, le=1800, description="Seconds without heartbeat before the group drops a worker."
    )
    broker_heartbeat_interval: float = Field(3.0, gt=0, description="Seconds between consumer heartbeats.")
    broker_commit_interval: float = Field(
        2.8, gt=0, description="Seconds between offset commits. A handler's partition that has handled everything "
        "fetched for it is also committed then (at most every 0.5 s), so what was handled before the traffic "
        "paused does not wait for this interval.")
    stream_buffer_maxsize: int = Field(
        4096, ge=1, description="Records a worker buffers per source topic before it stops fetching it.")
    consumer_max_fetch_size: int = Field(
        1024 * 1024, ge=1024, description="Bytes fetched per partition per request (the fetch buffer's size).")
    standby_replicas: int = Field(
        1, ge=0, le=10, description="Warm copies of each table partition kept on other workers of the group "
        "(Faust's table_standby_replicas), fed from the changelog like a restore: when a worker leaves, its "
        "partitions move to a worker holding such a copy and restore only the tail. 0: none.")
    warmup_before_join: bool = Field(
        True, description="`streams worker` brings its local copy of every table up to the changelogs' ends "
        "before it joins its group (streams.faust_compat.warmup), so a joining worker takes over partitions "
        "with their state already there instead of stopping them for a restore.")
    restore_path: Literal["batch", "events"] = Field(
        "batch", description="batch: table restores and standby replicas apply each fetch of a changelog "
        "partition as one RocksDB write batch (streams.faust_compat.restore); events: Faust's own path, one "
        "event per changelog record.")
    consume_path: Literal["batch", "events"] = Field(
        "batch", description="batch: handlers take each partition's fetches a batch at a time (streams.consume); "
        "events: one Faust agent per handler, one event at a time.")
    batch_max_records: int = Field(
        500, ge=1, le=100_000, description="Records of one partition handled, written and acknowledged together.")
    broker_max_poll_records: int | None = Field(
        None, ge=1, description="Records handed over per poll (unset: all fetched).")

    # --- transactional outbox and its relay --------------------------------
    outbox_table: str = Field("streams_outbox", pattern=r"^[a-z_][a-z0-9_]{0,50}$",
                              description="Outbox table name (public schema).")
    relay_mode: Literal["status", "pointer"] = Field(
        "status", description="status: mark rows done; pointer: record the last sent id.")
    relay_batch_size: int = Field(500, ge=1, le=100_000, description="Rows claimed per batch.")
    relay_poll_interval: float = Field(1.0, gt=0, description="Seconds between polls when no NOTIFY arrives.")
    relay_max_attempts: int = Field(10, ge=1, description="Publish attempts before a row is parked (failed).")
    relay_backoff_initial: float = Field(1.0, gt=0, description="First retry delay (s); doubles per attempt.")
    relay_backoff_max: float = Field(300.0, gt=0, description="Longest retry delay (s).")
    relay_publish_timeout: float = Field(
        15.0, gt=0, description="Seconds a batch may take to be handed to Kafka and acknowledged; rows not "
        "handed over by then stay pending as they were.")
    relay_stop_timeout: float = Field(
        10.0, gt=0, description="Seconds the relay takes at most to stop after SIGTERM: the batch in hand may "
        "finish until then, else it is abandoned (its rows stay pending).")
    relay_missing_topic_wait: float = Field(
        3600.0, gt=0, description="Seconds a row waits for its topic to exist before it is parked (the relay "
        "never creates topics).")
    relay_retention: float = Field(7 * 24 * 3600.0, gt=0, description="Seconds done rows are kept before purge.")
    relay_purge_batch: int = Field(5000, ge=1, description="Rows deleted per purge statement.")

    # ----------------------------------------------------------------------
    @field_validator("kafka_bootstrap")
    @classmethod
    def _check_bootstrap(cls, value: str | None) -> str | None:
        if value is None or not value.strip():
            return None
        servers = [s.strip() for s in value.removeprefix("kafka://").split(",") if s.strip()]
        bad = [s for s in servers if not _HOST_PORT.match(s)]
        if not servers or bad:
            raise ValueError(f"expected host:port[,host:port...], got {value!r}")
        for server in servers:
            port = int(server.rsplit(":", 1)[1])
            if not 1 <= port <= 65535:
                raise ValueError(f"port out of range in {server!r}")
        return ",".join(servers)

    @field_validator("group_instance_id", mode="before")
    @classmethod
    def _blank_instance_id(cls, value: Any) -> Any:
        return None if isinstance(value, str) and not value.strip() else value

    @field_validator("app_id")
    @classmethod
    def _check_app_id(cls, value: str) -> str:
        if not _APP_ID.match(value):
            raise ValueError(
                "must start with a letter or digit and use only letters, digits, '.', '_' and '-'"
            )
        return value

    @field_validator("topic_prefix")
    @classmethod
    def _check_topic_prefix(cls, value: str) -> str:
        if value and not re.match(r"^[A-Za-z0-9._\-]+$", value):
            raise ValueError("may use only letters, digits, '.', '_' and '-'")
        return value

    @field_validator("local_kafka_heap")
    @classmethod
    def _check_heap(cls, value: str) -> str:
        if not re.match(r"^\d+[kmgKMG]$", value):
            raise ValueError("expected a JVM size such as 512m or 1g")
        return value

    @field_validator("store")
    @classmethod
    def _check_store(cls, value: str) -> str:
        if not re.match(r"^(rocksdb|memory|aerospike)://", value):
            raise ValueError("expected rocksdb://, memory:// (tests only) or aerospike://")
        return value

    @field_validator("web_token")
    @classmethod
    def _check_web_token(cls, value: SecretStr | None) -> SecretStr | None:
        if value is None or not value.get_secret_value().strip():
            return None
        if len(value.get_secret_value()) < 8 or any(c.isspace() for c in value.get_secret_value()):
            raise ValueError("expected at least 8 characters without spaces")
        return value

    @field_validator("database_url")
    @classmethod
    def _check_database_url(cls, value: SecretStr | None) -> SecretStr | None:
        if value is None or not value.get_secret_value().strip():
            return None
        if not re.match(r"^(postgres(ql)?|mysql|mariadb)://", value.get_secret_value()):
            raise ValueError("expected a postgresql:// or mysql://user:password@host:port/database URL")
        return value

    @field_validator("rabbitmq_url")
    @classmethod
    def _check_rabbitmq_url(cls, value: SecretStr | None) -> SecretStr | None:
        if value is None or not value.get_secret_value().strip():
            return None
        if not re.match(r"^amqps?://", value.get_secret_value()):
            raise ValueError("expected an amqp://user:password@host:port/vhost URL")
        return value

    @field_validator("redis_url")
    @classmethod
    def _check_redis_url(cls, value: SecretStr | None) -> SecretStr | None:
        if value is None or not value.get_secret_value().strip():
            return None
        if not re.match(r"^rediss?://", value.get_secret_value()):
            raise ValueError("expected a redis://[:password@]host:port/db URL")
        return value

    @field_validator("broker_routes")
    @classmethod
    def _check_broker_routes(cls, value: str) -> str:
        from streams.broker_routes import parse_routes

        parse_routes(value)  # raises ValueError naming the bad part
        return value

    @model_validator(mode="after")
    def _check_security(self) -> "Settings":
        sasl = self.kafka_security_protocol in (SecurityProtocol.SASL_PLAINTEXT, SecurityProtocol.SASL_SSL)
        if sasl:
            missing = [
                name
                for name, val in (
                    ("STREAMS_KAFKA_SASL_MECHANISM", self.kafka_sasl_mechanism),
                    ("STREAMS_KAFKA_SASL_USERNAME", self.kafka_sasl_username),
                    ("STREAMS_KAFKA_SASL_PASSWORD", self.kafka_sasl_password),
                )
                if val is None
            ]
            if missing:
                raise ValueError(
                    f"kafka_security_protocol={self.kafka_security_protocol.value} needs " + ", ".join(missing)
                )
        for name in ("kafka_ssl_cafile", "kafka_ssl_certfile", "kafka_ssl_keyfile"):
            path = getattr(self, name)
            if path is not None and not Path(path).is_file():
                raise ValueError(f"{ENV_PREFIX}{name.upper()}: file not found: {path}")
        if self.local_kafka_port == self.local_kafka_controller_port:
            raise ValueError("local_kafka_port and local_kafka_controller_port must differ")
        return self

    # ----------------------------------------------------------------------
    @property
    def uses_local_kafka(self) -> bool:
        """True when no external cluster is configured and the project runs its own broker."""
        return self.kafka_bootstrap is None

    @property
    def local_kafka_nodes(self) -> int:
        """How many nodes the local cluster has (see ``local_kafka_brokers``)."""
        if self.local_kafka_brokers is not None:
            return self.local_kafka_brokers
        return recorded_cluster_size(self.home_path / "kafka") or 1

    @property
    def bootstrap_servers(self) -> str:
        """Bootstrap servers to connect to (the external cluster, or the local broker or cluster)."""
        if self.kafka_bootstrap:
            return self.kafka_bootstrap
        nodes = self.local_kafka_nodes
        return ",".join(f"127.0.0.1:{self.local_kafka_port + 2 * i}" for i in range(nodes))

    def replication(self, brokers: int) -> tuple[int, int]:
        """(replication factor, min.insync.replicas) for topics the app creates on a cluster of
        ``brokers``: the settings where set, else three replicas (at most the cluster size)
        with two in sync."""
        replication, min_isr = replication_defaults(brokers)
        if self.topic_replication_factor is not None:
            replication = self.topic_replication_factor
            min_isr = 2 if replication >= 3 else 1
        if self.topic_min_insync_replicas is not None:
            min_isr = self.topic_min_insync_replicas
        return replication, min(min_isr, replication)

    @property
    def uses_local_postgres(self) -> bool:
        """True when no external database is configured and the embedded one is used."""
        return self.database_url is None

    @property
    def database_dialect(self) -> Literal["postgresql", "mysql"]:
        """``mysql`` for a ``mysql://`` / ``mariadb://`` URL (MySQL 8, MariaDB), else ``postgresql``."""
        if self.database_url is not None and re.match(r"^(mysql|mariadb)://", self.database_url.get_secret_value()):
            return "mysql"
        return "postgresql"

    @property
    def dsn(self) -> str:
        """Connection string for psycopg (contains the password: never log it)."""
        if self.database_url is not None:
            return self.database_url.get_secret_value()
        return f"postgresql://postgres@127.0.0.1:{self.local_postgres_port}/{self.local_postgres_database}"

    @property
    def uses_local_sftp(self) -> bool:
        """True when no SFTP server is configured and the local sshd is used."""
        return self.sftp_host is None

    @property
    def uses_local_rabbitmq(self) -> bool:
        """True when no RabbitMQ URL is configured and the local node is used."""
        return self.rabbitmq_url is None

    @property
    def amqp_url(self) -> str:
        """URL of the RabbitMQ to use (may contain a password: never log it)."""
        if self.rabbitmq_url is not None:
            return self.rabbitmq_url.get_secret_value()
        return f"amqp://guest:guest@127.0.0.1:{self.local_rabbitmq_port}/"

    @property
    def uses_local_redis(self) -> bool:
        """True when no Redis URL is configured and the local server is used."""
        return self.redis_url is None

    @property
    def redis_connection_url(self) -> str:
        """URL of the Redis to use (may contain a password: never log it)."""
        if self.redis_url is not None:
            return self.redis_url.get_secret_value()
        return f"redis://127.0.0.1:{self.local_redis_port}/0"

    @property
    def home_path(self) -> Path:
        """Absolute project-local folder."""
        return self.home.expanduser().resolve()

    def kafka_client_kwargs(self) -> dict[str, Any]:
        """Connection and security options for aiokafka clients (producer, consumer, admin)."""
        kwargs: dict[str, Any] = {
            "bootstrap_servers": self.bootstrap_servers,
            "security_protocol": self.kafka_security_protocol.value,
            "client_id": self.kafka_client_id,
        }
        if self.kafka_security_protocol in (SecurityProtocol.SSL, SecurityProtocol.SASL_SSL):
            kwargs["ssl_context"] = self.ssl_context()
        if self.kafka_sasl_mechanism is not None:
            kwargs["sasl_mechanism"] = self.kafka_sasl_mechanism.value
            kwargs["sasl_plain_username"] = self.kafka_sasl_username
            kwargs["sasl_plain_password"] = (
                self.kafka_sasl_password.get_secret_value() if self.kafka_sasl_password else None
            )
        return kwargs

    def ssl_context(self):  # -> ssl.SSLContext
        """An SSL context built from the ``kafka_ssl_*`` settings."""
        from aiokafka.helpers import create_ssl_context

        return create_ssl_context(
            cafile=str(self.kafka_ssl_cafile) if self.kafka_ssl_cafile else None,
            certfile=str(self.kafka_ssl_certfile) if self.kafka_ssl_certfile else None,
            keyfile=str(self.kafka_ssl_keyfile) if self.kafka_ssl_keyfile else None,
            password=self.kafka_ssl_key_password.get_secret_value() if self.kafka_ssl_key_password else None,
        )

    def safe_dict(self) -> dict[str, Any]:
        """Settings as a dict fit for logs: secrets masked, URL passwords removed."""
        out: dict[str, Any] = {}
        for name, value in self.model_dump().items():
            if isinstance(value, SecretStr):
                value = "**********"
            elif isinstance(value, Path):
                value = str(value)
            elif isinstance(value, StrEnum):
                value = value.value
            out[name] = value
        for name in ("database_url", "rabbitmq_url", "redis_url"):
            secret = getattr(self, name)
            if secret is not None:
                out[name] = redact_url(secret.get_secret_value())
        return out


def redact_url(url: str) -> str:
    """Replace the password part of a URL with ``***``."""
    return re.sub(r"(://[^:/@]*):[^@/]*@", r"\1:***@", url)


def load_settings(**overrides: Any) -> Settings:
    """Build settings from the environment (and overrides), turning validation errors
    into one :class:`SettingsError` that names each ``STREAMS_*`` variable at fault."""
    try:
        return Settings(**overrides)
    except ValidationError as exc:
        raise SettingsError(describe_validation_error(exc)) from None


def describe_validation_error(exc: ValidationError) -> str:
    lines = ["invalid settings:"]
    for err in exc.errors():
        loc = [str(p) for p in err.get("loc", ())]
        where = f"{ENV_PREFIX}{loc[0].upper()}" if loc else "settings"
        given = err.get("input")
        shown = "" if loc and ("password" in loc[0] or loc[0] in ("database_url", "web_token", "rabbitmq_url",
                                                                       "redis_url")) else f" (got {given!r})"
        if isinstance(given, dict):
            shown = ""
        msg = err.get("msg", "invalid").removeprefix("Value error, ")
        lines.append(f"  {where}: {msg}{shown}")
    return "\n".join(lines)


def replication_defaults(brokers: int) -> tuple[int, int]:
    """(replication factor, min.insync.replicas) for a cluster of ``brokers``: three copies
    where there are three brokers, and acks=all writes need two of them in sync."""
    replication = max(1, min(3, brokers))
    return replication, (2 if replication >= 3 else 1)


def recorded_cluster_size(kafka_dir: Path) -> int | None:
    """The size ``streams dev kafka up --brokers N`` recorded in ``kafka_dir`` (None: none)."""
    import json

    try:
        return int(json.loads((kafka_dir / "cluster.json").read_text())["brokers"])
    except (OSError, ValueError, KeyError, TypeError):
        return None

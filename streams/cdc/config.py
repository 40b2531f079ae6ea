"""A CDC connector declared in a few lines, and the Debezium config the framework generates from it.

``streams cdc create --dry-run`` prints the generated config.

    name: shop-orders
    tables: [public.orders, public.order_lines]     # or: outbox: true
    publication: shop_orders_pub                      # default <name>_pub
    slot: shop_orders                                 # default <name> with '-' as '_'
    topic_prefix: cdc.shop                            # default cdc.<name>
    snapshot: initial                                 # initial | incremental | no_data | always | when_needed
    before_rows: full                                 # full (REPLICA IDENTITY FULL) | key
    key_columns:                                      # record key of a table without a primary key
      public.order_lines: [order_id, line_no]
"""

from __future__ import annotations

import re
from typing import Any, Literal
from urllib.parse import parse_qsl, unquote, urlsplit

from pydantic import BaseModel, Field, model_validator

POSTGRES_CONNECTOR = "io.debezium.connector.postgresql.PostgresConnector"
#: Debezium's binlog connectors: MariaDB's, and MySQL's (for MySQL 8 servers)
MARIADB_CONNECTOR = "io.debezium.connector.mariadb.MariaDbConnector"
MYSQL_CONNECTOR = "io.debezium.connector.mysql.MySqlConnector"


class CdcSpec(BaseModel):
    """What to capture and where it goes."""

    model_config = {"extra": "forbid"}

    name: str = Field(pattern=r"^[a-z][a-z0-9-]{0,40}$")
    tables: list[str] = Field(default_factory=list)
    outbox: bool = False
    outbox_table: str = "public.streams_outbox"
    publication: str | None = None
    slot: str | None = None
    topic_prefix: str | None = None
    #: "incremental": no snapshot at start; ``create`` signals Debezium to read the tables in
    #: chunks while it streams the log (resumable, and a crash before the first stored position
    #: re-reads the signal from the slot instead of starting over)
    snapshot: Literal["initial", "incremental", "no_data", "always", "when_needed"] | None = None
    partitions: int = Field(6, ge=1)
    #: "full": Debezium sets REPLICA IDENTITY FULL on the tables, so updates and deletes carry the
    #: whole old row; "key": only the primary key (the other columns of ``before`` are placeholders)
    before_rows: Literal["full", "key"] = "full"
    #: the columns whose values key a table's change events (Debezium's ``message.key.columns``):
    #: required for a table without a primary key, whose events would otherwise have no record key
    #: (copies of one change could land on different partitions, past a per-partition processed-ID
    #: table); choose columns that identify a row (a unique index)
    key_columns: dict[str, list[str]] = Field(default_factory=dict)

    @model_validator(mode="after")
    def _one_source(self) -> "CdcSpec":
        if bool(self.tables) == self.outbox:
            raise ValueError("give tables, or outbox: true (one of them)")
        for t in self.tables:
            if not re.fullmatch(r"[a-z_][a-z0-9_]*\.[a-z_][a-z0-9_]*", t):
                raise ValueError(f"table {t!r}: schema.table in lower case")
        for t, columns in self.key_columns.items():
            if t not in self.tables:
                raise ValueError(f"key_columns: {t!r} is not one of the captured tables")
            if not columns or not all(re.fullmatch(r"[a-z_][a-z0-9_]*", c) for c in columns):
                raise ValueError(f"key_columns of {t}: one or more column names in lower case")
        if self.outbox and self.snapshot == "incremental":
            raise ValueError("snapshot: incremental is for tables (the outbox is read from the log only)")
        return self

    @property
    def slot_name(self) -> str:
        return self.slot or self.name.replace("-", "_")

    @property
    def publication_name(self) -> str:
        return self.publication or f"{self.slot_name}_pub"

    @property
    def signal_table(self) -> str | None:
        """``schema.table`` of the connector's signal table (incremental snapshots), else None."""
        if self.snapshot != "incremental":
            return None
        return f"{self.tables[0].split('.')[0]}.{self.slot_name}_signal"

    @property
    def prefix(self) -> str:
        return self.topic_prefix or f"cdc.{self.name}"


def connector_config(spec: CdcSpec, dsn: str, replication_factor: int = 1,
                     partitions: int | None = None) -> dict[str, Any]:
    """Debezium PostgreSQL connector config (strings only, as Connect's REST API takes them).
    ``replication_factor`` -1 leaves it to the brokers' default."""
    url = urlsplit(dsn)
    options = dict(parse_qsl(url.query))
    config: dict[str, Any] = {
        "connector.class": POSTGRES_CONNECTOR,
        "tasks.max": "1",
        "database.hostname": url.hostname or "127.0.0.1",
        "database.port": str(url.port or 5432),
        "database.user": unquote(url.username or "") or "postgres",
        "database.password": unquote(url.password or ""),
        "database.dbname": (url.path or "/postgres").lstrip("/"),
        "plugin.name": "pgoutput",
        "slot.name": spec.slot_name,
        "publication.name": spec.publication_name,
        "publication.autocreate.mode": "filtered",
        "topic.prefix": spec.prefix,
        # the broker does not create topics by itself: Connect creates Debezium's with these
        "topic.creation.default.replication.factor": str(replication_factor),
        "topic.creation.default.partitions": str(partitions or spec.partitions),
        # the column value formats streams.cdc.values converts to the row model's field types:
        # numeric as decimal text (NaN as "NAN"), dates/times/timestamps as ISO 8601 text, intervals
        # as ISO text with their months (the numeric mode counts a month as 30.4375 days), bytea as base64
        "decimal.handling.mode": "string",
        "time.precision.mode": "isostring",
        "interval.handling.mode": "string",
        "binary.handling.mode": "bytes",
        "tombstones.on.delete": "true",
        # a heartbeat carries the position: the first one lets Connect store a position for a
        # connector whose tables are quiet (see CdcConnectors.create), later ones let the slot
        # release WAL written by other tables
        "heartbeat.interval.ms": "5000",
        # Debezium hands a batch to Connect when it is full or after this wait: its default (500 ms)
        # is the median commit → Kafka latency at 1,000 rows/s; 50 ms costs a few more, smaller batches
        "poll.interval.ms": "50",
        # the database went away (restart, failover): Connect restarts the task after this wait
        "retriable.restart.connector.wait.ms": "3000",
        "key.converter": "org.apache.kafka.connect.json.JsonConverter",
        "key.converter.schemas.enable": "false",
        "value.converter": "org.apache.kafka.connect.json.JsonConverter",
        "value.converter.schemas.enable": "false",
    }
    if options.get("sslmode"):
        config["database.sslmode"] = options["sslmode"]
    if spec.outbox:
        config.update({
            "table.include.list": spec.outbox_table,
            "snapshot.mode": spec.snapshot or "no_data",
            # rows written before the envelope trigger was installed (pending: the relay sends them)
            # come out of the router without a value: dropped here
            "transforms": "outbox,unhandedRows",
            "transforms.outbox.type": "io.debezium.transforms.outbox.EventRouter",
            "transforms.outbox.table.field.event.id": "message_id",
            "transforms.outbox.table.field.event.key": "key",
            "transforms.outbox.route.by.field": "topic",
            "transforms.outbox.route.topic.replacement": "${routedByValue}",
            # the value is the envelope column: the relay's bytes, sent as they are
            "transforms.outbox.table.field.event.payload": "envelope",
            "transforms.outbox.table.expand.json.payload": "false",
            # the writer's trace context (streams.tracing): a row written outside a trace has none,
            # and its record a traceparent header without a value (read as none)
            "transforms.outbox.table.fields.additional.placement":
                "message_id:header:message_id,message_type:header:message_type,kind:header:kind,"
                "traceparent:header:traceparent,tracestate:header:tracestate",
            "key.converter": "org.apache.kafka.connect.storage.StringConverter",
            "value.converter": "org.apache.kafka.connect.storage.StringConverter",
            "transforms.unhandedRows.type": "org.apache.kafka.connect.transforms.Filter",
            "transforms.unhandedRows.predicate": "noEnvelope",
            "predicates": "noEnvelope",
            "predicates.noEnvelope.type": "org.apache.kafka.connect.transforms.predicates.RecordIsTombstone",
            # the router takes inserts only: updates (relay bookkeeping) and deletes (purge) are not read
            "skipped.operations": "u,d,t",
        })
    else:
        config.update({"table.include.list": ",".join(spec.tables), "snapshot.mode": spec.snapshot or "initial"})
        if spec.signal_table:
            # Debezium reads signals from the log: the signal table is captured with the tables
            config.update({"snapshot.mode": "no_data", "signal.data.collection": spec.signal_table,
                           "signal.enabled.channels": "source",
                           "table.include.list": ",".join([*spec.tables, spec.signal_table])})
        if spec.before_rows == "full":
            config["replica.identity.autoset.values"] = ",".join(f"{t}:FULL" for t in spec.tables)
        if spec.key_columns:
            config["message.key.columns"] = ";".join(f"{t}:{','.join(c)}" for t, c in spec.key_columns.items())
    return config


def binlog_server_id(name: str) -> int:
    """The replica server id a binlog connector uses (stable per connector name; it must differ from
    the ids of the server and of its other replicas): 5,400,000 + a hash of the name."""
    import zlib

    return 5_400_000 + zlib.crc32(name.encode()) % 1_000_000


def binlog_connector_config(spec: CdcSpec, dsn: str, bootstrap: str, *, connector_class: str = MARIADB_CONNECTOR,
                            replication_factor: int = 1, partitions: int | None = None) -> dict[str, Any]:
    """Debezium's MariaDB / MySQL binlog connector config for a ``mysql://`` database (strings only).

    Tables are ``database.table`` (the URL's database). The connector records the tables'
    DDL in a schema history topic (``<prefix>.schema-history``, on ``bootstrap``); its
    position is the binlog file and position and the GTID set (see :mod:`streams.cdc.binlog`)."""
    from streams.mysql import connect_kwargs

    db = connect_kwargs(dsn)
    if spec.outbox:
        raise ValueError("the outbox through the binlog is not supported on MySQL yet: use the relay "
                         "(streams relay), or give tables")
    if spec.snapshot == "incremental":
        raise ValueError("snapshot mode 'incremental' (a signal table) is PostgreSQL-only here: on MySQL use "
                         "initial, when_needed, no_data or always")
    config: dict[str, Any] = {
        "connector.class": connector_class,
        "tasks.max": "1",
        "database.hostname": db["host"],
        "database.port": str(db["port"]),
        "database.user": db["user"],
        "database.password": db["password"],
        "database.server.id": str(binlog_server_id(spec.name)),
        "database.include.list": db.get("database", ""),
        "table.include.list": ",".join(spec.tables),
        "topic.prefix": spec.prefix,
        "schema.history.internal.kafka.bootstrap.servers": bootstrap,
        "schema.history.internal.kafka.topic": f"{spec.prefix}.schema-history",
        "include.schema.changes": "false",
        "snapshot.mode": spec.snapshot or "initial",
        "topic.creation.default.replication.factor": str(replication_factor),
        "topic.creation.default.partitions": str(partitions or spec.partitions),
        # the value formats streams.cdc.values converts: DECIMAL as text, binary as base64
        "decimal.handling.mode": "string",
        "binary.handling.mode": "bytes",
        "time.precision.mode": "isostring",
        "tombstones.on.delete": "true",
        "heartbeat.interval.ms": "5000",
        "poll.interval.ms": "50",
        "connect.timeout.ms": "10000",
        "retriable.restart.connector.wait.ms": "3000",
        "key.converter": "org.apache.kafka.connect.json.JsonConverter",
        "key.converter.schemas.enable": "false",
        "value.converter": "org.apache.kafka.connect.json.JsonConverter",
        "value.converter.schemas.enable": "false",
    }
    if spec.key_columns:
        config["message.key.columns"] = ";".join(f"{t}:{','.join(c)}" for t, c in spec.key_columns.items())
    return config

"""What ``streams cdc`` does: connectors on Kafka Connect plus their slots in PostgreSQL
(or, for a ``mysql://`` database, the binary log's positions: :mod:`streams.cdc.binlog`).

:class:`CdcConnectors` joins the two sides a CDC connector has — its config and tasks
on Connect, its replication slot and publication in the database — so that
creating one checks the database can do it, ``status`` shows both, and deleting
one leaves no slot holding WAL behind.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import quote, unquote, urlsplit, urlunsplit

import psycopg

from streams.cdc import binlog, signals
from streams.cdc import outbox as outbox_mode
from streams.cdc.config import (
    MARIADB_CONNECTOR,
    MYSQL_CONNECTOR,
    POSTGRES_CONNECTOR,
    CdcSpec,
    binlog_connector_config,
    connector_config,
)
from streams.cdc.connect_api import PAUSED, RUNNING, STOPPED, ConnectClient, ConnectError
from streams.cdc.slots import (
    SlotError,
    SlotInfo,
    check_logical_decoding,
    drop_publication,
    drop_slot,
    int_to_lsn,
    lsn_to_int,
    slot_info,
)
from streams.cdc.tables import check_keys, table_keys
from streams.errors import StreamsError
from streams.settings import Settings


class CdcError(StreamsError):
    """A CDC operation was refused or failed (says what to do)."""


@dataclass
class ConnectorStatus:
    """Both sides of one connector."""

    name: str
    state: str
    tasks: list[dict[str, Any]]
    slot_name: str | None
    publication: str | None
    topic_prefix: str | None
    tables: str | None
    outbox: bool
    snapshot_mode: str
    slot: SlotInfo | None
    #: Debezium's stored source positions (Connect's offsets)
    offsets: list[dict[str, Any]] = field(default_factory=list)
    #: a binlog connector's positions in MySQL's terms: ``stored`` (Connect's), ``server`` (the
    #: server's current end), ``stored_file_kept`` (the stored file is still on the server); else None
    binlog: dict[str, Any] | None = None

    def as_dict(self) -> dict[str, Any]:
        out = dict(self.__dict__)
        out["slot"] = self.slot.as_dict() if self.slot else None
        out["resume_lsn"] = resume_lsn(self.offsets)
        out["on_restart"] = self.on_restart
        out["incremental_snapshot"] = self.incremental_snapshot
        return out

    @property
    def incremental_snapshot(self) -> list[str]:
        """Tables an incremental snapshot is still reading (from the stored position), else []."""
        tables: list[str] = []
        for item in self.offsets:
            raw = (item.get("offset") or {}).get("incremental_snapshot_collections")
            try:
                entries = json.loads(raw) if isinstance(raw, str) else (raw or [])
            except ValueError:
                entries = [raw]
            for entry in entries:
                name = entry.get("incremental_snapshot_collections_id") if isinstance(entry, dict) else entry
                if name:
                    tables.append(str(name))
        return tables

    @property
    def on_restart(self) -> str:
        """What a restarted connector does: ``resume`` from its stored position, take a
        ``snapshot`` (mode ``always``, or no position after the snapshot stored yet), or
        read the log from its ``slot``'s confirmed position (``no_data`` without a position)."""
        if self.snapshot_mode == "always":
            return "snapshot"
        if resume_lsn(self.offsets) is not None or (self.binlog is not None and self.binlog.get("stored")):
            return "resume"
        return "snapshot" if starts_over_without_position({"snapshot.mode": self.snapshot_mode}) else "slot"


@dataclass
class Created:
    """What ``create`` did: the config used, and the stored position it waited for."""

    config: dict[str, str]
    #: the LSN a restarted connector streams from; None if Connect had not stored one in time
    resume_lsn: int | None
    #: seconds spent waiting for it
    waited: float
    #: what the checks of the captured tables found worth saying (see :func:`streams.cdc.tables.check_keys`)
    warnings: list[str] = field(default_factory=list)
    #: a binlog connector's stored position (file, pos, gtids) a restart resumes from; None if none in time
    resume_binlog: dict[str, Any] | None = None


def resume_lsn(offsets: list[dict[str, Any]]) -> int | None:
    """The LSN a restarted connector streams from, or None when it would start over.

    Debezium starts over — takes its snapshot again and then reads the log from where
    that snapshot ends — when Connect has stored no position for it, or only one inside
    an unfinished snapshot. Changes committed between the first start and the new
    snapshot then reach consumers only as the rows' new state (a row deleted meanwhile
    gets no delete event). Once a position after the snapshot is stored, a crash only
    re-sends changes."""
    for item in offsets:
        offset = item.get("offset") or {}
        if offset.get("snapshot") not in (None, False, "false", "FALSE") and not offset.get("last_snapshot_record"):
            continue  # inside the snapshot: a restart takes it again
        lsn = offset.get("lsn_proc") or offset.get("lsn")
        if isinstance(lsn, int):
            return lsn
    return None


def starts_over_without_position(config: dict[str, str]) -> bool:
    """Whether the connector takes its snapshot again when restarted with no stored position
    (``initial``, ``when_needed``). ``no_data`` then reads the log from its slot's confirmed
    position (re-sending, never skipping); ``always`` takes a snapshot at every start."""
    return config.get("snapshot.mode", "initial") in ("initial", "when_needed")


def redact(config: dict[str, str]) -> dict[str, str]:
    """The config with passwords hidden (for printing)."""
    return {k: ("********" if "password" in k and v else v) for k, v in config.items()}


def connector_dsn(settings: Settings, config: dict[str, str]) -> str:
    """The database a connector reads, from its config; the framework's credentials are used
    when it is the framework's own server and the config holds no password."""
    own = urlsplit(settings.dsn)
    host, port = config.get("database.hostname", "127.0.0.1"), config.get("database.port", "5432")
    user = config.get("database.user") or unquote(own.username or "") or "postgres"
    password = config.get("database.password") or ""
    if not password and (own.hostname, str(own.port or 5432)) == (host, port) and unquote(own.username or "") == user:
        password = unquote(own.password or "")
    auth = quote(user, safe="") + (":" + quote(password, safe="") if password else "")
    query = f"sslmode={config['database.sslmode']}" if config.get("database.sslmode") else ""
    return urlunsplit(("postgresql", f"{auth}@{host}:{port}", "/" + config.get("database.dbname", "postgres"), query, ""))


class CdcConnectors:
    """Create, inspect, pause, resume, restart and delete CDC connectors."""

    def __init__(self, settings: Settings, client: ConnectClient | None = None) -> None:
        self.settings = settings
        self.client = client or ConnectClient(connect_url(settings))

    # --- building -----------------------------------------------------------------
    def resolve(self, spec: CdcSpec) -> CdcSpec:
        """The spec with the app's defaults filled in (topic prefix, outbox table)."""
        update: dict[str, Any] = {}
        if spec.topic_prefix is None:
            update["topic_prefix"] = f"{self.settings.topic_prefix}cdc.{spec.name}"
        if spec.outbox and "outbox_table" not in spec.model_fields_set:
            update["outbox_table"] = f"public.{self.settings.outbox_table}"
        return spec.model_copy(update=update) if update else spec

    def config(self, spec: CdcSpec, database: str | None = None) -> dict[str, str]:
        """The Debezium config the framework generates for ``spec``."""
        replication = self.settings.topic_replication_factor or -1  # -1: the brokers' default
        dsn = database or self.settings.dsn
        if is_mysql_url(dsn):
            try:
                return binlog_connector_config(
                    self.resolve(spec), dsn, self.settings.bootstrap_servers,
                    connector_class=binlog_connector_class(dsn), replication_factor=replication,
                    partitions=self.settings.topic_partitions if "partitions" not in spec.model_fields_set
                    else spec.partitions)
            except ValueError as exc:
                raise CdcError(f"cannot capture {_redacted(dsn)}: {exc}") from None
        return connector_config(self.resolve(spec), database or self.settings.dsn, replication_factor=replication,
                                partitions=self.settings.topic_partitions if "partitions" not in spec.model_fields_set
                                else spec.partitions)

    # --- create -----------------------------------------------------------------------
    def create(self, spec: CdcSpec, *, database: str | None = None, reuse_slot: bool = False,
               timeout: float = 90.0, position_timeout: float = 120.0) -> Created:
        """Check the database, create the connector, wait until it streams; for an outbox
        connector, then hand new outbox rows to the log. Then wait up to ``position_timeout``
        seconds until Connect has stored a position after the snapshot (see :func:`resume_lsn`:
        before that, a crash of Connect makes the connector start over). It takes the
        snapshot, then Debezium's next heartbeat or change, then Connect's next offset flush
        (``offset.flush.interval.ms``, 60 s by default). Only for snapshot modes that start
        over (:func:`starts_over_without_position`); a ``no_data`` connector (the outbox's)
        restarted without a position reads from its slot, and is not waited for.

        An existing replication slot of that name is refused (another connector, running or
        stopped, may own it and would lose its changes) unless ``reuse_slot``: a connector
        deleted with ``keep_slot`` and created again resumes from it."""
        spec = self.resolve(spec)
        config = self.config(spec, database)
        dsn = database or self.settings.dsn
        if is_mysql_url(dsn):
            return self._create_binlog(spec, config, dsn, timeout, position_timeout)
        warnings: list[str] = []
        try:
            with psycopg.connect(dsn, autocommit=True, connect_timeout=10) as conn:
                check_logical_decoding(conn)
                refusals, warnings = check_keys(spec, {t: table_keys(conn, t) for t in spec.tables})
                if refusals:
                    raise CdcError("\n".join(refusals))
                if spec.outbox:
                    from streams.outbox.schema import migrate

                    migrate(conn, _table_name(spec.outbox_table))
                if spec.signal_table:
                    signals.ensure_signal_table(conn, spec.signal_table)
                existing = slot_info(conn, spec.slot_name)
                if existing is not None and existing.active:
                    raise CdcError(f"replication slot {spec.slot_name!r} is in use by process {existing.active_pid}: "
                                   "another connector reads it; choose another slot name")
                if existing is not None and not reuse_slot:
                    kept = _size(existing.retained_bytes)
                    raise CdcError(f"replication slot {spec.slot_name!r} already exists (inactive, {kept} of WAL kept): "
                                   "a stopped connector may own it. To resume from it, pass --reuse-slot; "
                                   f"to discard it: SELECT pg_drop_replication_slot('{spec.slot_name}')")
        except psycopg.OperationalError as exc:
            raise CdcError(f"PostgreSQL at {_redacted(dsn)} does not answer: {str(exc).strip()}") from None
        except psycopg.Error as exc:
            raise CdcError(f"PostgreSQL refused the preparation: {str(exc).strip()}") from None
        except SlotError as exc:
            raise CdcError(str(exc)) from None
        if POSTGRES_CONNECTOR not in self.client.plugins():
            raise CdcError(f"Kafka Connect at {self.client.url} has no {POSTGRES_CONNECTOR} plugin")
        deadline = time.monotonic() + timeout
        while True:
            try:
                self.client.create(spec.name, config)
                break
            except ConnectError as exc:
                if exc.status != 409:
                    raise
                if self.client.exists(spec.name):
                    raise CdcError(f"a connector named {spec.name!r} already exists (streams cdc status {spec.name})") from None
                if time.monotonic() > deadline:  # 409 also means "the workers are rebalancing"
                    raise
                time.sleep(1)
        self.client.wait_for(spec.name, RUNNING, timeout)
        if spec.outbox or spec.signal_table:
            with psycopg.connect(dsn, autocommit=True) as conn:
                self._wait_for_slot(conn, spec.slot_name, timeout)  # from here on, the connector sees every commit
                if spec.outbox:
                    outbox_mode.enable(conn, _table_name(spec.outbox_table))
                if spec.signal_table:
                    signals.request_incremental_snapshot(conn, spec.signal_table, spec.tables)
        started = time.monotonic()
        wait = position_timeout > 0 and starts_over_without_position(config)
        lsn = self.wait_for_position(spec.name, position_timeout) if wait else None
        return Created(config, lsn, time.monotonic() - started, warnings)

    def _create_binlog(self, spec: CdcSpec, config: dict[str, str], dsn: str, timeout: float,
                       position_timeout: float) -> Created:
        """:meth:`create` for a MySQL / MariaDB database: the binlog and the user's privileges are
        checked first (each problem said, with the GRANT to run), and keyless tables need key columns."""
        from streams import mysql

        try:
            conn = mysql.connect(dsn, connect_timeout=10)
        except mysql.connection_errors() as exc:
            raise CdcError(f"MySQL at {_redacted(dsn)} does not answer: {exc}") from None
        try:
            problems = binlog.check_binlog(conn)
            missing = binlog.missing_privileges(conn)
            keys = binlog.table_primary_keys(conn, spec.tables)
        finally:
            conn.close()
        if missing:
            user = config["database.user"]
            problems.append(f"the user {user!r} lacks {', '.join(missing)}, which Debezium's binlog connector needs: "
                            f"GRANT {', '.join(binlog.REQUIRED_PRIVILEGES)} ON *.* TO '{user}'@'<its host>'")
        for table, columns in keys.items():
            if columns == [] and table not in spec.key_columns:
                problems.append(f"table {table} has no primary key: its change events would have no record key, so "
                                f"copies of one change could land on different partitions and be handled twice. "
                                f"Declare the columns that identify a row: --key-columns {table}:<column>[,...]")
        if problems:
            raise CdcError("cannot capture this database:\n  " + "\n  ".join(problems))
        if config["connector.class"] not in self.client.plugins():
            raise CdcError(f"Kafka Connect at {self.client.url} has no {config['connector.class']} plugin")
        self._create_on_connect(spec.name, config, timeout)
        started = time.monotonic()
        position = None
        if position_timeout > 0 and starts_over_without_position(config):
            deadline = started + position_timeout
            while (position := binlog.stored_position(self.client.offsets(spec.name))) is None:
                if time.monotonic() >= deadline:
                    break
                self.client.wait_for(spec.name, RUNNING, 30)  # raises with the trace if the task failed
                time.sleep(0.5)
        return Created(config, None, time.monotonic() - started, [], position)

    def _create_on_connect(self, name: str, config: dict[str, str], timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while True:
            try:
                self.client.create(name, config)
                break
            except ConnectError as exc:
                if exc.status != 409:
                    raise
                if self.client.exists(name):
                    raise CdcError(f"a connector named {name!r} already exists (streams cdc status {name})") from None
                if time.monotonic() > deadline:  # 409 also means "the workers are rebalancing"
                    raise
                time.sleep(1)
        self.client.wait_for(name, RUNNING, timeout)

    def wait_for_position(self, name: str, timeout: float) -> int | None:
        """Until Connect has stored a position the connector resumes from (its LSN), or None
        after ``timeout`` seconds; a failed task ends the wait with its error."""
        deadline = time.monotonic() + timeout
        while True:
            lsn = resume_lsn(self.client.offsets(name))
            if lsn is not None or time.monotonic() >= deadline:
                return lsn
            self.client.wait_for(name, RUNNING, 30)  # raises with the trace if the task failed
            time.sleep(0.5)

    @staticmethod
    def _wait_for_slot(conn: psycopg.Connection, slot: str, timeout: float) -> None:
        """Until the connector reads its slot: from then on every commit is captured."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            info = slot_info(conn, slot)
            if info is not None and info.active:
                return
            time.sleep(0.2)
        raise CdcError(f"the connector did not open replication slot {slot!r} within {timeout:.0f}s")

    # --- inspect --------------------------------------------------------------------------
    def status(self, name: str) -> ConnectorStatus:
        """Connector and task state, slot lag, stored positions."""
        st = self.client.status(name)
        config = self.client.config(name)
        if config.get("connector.class") in (MARIADB_CONNECTOR, MYSQL_CONNECTOR):
            return self._binlog_status(name, st, config)
        slot_name = config.get("slot.name", "debezium")
        slot = None
        outbox = "outbox" in (config.get("transforms") or "").split(",")
        try:
            with psycopg.connect(connector_dsn(self.settings, config), autocommit=True, connect_timeout=10) as conn:
                slot = slot_info(conn, slot_name)
                if outbox:
                    outbox = outbox_mode.enabled(conn, _table_name(config.get("table.include.list", "")))
        except psycopg.OperationalError:
            slot = None
        offsets = []
        for item in self.client.offsets(name):
            offset = dict(item.get("offset") or {})
            for k in ("lsn", "lsn_commit", "lsn_proc"):
                if isinstance(offset.get(k), int):
                    offset[k + "_text"] = int_to_lsn(offset[k])
            offsets.append({"partition": item.get("partition"), "offset": offset})
        return ConnectorStatus(
            name=name, state=st["connector"]["state"],
            tasks=[{"id": t["id"], "state": t["state"], "worker": t.get("worker_id"),
                    "error": (t.get("trace") or "").strip().splitlines()[0] if t.get("trace") else None}
                   for t in st.get("tasks", [])],
            slot_name=slot_name, publication=config.get("publication.name"), topic_prefix=config.get("topic.prefix"),
            tables=config.get("table.include.list"), outbox=outbox, snapshot_mode=config.get("snapshot.mode", "initial"),
            slot=slot, offsets=offsets)

    def _binlog_status(self, name: str, st: dict[str, Any], config: dict[str, str]) -> ConnectorStatus:
        from streams import mysql

        offsets = [{"partition": item.get("partition"), "offset": dict(item.get("offset") or {})}
                   for item in self.client.offsets(name)]
        stored = binlog.stored_position(offsets)
        info: dict[str, Any] = {"stored": stored, "server": None, "stored_file_kept": None}
        try:
            conn = mysql.connect(binlog_dsn(self.settings, config), connect_timeout=10)
            try:
                server = binlog.server_position(conn)
                info["server"] = server.as_dict()
                if stored:
                    info["stored_file_kept"] = stored["file"] in binlog.binary_logs(conn)
                    if stored["file"] == server.file and server.pos is not None:
                        info["bytes_behind"] = server.pos - int(stored["pos"])
            finally:
                conn.close()
        except mysql.connection_errors():
            pass
        return ConnectorStatus(
            name=name, state=st["connector"]["state"],
            tasks=[{"id": t["id"], "state": t["state"], "worker": t.get("worker_id"),
                    "error": (t.get("trace") or "").strip().splitlines()[0] if t.get("trace") else None}
                   for t in st.get("tasks", [])],
            slot_name=None, publication=None, topic_prefix=config.get("topic.prefix"),
            tables=config.get("table.include.list"), outbox=False, snapshot_mode=config.get("snapshot.mode", "initial"),
            slot=None, offsets=offsets, binlog=info)

    def names(self) -> list[str]:
        return self.client.connectors()

    # --- lifecycle ----------------------------------------------------------------------------
    def pause(self, name: str, timeout: float = 60.0) -> None:
        self.client.pause(name)
        self.client.wait_for(name, PAUSED, timeout)

    def resume(self, name: str, timeout: float = 90.0) -> None:
        self.client.resume(name)
        self.client.wait_for(name, RUNNING, timeout)

    def stop(self, name: str, timeout: float = 60.0) -> None:
        self.client.stop(name)
        self.client.wait_for(name, STOPPED, timeout)

    def restart(self, name: str, *, only_failed: bool = False, timeout: float = 90.0) -> None:
        self.client.restart(name, only_failed=only_failed)
        self.client.wait_for(name, RUNNING, timeout)

    def delete(self, name: str, *, keep_slot: bool = False, drain_timeout: float = 60.0,
               requeue_seconds: float = 300.0) -> dict[str, Any]:
        """Delete the connector with its stored position, then its slot and publication
        (unless ``keep_slot``: then a connector created again under this name resumes).

        An outbox connector first stops handing rows to the log (new rows are pending
        again, for the relay) and waits up to ``drain_timeout`` for the slot to confirm
        the log up to that point. If it does not, the rows handed to the log in the last
        ``requeue_seconds`` are made pending again: the relay sends them, and consumers
        drop those the connector had already sent (same message_id). See :meth:`_drain`."""
        config = self.client.config(name)
        if config.get("connector.class") in (MARIADB_CONNECTOR, MYSQL_CONNECTOR):
            # no slot: the server keeps its binlog by its own expiry; a later connector of the same name must
            # not resume from this one's position
            self.client.stop(name)
            self.client.wait_for(name, STOPPED, 60)
            self.client.reset_offsets(name)
            self.client.delete(name)
            return {"connector": name, "schema_history_topic": config.get("schema.history.internal.kafka.topic")}
        dsn = connector_dsn(self.settings, config)
        slot = config.get("slot.name", "debezium")
        publication = config.get("publication.name")
        is_outbox = "outbox" in (config.get("transforms") or "").split(",")
        report: dict[str, Any] = {"connector": name, "slot": slot, "publication": publication}
        try:
            conn = psycopg.connect(dsn, autocommit=True, connect_timeout=10)
        except psycopg.OperationalError as exc:
            raise CdcError(f"PostgreSQL at {_redacted(dsn)} does not answer: {str(exc).strip()}; nothing was deleted "
                           "(the slot must be dropped with the connector, or it keeps WAL forever)") from None
        with conn:
            if is_outbox:
                table = _table_name(config.get("table.include.list", ""))
                report.update(self._drain(conn, name, config, table, drain_timeout, requeue_seconds))
            if not keep_slot:
                # a later connector of the same name must not resume from this one's position
                self.client.stop(name)
                self.client.wait_for(name, STOPPED, 60)
                self.client.reset_offsets(name)
            self.client.delete(name)
            if keep_slot:
                report["slot_dropped"] = False
                return report
            try:
                report["slot_dropped"] = drop_slot(conn, slot)
            except SlotError as exc:
                raise CdcError(f"connector {name} deleted, but: {exc}") from None
            report["publication_dropped"] = drop_publication(conn, publication) if publication else False
            if config.get("signal.data.collection"):
                report["signal_table_dropped"] = signals.drop_signal_table(conn, config["signal.data.collection"])
        return report

    def _drain(self, conn: psycopg.Connection, name: str, config: dict[str, str], table: str, timeout: float,
               requeue_seconds: float) -> dict[str, Any]:
        """Stop handing outbox rows to the log, and make sure the connector has sent all it was handed.

        One transaction drops the trigger — which waits until every transaction that wrote a
        row with it has committed — and then writes a marker row (with its envelope, to the
        connector's heartbeat topic, which no consumer reads). Every row handed to the log
        commits before the marker; every later row is pending, for the relay. The connector
        processes commits in order and stores a position only for records Kafka acknowledged,
        so once its stored LSN is past the point where the marker was written, all of them are
        on Kafka. If it does not get there in ``timeout`` seconds (it is failing or stopped),
        the rows handed to the log in the last ``requeue_seconds`` become pending again: a
        status-mode relay resends them and consumers drop the copies."""
        from psycopg import sql

        from streams.messages.envelope import event

        marker = event("streams.cdc.Drained", {"connector": name}, key=name)
        try:
            with conn.transaction():
                conn.execute("SET LOCAL lock_timeout = '30s'")
                outbox_mode.disable(conn, table)
                row = conn.execute("SELECT pg_current_wal_insert_lsn()::text").fetchone()
                before = lsn_to_int(row[0]) if row else 0
                conn.execute(sql.SQL(
                    "INSERT INTO {} (message_id, message_type, kind, topic, key, payload, envelope, status, processed_at) "
                    "VALUES (%s, %s, 'event', %s, %s, %s, %s, 'done', clock_timestamp())").format(sql.Identifier(table)),
                    (marker.message_id, marker.message_type, f"__debezium-heartbeat.{config.get('topic.prefix')}",
                     name, json.dumps(marker.payload), marker.to_json().decode()))
        except psycopg.errors.LockNotAvailable:
            raise CdcError(f"the outbox table {table!r} stayed locked for 30 s (a long transaction?): nothing changed; "
                           "run the delete again") from None
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            positions = [max(int(o.get("offset", {}).get("lsn") or 0), int(o.get("offset", {}).get("lsn_commit") or 0))
                         for o in self.client.offsets(name)]
            if positions and max(positions) > before:
                return {"drained": True, "requeued": 0}
            time.sleep(0.5)
        cur = conn.execute(sql.SQL(
            "UPDATE {} SET status = 'pending', processed_at = NULL WHERE status = 'done' AND envelope IS NOT NULL "
            "AND message_type <> %s AND processed_at > now() - make_interval(secs => %s)").format(sql.Identifier(table)),
            (marker.message_type, requeue_seconds))
        return {"drained": False, "requeued": cur.rowcount}

    # --- offsets ------------------------------------------------------------------------------
    def offsets(self, name: str) -> list[dict[str, Any]]:
        return self.client.offsets(name)

    def reset_binlog_offsets(self, name: str, *, to_position: tuple[str, int] | None = None,
                             to_gtid: str | None = None, apply: bool = True) -> tuple[list[dict[str, Any]],
                                                                                     list[dict[str, Any]]]:
        """Move a STOPPED binlog connector's stored position; returns the offsets (before, after).
        ``apply=False`` only plans (any state).

        ``to_position``: a binlog file and byte position (the start of an event; the GTID set
        is dropped, so the connector reads from there by file and position). ``to_gtid``: resume
        after the transactions of a GTID set. Debezium's MariaDB connector positions its
        binlog client by the stored file and position as well as the set, so on MariaDB the
        file and position are moved with it, to where the first transaction after the set
        begins (:func:`streams.cdc.binlog.mariadb_gtid_start`); both names then agree."""
        from streams import mysql

        state, _ = self.client.state(name)
        if apply and state != STOPPED:
            raise CdcError(f"connector {name} is {state}; offsets change only on a stopped connector: "
                           f"streams cdc stop {name}")
        before = self.client.offsets(name)
        if not before:
            raise CdcError(f"connector {name} has no stored position to move")
        config = self.client.config(name)
        target: tuple[str, int] | None = to_position
        gtids = to_gtid
        mariadb = config.get("connector.class") == MARIADB_CONNECTOR
        conn = mysql.connect(binlog_dsn(self.settings, config), connect_timeout=10)
        try:
            logs = binlog.binary_logs(conn)
            if to_position is not None and to_position[0] not in logs:
                raise CdcError(f"the server has no binlog file {to_position[0]!r} (it has {', '.join(logs)})")
            try:
                if mariadb and to_position is not None and to_gtid is None:
                    gtids = binlog.mariadb_gtids_at(conn, *to_position)
                elif mariadb and to_gtid is not None and to_position is None:
                    start = binlog.mariadb_gtid_start(conn, to_gtid)
                    assert start.file is not None and start.pos is not None
                    target = (start.file, start.pos)
            except ValueError as exc:
                raise CdcError(str(exc)) from None
        finally:
            conn.close()
        moved = []
        for item in before:
            offset = {k: v for k, v in (item.get("offset") or {}).items()
                      if k not in ("snapshot", "snapshot_completed", "event", "row")}
            if target is not None:
                offset.update({"file": target[0], "pos": target[1]})
            if gtids is not None:
                offset["gtids"] = gtids
            elif to_position is not None:
                offset.pop("gtids", None)
            moved.append({"partition": item["partition"], "offset": offset})
        if apply:
            self.client.alter_offsets(name, moved)
        return before, moved

    def reset_offsets(self, name: str, *, to_lsn: int | None = None) -> list[dict[str, Any]]:
        """Forget (or with ``to_lsn`` move) the stored position of a STOPPED connector.

        Forgotten: on resume the connector starts as a new one — a snapshot if its
        snapshot mode takes one, then the log from the slot's confirmed position. The slot
        cannot go back: a position before its ``confirmed_flush_lsn`` is read from there."""
        state, _ = self.client.state(name)
        if state != STOPPED:
            raise CdcError(f"connector {name} is {state}; offsets change only on a stopped connector: "
                           f"streams cdc stop {name}")
        before = self.client.offsets(name)
        if to_lsn is None:
            self.client.reset_offsets(name)
        else:
            if not before:
                raise CdcError(f"connector {name} has no stored position to move")
            moved = []
            for item in before:
                offset = {**item["offset"], "lsn": to_lsn, "lsn_proc": to_lsn, "lsn_commit": to_lsn}
                offset.pop("txId", None)
                moved.append({"partition": item["partition"], "offset": offset})
            self.client.alter_offsets(name, moved)
        return before


def is_mysql_url(dsn: str) -> bool:
    from streams.mysql import is_mysql_url as check

    return check(dsn)


def binlog_connector_class(dsn: str) -> str:
    """Debezium's MariaDB connector for a MariaDB server, its MySQL connector for MySQL (MariaDB's
    when the server cannot be asked)."""
    from streams import mysql

    try:
        conn = mysql.connect(dsn, connect_timeout=5)
    except mysql.connection_errors():
        return MARIADB_CONNECTOR
    try:
        return MARIADB_CONNECTOR if binlog.is_mariadb(conn) else MYSQL_CONNECTOR
    finally:
        conn.close()


def binlog_dsn(settings: Settings, config: dict[str, str]) -> str:
    """The ``mysql://`` URL of the database a binlog connector reads, from its config."""
    auth = quote(config.get("database.user", "root"), safe="")
    if config.get("database.password"):
        auth += ":" + quote(config["database.password"], safe="")
    database = config.get("database.include.list", "").split(",")[0]
    return f"mysql://{auth}@{config.get('database.hostname', '127.0.0.1')}:{config.get('database.port', '3306')}/{database}"


def connect_url(settings: Settings) -> str:
    """The Connect REST URL: STREAMS_CONNECT_URL, else the local worker's."""
    return settings.connect_url or f"http://127.0.0.1:{settings.local_connect_port}"


def _table_name(qualified: str) -> str:
    """``public.streams_outbox`` → ``streams_outbox`` (the outbox lives in the search path)."""
    return qualified.split(",")[0].rpartition(".")[2]


def _size(n: int | None) -> str:
    return "?" if n is None else f"{n / 1024 / 1024:,.1f} MiB"


def _redacted(dsn: str) -> str:
    from streams.settings import redact_url

    return redact_url(dsn)


__all__ = ["CdcConnectors", "CdcError", "ConnectError", "ConnectorStatus", "SlotError", "connect_url", "redact"]

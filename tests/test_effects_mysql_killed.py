"""Exactly-once effects on MariaDB with workers killed -9: orders written through the MariaDB
outbox, one relay, two workers of ``tests.apps.mysql_effects_app`` (its handler writes one row per
call into ``pushes`` inside ``delivery.transaction()``), a worker SIGKILLed every few seconds and
started again, under ``exactly_once``. Every committed order must be pushed, and not one push may
repeat."""

from __future__ import annotations

import random
import threading
import time

import pytest

from streams import mysql
from streams.kafka.admin import TopicSpec, ensure_topics
from streams.messages.envelope import Envelope
from streams.outbox.mysql_schema import migrate
from streams.outbox.writer import write_message
from tests.apps.mysql_effects_app import ORDERS_SCHEMA, SCHEMA, OrderPlaced, registry
from tests.helpers import run, wait_for
from tests.mysql_helpers import isql
from tests.outbox_helpers import relay_process

# exactly_once: a killed worker's open Kafka transaction aborts (outputs, offsets and its RocksDB processed ids
# with it) while the effects it committed in MariaDB stay: the redeliveries only the effects table can catch
APP = {"STREAMS_WORKER_APP": "tests.apps.mysql_effects_app:app", "STREAMS_PROCESSING_GUARANTEE": "exactly_once"}
KILLS = 5


class OrderService(threading.Thread):
    """Places orders (a row and its event in one MariaDB transaction; one in 20 declined) until stopped."""

    def __init__(self, dsn: str, topic: str, table: str) -> None:
        super().__init__(daemon=True)
        self.dsn, self.topic, self.table = dsn, topic, table
        self.rng = random.Random(26)
        self.committed: dict[str, str] = {}
        self.declined: set[str] = set()
        self.halt = threading.Event()
        self.error: BaseException | None = None

    def run(self) -> None:
        try:
            conn = mysql.connect(self.dsn, autocommit=False)
            i = 0
            while not self.halt.is_set():
                order_id = f"o-{i}"
                envelope: Envelope = registry.envelope(OrderPlaced(order_id=order_id, amount=i), key=order_id)
                with conn.cursor() as cur:
                    cur.execute("INSERT INTO orders VALUES (%s, %s)", (order_id, i))
                write_message(conn, envelope, topic=self.topic, table=self.table)
                if self.rng.random() < 0.05:
                    conn.rollback()
                    self.declined.add(order_id)
                else:
                    conn.commit()
                    self.committed[order_id] = envelope.message_id
                i += 1
                time.sleep(0.004)
            conn.close()
        except BaseException as exc:  # noqa: BLE001 - reported by the test
            self.error = exc


@pytest.mark.timeout(400)
def test_workers_killed_on_mariadb_never_repeat_an_effect(isolated_mysql):
    iso = isolated_mysql
    rng = random.Random(7)
    topic = iso.topic("mysql.orders")
    conn = mysql.connect(iso.settings.dsn)
    migrate(conn, iso.settings.outbox_table)
    conn.close()
    isql(iso, SCHEMA)
    isql(iso, ORDERS_SCHEMA)
    run(ensure_topics(iso.settings, [TopicSpec(topic, 6), TopicSpec(topic + ".dlq", 6)]))
    relay = relay_process(iso, "relay", STREAMS_RELAY_POLL_INTERVAL="0.2", **APP).start()
    workers = {label: iso.worker(label, **APP).start() for label in ("worker-a", "worker-b")}
    for w in workers.values():
        w.wait_ready()
    writer = OrderService(iso.settings.dsn, topic, iso.settings.outbox_table)
    writer.start()
    kills = []
    for _ in range(KILLS):
        time.sleep(rng.uniform(2, 4))
        victim = rng.choice(sorted(workers))
        workers[victim].kill()  # SIGKILL: its open effect transactions roll back, its offsets stay behind
        kills.append((victim, len(writer.committed), int(isql(iso, "SELECT count(*) FROM pushes")[0][0])))
        workers[victim].start()
    writer.halt.set()
    writer.join(30)
    assert writer.error is None, writer.error
    committed = writer.committed

    def pushed() -> set[str]:
        return {r[0] for r in isql(iso, "SELECT DISTINCT order_id FROM pushes")}

    wait_for(lambda: set(committed) <= pushed(), 240, interval=1,
             what=f"all {len(committed)} committed orders pushed")
    rows, distinct = isql(iso, "SELECT count(*), count(DISTINCT message_id) FROM pushes")[0]
    skipped = int(isql(iso, "SELECT count(*) FROM streams_processed_messages")[0][0])
    summary = (f"[mariadb effects] {len(committed)} committed orders ({len(writer.declined)} declined), "
               f"{KILLS} worker SIGKILLs (victim, orders written, pushes) {kills}: {rows} pushes, "
               f"{distinct} distinct, {rows - distinct} repeated; processed rows {skipped}")
    print("\n" + summary)
    assert rows == distinct == len(committed), summary
    assert {r[0] for r in isql(iso, "SELECT DISTINCT message_id FROM pushes")} == set(committed.values())
    assert not (writer.declined & pushed()), "a declined order was announced"
    assert relay.running()
    # (how the workers stop is not this test's claim: under exactly_once a surviving worker was seen
    # stopping itself on ProducerFenced after a kill, a matter of streams.consume, not of MariaDB)

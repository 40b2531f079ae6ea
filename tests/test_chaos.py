"""Chaos: orders through the outbox, two relays, two workers, SIGKILLs all the while.

An order service writes orders and their ``OrderPlaced`` events in one
transaction (about one in 20 is declined and rolled back); two ``streams relay``
processes publish the outbox; two workers run ``tests.apps.chaos_app``, whose
``tx_push`` handler uses transactional effects and whose ``plain_push`` handler
relies on the RocksDB processed-ID table alone. Every 3–7 s one of the four
processes is killed with SIGKILL and started again. Then the writer stops, the
rest drains, and the database is counted: no committed order may be lost by
either handler, no declined order may reach one, and ``tx_push`` may not
repeat a single effect under either guarantee. ``plain_push``'s repeats are
reported for comparison.

``CHAOS_SECONDS`` sets how long the kills go on (default 40 s in the
suite; the issue's run was 120: ``make test PYTEST_WORKERS=0 PYTEST_ARGS="-s -k chaos"
CHAOS_SECONDS=120``).
"""

from __future__ import annotations

import os
import random
import threading
import time

import psycopg
import pytest

from streams.kafka.admin import TopicSpec, committed_offsets, end_offsets, ensure_topics
from streams.messages.envelope import Envelope
from streams.outbox.schema import migrate
from streams.outbox.writer import write_message
from tests.apps.chaos_app import SCHEMA, OrderPlaced, registry
from tests.harness import Isolated
from tests.helpers import run, wait_for
from tests.outbox_helpers import outbox_status, relay_process

CHAOS_SECONDS = float(os.environ.get("CHAOS_SECONDS", "40"))
TOPIC = "chaos.orders"
APP = {"STREAMS_WORKER_APP": "tests.apps.chaos_app:app"}


class OrderService(threading.Thread):
    """Places orders through the outbox until stopped; remembers what committed."""

    def __init__(self, iso: Isolated, topic: str, seed: str, keys: int | None = None) -> None:
        super().__init__(daemon=True)
        self.iso, self.topic, self.rng, self.keys = iso, topic, random.Random(seed), keys
        self.committed: dict[str, str] = {}  # order id -> message id
        self.declined: set[str] = set()
        self.halt = threading.Event()
        self.error: BaseException | None = None

    def run(self) -> None:
        try:
            with psycopg.connect(self.iso.settings.dsn) as conn:
                i = 0
                while not self.halt.is_set():
                    order_id = f"o-{i}"
                    key = order_id if self.keys is None else f"k{i % self.keys}"
                    envelope: Envelope = registry.envelope(OrderPlaced(order_id=order_id, amount=i), key=key)
                    declined = self.rng.random() < 0.05
                    conn.execute("INSERT INTO chaos_orders (order_id) VALUES (%s)", (order_id,))
                    write_message(conn, envelope, topic=self.topic, table=self.iso.settings.outbox_table)
                    if declined:
                        conn.rollback()
                        self.declined.add(order_id)
                    else:
                        conn.commit()
                        self.committed[order_id] = envelope.message_id
                    i += 1
                    time.sleep(0.004)
        except BaseException as exc:  # noqa: BLE001 - reported by the test
            self.error = exc


@pytest.mark.parametrize("guarantee", ["at_least_once", "exactly_once"])
def test_chaos_kills_lose_nothing_and_transactional_effects_never_repeat(isolated: Isolated,
                                                                          guarantee: str) -> None:
    iso = isolated
    rng = random.Random(guarantee)
    topic = iso.topic(TOPIC)
    with psycopg.connect(iso.settings.dsn, autocommit=True) as conn:
        migrate(conn, iso.settings.outbox_table)
        conn.execute(SCHEMA)
    run(ensure_topics(iso.settings, [TopicSpec(topic, 6), TopicSpec(topic + ".dlq", 6)]))
    env = {**APP, "STREAMS_PROCESSING_GUARANTEE": guarantee}

    def start(label: str):
        proc = relay_process(iso, label, **env) if label.startswith("relay") else iso.worker(label, **env)
        return proc.start()

    procs = {label: start(label) for label in ("worker-a", "worker-b", "relay-a", "relay-b")}
    for label in ("worker-a", "worker-b"):
        procs[label].wait_ready()

    writer = OrderService(iso, topic, guarantee)
    writer.start()
    kills: list[str] = []
    deadline = time.monotonic() + CHAOS_SECONDS
    while time.monotonic() < deadline:
        time.sleep(rng.uniform(3, 7))
        victim = rng.choice(sorted(procs))
        procs[victim].kill()
        kills.append(victim)
        procs[victim] = start(victim)
    writer.halt.set()
    writer.join(30)
    assert writer.error is None, writer.error
    for label in ("worker-a", "worker-b"):
        procs[label].wait_ready()

    committed = writer.committed
    # the outbox drains, every committed order reaches both handlers, offsets reach the log end
    wait_for(lambda: outbox_status(iso).get("pending", 0) == 0, 180, what="the outbox drained")

    def pushed(table: str) -> set[str]:
        return {r[0] for r in iso.sql(f"SELECT DISTINCT order_id FROM {table}")}

    try:
        wait_for(lambda: set(committed) <= pushed("tx_pushes") and set(committed) <= pushed("plain_pushes"), 240,
                 what=f"all {len(committed)} committed orders pushed by both handlers")
    except AssertionError as exc:
        for label in ("worker-a", "worker-b"):
            procs[label].dump_state()  # task stacks and consumer state into their logs
        ends = run(end_offsets(iso.settings, topic))
        groups = run(committed_offsets(iso.settings, iso.settings.app_id, topic))
        missing = sorted(set(committed) - pushed("tx_pushes"))[:10]
        time.sleep(2)
        raise AssertionError(f"{exc}; ends {ends}, committed {groups}, first orders missing from tx_pushes: "
                             f"{missing}") from None
    tx_rows, tx_distinct = iso.sql("SELECT count(*), count(DISTINCT message_id) FROM tx_pushes")[0]
    plain_rows, plain_distinct = iso.sql("SELECT count(*), count(DISTINCT message_id) FROM plain_pushes")[0]
    plain_repeated = iso.sql("SELECT count(*) FROM (SELECT 1 FROM plain_pushes GROUP BY message_id "
                             "HAVING count(*) > 1) AS r")[0][0]
    tx_lost = set(committed) - pushed("tx_pushes")
    plain_lost = set(committed) - pushed("plain_pushes")
    announced_declined = writer.declined & (pushed("tx_pushes") | pushed("plain_pushes"))
    outbox = outbox_status(iso)
    summary = (f"{guarantee}: {CHAOS_SECONDS:.0f}s, {len(kills)} kills "
               f"({', '.join(f'{k}={kills.count(k)}' for k in sorted(set(kills)))}), "
               f"committed orders={len(committed)}, declined={len(writer.declined)}; "
               f"tx_push: lost={len(tx_lost)} repeated={tx_rows - tx_distinct}; "
               f"plain_push: lost={len(plain_lost)} repeated={plain_rows - plain_distinct} (on {plain_repeated} orders); "
               f"outbox={outbox}; declined orders announced={len(announced_declined)}")
    print(summary)
    (iso.artifacts / "chaos.txt").write_text(summary + "\n")
    assert not tx_lost and not plain_lost, summary
    assert not announced_declined, summary
    assert tx_rows == tx_distinct == len(committed), summary
    assert {r[0] for r in iso.sql("SELECT DISTINCT message_id FROM tx_pushes")} == set(committed.values())
    assert outbox.get("failed", 0) == 0, summary
    # and every process still stops gracefully (a rebalance stuck on a shared message used to hang it)
    codes = {label: proc.stop() for label, proc in procs.items()}
    assert codes == dict.fromkeys(procs, 0), codes

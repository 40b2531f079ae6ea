"""Several relay processes sharing one outbox: nothing lost, per-key order kept, crashes survived."""

from __future__ import annotations

import random
import threading
import time

import psycopg
import pytest

from streams.messages.envelope import event
from streams.outbox.writer import write_message
from tests.helpers import wait_for
from tests.outbox_helpers import kafka_view, outbox_status, prepare, relay_process

ROWS = 20_000
KEYS = 500
WRITERS = 4


class Writers:
    """Threads that write the outbox in concurrent transactions of 1–20 rows over ``KEYS`` keys."""

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
            with psycopg.connect(self.dsn) as conn:
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
                        except psycopg.errors.DeadlockDetected:
                            conn.rollback()  # two keys locked in opposite order: do it again
                            with self.lock:
                                self.deadlocks += 1
                    with self.lock:
                        self.written.extend(e.message_id for e in envs)
                        self.transactions += 1
        except BaseException as exc:  # noqa: BLE001 - reported by join()
            self.errors.append(exc)


@pytest.mark.timeout(400)
def test_three_relays_keep_per_key_order_through_crashes(isolated):
    topic = prepare(isolated, partitions=6)
    relays = [relay_process(isolated, f"relay-{i}", STREAMS_RELAY_BATCH_SIZE="200") for i in (1, 2, 3)]
    for r in relays:
        r.start()
    for r in relays:
        r.wait_ready(60)
    writers = Writers(isolated.settings.dsn, topic, isolated.settings.outbox_table, ROWS).start()

    def done() -> int:
        return outbox_status(isolated).get("done", 0)

    kills = []
    for victim, threshold in ((relays[1], ROWS // 4), (relays[2], ROWS // 2), (relays[1], 3 * ROWS // 4)):
        wait_for(lambda: done() >= threshold, 180, what=f"{threshold} rows published")
        victim.kill()  # SIGKILL: its open batch is neither marked nor committed
        kills.append(done())
        victim.start()
    writers.join(120)
    wait_for(lambda: done() == ROWS, 180, interval=1, what="every row published")
    for r in relays:
        assert r.running(), r.log_text()[-2000:]
        r.stop()

    copies, per_key = kafka_view(isolated, topic)
    resent = sum(copies.values()) - len(copies)
    out_of_order = [k for k, ids in per_key.items() if ids != sorted(ids)]
    print(f"\n[relays] {ROWS} rows, {len(per_key)} keys, {writers.transactions} transactions "
          f"({writers.deadlocks} deadlock retries), 3 relays, SIGKILLs at done={kills}: "
          f"{len(copies)} distinct messages in Kafka, {resent} re-sent copies, {len(out_of_order)} keys out of order")
    assert set(copies) == set(writers.written), "every committed row reached Kafka"
    assert len(per_key) == KEYS
    assert not out_of_order, f"per-key order broken for {out_of_order[:5]}"
    assert outbox_status(isolated) == {"done": ROWS}


def _prefill(iso, topic: str, rows: int, keys: int) -> None:
    """Many pending rows at once (one INSERT; the outbox trigger still assigns ids and lanes)."""
    iso.sql(
        f"INSERT INTO {iso.settings.outbox_table} (message_id, message_type, topic, key, payload) "
        "SELECT gen_random_uuid()::text, 'ThingHappened', %s, 'key-' || (g %% %s), jsonb_build_object('g', g) "
        "FROM generate_series(1, %s) AS g", (topic, keys, rows))


@pytest.mark.timeout(300)
def test_relay_killed_mid_batch_while_another_runs(isolated):
    topic = prepare(isolated, partitions=6)
    _prefill(isolated, topic, 30_000, 300)
    relays = [relay_process(isolated, f"relay-{i}", STREAMS_RELAY_BATCH_SIZE="500") for i in (1, 2)]
    for r in relays:
        r.start()

    def done() -> int:
        return outbox_status(isolated).get("done", 0)

    kills = []
    for threshold in (4_000, 14_000):  # the relays are busy draining the backlog: a kill lands in a batch
        wait_for(lambda: done() >= threshold, 120, interval=0.1, what=f"{threshold} rows published")
        relays[1].kill()
        kills.append(done())
        if threshold == 4_000:
            relays[1].start()
    wait_for(lambda: done() == 30_000, 180, interval=1, what="every row published by the surviving relay")
    relays[0].stop()

    copies, per_key = kafka_view(isolated, topic)
    resent = sum(copies.values()) - len(copies)
    ids = {r[0] for r in isolated.sql(f"SELECT message_id FROM {isolated.settings.outbox_table}")}
    print(f"\n[relay crash] 30000 rows, 2 relays, SIGKILLs at done={kills}: {len(copies)} distinct messages, "
          f"{resent} re-sent copies (same message_id), out-of-order keys: "
          f"{sum(1 for v in per_key.values() if v != sorted(v))}")
    assert set(copies) == ids
    assert all(v == sorted(v) for v in per_key.values())

"""A three-broker cluster: the leader of a source partition dies mid-stream and comes back.

The project's own three-node KRaft cluster (``cluster3``): topics get three
replicas and ``min.insync.replicas=2`` without being asked. Orders go through
the outbox (a relay publishes them, keyed by 20 keys so per-key order is
tested), a worker runs ``tests.apps.chaos_app``; then the broker leading
partition 0 of the orders topic is killed with SIGKILL, the writer goes on, and
the broker is started again. Nothing may be lost, the transactional handler may
not repeat an effect, each key's orders must reach it in the order they were
written, and the cluster must end with every replica back in sync.
"""

from __future__ import annotations

import time

import psycopg
import pytest

from streams.kafka.admin import TopicSpec, ensure_topics
from streams.kafka.topics import describe_topic
from streams.outbox.schema import migrate
from tests.apps.chaos_app import SCHEMA
from tests.harness import Isolated
from tests.helpers import run, wait_for
from tests.outbox_helpers import outbox_status, relay_process
from tests.test_chaos import APP, TOPIC, OrderService


@pytest.mark.parametrize("guarantee", ["at_least_once", "exactly_once"])
def test_leader_broker_killed_and_restarted(isolated: Isolated, cluster3, guarantee: str) -> None:
    iso = isolated
    bootstrap = {"STREAMS_KAFKA_BOOTSTRAP": cluster3.bootstrap}
    iso.env.update(bootstrap)
    iso.settings = iso.settings.model_copy(update={"kafka_bootstrap": cluster3.bootstrap})
    topic = iso.topic(TOPIC)
    with psycopg.connect(iso.settings.dsn, autocommit=True) as conn:
        migrate(conn, iso.settings.outbox_table)
        conn.execute(SCHEMA)
    run(ensure_topics(iso.settings, [TopicSpec(topic, 6), TopicSpec(topic + ".dlq", 6)]))
    described = run(describe_topic(iso.settings, topic))
    assert {len(p.replicas) for p in described.partitions} == {3}
    assert described.configs.get("min.insync.replicas") == "2"

    env = {**APP, "STREAMS_PROCESSING_GUARANTEE": guarantee}
    worker = iso.worker("worker", **env).start()
    relay = relay_process(iso, "relay", **env).start()
    worker.wait_ready()
    relay.wait_ready()
    writer = OrderService(iso, topic, guarantee, keys=20)
    writer.start()
    wait_for(lambda: len(writer.committed) >= 500, 60, what="500 orders written")

    leader = run(describe_topic(iso.settings, topic)).partitions[0].leader
    victim = cluster3.node(leader)
    handled_before = iso.sql("SELECT count(*) FROM tx_pushes")[0][0]
    victim.kill()
    killed_at = time.monotonic()
    # the partition moves to another replica; the worker and the relay carry on
    wait_for(lambda: run(describe_topic(iso.settings, topic)).partitions[0].leader not in (leader, -1), 60,
             what="a new leader for partition 0")
    failover = time.monotonic() - killed_at
    wait_for(lambda: iso.sql("SELECT count(*) FROM tx_pushes")[0][0] > handled_before + 300, 90,
             what="handling to go on with a broker down")
    victim.up()
    restarted_at = time.monotonic()
    time.sleep(5)
    writer.halt.set()
    writer.join(30)
    assert writer.error is None, writer.error
    committed = writer.committed

    wait_for(lambda: outbox_status(iso).get("pending", 0) == 0, 120, what="the outbox drained")
    wait_for(lambda: set(committed) <= {r[0] for r in iso.sql("SELECT DISTINCT order_id FROM tx_pushes")}, 180,
             what=f"all {len(committed)} committed orders handled")
    rows, distinct = iso.sql("SELECT count(*), count(DISTINCT message_id) FROM tx_pushes")[0]
    plain_rows, plain_distinct = iso.sql("SELECT count(*), count(DISTINCT message_id) FROM plain_pushes")[0]
    # per key, the order the handler first saw each order in is the order they were written in
    out_of_order = 0
    last: dict[str, int] = {}
    for key, seq in iso.sql("SELECT key, seq FROM tx_pushes ORDER BY id"):
        if seq <= last.get(key, -1):
            out_of_order += 1
        last[key] = max(seq, last.get(key, -1))
    insync = wait_for(lambda: all(len(p.isr) == 3 for p in run(describe_topic(iso.settings, topic)).partitions),
                      120, what="every replica back in sync")
    summary = (f"{guarantee}: killed broker {leader} (leader of {topic}[0]); new leader after {failover:.1f}s; "
               f"all handled and in sync {time.monotonic() - restarted_at:.1f}s after its restart; "
               f"committed orders={len(committed)}; "
               f"tx_push rows={rows} distinct={distinct} out of order={out_of_order}; "
               f"plain_push repeated={plain_rows - plain_distinct}; outbox={outbox_status(iso)}")
    print(summary)
    (iso.artifacts / "three-brokers.txt").write_text(summary + "\n")
    assert insync
    assert distinct == len(committed) and rows == distinct, summary
    assert {r[0] for r in iso.sql("SELECT DISTINCT message_id FROM tx_pushes")} == set(committed.values())
    assert out_of_order == 0, summary
    assert outbox_status(iso).get("failed", 0) == 0, summary
    assert relay.stop() == 0 and worker.stop() == 0

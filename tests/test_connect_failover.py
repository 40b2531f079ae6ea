"""A Kafka Connect cluster of two workers (one distributed group) losing the worker that runs a
CDC connector's task: the task moves to the survivor and resumes from the stored position;
every change is handled once downstream (re-deliveries dropped by their message ids), in commit
order per key. PostgreSQL (pgoutput) and MariaDB (binlog) sources; the time the task took to
move and the number of re-delivered changes are printed (the source notes' question 8).
"""

from __future__ import annotations

import json
import os
import threading
import time
from collections.abc import Iterator

import pytest

from streams.dev.connect import LocalConnectCluster
from streams.dev.process import free_port
from streams.kafka.admin import end_offsets, read_topic
from tests.harness import ROOT, SESSION_HOME, Servers
from tests.helpers import run, wait_for

pytestmark = pytest.mark.xdist_group("cdc")


@pytest.fixture(scope="module")
def connect_cluster(servers: Servers) -> Iterator[LocalConnectCluster]:
    """Two Connect workers in one group (each REST port reserved for this test process, so that no
    other process is handed the port of a worker that is down), offsets stored every 5 s, a lost
    worker's tasks reassigned as soon as the group notices it is gone."""
    ports = [free_port(), free_port()]
    while ports[1] == ports[0]:
        ports[1] = free_port()
    SESSION_HOME.mkdir(parents=True, exist_ok=True)
    cluster = LocalConnectCluster(SESSION_HOME / "connect-cluster", ROOT / ".streams" / "cache", servers.bootstrap,
                                  workers=2, port=ports[0], ports=ports,
                                  group=f"streams-connect-cluster-{os.getpid()}",
                                  offset_flush_ms=5000, lost_worker_delay_ms=0)
    took = cluster.up()
    print(f"\n[connect cluster] {[n.url for n in cluster.nodes]} ({took:.1f}s)")
    try:
        yield cluster
    finally:
        cluster.down()


def leader_port(cluster: LocalConnectCluster) -> int | None:
    """The REST port of the group's leader, as the workers' logs last said it (Connect's REST API
    does not tell)."""
    import re

    found = [(m.group(1), int(m.group(2))) for node in cluster.nodes if node.log_file.exists()
             for m in re.finditer(r"^\[([^\]]+)\] INFO .*Joined group .*leader='connect-127\.0\.0\.1:(\d+)-",
                                  node.log_file.read_text(errors="replace"), re.M)]
    return max(found)[1] if found else None


def _source(request, database: str):
    """(the test's CDC helper on the cluster, its module: Writer, changes, per_key, wait_effects)."""
    if database == "postgresql":
        import tests.test_cdc as module
        from tests.apps.cdc_app import SCHEMA

        iso = request.getfixturevalue("isolated")
        iso.sql(SCHEMA)
        return iso, module
    import tests.test_cdc_mysql as module
    from tests.apps.mysql_cdc_app import SCHEMA as MYSQL_SCHEMA
    from tests.mysql_helpers import isql

    iso = request.getfixturevalue("isolated_mysql")
    for statement in MYSQL_SCHEMA:
        isql(iso, statement)
    isql(iso, "CREATE TABLE tx_marks (n INT PRIMARY KEY)")
    return iso, module


@pytest.mark.timeout(600)
@pytest.mark.parametrize("database", ["postgresql", "mariadb"])
def test_the_task_moves_to_the_surviving_worker_and_every_change_is_handled_once(
        connect_cluster: LocalConnectCluster, request, database: str) -> None:
    iso, module = _source(request, database)
    if database == "postgresql":
        cdc = module.Cdc(iso, connect_cluster, iso.settings.app_id.removeprefix("test-"))
        name, topic = cdc.create_orders(), iso.topic(module.ORDERS)
    else:
        cdc = module.Cdc(iso, connect_cluster, request.getfixturevalue("mariadb"), iso.settings.app_id.removeprefix("test-"))
        name, _ = cdc.create_orders()
        topic = cdc.topic
    try:
        client = connect_cluster.client()
        status = client.status(name)
        runs_on = connect_cluster.worker_index(status["tasks"][0]["worker_id"])
        survivor = connect_cluster.nodes[1 - runs_on]
        worker = cdc.worker()
        worker.wait_ready()
        writer = module.Writer(iso.settings.dsn, seed=23)
        # held at its 150th transaction (1,500 changes) until the kill: half of it is written after the kill
        resume = threading.Event()
        thread = threading.Thread(target=writer.run, kwargs={"transactions": 300, "size": 10, "pause": 0.03,
                                                             "hold_at": 150, "resume": resume}, daemon=True)
        thread.start()
        wait_for(lambda: sum(run(end_offsets(iso.settings, topic)).values()) >= 800, 120,
                 what="Connect has sent 800 changes")
        sent_at_kill = sum(run(end_offsets(iso.settings, topic)).values())
        was_leader = leader_port(connect_cluster) == connect_cluster.nodes[runs_on].port
        connect_cluster.kill(runs_on)
        killed = time.monotonic()
        assert thread.is_alive(), "the kill must land while the database is still being written"
        resume.set()

        def moved() -> bool:
            tasks = survivor.client(10).status(name)["tasks"]
            return bool(tasks) and tasks[0]["state"] == "RUNNING" and tasks[0]["worker_id"] == f"127.0.0.1:{survivor.port}"

        wait_for(moved, 180, interval=0.1, what="the task running on the surviving worker")
        took_move = time.monotonic() - killed
        wait_for(lambda: sum(run(end_offsets(iso.settings, topic)).values()) > sent_at_kill, 120, interval=0.1,
                 what="changes flowing again")
        took_flow = time.monotonic() - killed
        thread.join(300)
        assert not thread.is_alive()
        if database == "postgresql":
            module.wait_effects(iso, writer.total, timeout=240)
        else:
            module.wait_effects(cdc, writer.total, timeout=240)
        rows = module.changes(iso)
        assert len(rows) == len({r[0] for r in rows}) == writer.total, "every change handled once, nothing lost"
        assert module.per_key(rows) == writer.expected, "per key: the order of commit"
        records = [r for r in run(read_topic(iso.settings, topic)) if r.value is not None]
        assert not [r for r in records if json.loads(r.value)["op"] == "r"], "resumed from the stored position"
        redelivered = len(records) - writer.total
        print(f"\n[failover {database}] worker {runs_on} (of 2, {'the' if was_leader else 'not the'} group leader) "
              f"SIGKILLed after {sent_at_kill} records: task RUNNING on "
              f"worker {1 - runs_on} after {took_move:.1f}s, changes flowing again after {took_flow:.1f}s; "
              f"{len(records)} change records for {writer.total} changes ({redelivered} re-delivered, dropped as "
              f"copies); {len(rows)} effects, each once")
    finally:
        if "resume" in locals():
            resume.set()
        for w in iso.workers:
            w.kill()
        connect_cluster.up()  # the killed worker back, for the next test
        if name in set(cdc.connectors.names()):
            cdc.connectors.delete(name)

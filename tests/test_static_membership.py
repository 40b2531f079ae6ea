"""Static membership (KIP-345): a worker with ``STREAMS_GROUP_INSTANCE_ID`` that is restarted
within the session timeout gets its partitions back without a rebalance — the other worker of
the group keeps its member id and its partitions and goes through no new generation.

Real broker; two worker processes of ``tests.apps.state_app``."""

from __future__ import annotations

import time

import pytest

from streams.kafka.admin import TopicSpec, ensure_topics
from streams.kafka.groups import describe_group
from tests.apps.state_app import PARTITIONS, TOPIC
from tests.harness import Isolated
from tests.helpers import run, wait_for

APP = {"STREAMS_WORKER_APP": "tests.apps.state_app:app",
       # long enough for a worker process to start again on a loaded machine
       "STREAMS_BROKER_SESSION_TIMEOUT": "60", "STREAMS_BROKER_HEARTBEAT_INTERVAL": "2"}


def _generations(log: str) -> int:
    """Rebalances a worker went through (Faust's recovery logs each generation it joins)."""
    return log.count("generation id ")


@pytest.mark.parametrize("how", ["sigterm", "kill"])
def test_a_static_member_restarted_within_the_session_timeout_causes_no_rebalance(isolated: Isolated,
                                                                                   how: str) -> None:
    iso = isolated
    topic = iso.topic(TOPIC)
    run(ensure_topics(iso.settings, [TopicSpec(topic, PARTITIONS)]))
    a = iso.worker("worker-a", **APP, STREAMS_GROUP_INSTANCE_ID="worker-a", STREAMS_KAFKA_CLIENT_ID="worker-a").start()
    a.wait_ready(180)
    b = iso.worker("worker-b", **APP, STREAMS_GROUP_INSTANCE_ID="worker-b", STREAMS_KAFKA_CLIENT_ID="worker-b").start()
    b.wait_ready(180)

    def settled():
        group = run(describe_group(iso.settings, iso.settings.app_id))
        owned = [m for m in group.members if any(t == topic for t, _ in m.partitions)]
        return group if group.state == "Stable" and len(owned) == 2 else None

    before = wait_for(settled, 120, interval=1, what="both workers holding partitions")
    time.sleep(3)  # any rebalance still under way shows in b's log by now
    b_before = next(m for m in before.members if m.client_id == "worker-b")
    generations_before = _generations(b.log_text())

    if how == "sigterm":
        assert a.stop() == 0
    else:
        a.kill()
    a.start()
    a.wait_ready(180)
    time.sleep(5)  # a rebalance the restart caused would reach b within a heartbeat or two

    after = run(describe_group(iso.settings, iso.settings.app_id))
    assert after.state == "Stable", after
    b_new_generations = _generations(b.log_text()) - generations_before
    assert b_new_generations == 0, f"worker-b went through {b_new_generations} rebalance(s):\n{b.log_text()[-3000:]}"
    b_after = next(m for m in after.members if m.client_id == "worker-b")
    assert (b_after.member_id, b_after.partitions) == (b_before.member_id, b_before.partitions)
    a_after = next(m for m in after.members if m.client_id == "worker-a")
    a_before = next(m for m in before.members if m.client_id == "worker-a")
    assert a_after.partitions == a_before.partitions  # the restarted member got its own partitions back

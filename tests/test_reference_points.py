"""The reference points service: a redelivered GrantPoints command never credits twice.

Commands are written as raw JSON bytes by a raw producer (as a service in another
language would), some of them twice with the same ``message_id`` (a relay
re-sending after a crash); the points worker is SIGKILLed mid-stream and
restarted. Under both guarantees the ledger in PostgreSQL has one credit per
command and every balance is the sum of its buyer's distinct commands.
"""

from __future__ import annotations

import json
import random
import uuid
from collections import Counter

import pytest

from streams.kafka.admin import TopicSpec, ensure_topics
from tests.harness import Isolated
from tests.helpers import run, wait_for
from tests.raw_producer import produce
from tests.reference import committed_to_end

TOPIC = "points.grant-points"
PARTITIONS = 4  # as declared by agents.points


def command_record(message_id: str, order_id: str, buyer_id: str, points: int) -> dict:
    value = json.dumps({"message_id": message_id, "message_type": "GrantPoints", "kind": "command",
                        "key": buyer_id, "occurred_at": "2026-12-02T03:00:00+00:00",
                        "payload": {"order_id": order_id, "buyer_id": buyer_id, "points": points}})
    return {"key": buyer_id.encode(), "value": value.encode(),
            "headers": [(b"message_id", message_id.encode()), (b"message_type", b"GrantPoints")]}


def ledger(iso: Isolated) -> tuple[int, int]:
    if not iso.sql("SELECT to_regclass('points_ledger') IS NOT NULL")[0][0]:
        return 0, 0
    return iso.sql("SELECT count(*), count(DISTINCT message_id) FROM points_ledger")[0]


@pytest.mark.timeout(400)
@pytest.mark.parametrize("guarantee", ["at_least_once", "exactly_once"])
def test_redelivered_grant_points_never_credits_twice(isolated: Isolated, guarantee: str) -> None:
    n, repeats = 4000, 200
    topic = isolated.topic(TOPIC)
    run(ensure_topics(isolated.settings, [TopicSpec(topic, PARTITIONS), TopicSpec(topic + ".dlq", PARTITIONS)]))
    rng = random.Random(guarantee)
    commands = [command_record(str(uuid.uuid4()), f"o-{i}", f"buyer-{rng.randint(1, 50)}", rng.randint(1, 900))
                for i in range(n)]
    # a relay re-sending after a crash: some commands again, same message_id, later in the log
    records = commands + rng.sample(commands, repeats)
    expected = Counter()
    for c in commands:
        payload = json.loads(c["value"])["payload"]
        expected[payload["buyer_id"]] += payload["points"]

    # the whole backlog first: the crash below lands mid-stream however fast the producer is
    produce(isolated.settings.bootstrap_servers, topic, records)
    env = {"STREAMS_WORKER_APP": "agents.points:app", "STREAMS_PROCESSING_GUARANTEE": guarantee}
    first = isolated.worker("points-1", **env).start()
    first.wait_ready()
    wait_for(lambda: ledger(isolated)[0] >= n // 10, 120, interval=0.1, what="some credits")
    first.kill()  # crash mid-stream: uncommitted commands are delivered again
    credited_before = ledger(isolated)[0]
    assert credited_before < n, "the crash must land mid-stream"

    second = isolated.worker("points-2", **env).start()
    second.wait_ready()
    wait_for(lambda: ledger(isolated)[0] >= n, 180, what=f"{n} credits")
    group = f"{isolated.settings.app_id}.points"
    wait_for(lambda: committed_to_end(isolated.settings, group, topic), 90, what="committed offsets at the log end")
    second.stop()

    rows, distinct = ledger(isolated)
    assert (rows, distinct) == (n, n), "one credit per command, none twice"
    assert dict(isolated.sql("SELECT buyer_id, points FROM points_balance")) == dict(expected)
    processed = isolated.sql("SELECT count(*) FROM streams_processed_messages WHERE consumer LIKE %s",
                             (f"{group}%",))[0][0]
    assert processed == n
    # nothing parked: every record was a valid command
    assert sum(run(_end_offsets(isolated, topic + ".dlq")).values()) == 0


async def _end_offsets(iso: Isolated, topic: str):
    from streams.kafka.admin import end_offsets

    return await end_offsets(iso.settings, topic)

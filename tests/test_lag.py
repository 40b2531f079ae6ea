"""Consumer lag read from the broker agrees with Kafka's own ``kafka-consumer-groups --describe``,
for a stopped group and for a running one (the reference app's worker as a separate process)."""

from __future__ import annotations

import json
import subprocess
import sys

from streams.kafka.admin import produce_envelopes
from streams.kafka.lag import group_lag, with_rates
from tests.harness import ROOT, Isolated, Servers
from tests.helpers import run, wait_for
from tests.kafka_tool import describe
from tests.reference import TOPIC, create_topics, orders, push_counts


def test_lag_matches_kafka_consumer_groups_for_stopped_and_running_group(isolated: Isolated,
                                                                         servers: Servers) -> None:
    iso = isolated
    group, topic = iso.settings.app_id, iso.topic(TOPIC)
    create_topics(iso)
    run(produce_envelopes(iso.settings, topic, orders(150)))
    worker = iso.worker("w1", AGENTS_SELLER_API_LATENCY_MS="25").start()
    worker.wait_ready()
    wait_for(lambda: push_counts(iso)[1] >= 80, 90, what="80 handled")
    worker.stop()
    # a backlog the restarted worker cannot drain between two samples (its partitions are handled
    # side by side, ~40 records/s each at 25 ms per call): the rate and ETA below need some lag left
    run(produce_envelopes(iso.settings, topic, orders(1500)))

    # --- stopped group: the figures must be identical ---------------------------------
    ours = run(group_lag(iso.settings, group))
    tool = describe(servers.bootstrap, group)
    assert ours.state == "Empty" and ours.members == 0
    mine = {(p.topic, p.partition): (p.committed, p.end, p.lag) for p in ours.partitions}
    theirs = {(r.topic, r.partition): (r.current, r.end, r.lag) for r in tool}
    print("\nstopped group:", json.dumps({f"{t}[{p}]": v for (t, p), v in sorted(mine.items())}))
    assert mine == theirs
    assert len(mine) == 6 and 1500 <= ours.total_lag < 1650 and ours.total_lag == sum(r.lag for r in tool)

    # the CLI's JSON says the same
    cli = subprocess.run([sys.executable, "-m", "streams.cli", "lag", "--group", group, "--json"],
                         capture_output=True, text=True, env=worker.env, cwd=ROOT, timeout=60)
    assert cli.returncode == 0, cli.stderr
    data = json.loads(cli.stdout)
    assert data["total_lag"] == ours.total_lag
    assert {(r["topic"], r["partition"]): (r["committed"], r["end"], r["lag"]) for r in data["partitions"]} == theirs

    # --- running group: the tool's sample lies between two of ours --------------------
    worker = iso.worker("w1", AGENTS_SELLER_API_LATENCY_MS="25").start()
    worker.wait_ready()
    wait_for(lambda: run(group_lag(iso.settings, group)).state == "Stable", 60, what="a stable group")
    # the rate and ETA first, while most of the backlog is left (the tool's JVM start below takes
    # seconds of the ~6 s the worker needs to drain it)
    start = run(group_lag(iso.settings, group))
    lag_start = sum(p.lag for p in start.partitions if p.topic == topic)

    def fallen():
        sample = run(group_lag(iso.settings, group))
        return sample if sum(p.lag for p in sample.partitions if p.topic == topic) < lag_start else None
    later = wait_for(fallen, 60, what="the running worker's lag to fall")
    rated = with_rates(start, later).only(topic)
    print(f"rate {rated.rate:.1f}/s, eta {rated.eta}s")
    assert rated.rate and rated.rate > 0 and rated.eta is not None and rated.eta > 0

    before = run(group_lag(iso.settings, group))
    tool = [r for r in describe(servers.bootstrap, group) if r.topic == topic]
    after = run(group_lag(iso.settings, group))
    assert after.state == "Stable" and after.members == 1
    print("running group: ours before", [(p.partition, p.committed) for p in before.partitions if p.topic == topic],
          "tool", [(r.partition, r.current, r.consumer_id is not None) for r in tool],
          "ours after", [(p.partition, p.committed) for p in after.partitions if p.topic == topic])
    b = {p.partition: p for p in before.partitions if p.topic == topic}
    a = {p.partition: p for p in after.partitions if p.topic == topic}
    assert {r.partition for r in tool} == set(a) == set(range(6))
    for r in tool:
        assert b[r.partition].committed <= r.current <= a[r.partition].committed
        assert r.end == a[r.partition].end == b[r.partition].end  # nothing is produced meanwhile
        assert r.lag == r.end - r.current
        assert r.consumer_id is not None and a[r.partition].member is not None  # a live member holds it
    wait_for(lambda: run(group_lag(iso.settings, group, [topic])).total_lag == 0, 120, what="lag drained to 0")
    worker.stop()

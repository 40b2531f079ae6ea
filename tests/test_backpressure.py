"""Lag-based backpressure on a real broker, workers as separate processes:
a failing downstream pauses the partitions (no hot retry loop, no dead letters) and
everything is handled after recovery; the lag-gate holds a producer above its high
watermark and lets it go below the low one."""

from __future__ import annotations

import asyncio
import time

from streams.kafka.admin import TopicSpec, ensure_topics, produce_envelopes
from streams.kafka.lag import group_lag
from tests.harness import Isolated
from tests.helpers import run, wait_for
from tests.reference import read_topic


def _sink_worker(iso: Isolated, label: str = "w"):
    worker = iso.worker(label)
    worker.args = ["--without-web", "--app", "tests.apps.sink_app:app"]
    return worker


def test_failing_sink_pauses_partitions_dead_letters_nothing_and_catches_up(isolated: Isolated) -> None:
    from tests.apps.sink_app import SCHEMA, Job, registry

    iso = isolated
    topic = iso.topic("jobs")
    iso.sql(SCHEMA)
    iso.sql("UPDATE downstream SET state = 'down'")
    run(ensure_topics(iso.settings, [TopicSpec(topic, 3), TopicSpec(topic + ".dlq", 3)]))
    worker = _sink_worker(iso).start()
    worker.wait_ready()
    envelopes = [registry.envelope(Job(n=i), key=f"job-{i}") for i in range(200)]
    run(produce_envelopes(iso.settings, topic, envelopes))

    outage = 12.0
    time.sleep(outage)
    calls_in_outage = iso.sql("SELECT count(*) FROM calls")[0][0]
    lag = run(group_lag(iso.settings, iso.settings.app_id, [topic]))
    log = worker.log_text()
    print(f"\noutage {outage:.0f}s: {calls_in_outage} downstream calls, lag {lag.total_lag}, "
          f"pauses logged: {log.count('paused 3 partition(s)')}")
    # breaker: 3 failures open it, then one probe per 2 s reset timeout (a hot loop would make thousands)
    assert 3 <= calls_in_outage <= 3 + outage / 2.0 + 3
    assert iso.sql("SELECT count(*) FROM calls WHERE ok")[0][0] == 0
    assert "paused 3 partition(s) of " + topic in log
    assert lag.total_lag == 200  # everything waits in Kafka
    assert read_topic(iso, topic + ".dlq") == []

    iso.sql("UPDATE downstream SET state = 'up'")
    wait_for(lambda: iso.sql("SELECT count(DISTINCT message_id) FROM calls WHERE ok")[0][0] >= 200, 90,
             what="all 200 jobs delivered after recovery")
    wait_for(lambda: run(group_lag(iso.settings, iso.settings.app_id, [topic])).total_lag == 0, 60,
             what="lag drained")
    ok = iso.sql("SELECT count(*), count(DISTINCT message_id) FROM calls WHERE ok")[0]
    assert ok == (200, 200)
    assert read_topic(iso, topic + ".dlq") == [], "a transient outage dead-letters nothing"
    assert "resumed " + topic in worker.log_text()
    # the rate limiter (40/s, burst 5) held the catch-up: no second saw more than 45 calls
    per_second = iso.sql("SELECT date_trunc('second', at), count(*) FROM calls WHERE ok GROUP BY 1")
    print("successful calls per second after recovery:", sorted(n for _, n in per_second))
    assert max(n for _, n in per_second) <= 45
    worker.stop()


def test_lag_gate_holds_above_high_and_resumes_below_low(isolated: Isolated) -> None:
    from streams.kafka.lag_gate import LagGate
    from tests.reference import TOPIC, create_topics, orders, push_counts

    iso = isolated
    topic = iso.topic(TOPIC)
    create_topics(iso)
    worker = iso.worker("w1", AGENTS_SELLER_API_LATENCY_MS="20").start()
    worker.wait_ready()
    high, low, batch, total = 120, 40, 40, 480
    observed: list[tuple[float, int, bool]] = []  # (t, lag at the gate's check, open)

    async def relay() -> None:
        gate = LagGate(iso.settings, iso.settings.app_id, topic, high=high, low=low, check_interval=0.3)
        sent, t0 = 0, time.monotonic()
        envelopes = orders(total)
        while sent < total:
            await gate.wait_until_open()
            observed.append((time.monotonic() - t0, gate.last_lag, gate.is_open()))
            await produce_envelopes(iso.settings, topic, envelopes[sent:sent + batch])
            sent += batch
            # the gate re-checks before the next batch
            await gate.check()
            observed.append((time.monotonic() - t0, gate.last_lag, gate.is_open()))
        assert gate.closed_count >= 1, "the burst never reached the high watermark"
        print(f"\ngate closed {gate.closed_count} time(s), opened again {gate.opened_count} time(s)")

    asyncio.run(relay())
    for t, lag, is_open in observed:
        print(f"  t={t:5.1f}s lag={lag:4d} {'open' if is_open else 'HOLD'}")
    # hysteresis: closed at or above high, opened again only at or below low
    state = True
    for _, lag, is_open in observed:
        if state and not is_open:
            assert lag >= high
        if not state and is_open:
            assert lag <= low
        state = is_open
    # the producer never published into a lag at or above high, so the lag stayed under high + one batch
    assert max(lag for _, lag, _ in observed) < high + batch
    wait_for(lambda: push_counts(iso)[1] >= total, 120, what="every message handled")
    assert push_counts(iso) == (total, total)  # nothing lost, nothing doubled
    worker.stop()


def test_slow_sink_with_backlog_keeps_worker_rss_within_the_bound_and_drains_after_speed_up(
        isolated: Isolated, tmp_path) -> None:
    import json

    from streams.demos.backpressure import MEMORY_BOUND_MIB, rss_mib
    from streams.demos.backpressure_app import PARTITIONS, TOPIC, Tick, registry

    iso = isolated
    topic = iso.topic(TOPIC)
    control = tmp_path / "sink-control.json"
    control.write_text(json.dumps({"mode": "slow", "latency_ms": 5}))
    run(ensure_topics(iso.settings, [TopicSpec(topic, PARTITIONS), TopicSpec(topic + ".dlq", PARTITIONS)]))
    # 40,000 records of ~3 KiB: 120 MiB of backlog, more than the bound leaves room for if it were buffered
    n, pad = 40_000, "x" * 3072
    for start in range(0, n, 20_000):
        run(produce_envelopes(iso.settings, topic, (registry.envelope(Tick(n=i, pad=pad), key=f"k{i}")
                                                    for i in range(start, start + 20_000)), linger_ms=20))
    worker = iso.worker("w", STREAMS_DEMO_SINK_CONTROL=str(control))
    worker.args = ["--without-web", "--app", "streams.demos.backpressure_app:app"]
    worker.start()
    worker.wait_ready()
    samples = []
    for _ in range(10):  # the slow phase: ~200 records/s per partition against a 40,000 backlog
        time.sleep(1)
        samples.append(rss_mib(worker.pid))
    slow_lag = run(group_lag(iso.settings, iso.settings.app_id, [topic])).total_lag
    control.write_text(json.dumps({"mode": "fast"}))
    drain_started = time.monotonic()

    def drained():
        samples.append(rss_mib(worker.pid))
        return run(group_lag(iso.settings, iso.settings.app_id, [topic])).total_lag == 0
    wait_for(drained, 180, interval=1.0, what="lag drained after the sink sped up")
    peak = rss_mib(worker.pid, "VmHWM")
    print(f"\nslow phase: lag {slow_lag:,}, RSS samples {min(samples):.0f}..{max(samples):.0f} MiB; "
          f"drained in {time.monotonic() - drain_started:.0f}s; VmHWM {peak:.0f} MiB (bound {MEMORY_BOUND_MIB})")
    # partitions are handled side by side, each at most ~200 records/s (5 ms per call): after
    # 10 s at most ~12,000 of the 40,000 can be done (a third more allowed for the start-up)
    assert slow_lag > n - 10 * PARTITIONS * 200 * 4 // 3, "the slow sink must have left a backlog in Kafka"
    assert peak <= MEMORY_BOUND_MIB
    worker.stop()


def test_a_paused_sink_never_holds_the_groups_rebalance(isolated: Isolated) -> None:
    """The downstream is down (the breaker keeps the partitions paused) when a second worker joins:
    the waiting batch gives its records up instead of holding the revocation, so the group
    rebalances within the session timeout; once the downstream is back, every job is delivered
    once, nothing lost, nothing repeated."""
    from tests.apps.sink_app import SCHEMA, Job, registry
    from tests.kafka_tool import describe

    iso = isolated
    topic = iso.topic("jobs")
    iso.sql(SCHEMA)
    iso.sql("UPDATE downstream SET state = 'down'")
    run(ensure_topics(iso.settings, [TopicSpec(topic, 3), TopicSpec(topic + ".dlq", 3)]))
    first = _sink_worker(iso, "w1").start()
    first.wait_ready()
    envelopes = [registry.envelope(Job(n=i), key=f"job-{i}") for i in range(120)]
    run(produce_envelopes(iso.settings, topic, envelopes))
    wait_for(lambda: "paused 3 partition(s) of " + topic in first.log_text(), 60, what="the breaker pausing")

    def owners() -> set[str]:
        return {row.consumer_id for row in describe(iso.settings.bootstrap_servers, iso.settings.app_id)
                if row.topic == topic and row.consumer_id}
    second = _sink_worker(iso, "w2").start()
    bound = iso.settings.broker_session_timeout + 15  # joining, the group's rebalance, one describe
    wait_for(lambda: len(owners()) == 2, bound, interval=1.0,
             what="the group rebalancing onto both workers while the downstream is down")
    assert iso.sql("SELECT count(*) FROM calls WHERE ok")[0][0] == 0

    iso.sql("UPDATE downstream SET state = 'up'")
    wait_for(lambda: iso.sql("SELECT count(DISTINCT message_id) FROM calls WHERE ok")[0][0] >= 120, 120,
             what="all 120 jobs delivered after recovery")
    wait_for(lambda: run(group_lag(iso.settings, iso.settings.app_id, [topic])).total_lag == 0, 60,
             what="lag drained")
    assert iso.sql("SELECT count(*), count(DISTINCT message_id) FROM calls WHERE ok")[0] == (120, 120)
    assert read_topic(iso, topic + ".dlq") == []
    assert first.running() and second.running()
    second.stop()
    first.stop()

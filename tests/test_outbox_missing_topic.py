"""A relay facing a topic that does not exist, and a relay stopped while the broker is down.

Real PostgreSQL, real Kafka (the broker's automatic topic creation is off), relays run as
``streams relay`` processes so their logs and their answer to SIGTERM are the real ones.
"""

from __future__ import annotations

import json
import signal
import subprocess
import time

import psycopg
import pytest

from streams.kafka.admin import TopicSpec, ensure_topics
from streams.messages.envelope import event
from streams.outbox.writer import write_message
from tests.helpers import run, wait_for
from tests.outbox_helpers import kafka_view, outbox_status, prepare, relay_process
from tests.test_outbox_cli import streams

AIOKAFKA_SPAM = "not found in cluster metadata"


def write_interleaved(iso, topics: list[str], n: int, keys: int = 10) -> dict[str, list[str]]:
    """``n`` rounds of one row per topic (same key in every topic), one transaction; message ids per topic."""
    ids: dict[str, list[str]] = {t: [] for t in topics}
    with psycopg.connect(iso.settings.dsn) as conn:
        for i in range(n):
            for topic in topics:
                env = event("ThingHappened", {"n": i, "topic": topic}, key=f"k{i % keys}")
                write_message(conn, env, topic=topic, table=iso.settings.outbox_table)
                ids[topic].append(env.message_id)
        conn.commit()
    return ids


def done(iso) -> int:
    return outbox_status(iso).get("done", 0)


def lines(text: str, *needles: str) -> list[str]:
    return [line for line in text.splitlines() if all(n in line for n in needles)]


def assert_once_in_id_order(iso, topic: str, expected: list[str]) -> None:
    copies, per_key = kafka_view(iso, topic)
    assert set(copies) == set(expected), f"{topic}: every row reached Kafka"
    assert all(n == 1 for n in copies.values()), f"{topic}: no copies"
    assert all(ids == sorted(ids) for ids in per_key.values()), f"{topic}: per-key order = id order"


@pytest.mark.timeout(300)
def test_rows_for_a_missing_topic_wait_alone_and_flow_once_it_exists(isolated):
    present = prepare(isolated, "outbox.present", partitions=3)
    missing = isolated.topic("points.not-deployed-yet")
    # the missing topic's row comes first in every round, with the same key as the present topic's row
    ids = write_interleaved(isolated, [missing, present], 400)
    relays = [relay_process(isolated, f"relay-{i}", STREAMS_RELAY_BATCH_SIZE="100",
                            STREAMS_RELAY_MISSING_TOPIC_WAIT="3600") for i in (1, 2)]
    for r in relays:
        r.start()
    for r in relays:
        r.wait_ready(60)

    wait_for(lambda: done(isolated) == 400, 90, what="every row of the existing topic published")
    assert_once_in_id_order(isolated, present, ids[present])
    wait_for(lambda: json.loads(streams(isolated, "outbox", "status", "--json").stdout)["waiting"] == 400, 30,
             what="status to count the waiting rows")
    status = json.loads(streams(isolated, "outbox", "status", "--json").stdout)
    assert status["pending"] == 400 and status["retrying"] == 0 and status["failed"] == 0
    assert list(status["waiting_topics"]) == [missing]
    assert status["waiting_topics"][missing]["rows"] == 400
    table = streams(isolated, "outbox", "status")
    assert missing in table.stdout and "does not exist" in table.stdout, table.stdout
    fails = isolated.sql(f"SELECT max(fail_count) FROM {isolated.settings.outbox_table}")[0][0]
    assert fails == 0, "waiting for a topic is not a failed attempt"

    said = {r: lines(r.log_text(), missing, "does not exist") for r in relays}
    for r, text in said.items():  # a relay whose lanes hold none of the topic's rows has nothing to say
        assert len(text) <= 1, f"said at most once per relay, got {len(text)}:\n" + "\n".join(text[:5])
        assert not lines(r.log_text(), AIOKAFKA_SPAM), "no send to the missing topic"
    first = [line for text in said.values() for line in text]
    assert first and all("row(s) wait" in line for line in first), first

    run(ensure_topics(isolated.settings, [TopicSpec(missing, 3)]))  # its consumer is deployed
    wait_for(lambda: done(isolated) == 800, 90, what="the waiting rows published once the topic exists")
    assert_once_in_id_order(isolated, missing, ids[missing])
    after = json.loads(streams(isolated, "outbox", "status", "--json").stdout)
    assert after["waiting"] == 0 and after["waiting_topics"] == {}
    for r in relays:
        assert r.running(), r.log_text()[-2000:]
        r.stop()
        assert not lines(r.log_text(), AIOKAFKA_SPAM)
    print(f"\n[missing topic] 400 rows published to {present} while 400 waited for {missing}; "
          f"relay-1 log lines about it: {lines(relays[0].log_text(), missing)}")


@pytest.mark.timeout(240)
def test_rows_for_a_missing_topic_are_parked_after_the_wait_and_requeued(isolated):
    present = prepare(isolated, "outbox.present", partitions=3)
    missing = isolated.topic("points.never-created")
    invalid = "not a valid topic name!"
    ids = write_interleaved(isolated, [missing, present], 20, keys=5)
    # the writer refuses such a name; another tool writing the table directly does not
    isolated.sql(f"INSERT INTO {isolated.settings.outbox_table} (message_id, message_type, topic, key, payload) "
                 "VALUES (gen_random_uuid()::text, 'ThingHappened', %s, 'k0', '{}')", (invalid,))
    relay = relay_process(isolated, "relay-1", STREAMS_RELAY_MISSING_TOPIC_WAIT="2")
    relay.start()
    relay.wait_ready(60)
    wait_for(lambda: outbox_status(isolated) == {"done": 20, "failed": 21}, 60,
             what="the present topic's rows published, the missing topic's parked")
    reasons = dict(isolated.sql(
        f"SELECT topic, string_agg(DISTINCT last_error, ' | ') FROM {isolated.settings.outbox_table} "
        "WHERE status = 'failed' GROUP BY topic"))
    assert "does not exist" in reasons[missing] and "streams outbox retry" in reasons[missing], reasons
    assert "invalid topic name" in reasons[invalid].lower(), reasons
    fails = dict(isolated.sql(f"SELECT topic, max(fail_count) FROM {isolated.settings.outbox_table} GROUP BY 1"))
    assert fails == {missing: 0, present: 0, invalid: 1}, "waiting for a topic is no attempt; a bad name is one"
    status = json.loads(streams(isolated, "outbox", "status", "--json").stdout)
    assert status["failed"] == 21 and status["waiting"] == 0
    assert len(lines(relay.log_text(), missing, "still does not exist", "parked 20 row(s)")) == 1, \
        relay.log_text()[-3000:]

    run(ensure_topics(isolated.settings, [TopicSpec(missing, 3)]))
    requeued = streams(isolated, "outbox", "retry", "--topic", missing)
    assert requeued.returncode == 0 and "re-queued 20 parked row(s)" in requeued.stdout, requeued.stderr
    wait_for(lambda: outbox_status(isolated) == {"done": 40, "failed": 1}, 60, what="re-queued rows published")
    assert_once_in_id_order(isolated, missing, ids[missing])
    assert_once_in_id_order(isolated, present, ids[present])
    relay.stop()
    assert not lines(relay.log_text(), AIOKAFKA_SPAM)


def relay_in_batch(iso, name: str) -> bool:
    """The relay holds a claim open (its transaction waits for Kafka)."""
    return bool(iso.sql("SELECT 1 FROM pg_stat_activity WHERE application_name = %s "
                        "AND state = 'idle in transaction'", (f"streams-relay {name}",)))


def sigterm_and_wait(proc, limit: float) -> float:
    """SIGTERM ``proc``; seconds until it exited (fails if it is still running after ``limit``)."""
    started = time.monotonic()
    proc.proc.send_signal(signal.SIGTERM)
    try:
        proc.proc.wait(limit)
    except subprocess.TimeoutExpired:
        proc.kill()
        raise AssertionError(f"relay still running {limit:.0f}s after SIGTERM:\n{proc.log_text()[-3000:]}") from None
    return time.monotonic() - started


@pytest.mark.timeout(400)
def test_relay_stops_within_its_bound_while_the_broker_is_down(isolated, servers):
    if servers.kafka is None:
        pytest.skip("needs the suite's own broker (it is stopped and started)")
    sent_before = prepare(isolated, "outbox.sent-before", partitions=3)
    never_sent = prepare(isolated, "outbox.never-sent", partitions=3)  # exists; this relay never sent to it
    before = write_interleaved(isolated, [sent_before], 10)[sent_before]
    # a long publish timeout: without a stop bound the relay would sit in its batch that long
    env = {"STREAMS_RELAY_PUBLISH_TIMEOUT": "120", "STREAMS_RELAY_STOP_TIMEOUT": "5"}
    relay = relay_process(isolated, "relay-1", **env)
    relay.start()
    relay.wait_ready(60)
    wait_for(lambda: done(isolated) == 10, 60, what="the first rows published")

    servers.kafka.down()
    try:
        during = write_interleaved(isolated, [never_sent, sent_before], 20)
        wait_for(lambda: relay_in_batch(isolated, "relay-1"), 60, what="the relay to claim a batch")
        took = sigterm_and_wait(relay, 30)
        assert relay.proc.returncode == 0, relay.log_text()[-3000:]
        # a relay started while the broker is down also stops
        late = relay_process(isolated, "relay-2", **env)
        late.start()
        wait_for(lambda: "not reachable" in late.log_text(), 60, what="relay-2 to find no broker")
        took_late = sigterm_and_wait(late, 30)
        assert late.proc.returncode == 0, late.log_text()[-3000:]
        waiting = outbox_status(isolated)
        fails = isolated.sql(f"SELECT max(fail_count) FROM {isolated.settings.outbox_table}")[0][0]
    finally:
        servers.kafka.up()
    print(f"\n[relay stop] SIGTERM during a batch with the broker down: exited after {took:.1f}s; "
          f"a relay waiting for the broker at start: {took_late:.1f}s; outbox then {waiting}")
    assert waiting == {"done": 10, "pending": 40}, "nothing unacknowledged is marked done, nothing parked"
    assert fails == 0, "the abandoned batch rolled back: its rows are as they were"

    relay.start()
    relay.wait_ready(60)
    wait_for(lambda: done(isolated) == 50, 120, what="every row published after the broker is back")
    relay.stop()
    assert_once_in_id_order(isolated, sent_before, before + during[sent_before])
    assert_once_in_id_order(isolated, never_sent, during[never_sent])


@pytest.mark.timeout(120)
def test_pointer_mode_stops_at_a_missing_topic_without_attempts_and_passes_it_once_parked(isolated):
    import asyncio

    from streams.outbox.pointer import PointerRelay
    from tests.outbox_helpers import relay_running
    from tests.test_outbox import wait_async

    present = prepare(isolated, "outbox.present", partitions=1)
    missing = isolated.topic("points.not-deployed-yet")
    table = isolated.settings.outbox_table
    first = write_interleaved(isolated, [present, missing], 1)  # ids 1 (present), 2 (missing)
    after = write_interleaved(isolated, [present], 1)[present]  # id 3, another key's turn
    settings = isolated.settings.model_copy(update={
        "relay_missing_topic_wait": 2.0, "relay_poll_interval": 0.2, "relay_publish_timeout": 3.0})

    def cursor() -> int | None:
        rows = isolated.sql(f"SELECT last_id FROM {table}_cursor")
        return rows[0][0] if rows else None

    def missing_row() -> tuple:
        return isolated.sql(f"SELECT status, fail_count, topic_missing_since IS NOT NULL, last_error FROM {table} "
                            "WHERE id = 2")[0]

    async def scenario():
        async with relay_running(settings, cls=PointerRelay):
            await wait_async(lambda: cursor() == 1 and missing_row()[2], 30)
            held = cursor(), missing_row(), set((await asyncio.to_thread(kafka_view, isolated, present))[0])
            await wait_async(lambda: cursor() == 3, 60)
            return held

    (held_cursor, held_row, held_sent) = run(scenario())
    assert held_cursor == 1 and held_sent == set(first[present]), "the pointer stops before the missing topic's row"
    assert held_row[:2] == ("pending", 0), "nothing attempted for it"
    status, fails, _stamped, error = missing_row()
    assert (status, fails) == ("failed", 0) and "does not exist" in error
    assert set(kafka_view(isolated, present)[0]) == set(first[present]) | set(after)

"""The reference "push the seller" agent in a separate worker process, on real Kafka and PostgreSQL.

Every claim is checked against the servers: seller pushes are rows in
PostgreSQL, offsets are what the broker holds for the consumer group.
"""

from __future__ import annotations

import pytest

from streams.kafka.admin import end_offsets, produce_envelopes, produce_raw
from tests.harness import Isolated
from tests.helpers import run, wait_for
from tests.reference import PARTITIONS, TOPIC
from tests.reference import create_topics as _create_topics
from tests.reference import offsets as _offsets
from tests.reference import orders as _orders
from tests.reference import push_counts as _push_counts
from tests.reference import wait_committed_to_end as _wait_committed_to_end


def test_each_event_handled_once_and_offsets_committed_to_the_end(isolated: Isolated) -> None:
    n = 1200
    _create_topics(isolated)
    worker = isolated.worker().start()
    worker.wait_ready()
    envelopes = _orders(n)
    run(produce_envelopes(isolated.settings, isolated.topic(TOPIC), envelopes))

    wait_for(lambda: _push_counts(isolated)[1] >= n, 120, what=f"{n} seller pushes")
    ends = _wait_committed_to_end(isolated)
    total, distinct = _push_counts(isolated)
    assert (total, distinct) == (n, n), "every event handled exactly once"
    ids = {r[0] for r in isolated.sql("SELECT message_id FROM seller_push_notifications")}
    assert ids == {e.message_id for e in envelopes}
    # events really spread over the partitions, and each partition's rows match its offsets
    per_partition = dict(isolated.sql("SELECT partition, count(*) FROM seller_push_notifications GROUP BY 1"))
    assert len(ends) == PARTITIONS and sum(ends.values()) == n
    assert per_partition == {p: e for p, e in ends.items() if e}
    assert len(per_partition) == PARTITIONS
    # same key -> same partition (ordering key honoured)
    by_order = isolated.sql("SELECT order_id, count(DISTINCT partition) FROM seller_push_notifications GROUP BY 1")
    assert all(c == 1 for _, c in by_order)
    worker.stop()
    # the order-push-status table: RocksDB files on disk, one entry per order in its compacted changelog
    changelog = f"{isolated.settings.app_id}-order-push-status-changelog"
    changelog_ends = run(end_offsets(isolated.settings, changelog))
    assert len(changelog_ends) == PARTITIONS and sum(changelog_ends.values()) == n
    assert changelog_ends == ends, "table writes go to the changelog partition of the message handled"
    state = isolated.settings.home_path / "worker-1"
    rocksdb_dirs = sorted(p.name for p in state.rglob("order-push-status-*.db"))
    assert rocksdb_dirs == [f"order-push-status-{p}.db" for p in range(PARTITIONS)]
    assert all((d / "CURRENT").exists() for d in state.rglob("order-push-status-*.db"))


@pytest.mark.parametrize("how", ["sigterm", "sigkill"])
def test_stop_mid_stream_and_resume_from_committed_offsets(isolated: Isolated, how: str) -> None:
    n = 6000
    _create_topics(isolated)
    envelopes = _orders(n)
    run(produce_envelopes(isolated.settings, isolated.topic(TOPIC), envelopes))

    # a slow seller API, so that the stop lands mid-stream
    first = isolated.worker("first", AGENTS_SELLER_API_LATENCY_MS="2").start()
    first.wait_ready()
    wait_for(lambda: _push_counts(isolated)[0] >= n // 5, 120, what="some progress")
    if how == "sigterm":
        first.stop()
    else:
        first.kill()
    done_before, _ = _push_counts(isolated)
    _, committed_before = _offsets(isolated)
    assert done_before < n, "the stop must land mid-stream"
    assert sum(committed_before.values()) <= done_before

    second = isolated.worker("second").start()
    second.wait_ready()
    wait_for(lambda: _push_counts(isolated)[1] >= n, 180, what="all events after restart")
    _wait_committed_to_end(isolated)
    total, distinct = _push_counts(isolated)
    assert distinct == n, "nothing skipped"
    repeats = total - distinct
    # at-least-once: only records after the last commit can run twice
    assert repeats <= done_before - sum(committed_before.values())
    print(f"{how}: {done_before} done before the stop, committed {sum(committed_before.values())}, "
          f"repeated after restart: {repeats}")
    second.stop()


def test_bad_records_are_parked_and_the_partition_moves_on(isolated: Isolated) -> None:
    _create_topics(isolated)
    topic = isolated.topic(TOPIC)
    worker = isolated.worker().start()
    worker.wait_ready()
    good_before = _orders(5, "before")
    good_after = _orders(5, "after")
    bad = [
        (b"k-bad-bytes", b"\x00\xff\xfe garbage"),
        (b"k-not-envelope", b'{"hello": "world"}'),
        (b"k-unknown", b'{"message_id": "u-1", "message_type": "OrderShipped", "kind": "event", "payload": {}}'),
        (b"k-invalid", b'{"message_id": "i-1", "message_type": "OrderPlaced", "kind": "event", "payload": {"order_id": ""}}'),
    ]
    run(produce_envelopes(isolated.settings, topic, good_before))
    run(produce_raw(isolated.settings, topic, bad))
    run(produce_envelopes(isolated.settings, topic, good_after))

    wait_for(lambda: _push_counts(isolated)[1] >= 10, 60, what="the good events")
    _wait_committed_to_end(isolated)
    parked = _read_all(isolated, f"{topic}.dlq", expected=len(bad))
    reasons = {r.key: dict(r.headers)["dlq.reason"].decode() for r in parked}
    assert reasons == {
        b"k-bad-bytes": "not_json",
        b"k-not-envelope": "not_envelope",
        b"k-unknown": "unknown_type",
        b"k-invalid": "invalid_payload",
    }
    for record in parked:
        headers = dict(record.headers)
        assert headers["dlq.original.topic"].decode() == topic
        assert int(headers["dlq.original.offset"]) >= 0
        assert headers["dlq.error.message"]
    originals = dict(bad)
    assert all(r.value == originals[r.key] for r in parked), "the original bytes are kept for replay"
    worker.stop()


def _read_all(iso: Isolated, topic: str, expected: int):
    from aiokafka import AIOKafkaConsumer

    async def read():
        consumer = AIOKafkaConsumer(topic, **iso.settings.kafka_client_kwargs(), auto_offset_reset="earliest",
                                    enable_auto_commit=False)
        await consumer.start()
        out = []
        try:
            for _ in range(40):
                batch = await consumer.getmany(timeout_ms=500)
                for records in batch.values():
                    out.extend(records)
                if len(out) >= expected:
                    break
        finally:
            await consumer.stop()
        return out
    return run(read())


@pytest.mark.parametrize("guarantee", ["at_least_once", "exactly_once"])
def test_a_failed_changelog_write_stops_the_worker_and_a_restart_handles_the_record(
        isolated: Isolated, guarantee: str) -> None:
    """The broker refuses the processed-ID entry (changelog topic's max.message.bytes too small):
    the record is not acknowledged, the worker exits with an error, and once the topic is fixed a
    restarted worker handles the record and commits past it."""
    from aiokafka.admin.config_resource import ConfigResource, ConfigResourceType

    from streams.kafka.admin import TopicSpec, admin_client, ensure_topics

    _create_topics(isolated)
    changelog = f"{isolated.settings.app_id}-processed-push_seller-changelog"
    run(ensure_topics(isolated.settings, [TopicSpec(changelog, PARTITIONS, config={
        "cleanup.policy": "compact", "max.message.bytes": "80"})]))
    env = {"STREAMS_PROCESSING_GUARANTEE": guarantee}
    worker = isolated.worker("refused", **env).start()
    worker.wait_ready()
    envelopes = _orders(3)
    run(produce_envelopes(isolated.settings, isolated.topic(TOPIC), envelopes))
    wait_for(lambda: not worker.running(), 90, what="the worker to stop after the refused changelog write")
    assert worker.proc.returncode != 0
    assert "MessageSizeTooLarge" in worker.log_text()
    ends, committed = _offsets(isolated)
    assert sum(committed.values()) < sum(ends.values()), "nothing committed past the refused record"

    async def widen() -> None:
        admin = admin_client(isolated.settings)
        await admin.start()
        try:
            await admin.alter_configs([ConfigResource(ConfigResourceType.TOPIC, changelog,
                                                      {"max.message.bytes": "1048588"})])
        finally:
            await admin.close()
    run(widen())
    again = isolated.worker("fixed", **env).start()
    again.wait_ready()
    wait_for(lambda: _push_counts(isolated)[1] >= 3, 60, what="the 3 events after the restart")
    _wait_committed_to_end(isolated)
    again.stop()

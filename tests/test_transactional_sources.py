"""A handler's topic written by a transactional producer: commit markers sit between the records.

Kafka writes a control record (the transaction's commit marker) into every partition a
transaction touched; a consumer never receives it, so the offsets it is handed jump over
it. The consumer's commits must pass those offsets as soon as the records around them are
handled. The producer here is plain aiokafka with a ``transactional_id``, as another
service (or Kafka Streams, or a Debezium/Connect task with exactly-once) would write.
"""

from __future__ import annotations

import uuid

import pytest
from aiokafka import AIOKafkaProducer

from streams.kafka.admin import committed_offsets, end_offsets
from tests.harness import Isolated
from tests.helpers import run, wait_for
from tests.reference import TOPIC, create_topics, orders, push_counts, read_topic


async def _produce_in_transactions(iso: Isolated, envelopes: list, per_transaction: int) -> None:
    producer = AIOKafkaProducer(**iso.settings.kafka_client_kwargs(), transactional_id=f"tx-{uuid.uuid4().hex[:8]}")
    await producer.start()
    try:
        for start in range(0, len(envelopes), per_transaction):
            async with producer.transaction():
                for envelope in envelopes[start:start + per_transaction]:
                    await producer.send(iso.topic(TOPIC), key=envelope.kafka_key(), value=envelope.to_json())
    finally:
        await producer.stop()


@pytest.mark.parametrize("path", ["batch", "events"])
def test_commits_pass_the_transaction_markers_between_the_records(isolated: Isolated, path: str) -> None:
    create_topics(isolated)
    envelopes = orders(600)
    run(_produce_in_transactions(isolated, envelopes, per_transaction=25))  # 24 transactions, markers between
    topic = isolated.topic(TOPIC)
    last: dict[int, int] = {}
    for record in read_topic(isolated, topic, read_committed=True):
        last[record.partition] = max(last.get(record.partition, -1), record.offset)
    ends = run(end_offsets(isolated.settings, topic))
    assert len(last) == 6 and all(ends[p] == last[p] + 2 for p in last), \
        f"every partition holds markers and ends in one: last records {last}, ends {ends}"

    worker = isolated.worker(STREAMS_CONSUME_PATH=path).start()
    worker.wait_ready()
    wait_for(lambda: push_counts(isolated)[1] >= len(envelopes), 120, what="all 600 orders handled")
    seen: dict[int, int] = {}

    def committed_past_every_record() -> bool:
        got = run(committed_offsets(isolated.settings, isolated.settings.app_id, topic))
        seen.clear()
        seen.update({p: o for (_, p), o in got.items()})
        return all(seen.get(p, 0) >= last[p] + 1 for p in last)

    try:
        wait_for(committed_past_every_record, 60, what="committed offsets past the last record of every partition")
    except AssertionError as exc:
        raise AssertionError(f"{exc}; committed {seen}, last records {last}") from None
    assert push_counts(isolated) == (600, 600)
    worker.stop()

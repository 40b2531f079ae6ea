"""The corrections to faust-streaming that need a broker to show (streams/faust_compat/consumer_fixes.py)."""

from __future__ import annotations

from aiokafka import AIOKafkaProducer, TopicPartition

from streams.faust_compat.consumer_fixes import last_visible_offsets
from streams.kafka.admin import TopicSpec, end_offsets, ensure_topics
from tests.harness import Isolated
from tests.helpers import run


def test_last_visible_offset_skips_transaction_markers_and_aborted_records(isolated: Isolated) -> None:
    topic = isolated.topic("changelog-like")
    run(ensure_topics(isolated.settings, [TopicSpec(topic, 3)]))

    async def write() -> None:
        producer = AIOKafkaProducer(**isolated.settings.kafka_client_kwargs(),
                                    transactional_id=f"{isolated.settings.app_id}-fix-test")
        await producer.start()
        try:
            # partition 0: 5 committed records, then a commit marker (offsets 0-4, marker 5)
            async with producer.transaction():
                for i in range(5):
                    await producer.send_and_wait(topic, b"v%d" % i, partition=0)
            # partition 1: 3 committed, then 400 aborted (more than one read-back window), then markers
            async with producer.transaction():
                for i in range(3):
                    await producer.send_and_wait(topic, b"c%d" % i, partition=1)
            await producer.begin_transaction()
            for i in range(400):
                await producer.send(topic, b"a%d" % i, partition=1)
            await producer.abort_transaction()
            # partition 2: only aborted records
            await producer.begin_transaction()
            await producer.send_and_wait(topic, b"x", partition=2)
            await producer.abort_transaction()
        finally:
            await producer.stop()

    run(write())
    ends = run(end_offsets(isolated.settings, topic))
    assert ends[0] == 6 and ends[1] == 3 + 1 + 400 + 1 and ends[2] == 2, "records plus their markers"
    tps = {TopicPartition(topic, p): e for p, e in ends.items()}
    last = run(last_visible_offsets(isolated.settings, tps, window=64))
    assert {tp.partition: o for tp, o in last.items()} == {0: 4, 1: 2, 2: -1}


def test_stable_end_offsets_stop_at_an_open_transaction(isolated: Isolated) -> None:
    """What a restore under exactly_once aims at for a changelog partition the consumer has not
    fetched yet (Faust took -1, "empty"): the last stable offset, below a transaction still open."""
    from streams.faust_compat.consumer_fixes import stable_end_offsets

    topic = isolated.topic("changelog-open-tx")
    run(ensure_topics(isolated.settings, [TopicSpec(topic, 2)]))

    async def scenario() -> dict[int, int]:
        producer = AIOKafkaProducer(**isolated.settings.kafka_client_kwargs(),
                                    transactional_id=f"{isolated.settings.app_id}-stable-test")
        await producer.start()
        try:
            async with producer.transaction():  # partition 0: offsets 0-2, marker 3
                for i in range(3):
                    await producer.send_and_wait(topic, b"c%d" % i, partition=0)
            await producer.begin_transaction()  # partition 0: open from offset 4
            await producer.send_and_wait(topic, b"open", partition=0)
            stable = await stable_end_offsets(isolated.settings, [TopicPartition(topic, 0), TopicPartition(topic, 1)])
            await producer.abort_transaction()
            return {tp.partition: end for tp, end in stable.items()}
        finally:
            await producer.stop()

    assert run(scenario()) == {0: 4, 1: 0}

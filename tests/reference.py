"""Helpers for tests of the reference app (agents/) running in worker processes."""

from __future__ import annotations

import random
import uuid
from collections import Counter
from decimal import Decimal

from agents.messages import OrderPlaced, registry
from streams.kafka.admin import TopicSpec, committed_offsets, end_offsets, ensure_topics
from streams.kafka.admin import read_topic as kafka_read_topic
from tests.harness import Isolated
from tests.helpers import run, wait_for

TOPIC = "orders.order-placed"
OUTPUT = "sellers.seller-notified"
PARTITIONS = 6  # as declared by agents.app


def orders(n: int, tag: str | None = None, sellers: int = 9) -> list:
    """``n`` OrderPlaced envelopes keyed by order id."""
    tag = tag or uuid.uuid4().hex[:6]
    rng = random.Random(tag)
    return [
        registry.envelope(
            OrderPlaced(order_id=f"{tag}-{i}", seller_id=f"s-{rng.randint(1, sellers)}", buyer_id="b-1",
                        total_amount=Decimal(rng.randint(1, 10_000))),
            key=f"{tag}-{i}",
        )
        for i in range(n)
    ]


def create_topics(iso: Isolated) -> None:
    """What producers do before the first worker ran: the app's topics with their partitions."""
    run(ensure_topics(iso.settings, [
        TopicSpec(iso.topic(TOPIC), PARTITIONS), TopicSpec(iso.topic(TOPIC) + ".dlq", PARTITIONS),
        TopicSpec(iso.topic(OUTPUT), PARTITIONS),
    ]))


def push_counts(iso: Isolated) -> tuple[int, int]:
    """(rows, distinct message ids) in seller_push_notifications."""
    if not iso.sql("SELECT to_regclass('seller_push_notifications') IS NOT NULL")[0][0]:
        return 0, 0
    return iso.sql("SELECT count(*), count(DISTINCT message_id) FROM seller_push_notifications")[0]


def rows_per_message(iso: Isolated) -> Counter:
    return Counter(dict(iso.sql("SELECT message_id, count(*) FROM seller_push_notifications GROUP BY 1")))


def offsets(iso: Isolated, topic: str = TOPIC) -> tuple[dict[int, int], dict[int, int]]:
    full = iso.topic(topic)
    ends = run(end_offsets(iso.settings, full))
    committed = {p: o for (_, p), o in run(committed_offsets(iso.settings, iso.settings.app_id, full)).items()}
    return ends, committed


def committed_to_end(settings, group: str, topic: str) -> bool:
    """True when ``group``'s committed offsets equal the log-end offsets on every partition of ``topic``."""
    ends = run(end_offsets(settings, topic))
    committed = run(committed_offsets(settings, group, topic))
    return bool(ends) and all(committed.get((topic, p), 0) == e for p, e in ends.items())


def wait_committed_to_end(iso: Isolated, timeout: float = 90, topic: str = TOPIC) -> dict[int, int]:
    seen: list = []

    def done():
        ends, committed = offsets(iso, topic)
        seen[:] = [ends, committed]
        return ends if ends and all(committed.get(p, 0) == e for p, e in ends.items()) else None
    try:
        return wait_for(done, timeout, what="committed offsets == log-end offsets")
    except AssertionError as exc:
        for worker in iso.workers:  # their task stacks and consumer state go to their logs
            worker.dump_state()
        raise AssertionError(f"{exc}; ends {seen[0] if seen else '?'}, "
                             f"committed {seen[1] if seen else '?'}") from None


def read_topic(iso: Isolated, topic: str, *, read_committed: bool = False) -> list:
    """Every record now in ``topic`` (full name), from the beginning."""
    return run(kafka_read_topic(iso.settings, topic, read_committed=read_committed))


def processed_ids(iso: Isolated, handler: str = "push_seller") -> dict[str, dict]:
    """The processed-ID table as a fresh node would restore it: its changelog with tombstones applied."""
    import json

    live: dict[str, dict] = {}
    for r in read_topic(iso, f"{iso.settings.app_id}-processed-{handler}-changelog"):
        key = r.key.decode().strip('"')
        if r.value is None:
            live.pop(key, None)
        else:
            live[key] = json.loads(r.value)
    return live

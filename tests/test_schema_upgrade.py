"""A rolling upgrade of a message type across live workers, producers still writing the old version.

Two workers of release 1 (``PaymentTaken`` v1: ``amount``) share the group; a producer
writes v1 messages all along; the workers are replaced one at a time by release 2
(``PaymentTaken`` v2: ``amount_minor`` and ``currency``, an upcaster from v1). Every
message is booked exactly once (the effects table and the ledger's primary key say so),
with the right amount whichever release booked it, nothing is parked, and both releases
booked some.
"""

from __future__ import annotations

import json
import threading
import time
import uuid

import pytest

from streams.kafka.admin import TopicSpec, end_offsets, ensure_topics, produce_raw
from tests.harness import Isolated
from tests.helpers import run, wait_for
from tests.reference import wait_committed_to_end


def _v1(order: int) -> tuple[bytes, bytes]:
    """A v1 message as a producer of the first release writes it (no schema_version: version 1)."""
    key = f"order-{order}"
    return key.encode(), json.dumps({"message_id": str(uuid.uuid4()), "message_type": "PaymentTaken", "kind": "event",
                                     "key": key, "payload": {"order_id": key, "amount": order}}).encode()


def _booked(iso: Isolated) -> int:
    return iso.sql("SELECT count(*) FROM upgrade_ledger")[0][0]


@pytest.mark.timeout(400)
def test_rolling_upgrade_from_v1_to_v2_books_every_payment_once(isolated: Isolated) -> None:
    from tests.apps.upgrade_app import LEDGER

    iso = isolated
    topic = iso.topic("payments")
    run(ensure_topics(iso.settings, [TopicSpec(topic, 4), TopicSpec(topic + ".dlq", 4)]))
    iso.sql(LEDGER)
    env = {"STREAMS_WORKER_APP": "tests.apps.upgrade_app:app"}
    old = [iso.worker(f"v1-{i}", UPGRADE_APP_VERSION="1", **env).start() for i in (1, 2)]
    for w in old:
        w.wait_ready()

    sent: list[int] = []
    stop = threading.Event()

    def produce() -> None:  # v1 all along, 25 messages every 0.3 s
        while not stop.is_set():
            batch = list(range(len(sent), len(sent) + 25))
            run(produce_raw(iso.settings, topic, [_v1(n) for n in batch]))
            sent.extend(batch)
            time.sleep(0.3)

    producer = threading.Thread(target=produce, daemon=True)
    producer.start()
    try:
        wait_for(lambda: _booked(iso) >= 50, 60, what="release 1 booking payments")
        for i, worker in enumerate(old, start=1):  # one at a time: the group always has a live member
            worker.stop()
            iso.worker(f"v2-{i}", UPGRADE_APP_VERSION="2", **env).start().wait_ready()
            count = len(sent)
            wait_for(lambda count=count: _booked(iso) >= count, 90, what="the group catching up after a replacement")
    finally:
        stop.set()
        producer.join(60)
    wait_for(lambda: _booked(iso) >= len(sent), 90, what=f"{len(sent)} payments booked")
    wait_committed_to_end(iso, topic="payments")

    rows = iso.sql("SELECT order_id, amount_minor, currency, release FROM upgrade_ledger")
    assert len(rows) == len(sent) == len({r[0] for r in rows}), "every payment booked exactly once"
    assert all(amount == int(order.split("-")[1]) * 100 and currency == "KRW" for order, amount, currency, _ in rows)
    releases = {release for *_, release in rows}
    assert releases == {1, 2}, f"both releases booked payments: {releases}"
    effects = iso.sql("SELECT count(*), count(DISTINCT message_id) FROM streams_processed_messages")[0]
    assert effects == (len(sent), len(sent))
    assert sum(run(end_offsets(iso.settings, topic + ".dlq")).values()) == 0, "nothing parked"
    print(f"{len(sent)} v1 messages; booked by release 1: {sum(r[3] == 1 for r in rows)}, "
          f"by release 2: {sum(r[3] == 2 for r in rows)}")

"""The relay publishing to RabbitMQ and to Redis Streams (STREAMS_BROKER_ROUTES), killed -9 mid-run:
every row delivered, per-key order kept, re-sent copies carry the same message_id."""

from __future__ import annotations

import pytest

from streams.rabbitmq.topology import GroupTopology
from tests.broker_helpers import order_view, rabbit_declare, rabbit_drain, redis_read
from tests.helpers import run, wait_for
from tests.outbox_helpers import outbox_status, prepare_outbox, relay_process

ROWS = 10_000
KEYS = 200


def _prefill(iso, topic: str, rows: int, keys: int) -> None:
    """Many pending rows at once (one INSERT; the outbox trigger still assigns ids and lanes)."""
    iso.sql(
        f"INSERT INTO {iso.settings.outbox_table} (message_id, message_type, topic, key, payload) "
        "SELECT gen_random_uuid()::text, 'ThingHappened', %s, 'key-' || (g %% %s), jsonb_build_object('g', g) "
        "FROM generate_series(1, %s) AS g", (topic, keys, rows))


@pytest.mark.timeout(300)
@pytest.mark.parametrize("broker", ["rabbitmq", "redis"])
def test_relay_to_broker_killed_mid_run(isolated, broker, request):
    server = request.getfixturevalue("rabbitmq" if broker == "rabbitmq" else "redis_server")
    prepare_outbox(isolated)
    topic = isolated.topic("orders")
    env = {"STREAMS_BROKER_ROUTES": f"{isolated.settings.topic_prefix}*={broker}", "STREAMS_RELAY_BATCH_SIZE": "500",
           "STREAMS_RABBITMQ_LANES": "4",
           "STREAMS_RABBITMQ_URL" if broker == "rabbitmq" else "STREAMS_REDIS_URL": server.url}
    group = GroupTopology(topic, "verify", lanes=4)
    if broker == "rabbitmq":
        run(rabbit_declare(server.url, group))  # the consumer's queues exist before the relay publishes
    _prefill(isolated, topic, ROWS, KEYS)
    relays = [relay_process(isolated, f"relay-{i}", **env) for i in (1, 2)]
    for r in relays:
        r.start()

    def done() -> int:
        return outbox_status(isolated).get("done", 0)

    def in_batch() -> bool:  # relay-2 holds a claimed batch (its transaction is open while it publishes)
        return bool(isolated.sql("SELECT 1 FROM pg_stat_activity WHERE application_name = 'streams-relay relay-2' "
                                 "AND state = 'idle in transaction'"))

    kills = []
    for threshold in (2_000, 6_000):
        wait_for(lambda: done() >= threshold, 120, interval=0.05, what=f"{threshold} rows published")
        wait_for(in_batch, 60, interval=0.002, what="relay-2 in a batch")
        relays[1].kill()  # SIGKILL mid-batch: its claimed rows are neither marked nor committed
        kills.append(done())
        relays[1].start()
    wait_for(lambda: done() == ROWS, 180, interval=0.5, what="every row published")
    for r in relays:
        assert r.running(), r.log_text()[-2000:]
        r.stop()

    held = run(rabbit_drain(server.url, [*group.lane_queues, group.unrouted]) if broker == "rabbitmq"
               else redis_read(server.url, topic))
    assert not [h for h in held if h.place.endswith(".unrouted")], "every message reached a lane"
    copies, per_key, places = order_view(held)
    resent = sum(copies.values()) - len(copies)
    ids = {r[0] for r in isolated.sql(f"SELECT message_id FROM {isolated.settings.outbox_table}")}
    out_of_order = [k for k, v in per_key.items() if v != sorted(v)]
    print(f"\n[relay → {broker}] {ROWS} rows, {KEYS} keys, 2 relays, SIGKILLs at done={kills}: {len(copies)} distinct "
          f"messages, {resent} re-sent copies (same message_id), {len(out_of_order)} keys out of order")
    assert set(copies) == ids, "every committed row reached the broker"
    assert len(per_key) == KEYS
    assert not out_of_order, f"per-key order broken for {out_of_order[:5]}"
    assert all(len(p) == 1 for p in places.values()), "a key spread over several lanes"
    assert outbox_status(isolated) == {"done": ROWS}

"""Handlers on RabbitMQ queues and Redis streams (`streams consume`), against the real servers:
killed -9 mid-stream (every effect once with effects=), hostile records written by the brokers' own
clients (parked with reasons, consumer alive), the broker restarted during consumption (nothing lost),
delayed retries (each level's delay waited, the source going on meanwhile, then the dead letter)."""

from __future__ import annotations

import json
import os
import time

import psycopg
import pytest

from streams.messages.envelope import event
from streams.rabbitmq.messages import lane_of, to_message
from streams.rabbitmq.topology import GroupTopology
from streams.redis_streams.entries import to_fields
from tests.apps.broker_app import FLAKY_DELAYS, SCHEMA
from tests.broker_helpers import consumer_process, consumer_web, rabbit_headers, rabbit_publish, redis_add
from tests.helpers import run, wait_for

KEYS = 20


@pytest.fixture(params=["rabbitmq", "redis"])
def broker(request, isolated):
    """(name, server, env) of the broker under test, the test database's effects schema made."""
    name = request.param
    server = request.getfixturevalue("rabbitmq" if name == "rabbitmq" else "redis_server")
    with psycopg.connect(isolated.settings.dsn, autocommit=True) as conn:
        conn.execute(SCHEMA)
    env = {"STREAMS_RABBITMQ_URL" if name == "rabbitmq" else "STREAMS_REDIS_URL": server.url,
           "STREAMS_RABBITMQ_LANES": "4", "STREAMS_MAX_VALUE_BYTES": "4096", "STREAMS_REDIS_CLAIM_IDLE": "5"}
    return name, server, env


def orders(n: int, start: int = 0, tag: str = "o") -> list:
    """Envelopes whose payload counts up per key (``seq``): effects in that order keep per-key order."""
    return [event("OrderPlaced", {"order_id": f"{tag}-{i}", "seq": i // KEYS}, key=f"key-{i % KEYS}")
            for i in range(start, start + n)]


def publish(name: str, url: str, topic: str, envelopes: list) -> None:
    """The envelopes, written by the broker's own client (as another service would)."""
    if name == "rabbitmq":
        msgs = []
        for env in envelopes:
            key, value, headers = env.to_record()
            msgs.append((to_message(key, value, headers), lane_of(key, env.message_id, 4)))
        run(rabbit_publish(url, topic, msgs))
    else:
        run(redis_add(url, topic, [to_fields(*env.to_record()) for env in envelopes]))


def effects(iso) -> tuple[int, int, list[str]]:
    """(rows, distinct message ids, keys whose first effects are out of seq order)."""
    total, distinct = iso.sql("SELECT count(*), count(DISTINCT message_id) FROM broker_effects")[0]
    rows = iso.sql("SELECT DISTINCT ON (message_id) key, seq, id FROM broker_effects ORDER BY message_id, id")
    per_key: dict[str, list[tuple[int, int]]] = {}
    for key, seq, applied in rows:
        per_key.setdefault(key, []).append((applied, seq))
    bad = [k for k, v in per_key.items() if [s for _, s in sorted(v)] != sorted(s for _, s in v)]
    return total, distinct, bad


@pytest.mark.timeout(300)
def test_consumer_killed_mid_stream_applies_every_effect_once(isolated, broker):
    name, server, env = broker
    topic = isolated.topic("broker.orders")
    consumer = consumer_process(isolated, "consumer", name, "--name", "c1", **env)
    consumer.start().wait_ready(60)  # it declares the queues / the group
    consumer.stop()  # the backlog is published while it is stopped: the kills land mid-stream
    n = 2000
    publish(name, server.url, topic, orders(n))
    consumer.start().wait_ready(60)
    kills = []
    for threshold in (400, 1200):
        wait_for(lambda: effects(isolated)[0] >= threshold, 120, interval=0.05, what=f"{threshold} effects")
        consumer.kill()  # SIGKILL mid-stream: handled messages not yet acknowledged come again
        kills.append(effects(isolated)[0])
        consumer.start().wait_ready(60)
    wait_for(lambda: effects(isolated)[1] >= n, 180, interval=0.5, what="every message's effect")
    consumer.stop()
    total, distinct, out_of_order = effects(isolated)
    log = consumer.log_text()
    lag = _lag(isolated, name, topic, env)
    assert lag["lag"] == 0, lag  # `streams lag` reads the broker: nothing left waiting
    print(f"\n[{name} consumer] {n} messages, SIGKILLs at effects={kills}: {total} effect rows, {distinct} distinct, "
          f"{len(out_of_order)} keys out of order")
    assert (total, distinct) == (n, n), "every effect exactly once"
    assert not out_of_order, f"per-key order broken for {out_of_order[:5]}"
    assert "Traceback" not in log, log[-3000:]


def hostile(name: str) -> list[tuple[str, object]]:
    """(expected dlq.reason, what the broker's own client writes)."""
    good = event("OrderPlaced", {"order_id": "fine", "seq": 0}, key="k")
    unknown = event("NoSuchType", {"x": 1}, key="k")
    bad_payload = event("OrderPlaced", {"order_id": "x"}, key="k")  # seq missing
    cases = [("not_json", b"\xff\xfe not json"), ("not_envelope", b'{"hello": "world"}'),
             ("unknown_type", unknown.to_json()), ("invalid_payload", bad_payload.to_json()),
             ("too_large", good.to_json().replace(b'"fine"', b'"' + b"x" * 5000 + b'"'))]
    if name == "redis":
        cases.append(("not_json", {b"something": b"else\xff"}))  # an entry without a value field
    return cases


@pytest.mark.timeout(180)
def test_hostile_records_are_parked_with_reasons(isolated, broker):
    import aio_pika

    name, server, env = broker
    topic = isolated.topic("broker.orders")
    consumer = consumer_process(isolated, "consumer", name, **env)
    consumer.start().wait_ready(60)
    cases = hostile(name)
    good = orders(1, tag="after-hostile")
    if name == "rabbitmq":
        msgs = [(aio_pika.Message(body), str(i % 4)) for i, (_, body) in enumerate(cases)]
        run(rabbit_publish(server.url, topic, msgs))
    else:
        run(redis_add(server.url, topic, [c if isinstance(c, dict) else {b"value": c, b"key": b"k"}
                                           for _, c in cases]))
    publish(name, server.url, topic, good)
    wait_for(lambda: effects(isolated)[0] == 1, 60, what="the good message handled after the hostile ones")
    assert consumer.running()
    # what it did, on its web views: each parked record counted, the backlog read from the broker
    status, ready = consumer_web(consumer, "/health/ready")
    assert status == 200 and json.loads(ready)["ready"] is True, ready
    wait_for(lambda: json.loads(consumer_web(consumer, "/api/lag")[1])["lag"] == 0, 30,
             what="the broker holding nothing more for the group")
    totals = json.loads(consumer_web(consumer, "/api/metrics")[1])["totals"]
    assert (totals.get("dead_lettered"), totals.get("handled")) == (len(cases), 1), totals
    status, text = consumer_web(consumer, "/metrics")
    assert status == 200, text
    assert f'streams_broker_backlog{{broker="{name}",group="{isolated.settings.app_id}",topic="{topic}"}} 0.0' \
        in text, text
    parked = sum(float(line.rsplit(" ", 1)[1]) for line in text.splitlines()
                 if line.startswith("streams_dead_lettered_total{") and 'handler="apply_order"' in line
                 and f'topic="{topic}"' in line)
    assert parked == len(cases), text
    assert "streams_lag_up 1.0" in text and "streams_worker_ready 1.0" in text, text
    consumer.stop()
    if name == "rabbitmq":
        dlq = GroupTopology(topic, isolated.settings.app_id, 4).dead_letters
        reasons = [h["dlq.reason"] for h in run(rabbit_headers(server.url, dlq))]
    else:
        letters = run(_redis_letters(server.url, topic + ".dlq"))
        reasons = [fields[b"h:dlq.reason"].decode() for fields in letters]
        assert any(fields.get(b"h:redis.field.something") == b"else\xff" for fields in letters), \
            "the fields of an entry without a value are kept with its dead letter"
    print(f"\n[{name} hostile] parked: {reasons}")
    assert sorted(reasons) == sorted(reason for reason, _ in cases)


async def _redis_letters(url: str, stream: str) -> list[dict]:
    import redis.asyncio as aioredis

    client = aioredis.Redis.from_url(url)
    try:
        return [fields for _, fields in await client.xrange(stream)]
    finally:
        await client.aclose()


@pytest.mark.timeout(300)
def test_broker_restart_during_consumption_loses_nothing(isolated, broker):
    name, server, env = broker
    if server.local is None:
        pytest.skip("the broker is an external one (STREAMS_*_URL): the test restarts the project's own")
    topic = isolated.topic("broker.orders")
    consumer = consumer_process(isolated, "consumer", name, **env)
    consumer.start().wait_ready(60)
    publish(name, server.url, topic, orders(600))
    wait_for(lambda: effects(isolated)[0] >= 200, 60, interval=0.05, what="consumption under way")
    server.local.down()  # a clean stop (Redis: the append-only file is flushed), consumer still running
    server.local.up()
    publish(name, server.url, topic, orders(600, start=600))
    wait_for(lambda: effects(isolated)[1] >= 1200, 180, interval=0.5, what="every message's effect")
    assert consumer.running(), consumer.log_text()[-3000:]
    consumer.stop()
    total, distinct, out_of_order = effects(isolated)
    print(f"\n[{name} restart] 1200 messages around a broker restart: {total} effect rows, {distinct} distinct")
    assert (total, distinct) == (1200, 1200)
    assert not out_of_order, _sequence(isolated, out_of_order[0])
    assert "reconnecting" in consumer.log_text() or "retrying" in consumer.log_text()


def _sequence(iso, key: str) -> str:
    """Effects of ``key`` in the order applied (seq, lane, message id): what an order failure shows."""
    rows = iso.sql("SELECT seq, lane, message_id FROM broker_effects WHERE key = %s ORDER BY id", (key,))
    return f"{key}: " + ", ".join(f"{seq}@{lane}" for seq, lane, _ in rows)


def _lag(iso, name: str, topic: str, env: dict[str, str]) -> dict:
    """`streams lag --json` of the app's group on ``topic`` (routed to ``name`` by STREAMS_BROKER_ROUTES)."""
    import json
    import subprocess
    import sys

    from tests.harness import ROOT

    out = subprocess.run([sys.executable, "-m", "streams.cli", "lag", "-g", iso.settings.app_id, "-t", topic, "--json"],
                         env={**os.environ, **iso.env, **env, "STREAMS_BROKER_ROUTES": f"{topic}={name}"},
                         cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    return json.loads(out.stdout)[0]


def _attempts(iso, order_id: str) -> list:
    """When ``flaky_order`` tried ``order_id`` (the database's clock), in order."""
    return [at for (at,) in iso.sql("SELECT at FROM broker_attempts WHERE order_id = %s ORDER BY id", (order_id,))]


@pytest.mark.timeout(240)
def test_delayed_retries_wait_their_delay_while_the_source_goes_on(isolated, broker):
    name, server, env = broker
    topic = isolated.topic("broker.flaky")
    consumer = consumer_process(isolated, "consumer", name, handler="flaky_order", **env)
    consumer.start().wait_ready(60)
    first = [event("OrderPlaced", {"order_id": oid, "seq": 0}, key=oid) for oid in ("flaky-1-a", "flaky-2-b", "doomed-c")]
    publish(name, server.url, topic, first)
    wait_for(lambda: len(_attempts(isolated, "doomed-c")) >= 1, 60, what="the first attempt of doomed-c")
    ok = [event("OrderPlaced", {"order_id": f"ok-{i}", "seq": i}, key=f"ok-{i}") for i in range(20)]
    publish(name, server.url, topic, ok)
    # stopped and started while doomed-c and flaky-2-b wait for their last level (tried twice each, the
    # 20 later orders and flaky-1-a applied): the waiting messages are not lost by it
    wait_for(lambda: len(_attempts(isolated, "doomed-c")) == len(_attempts(isolated, "flaky-2-b")) == 2
             and isolated.sql("SELECT count(*) FROM broker_effects")[0][0] == 21, 60,
             what="the 20 later orders and flaky-1-a applied, doomed-c and flaky-2-b at their last level")
    consumer.stop()
    consumer.start().wait_ready(60)
    if name == "rabbitmq":
        dlq = GroupTopology(topic, isolated.settings.app_id, 4).dead_letters
        letters: list[dict] = []
        wait_for(lambda: letters.extend(run(rabbit_headers(server.url, dlq))) or letters, 60,
                 what="doomed-c's dead letter")
    else:
        wait_for(lambda: run(_redis_letters(server.url, topic + ".dlq")), 60, what="doomed-c's dead letter")
        letters = [{k.decode().removeprefix("h:"): v.decode() for k, v in fields.items() if k.startswith(b"h:")}
                   for fields in run(_redis_letters(server.url, topic + ".dlq"))]
    wait_for(lambda: json.loads(consumer_web(consumer, "/api/lag")[1])["lag"] == 0, 30,
             what="nothing left in the source or retry levels")
    consumer.stop()

    applied = dict(isolated.sql("SELECT message_id, count(*) FROM broker_effects GROUP BY message_id"))
    ids = {e.payload["order_id"]: e.message_id for e in [*first, *ok]}
    assert set(applied) == {ids[o] for o in ids if o != "doomed-c"} and set(applied.values()) == {1}, applied
    tried = {o: _attempts(isolated, o) for o in ids}
    assert [len(tried[o]) for o in ("flaky-1-a", "flaky-2-b", "doomed-c")] == [2, 3, 3], tried
    assert all(len(tried[f"ok-{i}"]) == 1 for i in range(20))
    for order in ("flaky-1-a", "flaky-2-b", "doomed-c"):
        for level, (before, after) in enumerate(zip(tried[order], tried[order][1:], strict=False)):
            waited = (after - before).total_seconds()
            assert waited >= FLAKY_DELAYS[level] - 0.05, f"{order}: retry level {level + 1} after {waited:.2f}s"
    last_ok = max(tried[f"ok-{i}"][0] for i in range(20))
    assert last_ok < tried["doomed-c"][2], "the later orders were handled while doomed-c waited for its last level"
    assert [(d.get("dlq.reason"), d.get("message_id")) for d in letters] == [("handler_error", ids["doomed-c"])], \
        letters


@pytest.mark.timeout(180)
def test_a_redis_retry_entry_waiting_with_one_consumer_is_not_taken_over_by_another(isolated, redis_server):
    """Two consumers of one group, entries idle for 2 s taken over (``XAUTOCLAIM``): the doomed
    message's last level waits 6 s with one of them, which keeps it (its idle time set back while it
    waits), so it is tried 3 times and parked once — not taken over and tried by both."""
    with psycopg.connect(isolated.settings.dsn, autocommit=True) as conn:
        conn.execute(SCHEMA)
    env = {"STREAMS_REDIS_URL": redis_server.url, "STREAMS_REDIS_CLAIM_IDLE": "2"}
    topic = isolated.topic("broker.flaky")
    consumers = [consumer_process(isolated, f"consumer-{n}", "redis", "--name", f"c{n}", handler="flaky_order", **env)
                 for n in (1, 2)]
    for consumer in consumers:
        consumer.start().wait_ready(60)
    doomed = event("OrderPlaced", {"order_id": "doomed-x", "seq": 0}, key="doomed-x")
    publish("redis", redis_server.url, topic, [doomed])
    wait_for(lambda: run(_redis_letters(redis_server.url, topic + ".dlq")), 60, what="the dead letter")
    time.sleep(3)  # a second copy taken over by the other consumer would be tried and parked within this
    letters = run(_redis_letters(redis_server.url, topic + ".dlq"))
    for consumer in consumers:
        consumer.stop()
    tried = _attempts(isolated, "doomed-x")
    assert len(tried) == 3 and len(letters) == 1, (tried, letters)
    assert (tried[2] - tried[1]).total_seconds() >= FLAKY_DELAYS[1] - 0.05
    taken_over = [f"consumer-{n}" for n, c in enumerate(consumers, 1) if "took over entry" in c.log_text()]
    assert not taken_over, taken_over


@pytest.mark.timeout(180)
def test_a_stopped_consumer_finishes_the_message_it_is_handling(isolated, broker):
    """SIGTERM while a handler is inside its effect's transaction (``slow-…`` orders wait there 3 s):
    the consumer finishes it — effect committed, message acknowledged — before it exits."""
    name, server, env = broker
    topic = isolated.topic("broker.orders")
    consumer = consumer_process(isolated, "consumer", name, **env)
    consumer.start().wait_ready(60)
    slow = event("OrderPlaced", {"order_id": "slow-1", "seq": 0}, key="slow-1")
    publish(name, server.url, topic, [slow])
    wait_for(lambda: len(_attempts(isolated, "slow-1")) == 1, 60, what="the slow order's handler started")
    assert consumer.stop() == 0, consumer.log_text()[-3000:]
    assert isolated.sql("SELECT message_id FROM broker_effects") == [(slow.message_id,)], "its effect committed"
    assert _lag(isolated, name, topic, env)["lag"] == 0, "and the message acknowledged"

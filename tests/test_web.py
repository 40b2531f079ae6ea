"""The worker's web views over HTTP, against real workers on the session's Kafka and PostgreSQL.

Two reference-app workers share one consumer group, each serving its views; the
answers are checked against what the servers hold (broker offsets, dead-letter
topics, the outbox table) and against each other (routing by key ownership).
"""

from __future__ import annotations

import json
import time
import urllib.parse
from collections.abc import Iterator
from dataclasses import dataclass, field

import psycopg
import pytest
from prometheus_client.parser import text_string_to_metric_families

from streams.dev.process import free_port
from streams.kafka.admin import TopicSpec, ensure_topics, produce_envelopes, produce_raw
from tests.harness import Isolated
from tests.helpers import run, wait_for
from tests.reference import (
    PARTITIONS,
    TOPIC,
    create_topics,
    offsets,
    orders,
    push_counts,
    wait_committed_to_end,
)
from tests.web_helpers import answers, http, web_worker

#: the tests of this module share one pair of workers (module fixture), so one worker runs them all
pytestmark = pytest.mark.xdist_group("web-views")

TOKEN = "t0ken-for-the-web-views"
TABLE = "order-push-status"
BAD_RECORDS = [
    (b"bad-1", b"\x00\xff not json"),
    (b"bad-2", b'{"hello": "world"}'),
    (b"bad-3", b'{"message_id": "u-1", "message_type": "OrderShipped", "kind": "event", "payload": {}}'),
]


def _metrics(url: str, token: str | None) -> dict[str, list]:
    """Samples of /metrics by name (parsed by prometheus_client's text parser)."""
    reply = http(f"{url}/metrics", token=token)
    assert reply.status == 200, reply.text
    assert reply.headers["Content-Type"].startswith("text/plain; version=0.0.4")
    out: dict[str, list] = {}
    for family in text_string_to_metric_families(reply.text):
        for sample in family.samples:
            out.setdefault(sample.name, []).append(sample)
    return out


def _total(samples: dict[str, list], name: str) -> float:
    return sum(s.value for s in samples.get(name, []))


SECRET_PASSWORD = "sasl-pa55word-never-shown"
DB_PASSWORD = "db-pa55word-never-shown"


@dataclass
class WebPair:
    """Two reference-app workers of one group serving their views, after 240 orders and 3 bad records."""

    iso: Isolated
    url1: str
    url2: str
    envelopes: list
    #: every answer the tests got (checked for secrets last, kept in the artifacts)
    replies: list = field(default_factory=list)

    def get(self, url: str, token: str | None = TOKEN, **kw):
        reply = http(url, token=token, **kw)
        self.replies.append((url, reply))
        assert reply.status != 500, f"{url}: {reply.text}"
        assert reply.headers.get("Content-Type", "").split(";")[0] in (
            "application/json", "text/plain", "text/html"), reply.headers
        return reply

    def table_stats(self) -> dict[str, dict]:
        return {url: self.get(f"{url}/api/tables/{TABLE}").json for url in (self.url1, self.url2)}


@pytest.fixture(scope="module")
def pair(isolated_module: Isolated) -> Iterator[WebPair]:
    iso = isolated_module
    create_topics(iso)
    db_url = iso.env["STREAMS_DATABASE_URL"].replace("postgresql://postgres@", f"postgresql://postgres:{DB_PASSWORD}@")
    env = {"STREAMS_WEB_TOKEN": TOKEN, "STREAMS_KAFKA_SASL_PASSWORD": SECRET_PASSWORD, "STREAMS_DATABASE_URL": db_url}
    (w1, url1), (w2, url2) = web_worker(iso, "w1", **env), web_worker(iso, "w2", **env)
    w1.start()
    w2.start()
    w1.wait_ready()
    w2.wait_ready()
    envelopes = orders(240)
    run(produce_envelopes(iso.settings, iso.topic(TOPIC), envelopes))
    run(produce_raw(iso.settings, iso.topic(TOPIC), BAD_RECORDS))
    wait_for(lambda: push_counts(iso)[1] >= 240, 90, what="240 seller pushes")
    wait_committed_to_end(iso)
    for url in (url1, url2):  # both ready (after a rebalance they may need a moment)
        wait_for(lambda: http(f"{url}/health/ready").status == 200, 60, what=f"{url} ready")
    web = WebPair(iso, url1, url2, envelopes)
    yield web
    with open(iso.artifacts / "responses.txt", "w") as fh:  # the answers, kept as examples
        for url, reply in web.replies:
            fh.write(f"GET {url} -> {reply.status}\n{reply.text[:1500]}\n\n")
    w1.stop()
    w2.stop()


def test_health_and_the_token(pair: WebPair) -> None:
    get, url1 = pair.get, pair.url1
    for url in (pair.url1, pair.url2):
        assert get(f"{url}/health/live", token=None).json["live"] is True
        assert get(f"{url}/health/ready", token=None).json["ready"] is True
    assert get(f"{url1}/api/info", token=None).status == 401
    unauthorized = get(f"{url1}/api/info", token="wrong-token-123")
    assert unauthorized.status == 401 and unauthorized.json["error"] == "unauthorized"
    assert unauthorized.headers["WWW-Authenticate"].startswith("Bearer")
    assert get(f"{url1}/metrics", token=None).status == 401
    assert get(f"{url1}/api/tables/{TABLE}/keys/x", token=None).status == 401
    info = get(f"{url1}/api/info").json
    assert info["app_id"] == pair.iso.settings.app_id and info["auth"] is True
    assert TABLE in info["tables"] and "processed-push_seller" in info["tables"]


def test_each_active_partition_on_one_worker_and_entries_add_up(pair: WebPair) -> None:
    url1, url2 = pair.url1, pair.url2
    stats = pair.table_stats()
    actives = {url: set(s["active_partitions"]) for url, s in stats.items()}
    assert actives[url1] and actives[url2], "the group must be shared by both workers"
    assert actives[url1].isdisjoint(actives[url2]) and actives[url1] | actives[url2] == set(range(PARTITIONS))
    assert sum(s["active_entries"] for s in stats.values()) == 240
    rows = {r["partition"]: r for r in stats[url1]["per_partition"]}
    owner = {p: r["owner"] for p, r in rows.items()}
    assert all(owner[p] == url1 for p in actives[url1]) and all(owner[p] == url2 for p in actives[url2])
    per_partition_db = dict(pair.iso.sql(
        "SELECT partition, count(DISTINCT order_id) FROM seller_push_notifications GROUP BY 1"))
    for url in (url1, url2):
        for r in stats[url]["per_partition"]:
            if r["role"] == "active":
                assert r["entries"] == per_partition_db.get(r["partition"], 0)
    listing = pair.get(f"{url1}/api/tables").json
    assert {t["name"] for t in listing["tables"]} == {TABLE, "processed-push_seller"}


def _first_order_per_partition(iso: Isolated) -> dict[int, tuple[str, str]]:
    return {r[0]: (r[1], r[2]) for r in iso.sql(
        "SELECT DISTINCT ON (partition) partition, order_id, message_id FROM seller_push_notifications "
        "ORDER BY partition, order_id")}


def test_key_lookups_are_answered_by_the_owner(pair: WebPair) -> None:
    get, url1, url2 = pair.get, pair.url1, pair.url2
    actives = {url: set(s["active_partitions"]) for url, s in pair.table_stats().items()}
    by_partition = _first_order_per_partition(pair.iso)
    per_partition_db = dict(pair.iso.sql(
        "SELECT partition, count(DISTINCT order_id) FROM seller_push_notifications GROUP BY 1"))
    for asked, other in ((url1, url2), (url2, url1)):
        partition = next(p for p in sorted(actives[other]) if p in by_partition)
        order_id, message_id = by_partition[partition]
        reply = get(f"{asked}/api/tables/{TABLE}/keys/{order_id}")
        assert reply.status == 200, reply.text
        body = reply.json
        assert body["served_by"] == other, f"{order_id} (partition {partition}) should be answered by {other}"
        assert body["partition"] == partition and body["role"] == "active"
        assert body["value"]["message_id"] == message_id and body["value"]["partition"] == partition
        # the processed-ID table: asked anywhere, answered by the worker holding the entry as active
        processed = get(f"{asked}/api/processed/push_seller/{message_id}").json
        assert processed["outcome"] == "handled" and processed["served_by"] == other
        assert processed["partition"] == partition and processed["role"] == "active"
        assert processed["attempts"] == 1 and processed["at"] <= time.time()
        # a page of the other worker's partition comes from that worker
        page = get(f"{asked}/api/tables/{TABLE}/items?partition={partition}&page_size=500").json
        assert page["served_by"] == other and page["total"] == per_partition_db[partition]
        assert order_id in {item["key"] for item in page["items"]}


def test_pages_cover_this_workers_partitions(pair: WebPair) -> None:
    get, url1 = pair.get, pair.url1
    total1 = pair.table_stats()[url1]["active_entries"]
    first = get(f"{url1}/api/tables/{TABLE}/items?page=1&page_size=7").json
    assert first["total"] == total1 and first["pages"] == -(-total1 // 7) and len(first["items"]) == 7
    last = get(f"{url1}/api/tables/{TABLE}/items?page={first['pages']}&page_size=7").json
    assert len(last["items"]) == total1 - 7 * (first["pages"] - 1)
    all_keys = set()
    for n in range(1, first["pages"] + 1):
        all_keys |= {i["key"] for i in get(f"{url1}/api/tables/{TABLE}/items?page={n}&page_size=7").json["items"]}
    assert len(all_keys) == total1


def test_errors_are_4xx_with_a_json_reason_never_500(pair: WebPair) -> None:
    get, url1, url2 = pair.get, pair.url1, pair.url2
    by_partition = _first_order_per_partition(pair.iso)
    some_key = by_partition[min(by_partition)][0]
    cases = {
        f"{url1}/api/tables/no-such-table": 404,
        f"{url1}/api/tables/no-such-table/keys/{some_key}": 404,
        f"{url1}/api/tables/no-such-table/items": 404,
        f"{url1}/api/tables/{TABLE}/keys/never-seen-key": 404,
        f"{url1}/api/tables/{TABLE}/keys/" + "k" * 2000: 400,
        f"{url1}/api/tables/{TABLE}/items?page=0": 400,
        f"{url1}/api/tables/{TABLE}/items?page=abc": 400,
        f"{url1}/api/tables/{TABLE}/items?page=999": 404,
        f"{url1}/api/tables/{TABLE}/items?page_size=0": 400,
        f"{url1}/api/tables/{TABLE}/items?page_size=501": 400,
        f"{url1}/api/tables/{TABLE}/items?partition=6": 400,
        f"{url1}/api/tables/{TABLE}/items?partition=-1": 400,
        f"{url1}/api/tables/{TABLE}/items?partition=x": 400,
        f"{url1}/api/processed/no_such_handler/abc": 404,
        f"{url1}/api/processed/push_seller/" + "m" * 2000: 400,
        f"{url1}/api/processed/push_seller/never-processed-id": 404,
        f"{url1}/api/deadletters/no.such.topic": 404,
        f"{url1}/api/deadletters?recent=abc": 400,
        f"{url1}/api/deadletters?recent=1000": 400,
        f"{url1}/api/no-such-endpoint": 404,
        f"{url1}/nothing/here": 404,
    }
    for url, status in cases.items():
        reply = get(url)
        assert reply.status == status, f"{url}: {reply.status} {reply.text}"
        assert reply.headers["Content-Type"].startswith("application/json"), url
        assert reply.json["error"] and reply.json["detail"], url
    not_processed = get(f"{url2}/api/processed/push_seller/never-processed-id").json
    assert not_processed["processed"] is False
    for method in ("POST", "PUT", "DELETE"):
        reply = get(f"{url1}/api/tables/{TABLE}", method=method)
        assert reply.status == 405 and reply.json["error"] == "method_not_allowed", method


def test_lag_is_what_the_broker_holds(pair: WebPair) -> None:
    iso = pair.iso
    lag = pair.get(f"{pair.url2}/api/lag").json
    ends, committed = offsets(iso)
    rows = {p["partition"]: p for p in lag["partitions"] if p["topic"] == iso.topic(TOPIC)}
    assert lag["group"] == iso.settings.app_id and set(rows) == set(range(PARTITIONS))
    assert {p: r["end"] for p, r in rows.items()} == ends
    assert {p: r["committed"] for p, r in rows.items()} == committed
    assert lag["total_lag"] == 0 and lag["members"] == 2


def test_dead_letters(pair: WebPair) -> None:
    iso = pair.iso
    dlq = pair.get(f"{pair.url1}/api/deadletters").json
    assert dlq["total"] == 3
    topic = dlq["topics"][0]
    assert topic["topic"] == iso.topic(TOPIC) + ".dlq" and topic["count"] == 3
    assert sorted(d["reason"] for d in topic["recent"]) == ["not_envelope", "not_json", "unknown_type"]
    one = pair.get(f"{pair.url1}/api/deadletters/{urllib.parse.quote(iso.topic(TOPIC))}?recent=1").json
    assert one["count"] == 3 and len(one["recent"]) == 1


def test_outbox_then_metrics_that_move(pair: WebPair) -> None:
    """Changes what the other views show: runs after them (the module's tests share one worker)."""
    iso, get, url1, url2 = pair.iso, pair.get, pair.url1, pair.url2
    # --- outbox: missing table said clearly, then real figures ------------------------------
    missing = get(f"{url1}/api/outbox")
    assert missing.status == 200 and missing.json["exists"] is False and "does not exist" in missing.json["detail"]
    from streams.outbox import migrate, write_message

    with psycopg.connect(iso.settings.dsn) as conn:
        migrate(conn)
        with conn.transaction():
            for env_ in orders(4, "outbox"):
                write_message(conn, env_, topic=iso.topic(TOPIC))
    box = get(f"{url1}/api/outbox").json
    assert box["exists"] is True and box["pending"] == 4 and box["failed"] == 0
    assert box["oldest_pending_age_s"] >= 0

    # --- /metrics parses; counters match what happened, and move ---------------------------
    before = {url: _metrics(url, TOKEN) for url in (url1, url2)}
    assert sum(_total(m, "streams_handled_total") for m in before.values()) == 240
    assert sum(_total(m, "streams_dead_lettered_total") for m in before.values()) == 3
    assert sum(_total(m, "streams_processing_seconds_count") for m in before.values()) >= 243
    for m in before.values():
        assert _total(m, "streams_worker_ready") == 1
        assert _total(m, "streams_lag_up") == 1 and _total(m, "streams_consumer_lag") == 0
        assert len(m["streams_consumer_lag"]) == PARTITIONS
        assert _total(m, "streams_outbox_pending") == 4 and _total(m, "streams_dead_letters") == 3
        assert {s.labels["role"] for s in m["streams_table_entries"]} <= {"active", "standby", "unassigned"}
    run(produce_envelopes(iso.settings, iso.topic(TOPIC), orders(60)))
    run(produce_raw(iso.settings, iso.topic(TOPIC), BAD_RECORDS[:2]))
    run(produce_envelopes(iso.settings, iso.topic(TOPIC), pair.envelopes[:10]))  # repeats: duplicates

    dup_before = sum(_total(m, "streams_duplicate_total") for m in before.values())
    records_before = sum(_total(m, "streams_processing_seconds_count") for m in before.values())

    def moved():
        after = {url: _metrics(url, TOKEN) for url in (url1, url2)}
        handled = sum(_total(m, "streams_handled_total") for m in after.values())
        dead = sum(_total(m, "streams_dead_lettered_total") for m in after.values())
        dup = sum(_total(m, "streams_duplicate_total") for m in after.values()) - dup_before
        return after if (handled, dead, dup) == (300, 5, 10) else None
    after = wait_for(moved, 60, interval=1, what="counters at 300 handled, 5 dead-lettered, 10 more duplicates")
    assert sum(_total(m, "streams_processing_seconds_count") for m in after.values()) == records_before + 72
    labels = {tuple(sorted(s.labels)) for m in after.values() for s in m["streams_handled_total"]}
    assert labels == {("handler", "partition", "topic")}


def test_nothing_secret_in_any_answer(pair: WebPair) -> None:
    """Every view asked here and by the tests before (the answers are kept in the artifacts)."""
    for path in ("/api/info", "/api/tables", f"/api/tables/{TABLE}", "/api/lag", "/api/deadletters", "/api/outbox",
                 "/api/metrics", "/metrics", "/health/ready", "/"):
        pair.get(f"{pair.url1}{path}")
    for url, reply in pair.replies:
        for secret in (SECRET_PASSWORD, DB_PASSWORD, TOKEN):
            assert secret.encode() not in reply.body, f"{url} leaks a secret"


def test_readiness_false_while_a_big_changelog_recovers_then_true(isolated: Isolated) -> None:
    """A worker with an empty data dir restores a 100,000-entry table: /health/ready says 503
    (with the records left) while it does, 200 after; no token configured, so none is needed."""
    iso = isolated
    n = 100_000
    create_topics(iso)
    changelog = f"{iso.settings.app_id}-{TABLE}-changelog"
    run(ensure_topics(iso.settings, [TopicSpec(changelog, PARTITIONS, config={"cleanup.policy": "compact"})]))
    # as a handler writes them: JSON key and value, in the partition of the record key
    records = ((f"key-{i}", json.dumps({"message_id": f"m-{i}", "seller_id": "s-1", "offset": i}).encode())
               for i in range(n))
    run(_produce_fast(iso, changelog, records))
    # nothing is handled here, so the database may as well be unreachable: the outbox view must say so
    dead_db = f"postgresql://postgres:unreachable-db-pa55@127.0.0.1:{free_port()}/nothing"
    # the restore after joining, which readiness reports (a warm-up before joining runs before the web server)
    worker, url = web_worker(iso, "restorer", STREAMS_DATABASE_URL=dead_db, STREAMS_WARMUP_BEFORE_JOIN="false")
    worker.start()
    wait_for(lambda: answers(f"{url}/health/live"), 60, interval=0.1, what="the web server")
    seen_not_ready = []
    started = time.monotonic()
    while time.monotonic() - started < 120:
        reply = http(f"{url}/health/ready")
        if reply.status == 200:
            break
        assert reply.status == 503 and reply.json["ready"] is False, reply.text
        seen_not_ready.append(reply.json)
        time.sleep(0.2)
    assert reply.status == 200 and reply.json["ready"] is True, reply.text
    recovering = [r for r in seen_not_ready if any(x.startswith("recovering tables") for x in r["reasons"])]
    assert recovering, f"never saw the recovery (not-ready answers: {seen_not_ready[-3:]})"
    left = max(r["recovery"]["active_remaining"] for r in recovering)
    print(f"not ready {len(seen_not_ready)} times, {len(recovering)} while recovering "
          f"(up to {left} changelog records left); ready after {time.monotonic() - started:.1f}s")
    worker.wait_ready(30)
    # no token configured: the views answer without one
    stats = http(f"{url}/api/tables/{TABLE}")
    # ~16,700 entries a partition: sizes are RocksDB's estimates (no scan), within 1 % here
    assert stats.status == 200 and abs(stats.json["active_entries"] - n) <= n * 0.01, stats.json["active_entries"]
    assert all(r["entries_estimated"] for r in stats.json["per_partition"])
    assert stats.json["recovering"] is False and sorted(stats.json["active_partitions"]) == list(range(PARTITIONS))
    key = http(f"{url}/api/tables/{TABLE}/keys/key-4242").json
    assert key["value"]["message_id"] == "m-4242" and key["served_by"] == url
    outbox = http(f"{url}/api/outbox")
    assert outbox.status == 503 and outbox.json["error"] == "unavailable", outbox.text
    assert "unreachable-db-pa55" not in outbox.text and "could not read the outbox" in outbox.json["detail"]
    metrics = http(f"{url}/metrics")
    assert metrics.status == 200 and "unreachable-db-pa55" not in metrics.text
    samples = {s.name: s.value for f in text_string_to_metric_families(metrics.text) for s in f.samples}
    assert samples["streams_outbox_up"] == 0 and samples["streams_worker_ready"] == 1
    assert samples["streams_lag_up"] == 1
    entries = sum(s.value for f in text_string_to_metric_families(metrics.text) for s in f.samples
                  if s.name == "streams_table_entries" and s.labels["table"] == TABLE)
    assert abs(entries - n) <= n * 0.01
    worker.stop()


async def _produce_fast(iso: Isolated, topic: str, records) -> None:
    """Publish many small records quickly (batched, acks=all) as table writes: the JSON-encoded key
    in the partition Kafka's default partitioner gives the plain key (the source record's partition)."""
    from aiokafka import AIOKafkaProducer
    from aiokafka.partitioner import DefaultPartitioner

    every = list(range(PARTITIONS))

    producer = AIOKafkaProducer(**iso.settings.kafka_client_kwargs(), acks="all", linger_ms=20,
                                max_batch_size=256 * 1024)
    await producer.start()
    try:
        futures = []
        for key, value in records:
            partition = DefaultPartitioner()(key.encode(), every, every)
            futures.append(await producer.send(topic, value=value, key=json.dumps(key).encode(), partition=partition))
            if len(futures) >= 5000:
                for f in futures:
                    await f
                futures.clear()
        for f in futures:
            await f
    finally:
        await producer.stop()

"""Records from clients outside this project, fed to a real worker through a raw producer.

A few hundred hostile records — random bytes, random JSON, nesting thousands of
levels deep, integers too long to convert, envelopes without ``message_id`` or
with wrong types, unknown types, bad payloads, tombstones, values over the size
limit (one too large even for a dead letter), header names that are not UTF-8 —
interleaved with valid envelopes, some of those with odd keys and headers. The
worker must park every bad record with the reason it was given, handle every
valid one exactly once, stay alive, and commit to the log end.
"""

from __future__ import annotations

import json
import random
import string
import subprocess
import sys
from collections import Counter

import pytest

from streams.kafka.admin import TopicSpec, ensure_topics
from streams.kafka.failure_log import original_value, read_dead_letters
from tests.harness import ROOT, Isolated
from tests.helpers import run, wait_for
from tests.raw_producer import produce
from tests.reference import (
    TOPIC,
    create_topics,
    orders,
    push_counts,
    rows_per_message,
    wait_committed_to_end,
)

MAX_VALUE_BYTES = 100_000
CHANGES = "cdc.orders.public.cdc_orders"
#: 999,799 bytes: a dead letter of it (value plus the dlq.* headers) exceeds the 1,000,000 bytes the worker's
#: producer sends, while the topic (1,048,588 bytes per record) takes the record itself
HUGE = b"[" + b"0," * 499_898 + b"0]"


def _random_json(rng: random.Random, depth: int = 0):
    kind = rng.randrange(7 if depth < 4 else 4)
    if kind == 0:
        return rng.choice([None, True, False])
    if kind == 1:
        return rng.randint(-10 ** 12, 10 ** 12)
    if kind == 2:
        return rng.random() * 10 ** rng.randint(-5, 5)
    if kind == 3:
        return "".join(rng.choice(string.printable + "é한\u0000") for _ in range(rng.randint(0, 20)))
    if kind == 4:
        return [_random_json(rng, depth + 1) for _ in range(rng.randint(0, 4))]
    return {rng.choice(["message_id", "message_type", "kind", "payload", "x", ""]): _random_json(rng, depth + 1)
            for _ in range(rng.randint(0, 4))}


def _envelope(**fields) -> dict:
    data = {"message_id": fields.pop("message_id", "bad-" + "".join(random.choices(string.hexdigits, k=12))),
            "message_type": "OrderPlaced", "kind": "event", "key": "k",
            "payload": {"order_id": "o", "seller_id": "s", "buyer_id": "b", "total_amount": "1.00"}}
    data.update(fields)
    return data


def hostile_records(rng: random.Random) -> list[tuple[str, dict]]:
    """(expected dlq.reason, record) for every bad record."""
    out: list[tuple[str, dict]] = []

    def add(reason: str, value: bytes | None, *, key: bytes | None = None, headers=()) -> None:
        out.append((reason, {"key": key if key is not None else rng.randbytes(6), "value": value,
                             "headers": list(headers)}))

    for _ in range(60):
        add("not_json", b"\xff" + rng.randbytes(rng.randint(0, 300)))  # never UTF-8
    for _ in range(50):
        value = _random_json(rng)
        if isinstance(value, dict) and "message_id" in value and "message_type" in value:
            value["kind"] = 7  # never a valid envelope
        add("not_envelope", json.dumps(value).encode())
    for depth in (100, 900, 5000, 15_000):
        add("too_deep", ("[" * depth + "]" * depth).encode())
        add("too_deep", json.dumps(_envelope(payload="@")).replace('"@"', '{"a":' * depth + "1" + "}" * depth)
            .encode())
    for _ in range(5):
        add("not_json", json.dumps(_envelope()).replace('"1.00"', "9" * 5000).encode())
    for _ in range(20):
        data = _envelope()
        del data["message_id"]
        add("not_envelope", json.dumps(data).encode())
    for field, bad in [("message_id", 5), ("message_id", None), ("message_id", ""), ("message_type", ["x"]),
                       ("kind", "gossip"), ("occurred_at", "yesterday"), ("occurred_at", 10 ** 30),
                       ("headers", [1]), ("key", {"a": 1}), ("unexpected", 1)] * 2:
        add("not_envelope", json.dumps(_envelope(**{field: bad})).encode())
    for _ in range(10):
        add("unknown_type", json.dumps(_envelope(message_type="OrderShipped")).encode())
    for payload in [{}, {"order_id": ""}, {"order_id": "o", "seller_id": "s", "buyer_id": "b", "total_amount": -1},
                    {"order_id": "o", "seller_id": "s", "buyer_id": "b", "total_amount": "lots"},
                    {"order_id": 5, "seller_id": None, "buyer_id": [], "total_amount": {}}] * 4:
        add("invalid_payload", json.dumps(_envelope(payload=payload)).encode())
    for _ in range(5):
        add("not_json", None)  # tombstone
        add("not_json", b"")
    for _ in range(3):
        add("too_large", json.dumps(_envelope(payload={"blob": "x" * 200_000})).encode())
    # too large even for a dead letter (the worker's producer sends at most 1,000,000 bytes):
    # parked without its value, which a replay reads back from the source topic
    add("too_large", HUGE)
    for _ in range(10):
        add("bad_headers", json.dumps(_envelope()).encode(),
            headers=[(b"\xff\xfe" + rng.randbytes(2), b"v"), (b"ok", b"fine")])
    return out


def valid_records(rng: random.Random, n: int) -> tuple[list, list[dict]]:
    """``n`` valid OrderPlaced envelopes as raw records, some with odd headers; and the envelopes."""
    envelopes = orders(n)
    records = []
    for i, env in enumerate(envelopes):
        key, value, headers = env.to_record()
        headers = [(k.encode(), v) for k, v in headers]
        if i % 10 == 1:  # retry headers on a source topic mean nothing: ignored
            headers += [(b"retry.level", b"abc"), (b"retry.original.offset", rng.randbytes(3))]
        if i % 10 == 2:
            headers += [(b"nullable", None), (b"binary", rng.randbytes(8))]
        if i % 10 == 3:  # duplicate and odd header names, still UTF-8
            headers += [(b"message_type", b"Nonsense"), ("ünïcödé".encode(), b"")]
        records.append({"key": key, "value": value, "headers": headers})
    return envelopes, records


@pytest.mark.parametrize("guarantee", ["at_least_once", "exactly_once"])
def test_hostile_records_are_parked_and_valid_ones_handled_once(isolated: Isolated, guarantee: str) -> None:
    iso = isolated
    rng = random.Random(20261201)
    create_topics(iso)
    worker = iso.worker(STREAMS_MAX_VALUE_BYTES=str(MAX_VALUE_BYTES), STREAMS_PROCESSING_GUARANTEE=guarantee).start()
    worker.wait_ready()

    bad = hostile_records(rng)
    envelopes, good = valid_records(rng, 250)
    ignored = [{"key": b"n", "value": json.dumps(_envelope(message_type="SellerNotified", payload={
        "order_id": "o", "seller_id": "s"})).encode(), "headers": []} for _ in range(5)]
    mixed = [("handled", r) for r in good] + bad + [("ignored", r) for r in ignored]
    rng.shuffle(mixed)
    where = produce(iso.settings.bootstrap_servers, iso.topic(TOPIC), [r for _, r in mixed])
    expected = {pos: reason for pos, (reason, _) in zip(where, mixed, strict=False) if reason not in ("handled", "ignored")}
    assert len(expected) == len(bad) >= 200

    wait_for(lambda: push_counts(iso)[1] >= len(good), 120, what=f"{len(good)} seller pushes")
    wait_committed_to_end(iso)
    assert worker.running(), worker.log_text()[-3000:]

    # every valid one handled exactly once
    assert push_counts(iso) == (len(good), len(good))
    assert max(rows_per_message(iso).values()) == 1
    handled = {r[0] for r in iso.sql("SELECT message_id FROM seller_push_notifications")}
    assert handled == {e.message_id for e in envelopes}

    # every bad one parked once, with the reason it deserved
    letters = run(read_dead_letters(iso.settings, iso.topic(TOPIC)))  # (read_uncommitted: nothing aborted here)
    parked = {(int(dl.header("dlq.original.partition")), int(dl.header("dlq.original.offset"))): dl
              for dl in letters}
    assert len(letters) == len(parked) == len(expected)
    wrong = {pos: (reason, parked[pos].header("dlq.reason")) for pos, reason in expected.items()
             if pos not in parked or parked[pos].header("dlq.reason") != reason}
    assert not wrong, wrong
    assert all(dl.header("dlq.error.message") for dl in letters)
    print("parked by reason:", dict(Counter(dl.header("dlq.reason") for dl in letters)))

    # the one too large for a dead letter: parked without its value, which is still readable
    omitted = [dl for dl in letters if "dlq.value_omitted" in dl.headers]
    assert len(omitted) == 1 and omitted[0].value is None
    value = run(original_value(iso.settings, omitted[0]))
    assert value == HUGE
    assert int(omitted[0].header("dlq.value_omitted")) == len(value)
    # the others keep their original bytes, and escaped header names for names that were not UTF-8
    for (reason, record), pos in zip(mixed, where, strict=False):
        dl = parked.get(pos)
        if dl is not None and omitted[0] is not dl:
            assert dl.value == (record["value"] or None) or (record["value"] == b"" and dl.value in (b"", None))
            if reason == "bad_headers":
                assert any(name.startswith("\\xff\\xfe") for name in dl.headers)
                assert "streams.bad_header_names" not in dl.headers

    # the failure log's own tools read every letter, the ones parked because no parser takes them included
    cli = [sys.executable, "-m", "streams.cli", "dlq"]
    listed = subprocess.run([*cli, "list", iso.topic(TOPIC), "--json"], env=worker.env, cwd=ROOT,
                            capture_output=True, text=True, timeout=120)
    assert listed.returncode == 0 and not listed.stderr.strip(), listed.stderr[-3000:]
    lines = [json.loads(line) for line in listed.stdout.splitlines()]
    assert len(lines) == len(letters)
    assert Counter(line["reason"] for line in lines) == Counter(dl.header("dlq.reason") for dl in letters)
    deepest = next(dl for dl in letters if dl.header("dlq.reason") == "too_deep" and len(dl.value or b"") > 20_000)
    shown = subprocess.run([*cli, "show", iso.topic(TOPIC), f"{deepest.partition}:{deepest.offset}"], env=worker.env, cwd=ROOT,
                           capture_output=True, text=True, timeout=120)
    assert shown.returncode == 0 and '"reason": "too_deep"' in shown.stdout, shown.stderr[-3000:]


def _change(i: int, *, key_id: int | None = None, **row) -> tuple[bytes, bytes]:
    """A Debezium change event of ``public.cdc_orders`` as Connect's JSON converter writes it."""
    after = {"id": i, "status": "placed", "version": 1, "note": None, **row}
    value = {"before": None, "after": after, "op": "c", "ts_ms": 1796191154068,
             "source": {"version": "3.4.3.Final", "connector": "postgresql", "name": "cdc.orders",
                        "ts_ms": 1796191153830, "snapshot": "false", "db": "app", "schema": "public",
                        "table": "cdc_orders", "txId": 1000 + i, "lsn": 50_000 + i}}
    return json.dumps({"id": i if key_id is None else key_id}).encode(), json.dumps(value).encode()


def test_hostile_change_records_are_parked_and_the_worker_keeps_going(isolated: Isolated) -> None:
    """Keys and values a Connect cluster, a misconfigured converter or another client could write
    to a change topic: each one is parked (never a crash loop) and the valid changes are handled once."""
    from tests.apps.cdc_app import SCHEMA

    iso = isolated
    iso.sql(SCHEMA)
    topic = iso.topic(CHANGES)
    run(ensure_topics(iso.settings, [TopicSpec(topic, 3), TopicSpec(topic + ".dlq", 3)]))
    worker = iso.worker("changes", STREAMS_WORKER_APP="tests.apps.cdc_app:app").start()
    worker.wait_ready()

    good = [_change(i) for i in range(1, 61)]
    deep_key = b'{"id": ' + b"[" * 20_000 + b"]" * 20_000 + b"}"
    hostile: list[tuple[str, bytes | None, bytes]] = [
        ("too_deep", deep_key, _change(1001)[1]),                                  # a key nested past the limit
        ("too_deep", b"[" * 5000 + b"]" * 5000, _change(1002)[1]),
        ("too_deep", _change(1003)[0], b'{"op": "c", "source": ' + b"[" * 3000 + b"]" * 3000 + b"}"),
        ("not_change_event", _change(1004)[0], json.dumps({"op": ["c"], "source": {}}).encode()),
        ("not_change_event", _change(1005)[0], b"null"),
        ("schema_change", *_change(1006, status=["not", "a", "string"])),
        ("schema_change", *_change(1007, version="seven")),
    ]
    out_of_range = json.loads(_change(1008)[1])
    out_of_range["source"]["ts_ms"] = 10 ** 20                                    # a commit time no clock shows
    hostile.append(("not_change_event", _change(1008)[0], json.dumps(out_of_range).encode()))
    records = [{"key": k, "value": v, "headers": []} for k, v in good[:30]]
    records += [{"key": k, "value": v, "headers": []} for _, k, v in hostile]
    records += [{"key": k, "value": v, "headers": []} for k, v in good[30:]]
    where = produce(iso.settings.bootstrap_servers, topic, records)
    expected = dict(zip(where[30:30 + len(hostile)], [reason for reason, _, _ in hostile], strict=True))

    wait_for(lambda: iso.sql("SELECT count(*) FROM order_changes")[0][0] >= len(good), 120,
             what=f"{len(good)} change effects")
    wait_committed_to_end(iso, topic=CHANGES)
    assert worker.running(), worker.log_text()[-3000:]
    assert iso.sql("SELECT count(*), count(DISTINCT order_id) FROM order_changes") == [(len(good), len(good))]
    letters = run(read_dead_letters(iso.settings, topic))
    parked = {(int(dl.header("dlq.original.partition")), int(dl.header("dlq.original.offset"))):
              dl.header("dlq.reason") for dl in letters}
    assert parked == expected

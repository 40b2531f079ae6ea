"""Idempotent consumption on real Kafka and PostgreSQL, workers as separate processes.

Handler calls are rows in PostgreSQL (one per call, so a repeat shows as a second
row); the processed-ID table is read from its changelog topic, as a fresh node
would restore it; offsets come from the broker.
"""

from __future__ import annotations

import json
import random
import re
import subprocess
import sys
import time
from collections import Counter

import pytest

from streams.kafka.admin import produce_envelopes
from tests.harness import ROOT, Isolated
from tests.helpers import run, wait_for
from tests.reference import (
    OUTPUT,
    TOPIC,
    create_topics,
    orders,
    processed_ids,
    push_counts,
    read_topic,
    rows_per_message,
    wait_committed_to_end,
)


def _produce(iso: Isolated, envelopes) -> None:
    run(produce_envelopes(iso.settings, iso.topic(TOPIC), envelopes))


def test_duplicates_are_handled_once_across_partitions_and_two_workers(isolated: Isolated) -> None:
    create_topics(isolated)
    workers = [isolated.worker("w1").start(), isolated.worker("w2").start()]
    for w in workers:
        w.wait_ready()
    envelopes = orders(600)
    # every message published twice, a third of them three times, interleaved
    batch = envelopes + envelopes[::-1] + envelopes[::3]
    _produce(isolated, batch)
    wait_for(lambda: push_counts(isolated)[1] >= len(envelopes), 120, what="all messages")
    wait_committed_to_end(isolated)
    total, distinct = push_counts(isolated)
    assert (total, distinct) == (600, 600), f"{total - distinct} duplicate handler calls"
    partitions = {p for (p,) in isolated.sql("SELECT DISTINCT partition FROM seller_push_notifications")}
    assert len(partitions) == 6
    # both workers owned partitions of the topic (the group really was shared)
    row = re.compile(r"\| " + re.escape(isolated.topic(TOPIC)) + r" +\| \{")
    assert all(row.search(w.log_text()) for w in workers)
    # the Kafka output: one SellerNotified per order
    notified = read_topic(isolated, isolated.topic(OUTPUT))
    causes = [json.loads(r.value)["causation_id"] for r in notified]
    assert sorted(causes) == sorted(e.message_id for e in envelopes)
    wait_for(lambda: len(processed_ids(isolated)) == 600, 30, what="600 processed-ID entries in the changelog")
    for w in workers:
        w.stop()


@pytest.mark.parametrize("guarantee", [
    "at_least_once",
    "exactly_once",
])
def test_crash_test_sigkill_five_times(isolated: Isolated, guarantee: str) -> None:
    n, kills = 10_000, 5
    create_topics(isolated)
    envelopes = orders(n)
    ids = {e.message_id for e in envelopes}
    _produce(isolated, envelopes)
    rng = random.Random(guarantee)
    env = {"STREAMS_PROCESSING_GUARANTEE": guarantee, "AGENTS_SELLER_API_LATENCY_MS": "0.5"}
    thresholds = sorted(rng.sample(range(n // 12, n - n // 12), kills))
    for _i, threshold in enumerate(thresholds):
        worker = isolated.worker("crashy", **env).start()
        worker.wait_ready()
        # kill at a random moment once progress passes the threshold (jittered)
        wait_for(lambda: push_counts(isolated)[0] >= threshold, 180, what=f"progress past {threshold}")
        time.sleep(rng.uniform(0, 0.3))
        worker.kill()
    final = isolated.worker("crashy", **env).start()
    final.wait_ready()
    wait_for(lambda: push_counts(isolated)[1] >= n, 300, what=f"all {n} messages after {kills} kills")
    wait_committed_to_end(isolated, timeout=120)
    total, distinct = push_counts(isolated)
    handled = set(rows_per_message(isolated))
    lost = ids - handled
    repeated = total - distinct
    def complete_table():
        t = processed_ids(isolated)
        return t if ids <= set(t) else None
    table = wait_for(complete_table, 60, what="every handled id in the processed-ID changelog")
    missing_in_table = ids - set(table)
    summary = (f"{guarantee}: messages={n} kills={kills} lost={len(lost)} repeated handler calls={repeated} "
               f"processed-ID entries={len(table)} missing={len(missing_in_table)}")
    if guarantee == "exactly_once":
        # transactions a killed worker left open hold read_committed readers back until the
        # broker aborts them (aiokafka's 60 s transaction timeout), then everything is visible
        seen_records: list = []

        def committed_output():
            records = read_topic(isolated, isolated.topic(OUTPUT), read_committed=True)
            found = [json.loads(r.value)["causation_id"] for r in records]
            seen_records[:] = records
            return found if ids <= set(found) else None
        started = time.monotonic()
        causes = wait_for(committed_output, 150, interval=5, what="all outputs visible to read_committed")
        summary += f" (outputs fully visible after {time.monotonic() - started:.0f}s)"
        duplicates_out = len(causes) - len(set(causes))
        summary += f" output(read_committed)={len(causes)} duplicates in output={duplicates_out}"
        if duplicates_out:
            counts = Counter(causes)
            summary += " duplicated records: " + ", ".join(
                f"{r.partition}@{r.offset}" for r in seen_records
                if counts[json.loads(r.value)["causation_id"]] > 1)
    print(summary)
    (isolated.artifacts / "crash-test.txt").write_text(summary + "\n")
    assert not lost, f"lost {len(lost)} messages"
    assert repeated == 0, f"the push row commits with its processed id (effects=): {summary}"
    assert not missing_in_table, f"{len(missing_in_table)} handled ids missing from the processed-ID table"
    if guarantee == "exactly_once":
        assert set(causes) == ids and duplicates_out == 0, summary
    final.stop()


def test_rebalance_second_worker_joins_and_leaves(isolated: Isolated) -> None:
    n = 6000
    create_topics(isolated)
    env = {"AGENTS_SELLER_API_LATENCY_MS": "2"}
    first = isolated.worker("first", **env).start()
    first.wait_ready()
    envelopes = orders(n)
    _produce(isolated, envelopes)
    wait_for(lambda: push_counts(isolated)[0] >= n // 5, 120, what="progress before the join")
    second = isolated.worker("second", **env).start()
    second.wait_ready()
    wait_for(lambda: push_counts(isolated)[0] >= n // 2, 120, what="progress with two workers")
    second.stop()
    # publish duplicates of already handled messages after the rebalance
    early = envelopes[:300]
    before = rows_per_message(isolated)
    assert all(before[e.message_id] >= 1 for e in early)
    _produce(isolated, early)
    wait_for(lambda: push_counts(isolated)[1] >= n, 180, what="all messages after the leave")
    wait_committed_to_end(isolated)
    after = rows_per_message(isolated)
    assert len(after) == n, "no message lost"
    assert all(after[e.message_id] == before[e.message_id] for e in early), "re-published duplicates suppressed"
    total, distinct = push_counts(isolated)
    print(f"rebalance: {n} messages, repeated handler calls across join+leave: {total - distinct}")
    assert total == distinct, "the push row commits with its processed id (effects=): no repeat across rebalances"
    first.stop()


def test_fresh_node_rebuilds_the_table_and_still_suppresses_old_duplicates(isolated: Isolated) -> None:
    create_topics(isolated)
    old = isolated.worker("old-node").start()
    old.wait_ready()
    envelopes = orders(800)
    _produce(isolated, envelopes)
    wait_for(lambda: push_counts(isolated)[1] >= 800, 120, what="first pass")
    wait_committed_to_end(isolated)
    old.stop()
    fresh = isolated.worker("fresh-node")  # empty data dir
    assert not (isolated.settings.home_path / "fresh-node").exists()
    fresh.start()
    fresh.wait_ready()
    # rebuilt from the changelogs: before joining (the warm-up, the default) or by Faust's recovery after
    log = fresh.log_text()
    assert "warmed up before joining" in log or "Restoring state from changelog topics" in log
    _produce(isolated, envelopes)  # every one a duplicate
    _produce(isolated, orders(50, "new"))
    wait_for(lambda: push_counts(isolated)[1] >= 850, 120, what="the new messages")
    wait_committed_to_end(isolated)
    total, distinct = push_counts(isolated)
    assert (total, distinct) == (850, 850), "old duplicates suppressed by the rebuilt table"
    fresh.stop()


def test_expired_ids_leave_the_table_and_the_changelog(isolated: Isolated) -> None:
    retention = 3.0
    create_topics(isolated)
    worker = isolated.worker("w", STREAMS_DEDUP_RETENTION=str(retention)).start()
    worker.wait_ready()
    first = orders(200, "first")
    _produce(isolated, first)
    sizes = []
    for i in range(8):  # a steady stream of new ids for ~12 s
        _produce(isolated, orders(200, f"b{i}"))
        time.sleep(1.5)
        sizes.append(len(processed_ids(isolated)))
    wait_committed_to_end(isolated)
    total_ids = 200 * 9
    # live entries are bounded by rate x retention (~133/s x 3 s, more after a catch-up burst when
    # the machine is busy: up to ~700 seen), not by everything ever seen (1,800 without expiry)
    assert max(sizes[-4:]) < total_ids / 2, f"table keeps growing: {sizes}"
    # an expired id is no longer a duplicate: the same message is handled again
    _produce(isolated, first[:10])
    wait_for(lambda: all(rows_per_message(isolated)[e.message_id] == 2 for e in first[:10]), 60,
             what="expired ids handled again")
    # and the changelog itself shrinks once the cleaner compacts the tombstones away
    changelog = f"{isolated.settings.app_id}-processed-push_seller-changelog"

    def compacted():
        _produce(isolated, orders(20, f"tick{time.monotonic()}"))  # rolls segments forward
        return len(read_topic(isolated, changelog)) < total_ids
    wait_for(compacted, 120, interval=3, what="changelog compaction")
    print(f"expiry: live entries over time {sizes}; changelog records now "
          f"{len(read_topic(isolated, changelog))} for {total_ids + 10}+ ids written")
    worker.stop()


def test_handler_failures_are_parked_and_a_fixed_message_replays_once(isolated: Isolated) -> None:
    create_topics(isolated)
    broken = isolated.worker("broken", AGENTS_SELLER_API_FAILING_SELLERS="s-1").start()
    broken.wait_ready()
    envelopes = orders(120, sellers=4)
    failing = {e.message_id for e in envelopes if e.payload.seller_id == "s-1"}
    assert failing
    _produce(isolated, envelopes)
    wait_for(lambda: push_counts(isolated)[1] >= len(envelopes) - len(failing), 120, what="the healthy sellers")
    wait_committed_to_end(isolated)
    parked = read_topic(isolated, isolated.topic(TOPIC) + ".dlq")
    assert {dict(r.headers)["message_id"].decode() for r in parked} == failing
    h = dict(parked[0].headers)
    assert h["dlq.reason"] == b"handler_error" and h["dlq.error.type"] == b"SellerApiUnavailable"
    assert h["dlq.attempts"] == b"3" and b"seller_push.py" in h["dlq.traceback"]
    assert h["dlq.first_failed_at"] <= h["dlq.failed_at"]
    # a producer's repeat of a parked message does not flood the dead-letter topic
    _produce(isolated, [e for e in envelopes if e.message_id in failing][:3])
    wait_committed_to_end(isolated)
    assert len(read_topic(isolated, isolated.topic(TOPIC) + ".dlq")) == len(failing)
    broken.stop()

    # the seller API is fixed: restart and replay from the failure log through the CLI
    fixed = isolated.worker("fixed").start()
    fixed.wait_ready()
    cli = [sys.executable, "-m", "streams.cli", "dlq"]
    env = {**fixed.env}
    listed = subprocess.run([*cli, "list", isolated.topic(TOPIC), "--json"], env=env, cwd=ROOT,
                            capture_output=True, text=True, check=True).stdout.splitlines()
    assert {json.loads(line)["message_id"] for line in listed} == failing
    one = sorted(failing)[0]
    shown = subprocess.run([*cli, "show", isolated.topic(TOPIC), one], env=env, cwd=ROOT,
                           capture_output=True, text=True, check=True).stdout
    assert '"reason": "handler_error"' in shown and "seller API returned 503" in shown
    dry = subprocess.run([*cli, "replay", isolated.topic(TOPIC), "--type", "OrderPlaced", "--dry-run"], env=env,
                         cwd=ROOT, capture_output=True, text=True, check=True).stdout
    assert f"{len(failing)} dead letter(s) selected" in dry
    for _ in range(2):  # replaying twice still handles each message once
        out = subprocess.run([*cli, "replay", isolated.topic(TOPIC), "--type", "OrderPlaced"], env=env,
                             cwd=ROOT, capture_output=True, text=True, check=True).stdout
        assert f"replayed {len(failing)}" in out
    wait_for(lambda: push_counts(isolated)[1] >= len(envelopes), 120, what="replayed messages")
    wait_committed_to_end(isolated)
    counts = rows_per_message(isolated)
    assert all(counts[m] == 1 for m in failing), "each fixed message handled exactly once"
    assert push_counts(isolated) == (len(envelopes), len(envelopes))
    fixed.stop()

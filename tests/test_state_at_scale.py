"""The processed-ID table at scale: restores in write batches (streams.faust_compat.restore).

Real broker, real RocksDB: a changelog is written the way workers leave it (JSON keys and values,
overwrites, tombstones; under exactly_once in transactions, some of them aborted), workers with
empty data dirs restore it, and their RocksDB databases are then read back key by key.
"""

from __future__ import annotations

import json
import random
import re
import time
from pathlib import Path

import pytest
import rocksdict
from aiokafka import AIOKafkaProducer

from streams.consume.dedup import changelog_configs
from streams.kafka.admin import TopicSpec, committed_offsets, end_offsets, ensure_topics, produce_envelopes
from streams.kafka.groups import describe_group
from tests.apps.state_app import PARTITIONS, TOPIC, StatePing, registry
from tests.harness import Isolated
from tests.helpers import run, wait_for
from tests.web_helpers import answers, http, web_worker

APP = {"STREAMS_WORKER_APP": "tests.apps.state_app:app"}
TABLE = "processed-state-ping"
OFFSET_KEY = b"__faust\0offset__"

#: partition -> key -> value (None: deleted), as a reader of the committed records ends up with
Expected = dict[int, dict[bytes, bytes | None]]


def _changelog(iso: Isolated) -> str:
    return f"{iso.settings.app_id}-{TABLE}-changelog"


def _entry(i: int, rng: random.Random) -> tuple[bytes, bytes]:
    value = {"at": 1_700_000_000.0 + i, "outcome": rng.choice(["handled", "dead_lettered"]), "p": i % PARTITIONS,
             "o": i, "attempts": rng.randint(1, 3)}
    return json.dumps(f"id-{i}").encode(), json.dumps(value).encode()


async def _write_changelog(iso: Isolated, n: int, *, transactional: bool, seed: int = 7) -> tuple[Expected, dict[int, int]]:
    """``n`` new ids spread over the partitions, then overwrites and tombstones of some of them;
    with ``transactional`` in transactions of 2,000 records, every third one aborted (its
    records, new ids as well as overwrites and deletes, must not reach a table). Returns what
    a table must hold and the offset of each partition's last committed record."""
    rng = random.Random(seed)
    kwargs = {"transactional_id": f"{iso.settings.app_id}-changelog-writer"} if transactional else {}
    producer = AIOKafkaProducer(**iso.settings.kafka_client_kwargs(), acks="all", linger_ms=10,
                                max_batch_size=256 * 1024, **kwargs)
    await producer.start()
    expected: Expected = {p: {} for p in range(PARTITIONS)}
    last: dict[int, int] = {}
    topic = _changelog(iso)
    ops: list[tuple[int, bytes, bytes | None]] = []
    for i in range(n):
        key, value = _entry(i, rng)
        ops.append((i % PARTITIONS, key, value))
    for _ in range(n // 10):  # overwrites and tombstones of earlier ids, in the same partition
        i = rng.randrange(n)
        key, value = _entry(i, rng)
        ops.append((i % PARTITIONS, key, None if rng.random() < 0.5 else value))
    try:
        for start in range(0, len(ops), 2_000):
            chunk = ops[start:start + 2_000]
            abort = transactional and (start // 2_000) % 3 == 2
            if transactional:
                await producer.begin_transaction()
            futures = [await producer.send(topic, key=key, value=value, partition=p) for p, key, value in chunk]
            sent = [await f for f in futures]
            if transactional:
                await (producer.abort_transaction() if abort else producer.commit_transaction())
            if abort:
                continue
            for (p, key, value), md in zip(chunk, sent, strict=True):
                expected[p][key] = value
                last[p] = max(last.get(p, -1), md.offset)
    finally:
        await producer.stop()
    return expected, last


def _db_path(data_dir: Path, partition: int) -> Path:
    found = list(data_dir.rglob(f"{TABLE}-{partition}.db"))
    assert len(found) == 1, f"{TABLE}-{partition}.db under {data_dir}: {found}"
    return found[0]


def _read_table(data_dir: Path) -> tuple[dict[int, dict[bytes, bytes]], dict[int, int]]:
    """Every partition's entries and persisted offset, read from a stopped worker's RocksDB."""
    tables, offsets = {}, {}
    for p in range(PARTITIONS):
        db = rocksdict.Rdict(str(_db_path(data_dir, p)), options=rocksdict.Options(raw_mode=True),
                             access_type=rocksdict.AccessType.read_only())
        try:
            items = dict(db.items())
        finally:
            db.close()
        offset = items.pop(OFFSET_KEY, None)
        offsets[p] = int(offset) if offset is not None else -1
        tables[p] = items
    return tables, offsets


def _present(expected: Expected) -> dict[int, dict[bytes, bytes]]:
    return {p: {k: v for k, v in entries.items() if v is not None} for p, entries in expected.items()}


def _restore(iso: Isolated, label: str, path: str, **env: str) -> Path:
    worker = iso.worker(label, **APP, STREAMS_RESTORE_PATH=path, **env).start()
    worker.wait_ready(300)
    assert worker.stop() == 0
    return Path(worker.env["STREAMS_WORKER_DATA_DIR"])


@pytest.mark.parametrize("guarantee", ["at_least_once", "exactly_once"])
def test_a_batch_restore_builds_the_table_the_event_path_builds(isolated: Isolated, guarantee: str) -> None:
    iso = isolated
    run(ensure_topics(iso.settings, [TopicSpec(iso.topic(TOPIC), PARTITIONS),
                                     TopicSpec(_changelog(iso), PARTITIONS, config=changelog_configs(7 * 86400.0))]))
    expected, last = run(_write_changelog(iso, 60_000, transactional=guarantee == "exactly_once"))
    env = {"STREAMS_PROCESSING_GUARANTEE": guarantee, "STREAMS_WARMUP_BEFORE_JOIN": "false"}
    events_dir = _restore(iso, "events", "events", **env)
    batch_dir = _restore(iso, "batch", "batch", **env)
    warm_dir = _restore(iso, "warmed", "batch", **{**env, "STREAMS_WARMUP_BEFORE_JOIN": "true"})
    by_events, events_offsets = _read_table(events_dir)
    by_batch, batch_offsets = _read_table(batch_dir)
    by_warmup, warmup_offsets = _read_table(warm_dir)
    want = _present(expected)
    assert sum(map(len, want.values())) > 30_000  # (a third of the exactly_once transactions aborted)
    for p in range(PARTITIONS):
        assert by_batch[p] == want[p], f"partition {p}: the batch restore differs from the committed records"
        assert by_events[p] == by_batch[p], f"partition {p}: the two restore paths differ"
        assert by_warmup[p] == by_batch[p], f"partition {p}: the warm-up before joining differs"
    assert batch_offsets == events_offsets == warmup_offsets == last
    log = iso.workers[1].log_text()
    assert "use write batches" in log and "Restore complete" in log
    assert "warming up" not in log and "warmed up before joining" in iso.workers[2].log_text()


def test_a_worker_killed_mid_restore_resumes_where_its_last_batch_ended(isolated: Isolated) -> None:
    """Each write batch carries the partition's persisted offset, so a SIGKILL leaves every partition
    at a consistent prefix of its changelog, and the restarted worker reads on from there."""
    iso = isolated
    run(ensure_topics(iso.settings, [TopicSpec(iso.topic(TOPIC), PARTITIONS),
                                     TopicSpec(_changelog(iso), PARTITIONS, config=changelog_configs(7 * 86400.0))]))
    n = 200_000
    expected, last = run(_write_changelog(iso, n, transactional=False))
    # small fetches (16 KiB a partition: about 130 records each), so the restore takes many batches
    env = {**APP, "STREAMS_CONSUMER_MAX_FETCH_SIZE": "16384", "STREAMS_WARMUP_BEFORE_JOIN": "false"}
    worker, url = web_worker(iso, "restorer", **env)
    worker.start()
    wait_for(lambda: answers(f"{url}/health/live"), 120, interval=0.1, what="the web server")
    total = sum(last.values()) + PARTITIONS

    def restoring() -> int | None:
        reply = http(f"{url}/health/ready")
        left = (reply.json or {}).get("recovery", {}).get("active_remaining") if reply.status == 503 else None
        return left if left and left < total * 0.7 else None

    left = wait_for(restoring, 240, interval=0.05, what="the restore under way, 30 % done")
    worker.kill()
    partial, offsets = _read_table(Path(worker.env["STREAMS_WORKER_DATA_DIR"]))
    assert any(-1 < offsets[p] < last[p] for p in range(PARTITIONS)), (offsets, last, left)
    # every partition holds exactly the records up to its persisted offset: replay them to compare
    records = _replay_until(expected_log=run(_read_log(iso)), offsets=offsets)
    for p in range(PARTITIONS):
        assert partial[p] == records[p], f"partition {p}: data and persisted offset {offsets[p]} disagree"
    worker.start()
    worker.wait_ready(300)
    assert "Reading Starts At" in worker.log_text()
    assert worker.stop() == 0
    restored, final_offsets = _read_table(Path(worker.env["STREAMS_WORKER_DATA_DIR"]))
    assert restored == _present(expected)
    assert final_offsets == last


async def _read_log(iso: Isolated) -> dict[int, list[tuple[int, bytes, bytes | None]]]:
    """The changelog as it is: (offset, key, value) per partition."""
    from aiokafka import AIOKafkaConsumer, TopicPartition

    consumer = AIOKafkaConsumer(**iso.settings.kafka_client_kwargs(), enable_auto_commit=False)
    await consumer.start()
    try:
        tps = [TopicPartition(_changelog(iso), p) for p in range(PARTITIONS)]
        consumer.assign(tps)
        await consumer.seek_to_beginning(*tps)
        ends = await consumer.end_offsets(tps)
        out: dict[int, list[tuple[int, bytes, bytes | None]]] = {p: [] for p in range(PARTITIONS)}
        deadline = time.monotonic() + 120
        while [tp for tp in tps if await consumer.position(tp) < ends[tp]]:
            assert time.monotonic() < deadline, "could not read the changelog back"
            for tp, batch in (await consumer.getmany(timeout_ms=1000, max_records=50_000)).items():
                out[tp.partition].extend((r.offset, r.key, r.value) for r in batch)
        return out
    finally:
        await consumer.stop()


def _replay_until(expected_log: dict[int, list[tuple[int, bytes, bytes | None]]],
                  offsets: dict[int, int]) -> dict[int, dict[bytes, bytes]]:
    out: dict[int, dict[bytes, bytes]] = {}
    for p, records in expected_log.items():
        table: dict[bytes, bytes | None] = {}
        for offset, key, value in records:
            if offset > offsets[p]:
                break
            table[key] = value
        out[p] = {k: v for k, v in table.items() if v is not None}
    return out


def _reading_starts(log: str) -> dict[int, int]:
    """The last "Reading Starts At - Active" table Faust logged: changelog partition → offset."""
    table = log.rsplit("Reading Starts At - Active", 1)[-1].split("\n\n", 1)[0]
    rows = re.findall(r"^\|\s*(?:\S+changelog|〃)\s*\|\s*(\d+)\s*\|\s*(-?\d+)\s*\|", table, re.MULTILINE)
    return {int(p): int(o) for p, o in rows}


@pytest.mark.parametrize("standbys", [1, 0], ids=["standby", "no-standby"])
def test_after_a_graceful_leave_the_survivor_resumes_from_its_standby_and_dedup_holds(
        isolated: Isolated, tmp_path: Path, standbys: int) -> None:
    """Two workers; A leaves (SIGTERM). B takes A's partitions: with a standby replica (the
    default) it restores only what its copy lacks — not from offset 0 — and a message A handled,
    delivered again, is skipped. ``no-standby`` (``STREAMS_STANDBY_REPLICAS=0``) shows the
    restore from the start that the first assertion catches; dedup holds there too."""
    iso = isolated
    topic = iso.topic(TOPIC)
    run(ensure_topics(iso.settings, [TopicSpec(topic, PARTITIONS)]))
    seen = tmp_path / "seen.txt"
    env = {**APP, "TEST_SEEN_FILE": str(seen), "STREAMS_STANDBY_REPLICAS": str(standbys)}
    a = iso.worker("worker-a", **env, STREAMS_KAFKA_CLIENT_ID="worker-a").start()
    a.wait_ready(180)
    b, url_b = web_worker(iso, "worker-b", **env, STREAMS_KAFKA_CLIENT_ID="worker-b")
    b.start()
    b.wait_ready(180)
    envelopes = [registry.envelope(StatePing(n=i), key=f"k-{i}") for i in range(600)]
    run(produce_envelopes(iso.settings, topic, envelopes))

    def lines() -> list[str]:
        return seen.read_text().splitlines() if seen.exists() else []

    wait_for(lambda: len(lines()) >= 600, 120, what="600 messages handled")
    group = run(describe_group(iso.settings, iso.settings.app_id))
    a_partitions = sorted(p for m in group.members if m.client_id == "worker-a" for t, p in m.partitions if t == topic)
    assert a_partitions, group

    def standbys_current() -> bool:
        stats = http(f"{url_b}/api/tables/{TABLE}").json
        rows = [r for r in stats["per_partition"] if r["partition"] in a_partitions]
        return all(r["role"] == "standby" and r["standby_lag"] == 0 and r["entries"] for r in rows)

    if standbys:
        wait_for(standbys_current, 60, what=f"worker-b's standby copies of {a_partitions} current")
    mark = len(b.log_text())
    assert a.stop() == 0
    wait_for(lambda: "Worker ready" in b.log_text()[mark:], 120, what="worker-b ready with every partition")
    starts = _reading_starts(b.log_text()[mark:])
    if standbys:
        assert starts and all(starts.get(p, -1) >= 0 for p in a_partitions), \
            f"worker-b restored {a_partitions} from scratch: reading starts at {starts}"
    else:  # without a copy, B reads A's partitions from the start (what the assertion above catches)
        assert starts and all(starts.get(p) == -1 for p in a_partitions), starts
    # a message A handled comes again: B skips it
    handled_by_a = {line.split()[0] for line in lines() if line.split()[1] == str(a.pid)}
    again = next(e for e in envelopes if str(e.message_id) in handled_by_a)
    run(produce_envelopes(iso.settings, topic, [again]))
    ends = {(topic, p): o for p, o in run(end_offsets(iso.settings, topic)).items()}
    wait_for(lambda: run(committed_offsets(iso.settings, iso.settings.app_id, topic)) == ends, 60,
             what="worker-b past the repeated message")
    assert sum(1 for line in lines() if line.split()[0] == str(again.message_id)) == 1


def test_a_joining_worker_warms_up_before_it_joins_and_takes_over_without_a_restore(isolated: Isolated) -> None:
    """B joins a group whose table holds 60,000 ids: it copies the changelogs before it joins, so the
    partitions it takes over start reading at its copy's offsets, not at the start."""
    iso = isolated
    run(ensure_topics(iso.settings, [TopicSpec(iso.topic(TOPIC), PARTITIONS),
                                     TopicSpec(_changelog(iso), PARTITIONS, config=changelog_configs(7 * 86400.0))]))
    run(_write_changelog(iso, 60_000, transactional=False))
    a = iso.worker("worker-a", **APP).start()
    a.wait_ready(300)
    b = iso.worker("worker-b", **APP).start()
    b.wait_ready(300)
    log = b.log_text()
    warm, joined = log.find("warmed up before joining"), log.find("Executing _on_partitions_assigned")
    assert -1 < warm < joined, "the warm-up came before the group join"
    starts = _reading_starts(log)
    assert starts and all(offset > 0 for offset in starts.values()), f"B restored from scratch: {starts}"

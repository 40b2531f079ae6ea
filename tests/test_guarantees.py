"""What the README promises, on schedules the happy path never takes: attempts that fail after
sending, effects whose commit fails, records that wait long for their retry or for a sink —
on a real broker and PostgreSQL, with worker processes (``tests/apps/guarantees_app.py``)."""

from __future__ import annotations

import itertools
import json
import time
from collections import Counter

import pytest

from streams.consume.outputs import output_message_id
from streams.kafka.admin import TopicSpec, committed_offsets, end_offsets, ensure_topics, produce_envelopes
from tests.harness import Isolated
from tests.helpers import run, wait_for
from tests.reference import read_topic

APP = "tests.apps.guarantees_app:app"


def start_worker(iso: Isolated, guarantee: str, label: str = "w", **env: str):
    from tests.apps.guarantees_app import SCHEMA

    iso.sql(SCHEMA)
    run(ensure_topics(iso.settings, [TopicSpec(iso.topic(t), 3) for t in
                                     ("work", "work.dlq", "work.retry.1", "other", "other.dlq", "results")]))
    worker = iso.worker(label, STREAMS_WORKER_APP=APP, STREAMS_PROCESSING_GUARANTEE=guarantee, **env).start()
    worker.wait_ready()
    return worker


def jobs(modes: list[str], first: int = 0) -> list:
    from tests.apps.guarantees_app import Job, registry

    return [registry.envelope(Job(n=first + i, mode=mode), key=f"job-{first + i}") for i, mode in enumerate(modes)]


def results_by_job(iso: Isolated) -> dict[int, list[tuple[int, str]]]:
    """(part, message_id) of every Result a read_committed consumer sees, per job."""
    out: dict[int, list[tuple[int, str]]] = {}
    for record in read_topic(iso, iso.topic("results"), read_committed=True):
        data = json.loads(record.value)
        out.setdefault(data["payload"]["job"], []).append((data["payload"]["part"], data["message_id"]))
    return out


def committed(iso: Isolated, topic: str) -> dict[int, int]:
    full = iso.topic(topic)
    return {p: o for (_, p), o in run(committed_offsets(iso.settings, iso.settings.app_id, full)).items()}


@pytest.mark.parametrize("guarantee, path", [("at_least_once", "batch"), ("exactly_once", "batch"),
                                             ("exactly_once", "events")])
def test_only_a_successful_attempt_sends_its_outputs_with_ids_from_the_input(isolated: Isolated,
                                                                               guarantee: str, path: str) -> None:
    """A handler sends two outputs and then fails twice before succeeding: exactly two outputs,
    whose ids derive from the input's id and their position. One that sends and is dead-lettered
    leaves no output; nor does one whose effect's database commit fails after it sent. (Both
    consume paths: the events path hands each delivered message to the same lane.)"""
    iso = isolated
    worker = start_worker(iso, guarantee, STREAMS_CONSUME_PATH=path)
    modes = ["flaky"] * 30 + ["ok"] * 30 + ["doomed"] * 5 + ["commit_fails"] * 5
    envelopes = jobs(modes)
    run(produce_envelopes(iso.settings, iso.topic("work"), envelopes))

    def parked() -> list:
        try:
            return read_topic(iso, iso.topic("work.dlq"))
        except LookupError:
            return []
    wait_for(lambda: len(parked()) >= 10, 120, what="10 dead letters (doomed and commit_fails)")
    wait_for(lambda: sum(len(v) for v in results_by_job(iso).values()) >= 120, 60, what="120 results")
    attempts = Counter(dict(iso.sql("SELECT n, count(*) FROM attempts GROUP BY n")))
    assert all(attempts[e.payload.n] == 3 for e in envelopes if e.payload.mode == "flaky"), attempts
    assert all(attempts[e.payload.n] == 6 for e in envelopes if e.payload.mode in ("doomed", "commit_fails"))

    got = results_by_job(iso)
    consumer = f"{iso.settings.app_id}:handle"
    for envelope in envelopes:
        job = envelope.payload
        if job.mode in ("doomed", "commit_fails"):
            assert job.n not in got, f"job {job.n} ({job.mode}) failed, yet its outputs were published: {got[job.n]}"
            continue
        assert sorted(got.get(job.n, [])) == [(part, output_message_id(consumer, envelope.message_id, part))
                                               for part in (0, 1)], (job, got.get(job.n))
    assert iso.sql("SELECT count(*) FROM children") == [(0,)]
    assert worker.running()
    worker.stop()


class Trickle:
    """A steady trickle of jobs onto ``topics`` (``rate`` per second each) from a thread, until stopped."""

    def __init__(self, iso: Isolated, topics: list[str], rate: float = 6.0, first: int = 10_000) -> None:
        import threading

        self.iso, self.topics, self.interval, self.next = iso, topics, 1.0 / rate, first
        self.sent = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        import asyncio

        from streams.kafka.clients import durable_producer

        async def main() -> None:
            producer = durable_producer(self.iso.settings, linger_ms=0)
            await producer.start()
            try:
                while not self._stop.is_set():
                    for topic in self.topics:
                        (envelope,) = jobs(["ok"], first=self.next)
                        self.next += 1
                        key, value, headers = envelope.to_record()
                        await producer.send_and_wait(self.iso.topic(topic), value=value, key=key, headers=headers)
                        self.sent += 1
                    await asyncio.sleep(self.interval)
            finally:
                await producer.stop()

        asyncio.run(main())

    def __enter__(self) -> "Trickle":
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(30)


def commits_between(samples: list[tuple[float, dict[int, int]]], start: float, end: float) -> dict[int, int]:
    """How many times each partition's committed offset moved between ``start`` and ``end``."""
    moves: Counter = Counter()
    inside = [offsets for at, offsets in samples if start <= at <= end]
    for before, after in itertools.pairwise(inside):
        for partition, offset in after.items():
            if offset != before.get(partition):
                moves[partition] += 1
    return {p: moves[p] for p in range(3)}


def sample_commits(iso: Isolated, topics: list[str], until, samples: dict[str, list], timeout: float) -> None:
    """The group's committed offsets of ``topics`` every 0.4 s, in one request per sample (a request
    per topic made samples rare on a loaded machine), stamped when the answer came."""
    deadline = time.time() + timeout
    names = {iso.topic(topic): topic for topic in topics}
    while time.time() < deadline and not until():
        offsets = run(committed_offsets(iso.settings, iso.settings.app_id))
        at = time.time()
        for name, topic in names.items():
            samples[topic].append((at, {p: o for (t, p), o in offsets.items() if t == name}))
        time.sleep(0.4)
    assert until(), f"gave up after {timeout:.0f}s"


def transaction_trouble(log: str) -> list[str]:
    return [line for line in log.splitlines() if any(word in line for word in (
        "ProducerFenced", "InvalidTxnState", "TransactionTimedOut", "transaction timed out", "InvalidProducerEpoch",
        "Crashed", "processing failed outside the handler"))]


@pytest.mark.parametrize("wait", ["retry", "sink"])
def test_exactly_once_a_long_wait_of_one_record_never_stops_the_commits_of_the_others(isolated: Isolated,
                                                                                     wait: str) -> None:
    """One record waits 20 s — for its delayed retry, or for a sink that asked to slow down (its
    partitions paused) — while the other topic's partitions (and the source partitions, for the
    retry) keep receiving records: their committed offsets keep moving all along, no transaction
    times out, and the waiting record is handled once when its time comes."""
    iso = isolated
    worker = start_worker(iso, "exactly_once", TEST_RETRY_DELAY="20", TEST_THROTTLE="20",
                          STREAMS_BROKER_COMMIT_INTERVAL="1")
    mode = "retry_later" if wait == "retry" else "throttled"
    watched = ["other", "work"] if wait == "retry" else ["other"]
    samples: dict[str, list] = {t: [] for t in watched}
    (waiting,) = jobs([mode], first=1)
    with Trickle(iso, watched):
        time.sleep(3)
        run(produce_envelopes(iso.settings, iso.topic("work"), [waiting]))
        level = 1 if wait == "retry" else 0

        def handled() -> bool:
            return bool(iso.sql("SELECT count(*) FROM attempts WHERE n = 1 AND level = %s", (level,))[0][0]
                        >= (1 if wait == "retry" else 2))
        sample_commits(iso, watched, handled, samples, timeout=90)
    rows = iso.sql("SELECT level, extract(epoch FROM at) FROM attempts WHERE n = 1 ORDER BY at")
    waited_from, waited_until = float(rows[-2][1]), float(rows[-1][1])
    assert waited_until - waited_from >= 19, rows  # the record did wait its 20 s
    for topic in watched:
        moves = commits_between(samples[topic], waited_from + 1, waited_until - 1)
        assert all(n >= 5 for n in moves.values()), (
            f"{topic}: committed offsets moved only {moves} times per partition while one record waited "
            f"{waited_until - waited_from:.1f}s (commit interval 1 s)")
    # the waiting record: handled once, its two outputs once
    wait_for(lambda: 1 in results_by_job(iso), 30, what="the waited record's outputs")
    assert sorted(part for part, _ in results_by_job(iso)[1]) == [0, 1]
    trouble = transaction_trouble(worker.log_text())
    assert not trouble, trouble[:5]
    worker.stop()


def test_a_forced_reprocess_applies_an_effect_at_most_once_per_window(isolated: Isolated) -> None:
    """``streams offsets reset --reprocess``: every effect is applied once more, and only once, even
    when the worker that reprocessed a message dies between the effect's commit and its processed-ID
    entry, and another worker (restoring the old entries from the changelog) takes the partition."""
    import subprocess
    import sys

    from tests.harness import ROOT

    iso = isolated
    first = start_worker(iso, "at_least_once", "first")
    envelopes = jobs(["effect"] * 30)
    run(produce_envelopes(iso.settings, iso.topic("work"), envelopes))
    wait_for(lambda: iso.sql("SELECT count(*) FROM effects_applied")[0][0] >= 30, 60, what="30 effects")
    wait_for(lambda: all(committed(iso, "work").get(p, 0) > 0 for p in range(3)), 30, what="commits")
    first.stop()
    ends = run(end_offsets(iso.settings, iso.topic("work")))
    assert committed(iso, "work") == ends, "a graceful stop commits every record it handled"
    reset = subprocess.run([sys.executable, "-m", "streams.cli", "offsets", "reset", "--group", iso.settings.app_id,
                            "--topic", iso.topic("work"), "--to-earliest", "--execute", "--reprocess"],
                           env=first.env, cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert reset.returncode == 0, reset.stderr

    dying = iso.worker("dying", STREAMS_WORKER_APP=APP, TEST_DIE_ON_REPROCESS="1").start()
    wait_for(lambda: not dying.running(), 90, what="the worker dying after its first reprocessed effect")
    died_after = iso.sql("SELECT count(*) FROM effects_applied WHERE reprocessing")[0][0]
    assert died_after >= 1
    successor = iso.worker("successor", STREAMS_WORKER_APP=APP).start()  # own data dir: entries from the changelog
    wait_for(lambda: iso.sql("SELECT count(DISTINCT message_id) FROM effects_applied WHERE reprocessing")[0][0]
             >= 30, 90, what="every effect reprocessed")
    wait_for(lambda: sum(committed(iso, "work").values()) >= 30, 60, what="commits past the window")
    per_message = Counter(dict(iso.sql("SELECT message_id, count(*) FROM effects_applied GROUP BY 1")))
    assert set(per_message.values()) == {2}, {m: n for m, n in per_message.items() if n != 2}
    successor.stop()


def test_an_effects_database_outage_pauses_and_parks_nothing(isolated: Isolated) -> None:
    """The effects database stops taking connections while messages arrive: the lookup before each
    handler fails, the partitions pause and the lookup is tried again — the worker keeps running,
    nothing is parked — and once the database is back every effect is applied once."""
    import psycopg

    from tests.harness import admin_url

    iso = isolated
    worker = start_worker(iso, "at_least_once")
    dbname = iso.settings.dsn.rsplit("/", 1)[1].split("?")[0]

    def database(allow: bool) -> None:
        with psycopg.connect(admin_url(iso.settings.dsn), autocommit=True) as conn:
            conn.execute(f'ALTER DATABASE "{dbname}" ALLOW_CONNECTIONS {str(allow).lower()}')
            if not allow:
                conn.execute("SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = %s", (dbname,))

    database(False)
    try:
        run(produce_envelopes(iso.settings, iso.topic("work"), jobs(["effect"] * 20)))
        wait_for(lambda: worker.log_text().count("the effects database is unavailable") >= 3, 60,
                 what="the worker reporting the outage and trying again")
        assert worker.running(), worker.log_text()[-3000:]
    finally:
        database(True)
    wait_for(lambda: iso.sql("SELECT count(*) FROM effects_applied")[0][0] >= 20, 90, what="20 effects")
    wait_for(lambda: sum(committed(iso, "work").values()) >= 20, 60, what="commits")
    assert iso.sql("SELECT count(*), count(DISTINCT message_id) FROM effects_applied") == [(20, 20)]
    try:
        assert read_topic(iso, iso.topic("work.dlq")) == []
    except LookupError:
        pass
    assert worker.running()
    worker.stop()

"""What the README promises, on schedules the happy path never takes: attempts that fail after
sending, effects whose commit fails, records that wait long for their retry or for a sink —
on a real broker and PostgreSQL, with worker processes (``tests/apps/guarantees_app.py``)."""

from __future__ import annotations

import json
from collections import Counter

import pytest

from streams.consume.outputs import output_message_id
from streams.kafka.admin import TopicSpec, committed_offsets, ensure_topics, produce_envelopes
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


@pytest.mark.parametrize("guarantee", ["at_least_once", "exactly_once"])
def test_only_a_successful_attempt_sends_its_outputs_with_ids_from_the_input(isolated: Isolated,
                                                                               guarantee: str) -> None:
    """A handler sends two outputs and then fails twice before succeeding: exactly two outputs,
    whose ids derive from the input's id and their position. One that sends and is dead-lettered
    leaves no output; nor does one whose effect's database commit fails after it sent."""
    iso = isolated
    worker = start_worker(iso, guarantee)
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

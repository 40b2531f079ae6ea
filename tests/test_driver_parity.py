"""The test driver against a real broker: the same records give the same outcomes.

1. The hostile-records corpus of test_hostile_records.py (random bytes, JSON that is no
   envelope, nesting thousands deep, values over the size limit, one too large even for a
   dead letter, header names that are not UTF-8, valid envelopes with odd headers, types the
   handler does not take) goes to a worker of the reference app through a raw producer, and
   the same records to the driver: record by record, the same outcome (handled, parked with
   the same reason — and without its value where the producer refused the dead letter — or neither).
2. A retry and dead-letter scenario (tests/apps/jobs_app.py): jobs that succeed at once, after
   in-place retries, on retry level 1 or 2, or never; a permanent failure; a duplicate. On
   the broker and on the driver: per job the same final outcome, the same attempt count, the
   same retry levels visited.

The broker's side runs in a thread (its helpers run their own event loops); the driver's on the
session's loop, like the other tests of the in-process reference app.
"""

from __future__ import annotations

import asyncio
import random
from collections import Counter

import pytest

from streams.kafka.admin import produce_envelopes
from streams.kafka.failure_log import read_dead_letters
from streams.messages.registry import DecodeLimits
from streams.testing import TestDriver
from tests.harness import Isolated
from tests.helpers import run, wait_for
from tests.raw_producer import produce
from tests.reference import TOPIC, create_topics, read_topic, wait_committed_to_end
from tests.test_hostile_records import MAX_VALUE_BYTES, _envelope, hostile_records, valid_records

pytestmark = pytest.mark.asyncio(loop_scope="session")


def _corpus() -> tuple[list[dict], set[str]]:
    import json

    rng = random.Random(20261206)
    bad = hostile_records(rng)
    envelopes, good = valid_records(rng, 120)
    ignored = [{"key": b"n", "value": json.dumps(_envelope(message_type="SellerNotified", payload={
        "order_id": "o", "seller_id": "s"})).encode(), "headers": []} for _ in range(5)]
    records = [r for _, r in bad] + good + ignored
    rng.shuffle(records)
    return records, {e.message_id for e in envelopes}


def _handled_ids(iso: Isolated) -> set[str]:
    if not iso.sql("SELECT to_regclass('seller_push_notifications') IS NOT NULL")[0][0]:
        return set()
    return {r[0] for r in iso.sql("SELECT message_id FROM seller_push_notifications")}


def _hostile_on_broker(iso: Isolated, records: list[dict]) -> list[str]:
    """A worker of the reference app, the records from a raw producer: each record's outcome."""
    valid_ids = {mid for mid in map(_message_id, records) if mid}
    create_topics(iso)
    worker = iso.worker(STREAMS_MAX_VALUE_BYTES=str(MAX_VALUE_BYTES)).start()
    worker.wait_ready()
    where = produce(iso.settings.bootstrap_servers, iso.topic(TOPIC), records)
    wait_for(lambda: len(_handled_ids(iso) & valid_ids) >= len(valid_ids), 120, what="every valid order pushed")
    wait_committed_to_end(iso)
    letters = run(read_dead_letters(iso.settings, iso.topic(TOPIC)))
    parked = {(int(dl.header("dlq.original.partition")), int(dl.header("dlq.original.offset"))):
              dl.header("dlq.reason") + (" (value omitted)" if "dlq.value_omitted" in dl.headers else "")
              for dl in letters}
    handled = _handled_ids(iso)
    return [parked.get(pos) or ("handled" if _message_id(r) in handled else "neither")
            for pos, r in zip(where, records, strict=True)]


@pytest.mark.timeout(400)
async def test_the_hostile_corpus_gives_the_same_outcome_per_record(isolated: Isolated, in_process_agents) -> None:
    records, valid_ids = _corpus()
    on_broker = await asyncio.to_thread(_hostile_on_broker, isolated, records)

    # on the driver: the same app in this process, the same bytes
    from agents.app import order_placed_topic

    on_driver = []
    async with TestDriver(in_process_agents.main.app, database=in_process_agents.database_url,
                          decode_limits=DecodeLimits(max_value_bytes=MAX_VALUE_BYTES)) as driver:
        for record in records:
            result = await driver.send_raw(order_placed_topic, record["value"], key=record["key"],
                                           headers=record["headers"])
            letter = driver.parked()[-1] if result.outcome == "dead_lettered" else None
            on_driver.append(letter.reason + (" (value omitted)" if letter.value_omitted else "") if letter else
                             "handled" if result.outcome == "handled" else "neither")
    print("outcomes:", dict(Counter(on_broker)))
    assert Counter(on_broker)["handled"] == len(valid_ids)
    assert len(set(on_broker)) >= 8, "every kind of outcome is in the corpus"
    differ = [(i, b, d) for i, (b, d) in enumerate(zip(on_broker, on_driver, strict=True)) if b != d]
    assert not differ, differ


def _message_id(record: dict) -> str | None:
    for name, value in record["headers"]:
        if name == b"message_id" and value:
            return value.decode()
    return None


JOBS = {0: {}, 1: {"fail_times": 1}, 2: {"fail_times": 2}, 3: {"fail_times": 3}, 4: {"fail_times": 4},
        5: {"fail_times": 5}, 6: {"fail_times": 6}, 7: {"permanent": True}}


def _scenario():
    from tests.apps.jobs_app import Job, registry

    envelopes = [registry.envelope(Job(n=n, **fields), key=f"job-{n}") for n, fields in JOBS.items()]
    return [*envelopes, envelopes[0]]  # the first one published twice


def _observed(done: list, letters: list, retry_copies: list) -> dict[int, tuple]:
    """Per job: (outcome, attempts, retry levels visited)."""
    from tests.apps.jobs_app import registry

    levels: dict[int, list[int]] = {}
    for level, value in retry_copies:
        levels.setdefault(registry.decode(value).payload.n, []).append(level)
    out: dict[int, tuple] = {}
    for value in done:
        finished = registry.decode(value).payload
        out[finished.n] = ("done", finished.attempts, tuple(sorted(levels.get(finished.n, []))))
    for reason, attempts, value in letters:
        n = registry.decode(value).payload.n
        out[n] = (f"parked:{reason}", attempts, tuple(sorted(levels.get(n, []))))
    return out


def _jobs_on_broker(iso: Isolated, sent: list) -> tuple[dict[int, tuple], list]:
    worker = iso.worker("jobs", STREAMS_WORKER_APP="tests.apps.jobs_app:app").start()
    worker.wait_ready()
    run(produce_envelopes(iso.settings, iso.topic("jobs"), sent))
    wait_for(lambda: _topic(iso, "jobs.done", 6) and _topic(iso, "jobs.dlq", 2), 120,
             what="6 jobs done and 2 parked")
    for topic in ("jobs", "jobs.retry.1", "jobs.retry.2"):
        wait_committed_to_end(iso, topic=topic)
    done = [r.value for r in read_topic(iso, iso.topic("jobs.done"))]
    letters = [(dict(r.headers)["dlq.reason"].decode(), int(dict(r.headers)["dlq.attempts"]), r.value)
               for r in read_topic(iso, iso.topic("jobs.dlq"))]
    copies = [(int(dict(r.headers)["retry.level"]), r.value) for level in (1, 2)
              for r in read_topic(iso, iso.topic(f"jobs.retry.{level}"))]
    return _observed(done, letters, copies), done


@pytest.mark.timeout(300)
async def test_retries_and_dead_letters_give_the_same_outcomes(isolated: Isolated) -> None:
    from tests.apps.jobs_app import app, jobs

    sent = _scenario()
    on_broker, done = await asyncio.to_thread(_jobs_on_broker, isolated, sent)

    async with TestDriver(app) as driver:
        outcomes = [(await driver.send(jobs, e)).outcome for e in sent]
        await driver.advance(1.5)
        await driver.advance(1.5)
        assert driver.pending_retries() == []
        on_driver = _observed([r.value for r in driver.outputs()],
                              [(p.reason, p.attempts, p.record.value) for p in driver.parked()],
                              [(r.level, r.record.value) for r in driver.retries()])
    assert outcomes[-1] == "duplicate"
    assert len(done) == 6, "the duplicate made no second JobDone on the broker either"
    assert on_broker == {0: ("done", 1, ()), 1: ("done", 2, ()), 2: ("done", 3, (1,)), 3: ("done", 4, (1,)),
                         4: ("done", 5, (1, 2)), 5: ("done", 6, (1, 2)), 6: ("parked:handler_error", 6, (1, 2)),
                         7: ("parked:handler_error", 1, ())}
    assert on_driver == on_broker


def _topic(iso: Isolated, name: str, at_least: int) -> bool:
    try:
        return len(read_topic(iso, iso.topic(name))) >= at_least
    except LookupError:  # not created yet
        return False


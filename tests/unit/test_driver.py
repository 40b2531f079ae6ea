"""The test driver (streams.testing) on apps without a database: the worker's handling code,
in-memory topics and tables, a controllable clock. Its parity with a real broker is checked in
tests/test_driver_parity.py."""

from __future__ import annotations

import json

import pytest
from pydantic import BaseModel

from streams import Delivery, Envelope, Kind, MessageRegistry, StreamsApp
from streams.errors import ConfigurationError
from streams.messages.registry import DecodeLimits
from streams.testing import TestDriver
from streams.testing.transport import partition_for
from tests.apps.jobs_app import Job, app, done, jobs, registry


def job(n: int, **fields) -> Envelope:
    return registry.envelope(Job(n=n, **fields), key=f"job-{n}")


async def test_a_job_failing_three_times_waits_for_each_retry_level_on_the_clock() -> None:
    async with TestDriver(app) as driver:
        first = await driver.send(jobs, job(1, fail_times=3))
        assert first.outcome == "retry_scheduled"
        assert driver.counts()["retried"] == 1  # two in-place attempts, then retry topic 1
        [copy] = driver.pending_retries()
        assert copy.level == 1 and "fails attempt 2 on purpose" in copy.error
        assert copy.due - driver.clock() == pytest.approx(1.0, abs=0.2)
        assert await driver.advance(copy.due - driver.clock() - 0.01) == []  # not due yet: nothing ran
        [again] = await driver.advance(0.02)
        assert again.record.topic == "jobs.retry.1" and again.outcome == "handled"
        [finished] = driver.messages(done)
        assert (finished.payload.attempts, finished.payload.level) == (4, 1)
        assert finished.causation_id is None and finished.key == "job-1"
        assert driver.parked() == [] and driver.pending_retries() == []


async def test_a_job_failing_every_level_is_parked_after_six_attempts() -> None:
    async with TestDriver(app) as driver:
        await driver.send(jobs, job(2, fail_times=99))
        await driver.advance(1.5)
        await driver.advance(1.5)
        [parked] = driver.parked(jobs)
        assert (parked.reason, parked.attempts, parked.error_type) == ("handler_error", 6, "RuntimeError")
        assert parked.original[0] == "jobs" and parked.handler == "run_job"
        assert [r.level for r in driver.retries()] == [1, 2]
        assert driver.messages(done) == []


async def test_bad_records_are_parked_with_the_reason_a_worker_gives() -> None:
    async with TestDriver(app) as driver:
        ok = job(3)
        cases = {
            "not_json": (b"\xff\xfe", []),
            "not_envelope": (json.dumps({"message_type": "Job", "payload": {"n": 1}}).encode(), []),
            "unknown_type": (json.dumps({"message_id": "u", "message_type": "Nope", "payload": {}}).encode(), []),
            "invalid_payload": (json.dumps({"message_id": "i", "message_type": "Job", "payload": {"n": "x"}}).encode(),
                                []),
            "bad_headers": (ok.to_json(), [(b"\xff\xfename", b"v"), (b"fine", b"ok")]),
        }
        for reason, (value, headers) in cases.items():
            result = await driver.send_raw(jobs, value, key=b"k", headers=headers)
            assert result.outcome == "dead_lettered", reason
        assert [p.reason for p in driver.parked()] == list(cases)
        bad = driver.parked()[-1]
        assert "\\xff\\xfename" in dict(bad.record.headers)  # the escaped name, as a worker parks it
        assert (await driver.send_raw(jobs, None, key=b"k")).outcome == "dead_lettered"  # a tombstone


async def test_duplicates_are_recognised_in_the_partition_of_their_key_only() -> None:
    async with TestDriver(app) as driver:
        message = job(4)
        assert (await driver.send(jobs, message)).outcome == "handled"
        assert (await driver.send(jobs, message)).outcome == "duplicate"
        # the same message id under a key of another partition: a worker's table has no entry there either
        here = driver.records(jobs)[0].partition
        key = next(k for k in (f"elsewhere-{i}" for i in range(50)) if partition_for(k.encode(), 3) != here)
        moved = await driver.send(jobs, message.model_copy(update={"key": key}))
        assert moved.record.partition != here
        assert moved.outcome == "handled"
        assert [r.offset for _, r in driver.duplicates()] == [1]
    async with TestDriver(app) as fresh:  # a new driver starts with empty tables
        assert (await fresh.send(jobs, message)).outcome == "handled"


async def test_a_dead_letter_too_large_for_the_producer_is_parked_without_its_value() -> None:
    async with TestDriver(app, decode_limits=DecodeLimits(max_value_bytes=100_000)) as driver:
        huge = b"[" + b"0," * 499_898 + b"0]"
        assert (await driver.send_raw(jobs, huge, key=b"k")).outcome == "dead_lettered"
        [parked] = driver.parked()
        assert parked.reason == "too_large" and parked.record.value is None and parked.value_omitted == len(huge)


def _chain_app() -> tuple[StreamsApp, object, object, MessageRegistry, type[BaseModel]]:
    reg = MessageRegistry()

    @reg.event("Step")
    class Step(BaseModel):
        n: int

    chain = StreamsApp("driver-chain", registry=reg)
    first = chain.topic("steps.first", kind=Kind.EVENT, partitions=2)
    second = chain.topic("steps.second", kind=Kind.EVENT, partitions=2)
    seen = chain.table("steps-seen", partitions=2)

    @chain.handler(first, "Step")
    async def forward(message: Envelope[Step], delivery: Delivery) -> None:
        await chain.send(second, reg.envelope(Step(n=message.payload.n + 1), key=message.key))

    @chain.handler(second, "Step")
    async def remember(message: Envelope[Step], delivery: Delivery) -> None:
        seen[message.key] = {"n": message.payload.n, "partition": delivery.partition}

    return chain, first, second, reg, Step


async def test_outputs_to_a_topic_the_app_consumes_are_handled_and_table_writes_kept() -> None:
    chain, first, second, reg, step = _chain_app()
    table = chain.faust.tables["steps-seen"]
    async with TestDriver(chain) as driver:
        result = await driver.send(first, reg.envelope(step(n=1), key="a"))
        assert result.outcomes == {"forward": "handled"}
        [forwarded] = driver.records(second)
        assert forwarded.partition == result.record.partition  # same key, same partition count
        assert table["a"] == {"n": 2, "partition": forwarded.partition}
        [write] = driver.records(table.changelog_topic.get_topic_name())
        assert write.partition == forwarded.partition and json.loads(write.value) == {"n": 2,
                                                                                       "partition": forwarded.partition}
        assert [(name, d.outcomes[name]) for name, d in driver.outcomes] == [("forward", "handled"),
                                                                            ("remember", "handled")]
    assert "send_changelog" not in vars(table)  # the app's table is given back


async def test_feeding_a_topic_no_handler_reads_is_refused() -> None:
    async with TestDriver(app) as driver:
        with pytest.raises(ConfigurationError, match="no handler"):
            await driver.send(done, job(5))
    with pytest.raises(RuntimeError, match="not started"):
        await TestDriver(app).send(jobs, job(6))

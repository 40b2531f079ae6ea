"""Trace context on a real broker: retries, retry topics, dead letters, replays, foreign and
malformed ``traceparent`` headers.

A worker of ``tests/apps/jobs_app.py`` (two in-place attempts per level, two delayed retry
levels, a ``JobDone`` output on success), on the batch path and on the events path, exports
its spans over OTLP/HTTP to a receiver in the test process (:class:`tests.spans.OtlpSink`);
records are written by the raw producer (the bytes a kcat or a Java client writes), each with
the ``traceparent`` a producer in some other service would have put there — or none, or one
that cannot be read.
"""

from __future__ import annotations

import json
import uuid

import pytest

from streams import tracing
from streams.kafka.failure_log import read_dead_letters, replay
from tests.harness import Isolated
from tests.helpers import run, wait_for
from tests.raw_producer import produce
from tests.reference import read_topic
from tests.spans import OtlpSink, Span, ancestors, from_sdk, memory_provider

APP = "tests.apps.jobs_app:app"


def job(n: int, *, fail_times: int = 0, permanent: bool = False, traceparent: bytes | None = None,
        extra_headers: list | None = None) -> dict:
    message_id = f"job-{n}-{uuid.uuid4().hex[:6]}"
    value = json.dumps({"message_id": message_id, "message_type": "Job", "kind": "event", "key": f"k{n}",
                        "payload": {"n": n, "fail_times": fail_times, "permanent": permanent}}).encode()
    headers = [(b"message_id", message_id.encode()), (b"message_type", b"Job")]
    if traceparent is not None:
        headers.append((b"traceparent", traceparent))
    headers += extra_headers or []
    return {"key": f"k{n}".encode(), "value": value, "headers": headers, "message_id": message_id}


def parent_of(trace_id: str, span_id: str) -> bytes:
    return f"00-{trace_id}-{span_id}-01".encode()


def traceparent(record) -> tuple[str, str] | None:
    value = dict(record.headers or ()).get("traceparent")
    if not value:
        return None
    _, trace_id, span_id, _ = value.decode().split("-")
    return trace_id, span_id


def process_spans(spans: list[Span], message_id: str) -> list[Span]:
    return sorted((s for s in spans if s.kind == "CONSUMER" and s.attr("messaging.message.id") == message_id),
                  key=lambda s: (s.attr("messaging.destination.name"), s.attr("messaging.kafka.offset")))


MALFORMED = [b"00-xyz", b"\xff\xfe\x00garbage", b"ff-" + b"1" * 32 + b"-" + b"2" * 16 + b"-01",
             b"00-" + b"0" * 32 + b"-" + b"2" * 16 + b"-01", b"00-" + b"a" * 32 + b"-" + b"0" * 16 + b"-01",
             b"00-" + b"a" * 32 + b"-" + b"b" * 16 + b"-01-trailing", b"00-" + b"A" * 32 + b"-" + b"b" * 16 + b"-01",
             b"x" * 5000, b""]


@pytest.mark.timeout(300)
@pytest.mark.parametrize("path", ["batch", "events"])
def test_retries_dead_letters_replays_and_foreign_records_keep_or_start_the_chain(isolated: Isolated,
                                                                                  path: str) -> None:
    sink = OtlpSink().start()
    try:
        worker = isolated.worker("jobs", STREAMS_WORKER_APP=APP, STREAMS_CONSUME_PATH=path,
                                 **sink.env("jobs-worker")).start()
        worker.wait_ready()
        topic = isolated.topic("jobs")
        trace1, trace2, trace3 = (uuid.uuid4().hex for _ in range(3))
        caller1, caller2, caller3 = (uuid.uuid4().hex[:16] for _ in range(3))
        retried = job(1, fail_times=3, traceparent=parent_of(trace1, caller1))     # succeeds on retry level 1
        permanent = job(2, permanent=True, traceparent=parent_of(trace2, caller2))  # parked after one attempt
        hopeless = job(3, fail_times=99, traceparent=parent_of(trace3, caller3))   # parked after six attempts
        foreign = job(4)                                                          # no traceparent at all
        malformed = [job(10 + i, traceparent=bad) for i, bad in enumerate(MALFORMED)]
        # a tracestate without a traceparent; two traceparent headers: the last counts (as the Java
        # client's instrumentation reads them, lastHeader)
        odd = [job(30, extra_headers=[(b"tracestate", b"vendor=1")]),
               job(31, traceparent=b"junk", extra_headers=[(b"traceparent", parent_of(trace1, caller1))])]
        records = [retried, permanent, hopeless, foreign, *malformed, *odd]
        produce(isolated.settings.bootstrap_servers, topic, records)

        done_topic = isolated.topic("jobs.done")
        wanted_done = 1 + 1 + len(malformed) + len(odd)
        outputs = wait_for(lambda: (lambda r: r if len(r) >= wanted_done else None)(read_topic(isolated, done_topic)),
                           180, what=f"{wanted_done} JobDone outputs")
        letters = wait_for(lambda: (lambda d: d if len(d) >= 2 else None)(run(read_dead_letters(isolated.settings,
                                                                                                  topic))),
                           120, what="two dead letters")
        assert len(outputs) == wanted_done and len(letters) == 2, "malformed trace headers parked nothing"
        done_by_n = {json.loads(r.value)["payload"]["n"]: r for r in outputs}
        letter_of = {dl.message_id: dl for dl in letters}
        assert set(letter_of) == {permanent["message_id"], hopeless["message_id"]}

        # spans of every attempt arrive (hopeless: three levels)
        def spans_in() -> list[Span] | None:
            spans = sink.snapshot()
            ok = (len(process_spans(spans, hopeless["message_id"])) == 3
                  and len(process_spans(spans, retried["message_id"])) == 2
                  and all(process_spans(spans, r["message_id"]) for r in records))
            return spans if ok else None
        spans = wait_for(spans_in, 60, what="the worker's spans")

        # 1. a retried record: every attempt (source topic, then retry level 1) in the caller's trace, each
        #    level the child of the one before; the output of the attempt that succeeded in the same trace
        level0, level1 = process_spans(spans, retried["message_id"])
        assert (level0.trace_id, level1.trace_id) == (trace1, trace1)
        assert level0.parent_id == caller1 and level1.parent_id == level0.span_id
        assert level0.attr("messaging.destination.name") == topic
        assert level1.attr("messaging.destination.name") == f"{topic}.retry.1"
        assert level0.events.count("exception") == 2 and level1.events.count("exception") == 1
        assert (level0.attr("streams.outcome"), level1.attr("streams.outcome")) == ("retry_scheduled", "handled")
        assert traceparent(done_by_n[1]) == (trace1, level1.span_id)
        # the semantic-convention attributes of a consumer span
        assert level0.attributes["messaging.system"] == "kafka"
        assert level0.attributes["messaging.operation.type"] == "process"
        assert level0.attributes["messaging.consumer.group.name"] == isolated.settings.app_id
        assert level0.attributes["messaging.destination.partition.id"] in ("0", "1", "2")
        assert isinstance(level0.attributes["messaging.kafka.offset"], int)
        assert level0.attributes["messaging.kafka.message.key"] == "k1"
        assert level0.service == "jobs-worker" and level0.name == f"process {topic}"

        # 2. a dead letter carries the trace of the attempt that failed: the last level's span
        [parked2] = process_spans(spans, permanent["message_id"])
        assert parked2.trace_id == trace2 and parked2.parent_id == caller2 and parked2.error
        assert traceparent(letter_of[permanent["message_id"]]) == (trace2, parked2.span_id)
        hopeless_spans = process_spans(spans, hopeless["message_id"])
        assert {s.trace_id for s in hopeless_spans} == {trace3}
        assert [s.attr("streams.outcome") for s in hopeless_spans] == ["retry_scheduled", "retry_scheduled",
                                                                        "dead_lettered"]
        last = hopeless_spans[-1]
        assert last.attr("messaging.destination.name") == f"{topic}.retry.2"
        assert [s.span_id for s in ancestors(last, spans)] == [hopeless_spans[1].span_id, hopeless_spans[0].span_id]
        assert traceparent(letter_of[hopeless["message_id"]]) == (trace3, last.span_id)

        # 3. a record without traceparent starts a new trace; so does every malformed one, and nothing is parked
        for record in [foreign, *malformed, odd[0]]:
            [span] = process_spans(spans, record["message_id"])
            assert span.parent_id is None and span.trace_id not in (trace1, trace2, trace3), record["headers"]
            assert span.attr("streams.outcome") == "handled"
            n = json.loads(record["value"])["payload"]["n"]
            assert traceparent(done_by_n[n]) == (span.trace_id, span.span_id)
        [last_wins] = process_spans(spans, odd[1]["message_id"])
        assert (last_wins.trace_id, last_wins.parent_id) == (trace1, caller1)

        # 4. a replayed dead letter: a new trace, its replay span linked to the letter's; the worker's
        #    handling of the replayed record is the replay span's child
        provider, exporter = memory_provider("dlq-replay")
        with tracing.use(provider):
            assert run(replay(isolated.settings, [letter_of[permanent["message_id"]]])) == 1
        [replay_span] = [from_sdk(s) for s in exporter.get_finished_spans()]
        assert replay_span.name == f"replay {topic}" and replay_span.kind == "PRODUCER"
        assert replay_span.links == ((trace2, parked2.span_id),)
        assert replay_span.trace_id != trace2 and replay_span.parent_id is None

        def replayed() -> Span | None:
            found = [s for s in process_spans(sink.snapshot(), permanent["message_id"]) if s.span_id != parked2.span_id]
            return found[0] if found else None
        again = wait_for(replayed, 90, what="the replayed letter's process span")
        assert (again.trace_id, again.parent_id) == (replay_span.trace_id, replay_span.span_id)
        worker.stop()
    finally:
        sink.stop()


def test_records_sent_in_a_span_carry_it_and_none_without_one(isolated: Isolated) -> None:
    """What batch imports rely on (``import <file>`` span around ``produce_envelopes``): each record
    sent while a span is current is its child; with no span current, records carry no context."""
    from streams.kafka.admin import TopicSpec, ensure_topics, produce_envelopes
    from tests.apps.jobs_app import Job, registry

    topic = isolated.topic("imported")
    run(ensure_topics(isolated.settings, [TopicSpec(topic, 3)]))
    provider, exporter = memory_provider("batch")
    with tracing.use(provider):
        with tracing.span("import partner-a.csv") as span:
            run(produce_envelopes(isolated.settings, topic, [registry.envelope(Job(n=i), key=f"k{i}")
                                                             for i in range(3)]))
        run(produce_envelopes(isolated.settings, topic, [registry.envelope(Job(n=9), key="k9")]))
    records = sorted(read_topic(isolated, topic), key=lambda r: json.loads(r.value)["payload"]["n"])
    [finished] = [from_sdk(s) for s in exporter.get_finished_spans()]
    assert finished.span_id == f"{span.get_span_context().span_id:016x}"
    assert [traceparent(r) for r in records] == [(finished.trace_id, finished.span_id)] * 3 + [None]


def test_the_outbox_gains_the_trace_columns_on_migrate_without_losing_a_row(isolated: Isolated) -> None:
    """A v3 outbox (no trace columns) keeps taking rows from this release's writer while no span is
    current; ``migrate`` adds the columns (v4), and the relay publishes the old rows as before and
    a traced row with its context."""
    import psycopg

    from streams.outbox.schema import SCHEMA_VERSION, schema_version
    from streams.outbox.writer import write_message
    from tests.apps.jobs_app import Job, registry
    from tests.outbox_helpers import prepare, relay_running

    table = isolated.settings.outbox_table
    topic = prepare(isolated, "traced.outbox", partitions=3)
    with psycopg.connect(isolated.settings.dsn, autocommit=True) as conn:
        conn.execute(f"ALTER TABLE {table} DROP COLUMN traceparent, DROP COLUMN tracestate")
        conn.execute(f"COMMENT ON TABLE {table} IS 'streams outbox schema v3'")
        assert schema_version(conn, table) == 3
        with conn.transaction():
            old = registry.envelope(Job(n=1), key="k1")
            write_message(conn, old, topic=topic, table=table)
        from streams.outbox.schema import migrate

        assert migrate(conn, table) and schema_version(conn, table) == SCHEMA_VERSION == 4
        provider, exporter = memory_provider("shop")
        with tracing.use(provider), tracing.span("checkout"), conn.transaction():
            new = registry.envelope(Job(n=2), key="k2")
            write_message(conn, new, topic=topic, table=table)
        stored = dict(conn.execute(f"SELECT message_id, traceparent FROM {table}").fetchall())
    [create, checkout] = [from_sdk(s) for s in exporter.get_finished_spans()]
    assert stored[old.message_id] is None
    # flags: sampled, and (W3C trace context level 2, as the SDK writes it) a random trace id: 03
    assert stored[new.message_id].rpartition("-")[0] == f"00-{create.trace_id}-{create.span_id}"
    assert int(stored[new.message_id][-2:], 16) & 1
    assert create.parent_id == checkout.span_id and create.name == f"create {topic}"
    async def publish() -> list:
        async with relay_running(isolated.settings):
            return await wait_async_records(isolated, topic, 2)

    records = run(publish())
    by_id = {dict(r.headers)["message_id"].decode(): r for r in records}
    assert traceparent(by_id[old.message_id]) is None
    assert traceparent(by_id[new.message_id]) == (create.trace_id, create.span_id)  # relay not traced: as stored


async def wait_async_records(iso: Isolated, topic: str, n: int, timeout: float = 60) -> list:
    import asyncio
    import time

    from streams.kafka.admin import read_topic as read

    deadline = time.monotonic() + timeout
    while True:
        records = await read(iso.settings, topic)
        if len(records) >= n or time.monotonic() > deadline:
            assert len(records) == n, f"{len(records)} record(s) in {topic}, expected {n}"
            return records
        await asyncio.sleep(0.3)

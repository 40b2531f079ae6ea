"""streams.tracing without servers: reading ``traceparent``, headers of outputs, the consumer span of
the fast path (through the test driver: the worker's own handling code), the OTLP encoder against
the SDK's, and when tracing turns itself on."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import uuid

import pytest
from opentelemetry.exporter.otlp.proto.common.trace_encoder import encode_spans
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import SynchronousMultiSpanProcessor, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.sdk.trace.sampling import ALWAYS_OFF
from opentelemetry.sdk.util.instrumentation import InstrumentationScope
from opentelemetry.trace import Link, SpanContext, SpanKind, Status, StatusCode, TraceFlags, TraceState

from streams import tracing
from streams.testing import TestDriver
from streams.tracing.otlp import SpanEncoder
from streams.tracing.spans import Recorder
from tests.apps.jobs_app import Job, app, done, jobs, registry

TRACE, SPAN = "4bf92f3577b34da6a3ce929d0e0e4736", "00f067aa0ba902b7"
GOOD = f"00-{TRACE}-{SPAN}-01"


def memory(sampler=None) -> tuple[TracerProvider, SynchronousMultiSpanProcessor, InMemorySpanExporter]:
    exporter = InMemorySpanExporter()
    processor = SynchronousMultiSpanProcessor()
    provider = TracerProvider(resource=Resource.create({"service.name": "unit"}), active_span_processor=processor,
                              **({"sampler": sampler} if sampler else {}))
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    return provider, processor, exporter


@pytest.mark.parametrize("value", [GOOD, GOOD.encode(), f"  {GOOD}", f"01-{TRACE}-{SPAN}-01-future-fields"])
def test_a_w3c_traceparent_is_read(value) -> None:
    context = tracing.span_context_from(value, b"congo=t61rcWkgMzE")
    assert context is not None and context.is_remote
    assert (f"{context.trace_id:032x}", f"{context.span_id:016x}", context.trace_flags.sampled) == (TRACE, SPAN, True)
    assert context.trace_state == TraceState([("congo", "t61rcWkgMzE")])


@pytest.mark.parametrize("value", [None, b"", b"00-xyz", b"\xff\xfe", f"ff-{TRACE}-{SPAN}-01", f"00-{'0' * 32}-{SPAN}-01",
                                   f"00-{TRACE}-{'0' * 16}-01", f"00-{TRACE}-{SPAN}-01-extra", GOOD.upper(),
                                   "x" * 600, 42, f"00-{TRACE}-{SPAN}-1"])
def test_a_traceparent_that_cannot_be_read_is_none(value) -> None:
    assert tracing.span_context_from(value) is None
    assert tracing.parent_from({"traceparent": value}) == tracing.parent_from({})


def test_a_bad_tracestate_is_dropped_and_the_traceparent_kept() -> None:
    context = tracing.span_context_from(GOOD, b"\xff not a list member")
    assert context is not None and not context.trace_state


def test_headers_get_the_current_context_in_place_of_theirs() -> None:
    headers = [("message_id", b"m"), ("traceparent", b"00-old"), ("tracestate", b"a=1")]
    assert tracing.with_context(headers) == headers  # no span: as they were
    context = SpanContext(int(TRACE, 16), int(SPAN, 16), False, TraceFlags(1), TraceState([("k", "v")]))
    assert tracing.with_context(headers, context) == [("message_id", b"m"), ("traceparent", GOOD.encode()),
                                                      ("tracestate", b"k=v")]


def test_tracing_off_touches_nothing() -> None:
    assert not tracing.enabled()
    headers = [("message_id", b"m")]
    assert tracing.output_headers(headers) is headers
    with tracing.span("x") as span:
        assert span is None
    assert tracing.outbox_context("t", registry.envelope(Job(n=1))) == (None, None)


def job_record(n: int, traceparent: bytes | None, **fields) -> tuple[bytes | None, bytes, list]:
    key, value, headers = registry.envelope(Job(n=n, **fields), key=f"k{n}").to_record()
    return key, value, headers + ([("traceparent", traceparent)] if traceparent is not None else [])


async def test_the_consumer_span_of_a_retried_record_and_its_dead_letter() -> None:
    provider, processor, exporter = memory()
    with tracing.use(provider, processor):
        async with TestDriver(app) as driver:
            key, value, headers = job_record(1, GOOD.encode(), fail_times=3)
            assert (await driver.send_raw(jobs, value, key=key, headers=headers)).outcome == "retry_scheduled"
            [retry] = await driver.advance(1.5)
            assert retry.outcome == "handled"
            key, value, headers = job_record(2, GOOD.encode(), permanent=True)
            assert (await driver.send_raw(jobs, value, key=key, headers=headers)).outcome == "dead_lettered"
            parked = driver.parked()[0].record
            output = driver.outputs(done)[0]
    first, second, third = exporter.get_finished_spans()
    assert [s.name for s in (first, second, third)] == ["process jobs", "process jobs.retry.1", "process jobs"]
    assert first.kind is SpanKind.CONSUMER and first.parent.span_id == int(SPAN, 16) and first.parent.is_remote
    assert {s.context.trace_id for s in (first, second, third)} == {int(TRACE, 16)}
    assert second.parent.span_id == first.context.span_id  # the retry copy carried the first span's context
    assert [e.name for e in first.events] == ["exception", "exception"]
    assert first.events[0].attributes["exception.type"] == "RuntimeError"
    assert first.events[0].attributes["streams.attempt"] == 1
    assert first.attributes["streams.outcome"] == "retry_scheduled" and second.attributes["streams.outcome"] == "handled"
    assert first.attributes["messaging.destination.partition.id"].isdigit()
    assert first.attributes["messaging.system"] == "kafka" and first.attributes["messaging.operation.type"] == "process"
    assert first.attributes["streams.message_type"] == "Job" and first.attributes["messaging.message.id"]
    assert third.status.status_code is StatusCode.ERROR and third.attributes["streams.outcome"] == "dead_lettered"
    assert dict(output.headers)["traceparent"] == tracing.traceparent_of(second.context).encode()
    assert dict(parked.headers)["traceparent"] == tracing.traceparent_of(third.context).encode()


async def test_a_record_of_an_unsampled_trace_is_handled_without_a_span_and_passes_the_flag_on() -> None:
    provider, processor, exporter = memory()
    with tracing.use(provider, processor):
        async with TestDriver(app) as driver:
            key, value, headers = job_record(1, f"00-{TRACE}-{SPAN}-00".encode())
            assert (await driver.send_raw(jobs, value, key=key, headers=headers)).outcome == "handled"
            output = driver.outputs(done)[0]
    assert exporter.get_finished_spans() == ()
    out = tracing.span_context_from(dict(output.headers)["traceparent"])
    assert out is not None and out.trace_id == int(TRACE, 16) and not out.trace_flags.sampled


async def test_the_providers_sampler_decides_for_new_traces() -> None:
    provider, processor, exporter = memory(sampler=ALWAYS_OFF)
    with tracing.use(provider, processor):
        async with TestDriver(app) as driver:
            key, value, headers = job_record(1, None)
            assert (await driver.send_raw(jobs, value, key=key, headers=headers)).outcome == "handled"
    assert exporter.get_finished_spans() == ()


async def test_without_the_processor_the_sdk_tracer_makes_the_same_span() -> None:
    provider, _processor, exporter = memory()
    with tracing.use(provider):
        async with TestDriver(app) as driver:
            key, value, headers = job_record(1, GOOD.encode())
            await driver.send_raw(jobs, value, key=key, headers=headers)
    [span] = exporter.get_finished_spans()
    assert span.name == "process jobs" and span.parent.span_id == int(SPAN, 16)
    assert span.attributes["streams.outcome"] == "handled"


def sdk_spans() -> list:
    """Spans of every shape the encoder meets: parents local and remote, trace state, events, links,
    statuses, attributes of every type, two resources and two scopes."""
    provider_a, _, exporter = memory()
    provider_b = TracerProvider(resource=Resource.create({"service.name": "b", "n": 3, "ratio": 0.5}))
    provider_b.add_span_processor(SimpleSpanProcessor(exporter))
    remote = SpanContext(int(TRACE, 16), int(SPAN, 16), True, TraceFlags(1), TraceState([("a", "1"), ("b", "2")]))
    parent_ctx = tracing.trace.set_span_in_context(tracing.trace.NonRecordingSpan(remote))
    tracer = provider_a.get_tracer("streams", "1.2.3")
    root_attributes = {"s": "ü ✓", "b": True, "i": -7, "big": 2**62, "f": 1.25, "strs": ["x", "y"], "ints": [1, 2],
                       "bools": [True]}
    with (tracer.start_as_current_span("root", attributes=root_attributes),
          tracer.start_as_current_span("child", kind=SpanKind.PRODUCER, links=[Link(remote, {"why": "replay"})]) as child):
        child.add_event("note", {"k": "v", "n": 1})
        child.record_exception(ValueError("bad"))
        child.set_status(Status(StatusCode.ERROR, "it failed"))
    other = provider_b.get_tracer("other")
    other.start_span("remote child", context=parent_ctx, kind=SpanKind.CONSUMER).end()
    provider_a.get_tracer("third", schema_url="https://opentelemetry.io/schemas/1.21.0").start_span(
        "ok", attributes={"empty": ""}).end()
    return list(exporter.get_finished_spans())


def test_the_otlp_encoder_writes_what_the_sdk_encoder_writes() -> None:
    spans = sdk_spans()
    ours, theirs = ExportTraceServiceRequest(), ExportTraceServiceRequest()
    ours.ParseFromString(SpanEncoder().request(spans))
    theirs.ParseFromString(encode_spans(spans).SerializeToString())
    assert ours == theirs
    assert sum(len(ss.spans) for rs in ours.resource_spans for ss in rs.scope_spans) == len(spans) == 4


def test_the_otlp_encoder_writes_the_fast_paths_spans_as_the_sdk_encoder() -> None:
    provider, processor, exporter = memory()
    recorder = Recorder(provider, processor, InstrumentationScope("streams", "0.1"))
    parent = SpanContext(int(TRACE, 16), int(SPAN, 16), True, TraceFlags(1))
    base = {"messaging.system": "kafka", "messaging.destination.name": "t", "streams.handler": "h"}
    plain = recorder.start("process t", parent, SpanKind.CONSUMER, {"messaging.kafka.offset": 12, "x": "y"})
    plain.record_exception(RuntimeError("once"), {"streams.attempt": 1})
    plain.set_attribute("streams.outcome", "handled")
    shared = recorder.start("process t", parent, SpanKind.CONSUMER, {**base, "messaging.kafka.offset": 13}, base)
    shared.set_attribute("streams.outcome", "handled")
    changed = recorder.start("process t", None, SpanKind.CONSUMER, {**base, "messaging.kafka.offset": 14}, base)
    changed.set_attribute("streams.handler", "renamed by the handler")  # a shared attribute changed on one span
    for span in (plain, shared, changed):
        span.end()
    finished = exporter.get_finished_spans()
    encoder = SpanEncoder()
    for _ in range(2):  # the second time from the encoder's caches
        ours, theirs = ExportTraceServiceRequest(), ExportTraceServiceRequest()
        ours.ParseFromString(encoder.request(finished))
        theirs.ParseFromString(encode_spans(finished).SerializeToString())
        assert ours == theirs
    assert dict(finished[2].attributes)["streams.handler"] == "renamed by the handler"


def run_configure(env: dict[str, str]) -> dict:
    code = ("import json, logging; from streams import tracing; on = tracing.configure(service_name='svc');"
            "p = tracing._state.provider; print(json.dumps({'on': on, 'service': p.resource.attributes.get("
            "'service.name') if p else None, 'fast': tracing._state.recorder is not None}))")
    clean = {k: v for k, v in os.environ.items() if not k.startswith("OTEL_")}
    out = subprocess.run([sys.executable, "-c", code], env={**clean, **env}, capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    return json.loads(out.stdout.splitlines()[-1])


def test_tracing_turns_on_only_when_told_where_spans_go() -> None:
    assert run_configure({}) == {"on": False, "service": None, "fast": False}
    endpoint = {"OTEL_EXPORTER_OTLP_ENDPOINT": "http://127.0.0.1:9"}
    assert run_configure(endpoint) == {"on": True, "service": "svc", "fast": True}
    assert run_configure({**endpoint, "OTEL_SERVICE_NAME": "named"})["service"] == "named"
    assert run_configure({**endpoint, "OTEL_SDK_DISABLED": "true"})["on"] is False
    assert run_configure({**endpoint, "OTEL_TRACES_EXPORTER": "none"})["on"] is False
    assert run_configure({"OTEL_TRACES_EXPORTER": "console"})["on"] is True
    assert run_configure({"OTEL_EXPORTER_OTLP_TRACES_ENDPOINT": f"http://127.0.0.1:9/{uuid.uuid4().hex}"})["on"]

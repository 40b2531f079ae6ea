"""One trace per business change: W3C trace context on every record, OpenTelemetry spans where work happens.

Tracing is **off** unless the process is given somewhere to send spans, with the standard
OpenTelemetry variables (read by :func:`configure`, which workers, relays and the CLI call
at start):

* ``OTEL_EXPORTER_OTLP_ENDPOINT`` (or ``OTEL_EXPORTER_OTLP_TRACES_ENDPOINT``): spans go
  there over OTLP/HTTP protobuf (``OTEL_EXPORTER_OTLP_HEADERS``, ``…_TIMEOUT``,
  ``…_COMPRESSION``, ``…_CERTIFICATE`` apply); ``OTEL_TRACES_EXPORTER=console`` prints
  them instead, ``none`` (or ``OTEL_SDK_DISABLED=true``) keeps tracing off;
* ``OTEL_SERVICE_NAME`` / ``OTEL_RESOURCE_ATTRIBUTES`` name the process (default: the
  app id, ``streams-relay``, …), ``OTEL_TRACES_SAMPLER`` / ``…_ARG`` sample (default:
  every trace whose parent was sampled, and every new one), ``OTEL_BSP_*`` tune the
  batch processor;
* or a tracer provider the process installed itself (``trace.set_tracer_provider``
  before the worker starts, as ``opentelemetry-instrument`` does) is used as it is.

Off, the consume path does one attribute check per record and nothing else (no span, no
header parsed). On, every place a message travels keeps the chain:

==============================  ===================================================================
outbox writer                   a ``create <topic>`` span (child of the caller's span); its context
                                is stored with the row (``traceparent`` / ``tracestate`` columns)
relay                           a ``send <topic>`` span per row, child of the stored context; its
                                context goes out in the record's ``traceparent`` header
Debezium's outbox router        the stored columns as the record's headers (no span of its own)
consumers (both paths)          a ``process <topic>`` span per record and handler, child of the
                                record's ``traceparent`` (a record without one, or with one that
                                cannot be read, starts a new trace); failed attempts are events
handler outputs, retry copies,  carry the context of the span they were made in (a dead letter:
dead letters                    the span of the attempts that failed)
``streams dlq replay``          a ``replay <topic>`` span in a new trace, linked to the letter's
background tasks                a ``task <name>`` span, child of the span that submitted it
batch imports                   an ``import <file>`` span; every row's record is its child
change events (CDC)             start a trace at their consumer (Debezium sends no context)
==============================  ===================================================================

Span attributes follow OpenTelemetry's messaging conventions (``messaging.system``,
``messaging.destination.name``, ``messaging.destination.partition.id``,
``messaging.kafka.offset``, ``messaging.message.id``, ``messaging.consumer.group.name``,
``messaging.operation.type``/``.name``) plus ``streams.*`` ones (handler, message type,
outcome, attempts, retry level, outbox row id).
"""

from __future__ import annotations

import logging
import os
import re
from collections.abc import Iterable, Iterator, Mapping
from contextlib import contextmanager, nullcontext
from contextvars import ContextVar
from typing import Any

from opentelemetry import context as otel_context
from opentelemetry import trace
from opentelemetry.trace import Link, NonRecordingSpan, SpanContext, SpanKind, Status, StatusCode, TraceFlags, TraceState

log = logging.getLogger(__name__)

TRACEPARENT = "traceparent"
TRACESTATE = "tracestate"
_TRACE_HEADERS = (TRACEPARENT, TRACESTATE)
#: instrumentation scope of the spans made here
SCOPE = "streams"

# messaging semantic conventions (attribute names)
SYSTEM = "messaging.system"
DESTINATION = "messaging.destination.name"
PARTITION = "messaging.destination.partition.id"
OFFSET = "messaging.kafka.offset"
KEY = "messaging.kafka.message.key"
MESSAGE_ID = "messaging.message.id"
GROUP = "messaging.consumer.group.name"
OPERATION_TYPE = "messaging.operation.type"
OPERATION_NAME = "messaging.operation.name"

_TRACEPARENT_RE = re.compile(r"^([0-9a-f]{2})-([0-9a-f]{32})-([0-9a-f]{16})-([0-9a-f]{2})(-.*)?$")
_TRACEPARENT_00 = re.compile(rb"00-([0-9a-f]{32})-([0-9a-f]{16})-([0-9a-f]{2})")
_FLAGS = (TraceFlags(0), TraceFlags(1))
_ZERO_TRACE, _ZERO_SPAN = "0" * 32, "0" * 16
_EMPTY = otel_context.Context()


class _State:
    """The process's tracing set-up: ``tracer`` is None while tracing is off; ``recorder`` makes the
    consumer spans when the span processor is known (see :mod:`streams.tracing.spans`)."""

    __slots__ = ("configured", "provider", "recorder", "tracer")

    def __init__(self) -> None:
        self.tracer: Any = None
        self.provider: Any = None
        self.recorder: Any = None
        self.configured = False


_state = _State()


def enabled() -> bool:
    """Whether spans are being made in this process."""
    return _state.tracer is not None


# --- set-up ------------------------------------------------------------------------------
def configure(service_name: str | None = None) -> bool:
    """Turn tracing on if the process is told where spans go (see the module's doc); once per
    process, later calls return the first answer. ``service_name``: the default for
    ``OTEL_SERVICE_NAME``. Returns whether tracing is on."""
    if _state.configured:
        return enabled()
    _state.configured = True
    if os.environ.get("OTEL_SDK_DISABLED", "").strip().lower() == "true":
        return False
    installed = trace.get_tracer_provider()
    if not isinstance(installed, trace.ProxyTracerProvider) and type(installed).__name__ != "NoOpTracerProvider":
        _activate(installed)  # the process set up OpenTelemetry itself: its spans go through its tracer
        return True
    made = _provider_from_env(service_name)
    if made is None:
        return False
    provider, processor = made
    trace.set_tracer_provider(provider)
    _activate(provider, processor)
    return True


def _provider_from_env(service_name: str | None) -> tuple[Any, Any] | None:
    """An SDK tracer provider exporting where the ``OTEL_*`` variables say, and its span processor
    (None: nowhere)."""
    exporters = [e.strip().lower() for e in os.environ.get("OTEL_TRACES_EXPORTER", "").split(",") if e.strip()]
    endpoint = os.environ.get("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT") or os.environ.get("OTEL_EXPORTER_OTLP_ENDPOINT")
    if not exporters:
        exporters = ["otlp"] if endpoint else []
    exporters = [e for e in exporters if e != "none"]
    if not exporters:
        return None
    from opentelemetry.sdk.resources import OTEL_SERVICE_NAME, Resource
    from opentelemetry.sdk.trace import SynchronousMultiSpanProcessor, TracerProvider
    from opentelemetry.sdk.trace.export import BatchSpanProcessor, ConsoleSpanExporter

    from streams.tracing.otlp import OtlpHttpSpanExporter

    attributes = {} if os.environ.get(OTEL_SERVICE_NAME) or not service_name else {"service.name": service_name}
    processor = SynchronousMultiSpanProcessor()
    provider = TracerProvider(resource=Resource.create(attributes), active_span_processor=processor)
    added = []
    for name in exporters:
        if name == "otlp":
            protocol = (os.environ.get("OTEL_EXPORTER_OTLP_TRACES_PROTOCOL")
                        or os.environ.get("OTEL_EXPORTER_OTLP_PROTOCOL") or "http/protobuf")
            if protocol != "http/protobuf":
                log.error("OTEL_EXPORTER_OTLP_PROTOCOL=%s is not supported (http/protobuf is): no spans are exported",
                          protocol)
                continue
            # larger batches than the SDK's default (512): a worker makes a span per record
            added.append(BatchSpanProcessor(
                OtlpHttpSpanExporter(),
                max_queue_size=None if "OTEL_BSP_MAX_QUEUE_SIZE" in os.environ else 8192,
                max_export_batch_size=None if "OTEL_BSP_MAX_EXPORT_BATCH_SIZE" in os.environ else 2048))
        elif name == "console":
            added.append(BatchSpanProcessor(ConsoleSpanExporter()))
        else:
            log.error("OTEL_TRACES_EXPORTER=%s is not supported (otlp, console, none are)", name)
    if not added:
        return None
    for one in added:
        provider.add_span_processor(one)
    log.info("tracing on: spans of %s go to %s", provider.resource.attributes.get("service.name"),
             endpoint or ",".join(exporters))
    # the consumer spans go straight to the one processor there is (no fan-out on the hot path)
    return provider, added[0] if len(added) == 1 else processor


def _activate(provider: Any, processor: Any = None) -> None:
    from importlib.metadata import PackageNotFoundError, version

    from opentelemetry.sdk.util.instrumentation import InstrumentationScope

    from streams.tracing.spans import Recorder

    try:
        scope_version: str | None = version("streams")
    except PackageNotFoundError:
        scope_version = None
    _state.provider = provider
    _state.tracer = provider.get_tracer(SCOPE, scope_version)
    _state.recorder = (None if processor is None else
                       Recorder(provider, processor, InstrumentationScope(SCOPE, scope_version)))


@contextmanager
def use(provider: Any, processor: Any = None) -> Iterator[None]:
    """Make this module's spans with ``provider`` inside the block (tests, or a process that
    keeps its own provider out of the global one); tracing is as before afterwards. With the
    provider's span ``processor`` (the one given to it as ``active_span_processor``), consumer
    spans take the fast path of :mod:`streams.tracing.spans`."""
    saved = (_state.tracer, _state.provider, _state.recorder, _state.configured)
    _activate(provider, processor)
    _state.configured = True
    try:
        yield
    finally:
        _state.tracer, _state.provider, _state.recorder, _state.configured = saved


def shutdown() -> None:
    """Export what is buffered and stop (also done at interpreter exit by the SDK)."""
    provider = _state.provider
    if provider is not None and hasattr(provider, "force_flush"):
        provider.force_flush()


# --- propagation -------------------------------------------------------------------------
def _text(value: Any) -> str | None:
    if isinstance(value, bytes):
        try:
            return value.decode("ascii")
        except UnicodeDecodeError:
            return None
    return value if isinstance(value, str) else None


def span_context_from(traceparent: Any, tracestate: Any = None) -> SpanContext | None:
    """The remote span context a ``traceparent`` value (str or bytes) names; None when it is
    absent or not a valid W3C trace context (such a value is ignored, never an error)."""
    if type(traceparent) is bytes and len(traceparent) == 55 and not tracestate:
        usual = _TRACEPARENT_00.fullmatch(traceparent)  # the usual header, read without decoding it
        if usual is not None:
            tid, sid = int(usual[1], 16), int(usual[2], 16)
            if tid and sid:
                return SpanContext(tid, sid, is_remote=True, trace_flags=_FLAGS[int(usual[3], 16) & 1])
            return None
    text = _text(traceparent)
    if not text or len(text) > 512:
        return None
    match = _TRACEPARENT_RE.match(text.strip())
    if match is None:
        return None
    version, trace_id, span_id, flags, rest = match.groups()
    if version == "ff" or (version == "00" and rest) or trace_id == _ZERO_TRACE or span_id == _ZERO_SPAN:
        return None
    state = None
    state_text = _text(tracestate)
    if state_text:
        try:
            state = TraceState.from_header([state_text])
        except ValueError:
            state = None
    return SpanContext(int(trace_id, 16), int(span_id, 16), is_remote=True,
                       trace_flags=TraceFlags(int(flags, 16) & 0x01), trace_state=state)


def parent_from(headers: Mapping[str, Any]) -> Any:
    """The OpenTelemetry context a record's headers make the parent of its spans: the span of
    its ``traceparent``, or an empty context (a new trace)."""
    parent = span_context_from(headers.get(TRACEPARENT), headers.get(TRACESTATE))
    return _EMPTY if parent is None else trace.set_span_in_context(NonRecordingSpan(parent), _EMPTY)


def traceparent_of(span_context: SpanContext) -> str:
    """The W3C ``traceparent`` value of ``span_context``."""
    return f"00-{span_context.trace_id:032x}-{span_context.span_id:016x}-{int(span_context.trace_flags):02x}"


def current_span_context() -> SpanContext | None:
    """The span context of the current span (None: no valid span is current)."""
    span_context = trace.get_current_span().get_span_context()
    return span_context if span_context.is_valid else None


def trace_columns(span_context: SpanContext | None = None) -> tuple[str | None, str | None]:
    """(traceparent, tracestate) texts of ``span_context`` (default: the current span), or (None, None)."""
    span_context = span_context or current_span_context()
    if span_context is None:
        return None, None
    state = span_context.trace_state.to_header() if span_context.trace_state else None
    return traceparent_of(span_context), state or None


def with_context(headers: Iterable[tuple[str, bytes]], span_context: SpanContext | None = None
                 ) -> list[tuple[str, bytes]]:
    """``headers`` with the trace context of ``span_context`` (default: the current span) in place
    of any they carried; unchanged (as a list) when there is no span."""
    traceparent, tracestate = trace_columns(span_context)
    if traceparent is None:
        return headers if isinstance(headers, list) else list(headers)
    out = [(k, v) for k, v in headers if k not in _TRACE_HEADERS]
    out.append((TRACEPARENT, traceparent.encode()))
    if tracestate:
        out.append((TRACESTATE, tracestate.encode()))
    return out


def output_headers(headers: list[tuple[str, bytes]]) -> list[tuple[str, bytes]]:
    """The headers of a record a handler or a producer sends now: with the current span's context
    while tracing is on, as they are otherwise."""
    if _state.tracer is None:
        return headers
    return with_context(headers)


# --- spans -------------------------------------------------------------------------------
def span(name: str, *, kind: SpanKind = SpanKind.INTERNAL, parent: Any = None, links: Iterable[Link] = (),
         attributes: Mapping[str, Any] | None = None) -> Any:
    """A context manager: a span made current for the block (with tracing on; nothing otherwise,
    and the block gets None). ``parent``: an OpenTelemetry context (default: the current one)."""
    tracer = _state.tracer
    if tracer is None:
        return nullcontext()
    return tracer.start_as_current_span(name, context=parent, kind=kind, links=list(links),
                                        attributes=dict(attributes or {}))


def link_to(traceparent: Any, tracestate: Any = None, **attributes: Any) -> list[Link]:
    """A link to the span a ``traceparent`` names (none if it cannot be read)."""
    span_context = span_context_from(traceparent, tracestate)
    return [] if span_context is None else [Link(span_context, attributes or None)]


def record_failure(exc: BaseException, **attributes: Any) -> None:
    """Note a failed attempt on the current span (an ``exception`` event): with tracing on only."""
    if _state.tracer is None:
        return
    current = trace.get_current_span()
    if current.is_recording():
        current.record_exception(exc, attributes={f"streams.{k}": v for k, v in attributes.items()})


def add_event(name: str, **attributes: Any) -> None:
    """An event on the current span (with tracing on only)."""
    if _state.tracer is None:
        return
    current = trace.get_current_span()
    if current.is_recording():
        current.add_event(name, {f"streams.{k}": v for k, v in attributes.items()})


def task_span(name: str, parent: SpanContext | None, **attributes: Any) -> Any:
    """A context manager: an internal span for a piece of work (a background task), child of
    ``parent`` (a span context captured where the work was handed over; None: a new trace)."""
    if _state.tracer is None:
        return nullcontext()
    context = _EMPTY if parent is None else trace.set_span_in_context(NonRecordingSpan(parent), _EMPTY)
    return span(name, parent=context, attributes={f"streams.{k}": v for k, v in attributes.items()})


def end_failed(span_: Any, exc: BaseException, **attributes: Any) -> None:
    """Mark a span from :func:`span` / :func:`task_span` as failed with ``exc`` (None: nothing)."""
    if span_ is None:
        return
    span_.set_status(Status(StatusCode.ERROR, f"{type(exc).__name__}: {exc}"[:300]))
    for key, value in attributes.items():
        span_.set_attribute(f"streams.{key}", value)


# --- producers -----------------------------------------------------------------------
def outbox_context(topic: str, envelope: Any) -> tuple[str | None, str | None]:
    """(traceparent, tracestate) to store with an outbox row: with tracing on, those of a
    ``create <topic>`` span made now (child of the current span); off, those of the current
    span if the process has one of its own; else (None, None)."""
    tracer = _state.tracer
    if tracer is None:
        return trace_columns()
    created = tracer.start_span(f"create {topic}", kind=SpanKind.PRODUCER, attributes={
        SYSTEM: "kafka", OPERATION_TYPE: "create", OPERATION_NAME: "create", DESTINATION: topic,
        MESSAGE_ID: envelope.message_id, "streams.message_type": envelope.message_type})
    created.end()
    return trace_columns(created.get_span_context())


def start_send(topic: str, message_id: str, parent: SpanContext | None, operation: str = "send",
               links: Iterable[Link] = (), **attributes: Any) -> Any:
    """A ``<operation> <topic>`` producer span (not current; end it with :func:`end`), child of
    ``parent`` (None: a new trace); None while tracing is off."""
    tracer = _state.tracer
    if tracer is None:
        return None
    context = _EMPTY if parent is None else trace.set_span_in_context(NonRecordingSpan(parent), _EMPTY)
    return tracer.start_span(f"{operation} {topic}", context=context, kind=SpanKind.PRODUCER, links=list(links),
                             attributes={SYSTEM: "kafka", OPERATION_TYPE: "send", OPERATION_NAME: operation,
                                         DESTINATION: topic, MESSAGE_ID: message_id,
                                         **{f"streams.{k}": v for k, v in attributes.items()}})


def end(span_: Any, error: BaseException | None = None) -> None:
    """End a span from :func:`start_send` (None: nothing), as failed if ``error`` is given."""
    if span_ is None:
        return
    if error is not None:
        span_.record_exception(error)
        span_.set_status(Status(StatusCode.ERROR, f"{type(error).__name__}: {error}"[:300]))
    span_.end()


# --- the consume path -------------------------------------------------------------------
#: the attributes every record of one (topic, partition, group, handler) shares, made once
_BASES: dict[tuple[str, int, str, str], dict[str, Any]] = {}
#: the consumer span of the record being handled, while what its headers did not say is still unknown
_UNNOTED: ContextVar[Any] = ContextVar("streams_tracing_unnoted", default=None)


def _base(topic: str, partition: int, group: str, handler: str) -> dict[str, Any]:
    key = (topic, partition, group, handler)
    base = _BASES.get(key)
    if base is None:
        if len(_BASES) > 10_000:
            _BASES.clear()
        base = _BASES[key] = {SYSTEM: "kafka", OPERATION_TYPE: "process", OPERATION_NAME: "process",
                              DESTINATION: topic, PARTITION: str(partition), GROUP: group, "streams.handler": handler}
    return base


async def process(runner: Any, msg: Any, headers: dict[str, bytes]) -> str:
    """``runner``'s (a :class:`~streams.consume.runner.HandlerRunner`) handling of one record inside
    a ``process <topic>`` consumer span, child of the record's trace context (or the root of a new trace)."""
    base = _base(msg.topic, msg.partition, runner.ctx.app_id, runner.spec.name)
    attributes = dict(base)
    attributes[OFFSET] = msg.offset
    message_id, message_type = _text(headers.get("message_id")), _text(headers.get("message_type"))
    if message_id:
        attributes[MESSAGE_ID] = message_id
    if message_type:
        attributes["streams.message_type"] = message_type
    key = msg.key
    if type(key) is bytes and len(key) <= 200:
        text = _text(key)
        if text is not None:
            attributes[KEY] = text
    recorder = _state.recorder
    if recorder is not None:
        span_ = recorder.start(f"process {msg.topic}", span_context_from(headers.get(TRACEPARENT),
                                                                          headers.get(TRACESTATE)),
                               SpanKind.CONSUMER, attributes, base)
    else:
        span_ = _state.tracer.start_span(f"process {msg.topic}", context=parent_from(headers),
                                         kind=SpanKind.CONSUMER, attributes=attributes)
    token = otel_context.attach(trace.set_span_in_context(span_))
    unnoted = None if message_id and message_type else _UNNOTED.set(span_)
    try:
        outcome = await runner.handle_record(msg, headers)
    except BaseException as exc:
        if isinstance(exc, Exception):
            span_.record_exception(exc)
            span_.set_status(Status(StatusCode.ERROR, f"{type(exc).__name__}: {exc}"[:300]))
        else:  # cancelled (a revocation, a stop): the record is left to the partition's next owner
            span_.set_attribute("streams.outcome", "given_up")
        span_.end()
        raise
    finally:
        if unnoted is not None:
            _UNNOTED.reset(unnoted)
        otel_context.detach(token)
    span_.set_attribute("streams.outcome", outcome)
    if outcome == "dead_lettered":
        span_.set_status(Status(StatusCode.ERROR, "parked in the dead-letter topic"))
    span_.end()
    return outcome


def note_message(envelope: Any) -> None:
    """The record's message id and type, from its envelope, on its consumer span (when its headers did
    not carry them: a record of another producer, a change event)."""
    current = _UNNOTED.get()
    if current is not None and current.is_recording():
        current.set_attribute(MESSAGE_ID, envelope.message_id)
        current.set_attribute("streams.message_type", envelope.message_type)

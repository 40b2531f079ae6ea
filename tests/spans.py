"""Spans the tracing tests read: from worker processes over OTLP/HTTP (:class:`OtlpSink`, a
receiver in the test process that decodes the protobuf the SDK's exporter sends), and from
the test process itself (the SDK's in-memory exporter, :func:`memory_provider`), in one shape."""

from __future__ import annotations

import gzip
import threading
import zlib
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import (
    ExportTraceServiceRequest,
    ExportTraceServiceResponse,
)
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from streams.dev.process import free_port

_KINDS = {0: "UNSPECIFIED", 1: "INTERNAL", 2: "SERVER", 3: "CLIENT", 4: "PRODUCER", 5: "CONSUMER"}


@dataclass(frozen=True)
class Span:
    """One finished span, ids in lower-case hex."""

    service: str
    name: str
    kind: str
    trace_id: str
    span_id: str
    parent_id: str | None
    attributes: dict[str, Any]
    links: tuple[tuple[str, str], ...] = ()
    events: tuple[str, ...] = ()
    error: bool = False
    extra: dict = field(default_factory=dict, compare=False)

    def attr(self, name: str) -> Any:
        return self.attributes.get(name)


def _any(value: Any) -> Any:
    which = value.WhichOneof("value")
    if which == "array_value":
        return tuple(_any(v) for v in value.array_value.values)
    return getattr(value, which) if which else None


def _from_proto(service: str, span: Any) -> Span:
    return Span(service, span.name, _KINDS[span.kind], span.trace_id.hex(), span.span_id.hex(),
                span.parent_span_id.hex() or None, {kv.key: _any(kv.value) for kv in span.attributes},
                tuple((link.trace_id.hex(), link.span_id.hex()) for link in span.links),
                tuple(e.name for e in span.events), span.status.code == 2)


def from_sdk(span: Any) -> Span:
    """A span of the SDK (ReadableSpan) in the shape above."""
    ctx, parent = span.get_span_context(), span.parent
    return Span(span.resource.attributes.get("service.name", ""), span.name, span.kind.name,
                f"{ctx.trace_id:032x}", f"{ctx.span_id:016x}", f"{parent.span_id:016x}" if parent else None,
                dict(span.attributes or {}),
                tuple((f"{li.context.trace_id:032x}", f"{li.context.span_id:016x}") for li in span.links),
                tuple(e.name for e in span.events), span.status.status_code.name == "ERROR")


class OtlpSink:
    """An OTLP/HTTP traces receiver on 127.0.0.1 (``endpoint`` for ``OTEL_EXPORTER_OTLP_ENDPOINT``)."""

    def __init__(self) -> None:
        self.spans: list[Span] = []
        self.requests = 0
        self._lock = threading.Lock()
        sink = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
                encoding = (self.headers.get("Content-Encoding") or "").lower()
                if encoding == "gzip":
                    body = gzip.decompress(body)
                elif encoding == "deflate":
                    body = zlib.decompress(body)
                request = ExportTraceServiceRequest()
                request.ParseFromString(body)
                got = []
                for resource_spans in request.resource_spans:
                    service = next((kv.value.string_value for kv in resource_spans.resource.attributes
                                    if kv.key == "service.name"), "")
                    for scope_spans in resource_spans.scope_spans:
                        got.extend(_from_proto(service, s) for s in scope_spans.spans)
                with sink._lock:
                    sink.spans.extend(got)
                    sink.requests += 1
                reply = ExportTraceServiceResponse().SerializeToString()
                self.send_response(200)
                self.send_header("Content-Type", "application/x-protobuf")
                self.send_header("Content-Length", str(len(reply)))
                self.end_headers()
                self.wfile.write(reply)

            def log_message(self, *args: Any) -> None:
                pass

        self.port = free_port()
        self._server = ThreadingHTTPServer(("127.0.0.1", self.port), Handler)
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True, name="otlp-sink")

    @property
    def endpoint(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def env(self, service: str) -> dict[str, str]:
        """What a worker process needs to send its spans here, quickly."""
        return {"OTEL_EXPORTER_OTLP_ENDPOINT": self.endpoint, "OTEL_SERVICE_NAME": service,
                "OTEL_BSP_SCHEDULE_DELAY": "100"}

    def start(self) -> "OtlpSink":
        self._thread.start()
        return self

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()

    def snapshot(self) -> list[Span]:
        with self._lock:
            return list(self.spans)


def memory_provider(service: str = "test-process") -> tuple[TracerProvider, InMemorySpanExporter]:
    """An SDK tracer provider whose spans stay in memory (``exporter.get_finished_spans()``)."""
    from opentelemetry.sdk.resources import Resource

    exporter = InMemorySpanExporter()
    provider = TracerProvider(resource=Resource.create({"service.name": service}))
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    return provider, exporter


def in_trace(spans: list[Span], trace_id: str) -> list[Span]:
    return [s for s in spans if s.trace_id == trace_id]


def ancestors(span: Span, spans: list[Span]) -> list[Span]:
    """``span``'s parent, its parent's parent, … as far as ``spans`` hold them."""
    by_id = {s.span_id: s for s in spans}
    out, parent = [], span.parent_id
    while parent is not None and parent in by_id:
        out.append(by_id[parent])
        parent = by_id[parent].parent_id
    return out

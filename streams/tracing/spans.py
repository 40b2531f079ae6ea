"""The consumer span of the hot path: an OpenTelemetry API span that records into a plain object
and is handed to the SDK's span processor (as the SDK's ``ReadableSpan``) when it ends.

The SDK's own ``Span`` validates and copies every attribute, takes a lock per change and
notifies every processor at its start: about 20 µs of CPU per span, where the consume path
handles a record in 50. :class:`RecordSpan` keeps what a span is — its context (made current
while the record is handled, so a handler's own spans, its outputs, retry copies and dead
letters are its children), attributes, events (failed attempts), status, start and end — and
does nothing else until :meth:`RecordSpan.end`. Sampling follows the provider's sampler; the
default (``parentbased_always_on``) is decided without calling it. Span processors see the span
at its end only (``on_start`` is not called for it).
"""

from __future__ import annotations

import time
import traceback
from collections.abc import Mapping
from typing import Any

from opentelemetry import trace
from opentelemetry.sdk.trace import Event, ReadableSpan
from opentelemetry.sdk.trace.sampling import DEFAULT_ON, Decision
from opentelemetry.sdk.util.instrumentation import InstrumentationScope
from opentelemetry.trace import SpanContext, SpanKind, Status, StatusCode, TraceFlags

_SAMPLED, _NOT_SAMPLED = TraceFlags(TraceFlags.SAMPLED), TraceFlags(TraceFlags.DEFAULT)
_UNSET = Status(StatusCode.UNSET)


class Recorder:
    """What a :class:`RecordSpan` needs of a tracer provider: its resource, sampler, id generator
    and the span processor its spans go to."""

    def __init__(self, provider: Any, processor: Any, scope: InstrumentationScope) -> None:
        self.processor = processor
        self.resource = provider.resource
        self.sampler = provider.sampler
        self.ids = provider.id_generator
        self.scope = scope
        #: the SDK's default sampler: sampled unless the parent says it was not
        self.parent_decides = self.sampler.get_description() == DEFAULT_ON.get_description()

    def start(self, name: str, parent: SpanContext | None, kind: SpanKind, attributes: dict[str, Any],
              base: dict[str, Any] | None = None) -> trace.Span:
        """A started span (recording, or not when sampled out: then only its context travels).
        ``base``: a dict whose items ``attributes`` begins with, shared by many spans (encoded once)."""
        trace_id = parent.trace_id if parent is not None else self.ids.generate_trace_id()
        trace_state = parent.trace_state if parent is not None else None
        if self.parent_decides:
            sampled = parent is None or parent.trace_flags.sampled
        else:
            parent_context = (trace.set_span_in_context(trace.NonRecordingSpan(parent)) if parent is not None
                              else None)
            result = self.sampler.should_sample(parent_context, trace_id, name, kind, attributes)
            sampled = result.decision is Decision.RECORD_AND_SAMPLE
            trace_state = result.trace_state
            if result.attributes:
                attributes.update(result.attributes)
        context = SpanContext(trace_id, self.ids.generate_span_id(), is_remote=False,
                              trace_flags=_SAMPLED if sampled else _NOT_SAMPLED, trace_state=trace_state)
        if not sampled:
            return trace.NonRecordingSpan(context)
        return RecordSpan(self, name, context, parent, kind, attributes, base)


class RecordSpan(trace.Span, ReadableSpan):
    """A recording span that costs only what it records (see the module's doc); at its end it is
    itself the ``ReadableSpan`` the span processor gets (as the SDK's own ``Span`` is both)."""

    def __init__(self, recorder: Recorder, name: str, context: SpanContext, parent: SpanContext | None,
                 kind: SpanKind, attributes: dict[str, Any], base: dict[str, Any] | None = None) -> None:
        # ReadableSpan's fields, set directly (its __init__ would build a resource and copy)
        self._recorder = recorder
        self._name = name
        self._own_context = self._context = context
        self._parent = parent
        self._kind = kind
        self._attrs = self._attributes = attributes  # one dict: the typed name is for this class
        self._base = base
        self._event_list: list[Event] = []
        self._events = self._event_list
        self._links = ()
        self._status = _UNSET
        self._resource = recorder.resource
        self._instrumentation_scope = recorder.scope
        self._instrumentation_info = None
        self._started = self._start_time = time.time_ns()
        self._end_time: int | None = None

    def get_span_context(self) -> SpanContext:
        return self._own_context

    def is_recording(self) -> bool:
        return self._end_time is None

    def set_attribute(self, key: str, value: Any) -> None:
        if self._end_time is None:
            if self._base is not None and key in self._base:
                self._base = None  # its first items are no longer the shared ones
            self._attrs[key] = value

    def set_attributes(self, attributes: Mapping[str, Any]) -> None:
        for key, value in attributes.items():
            self.set_attribute(key, value)

    def add_event(self, name: str, attributes: Mapping[str, Any] | None = None, timestamp: int | None = None) -> None:
        if self._end_time is None:
            self._event_list.append(Event(name, dict(attributes or {}), timestamp or time.time_ns()))

    def record_exception(self, exception: BaseException, attributes: Mapping[str, Any] | None = None,
                         timestamp: int | None = None, escaped: bool = False) -> None:
        self.add_event("exception", {
            "exception.type": type(exception).__qualname__, "exception.message": str(exception),
            "exception.stacktrace": "".join(traceback.format_exception(exception)),
            "exception.escaped": str(escaped), **(attributes or {})}, timestamp)

    def set_status(self, status: Status | StatusCode, description: str | None = None) -> None:
        if self._end_time is not None:
            return
        if isinstance(status, Status):
            self._status = status
        else:
            self._status = Status(status, description)

    def update_name(self, name: str) -> None:
        if self._end_time is None:
            self._name = name

    def end(self, end_time: int | None = None) -> None:
        if self._end_time is not None:
            return
        self._end_time = end_time or time.time_ns()
        self._recorder.processor.on_end(self)

    def export_fields(self) -> tuple[str, SpanContext, SpanContext | None, SpanKind, int, int, dict[str, Any],
                                     list[Event], Status, dict[str, Any] | None]:
        """What an exporter writes of it, without the copies the ``ReadableSpan`` properties make; last,
        the shared dict its attributes begin with (None: none)."""
        return (self._name, self._own_context, self._parent, self._kind, self._started, self._end_time or 0,
                self._attrs, self._event_list, self._status, self._base)

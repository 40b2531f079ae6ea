"""What each handler did, kept in one place, and its Prometheus exposition.

Counters per handler, topic and partition: ``handled``, ``duplicate``,
``ignored`` (a registered type the handler does not take), ``retried``,
``retry_scheduled``, ``dead_lettered``. A processing-time histogram per handler
and topic (seconds from taking a record to its outcome, retries included),
recorded by :class:`streams.consume.runner.HandlerRunner`.

:func:`render_prometheus` writes these, plus gauges read at scrape time (lag,
outbox, tables, readiness), in the Prometheus text format. Names share the
``streams_`` prefix; labels are ``handler``, ``topic``, ``partition`` for work
counters, ``group``/``topic``/``partition`` for lag, ``table`` for the outbox
and tables::

    streams_handled_total{handler="push_seller",topic="orders.order-placed",partition="3"} 120
    streams_processing_seconds_bucket{handler="push_seller",topic="orders.order-placed",le="0.01"} 97
    streams_consumer_lag{group="reference-app",topic="orders.order-placed",partition="3"} 0
    streams_outbox_pending{table="streams_outbox"} 0
"""

from __future__ import annotations

import bisect
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any, NamedTuple

#: upper bounds (seconds) of the processing-time histogram's buckets
PROCESSING_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)

#: help text of each work counter (exposed as ``streams_<name>_total``)
COUNTERS = {
    "handled": "Messages the handler handled successfully.",
    "duplicate": "Messages skipped because their message_id was already processed.",
    "ignored": "Records of a registered type the handler does not take.",
    "retried": "In-place retries after a handler error.",
    "retry_scheduled": "Messages sent to a delayed retry topic.",
    "dead_lettered": "Records parked in the dead-letter topic.",
    "tombstone": "Tombstones (null values) on a change-event topic, acknowledged without a handler call.",
    "reprocessed": "Messages handled again on purpose (a reprocess window of streams offsets reset --reprocess).",
    "sink_throttled": "Attempts the downstream answered with 'slow down' (SinkThrottled): waited, not counted.",
    "sink_failures": "Attempts that failed with the downstream's error (a sink guard's trip_on): waited, not counted.",
    "sink_pauses": "Times a sink guard paused the handler's partitions.",
    "effects_unavailable": "Lookups in the effects database that failed (the partitions paused and tried again).",
}


class CounterKey(NamedTuple):
    name: str
    agent: str
    topic: str
    partition: int


@dataclass
class Histogram:
    """Cumulative-bucket histogram of one (handler, topic)."""

    buckets: tuple[float, ...] = PROCESSING_BUCKETS
    counts: list[int] = field(default_factory=list)
    total: float = 0.0
    count: int = 0

    def __post_init__(self) -> None:
        if not self.counts:
            self.counts = [0] * len(self.buckets)

    def observe(self, value: float) -> None:
        index = bisect.bisect_left(self.buckets, value)
        if index < len(self.counts):
            self.counts[index] += 1
        self.total += value
        self.count += 1

    def cumulative(self) -> list[tuple[str, int]]:
        """(le, cumulative count) pairs ending with ``+Inf``."""
        out, running = [], 0
        for bound, n in zip(self.buckets, self.counts, strict=False):
            running += n
            out.append((_le(bound), running))
        out.append(("+Inf", self.count))
        return out


def _le(bound: float) -> str:
    return repr(float(bound))


class Metrics:
    """In-process counters keyed by (name, agent, topic, partition), and processing times."""

    def __init__(self) -> None:
        self._counts: Counter[CounterKey] = Counter()
        self._times: dict[tuple[str, str], Histogram] = {}

    def inc(self, name: str, agent: str, topic: str, partition: int, amount: int = 1) -> None:
        self._counts[CounterKey(name, agent, topic, partition)] += amount

    def observe(self, agent: str, topic: str, seconds: float) -> None:
        """Record how long one record took (decode to outcome)."""
        hist = self._times.get((agent, topic))
        if hist is None:
            hist = self._times[(agent, topic)] = Histogram()
        hist.observe(seconds)

    def get(self, name: str, agent: str | None = None) -> int:
        """Total of counter ``name`` (for one agent, or all)."""
        return sum(v for k, v in self._counts.items() if k.name == name and (agent is None or k.agent == agent))

    def snapshot(self) -> list[dict]:
        """All counters as rows, sorted."""
        return [
            {"name": k.name, "agent": k.agent, "topic": k.topic, "partition": k.partition, "value": v}
            for k, v in sorted(self._counts.items())
        ]

    def timings(self) -> list[dict]:
        """Processing-time summaries per (handler, topic)."""
        return [
            {"agent": agent, "topic": topic, "count": h.count, "sum_seconds": round(h.total, 6),
             "mean_seconds": round(h.total / h.count, 6) if h.count else None}
            for (agent, topic), h in sorted(self._times.items())
        ]


# --- Prometheus exposition ---------------------------------------------------------------
@dataclass
class Gauge:
    """A gauge family read at scrape time: ``samples`` are (labels, value)."""

    name: str
    help: str
    labels: tuple[str, ...]
    samples: list[tuple[tuple[str, ...], float]] = field(default_factory=list)

    def add(self, value: float, *labels: Any) -> None:
        self.samples.append((tuple(str(v) for v in labels), float(value)))


def render_prometheus(metrics: Metrics, gauges: Iterable[Gauge] = ()) -> bytes:
    """The counters, histograms and ``gauges`` in the Prometheus text format (0.0.4)."""
    from prometheus_client import CollectorRegistry, generate_latest
    from prometheus_client.core import (
        CounterMetricFamily,
        GaugeMetricFamily,
        HistogramMetricFamily,
    )

    class _Collector:
        def collect(self):
            labels = ["handler", "topic", "partition"]
            families = {name: CounterMetricFamily(f"streams_{name}", text, labels=labels)
                        for name, text in COUNTERS.items()}
            for key, value in sorted(metrics._counts.items()):  # noqa: SLF001 - same module
                family = families.get(key.name)
                if family is None:
                    family = families[key.name] = CounterMetricFamily(
                        f"streams_{key.name}", f"Handler counter {key.name}.", labels=labels)
                family.add_metric([key.agent, key.topic, str(key.partition)], value)
            yield from families.values()
            hist = HistogramMetricFamily("streams_processing_seconds",
                                         "Seconds from taking a record to its outcome (retries included).",
                                         labels=["handler", "topic"])
            for (agent, topic), h in sorted(metrics._times.items()):  # noqa: SLF001
                hist.add_metric([agent, topic], h.cumulative(), h.total)
            yield hist
            for g in gauges:
                family = GaugeMetricFamily(g.name, g.help, labels=list(g.labels))
                for label_values, value in g.samples:
                    family.add_metric(list(label_values), value)
                yield family

    registry = CollectorRegistry(auto_describe=False)
    registry.register(_Collector())
    return generate_latest(registry)

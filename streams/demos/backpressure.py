"""``streams demo backpressure``: a burst into a slow, then failing, then recovered sink.

What it does, against the configured broker (the local one is started if needed):

1. creates a 6-partition topic and starts a worker process running
   :mod:`streams.demos.backpressure_app` in a fresh consumer group;
2. **burst + slow sink**: publishes ``messages`` small envelopes as fast as it
   can while the sink takes ``slow_ms`` per call — lag rises, the worker stops
   fetching once its buffers are full;
3. **outage**: the sink fails for ``outage_s`` seconds — the circuit breaker
   opens and the partitions pause (no hot retries, no dead letters);
4. **recovered**: the sink is fast again — lag drains to zero;

sampling every ``interval`` seconds the group's lag and committed-offset rate
(from the broker) and the worker's RSS (from /proc), and writes
``backpressure.json`` and a self-contained chart ``backpressure.html``.
"""

from __future__ import annotations

import asyncio
import json
import time
import uuid
from dataclasses import asdict, dataclass, field
from pathlib import Path

from aiokafka.errors import KafkaError
from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TextColumn,
    TimeElapsedColumn,
)
from rich.table import Table

from streams.demos.backpressure_app import PARTITIONS, TOPIC, Tick, registry
from streams.demos.chart import Chart, Panel, render_html
from streams.dev.worker import WorkerProcess
from streams.kafka.admin import TopicSpec, ensure_topics, produce_envelopes
from streams.kafka.lag import group_lag, with_rates
from streams.kafka.names import dead_letter_topic
from streams.settings import Settings


@dataclass
class Sample:
    t: float
    phase: str
    lag: int
    end: int
    committed: int
    rate: float
    rss_mib: float


@dataclass
class DemoResult:
    messages: int
    group: str
    topic: str
    samples: list[Sample] = field(default_factory=list)
    phases: list[tuple[float, float, str]] = field(default_factory=list)
    publish_seconds: float = 0.0
    drain_seconds: float = 0.0
    peak_rss_mib: float = 0.0
    vm_hwm_mib: float = 0.0
    peak_lag: int = 0
    dead_letters: int = 0
    chart: str = ""
    data: str = ""


def rss_mib(pid: int, field_name: str = "VmRSS") -> float:
    """Resident memory of ``pid`` in MiB (``VmHWM`` for the peak)."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith(field_name + ":"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return 0.0


def _control(path: Path, **state) -> None:
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(state))
    tmp.replace(path)


async def _publish(settings: Settings, topic: str, messages: int, progress: Progress, chunk: int = 20_000) -> None:
    task = progress.add_task("publishing the burst", total=messages)
    sent = 0
    while sent < messages:
        n = min(chunk, messages - sent)
        envelopes = (registry.envelope(Tick(n=i, pad="x" * 64), key=f"k{i % 5000}")
                     for i in range(sent, sent + n))
        await produce_envelopes(settings, topic, envelopes, linger_ms=20)
        sent += n
        progress.update(task, completed=sent)


async def run_demo(settings: Settings, *, messages: int, slow_ms: float, slow_s: float, outage_s: float,
                   out_dir: Path, interval: float = 1.0, drain_timeout: float = 3600.0,
                   console: Console | None = None) -> DemoResult:
    """Run the demonstration against ``settings``' broker; returns the samples and figures."""
    console = console or Console()
    out_dir.mkdir(parents=True, exist_ok=True)
    run_id = uuid.uuid4().hex[:6]
    group, prefix = f"bp-demo-{run_id}", f"bpdemo{run_id}."
    topic = prefix + TOPIC
    control = out_dir / "sink-control.json"
    _control(control, mode="slow", latency_ms=slow_ms)
    await ensure_topics(settings, [TopicSpec(topic, PARTITIONS), TopicSpec(dead_letter_topic(topic), PARTITIONS)])
    env = {
        "STREAMS_KAFKA_BOOTSTRAP": settings.bootstrap_servers,
        "STREAMS_APP_ID": group,
        "STREAMS_TOPIC_PREFIX": prefix,
        "STREAMS_WORKER_DATA_DIR": str(out_dir / "worker-data"),
        "STREAMS_DEMO_SINK_CONTROL": str(control),
        "STREAMS_LOG_LEVEL": "warning",
    }
    worker = WorkerProcess(env, out_dir / "worker.log",
                           args=["--without-web", "--app", "streams.demos.backpressure_app:app"])
    # the worker logs at warning; its readiness shows in the group instead of the log
    worker.ready_marker = "\x00never"
    result = DemoResult(messages, group, topic, chart=str(out_dir / "backpressure.html"),
                        data=str(out_dir / "backpressure.json"))
    phase = "burst + slow sink"
    t0 = time.monotonic()
    phase_started = 0.0
    stop = asyncio.Event()

    def next_phase(name: str) -> None:
        nonlocal phase, phase_started
        now = time.monotonic() - t0
        result.phases.append((phase_started, now, phase))
        phase, phase_started = name, now

    async def sampler() -> None:
        previous = None
        while not stop.is_set():
            current = await group_lag(settings, group, [topic])
            rated = with_rates(previous, current) if previous else current
            previous = current
            result.samples.append(Sample(
                round(time.monotonic() - t0, 2), phase, current.total_lag,
                sum(p.end for p in current.partitions),
                sum(p.committed or 0 for p in current.partitions), round(rated.rate or 0.0, 1),
                round(rss_mib(worker.started_pid), 1) if worker.running() else 0.0))
            try:
                await asyncio.wait_for(stop.wait(), interval)
            except TimeoutError:
                pass

    worker.start()
    try:
        while True:
            if not worker.running():
                raise RuntimeError(f"the demo worker exited; see {worker.log_file}")
            try:
                if (await group_lag(settings, group, [topic])).state == "Stable":
                    break
            except KafkaError:  # the coordinator of a just-started broker may not be ready yet
                pass
            await asyncio.sleep(0.5)
        console.print(f"  worker pid {worker.pid} consuming {topic} in group {group}")
        sampling = asyncio.create_task(sampler())
        with Progress(TextColumn("  {task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                      console=console) as progress:
            started = time.monotonic()
            await _publish(settings, topic, messages, progress)
            result.publish_seconds = time.monotonic() - started
            left = slow_s - (time.monotonic() - t0)
            if left > 0:
                await asyncio.sleep(left)
            next_phase("outage (breaker open)")
            _control(control, mode="fail")
            await asyncio.sleep(outage_s)
            next_phase("recovered, fast sink")
            _control(control, mode="fast")
            drain = time.monotonic()
            lag = (await group_lag(settings, group, [topic])).total_lag
            task = progress.add_task("draining the lag", total=max(lag, 1))
            while lag > 0:
                if time.monotonic() - drain > drain_timeout:
                    raise RuntimeError(f"lag still {lag} after {drain_timeout:.0f}s")
                if not worker.running():
                    raise RuntimeError(f"the demo worker exited; see {worker.log_file}")
                await asyncio.sleep(interval)
                lag = (await group_lag(settings, group, [topic])).total_lag
                progress.update(task, completed=max(0, (progress.tasks[task].total or 0) - lag))
            result.drain_seconds = time.monotonic() - drain
        await asyncio.sleep(interval)
        next_phase("")
        result.phases = [p for p in result.phases if p[2]]
        stop.set()
        await sampling
        result.vm_hwm_mib = rss_mib(worker.started_pid, "VmHWM")
    finally:
        stop.set()
        worker.stop()
    from streams.kafka.admin import end_offsets

    result.dead_letters = sum((await end_offsets(settings, dead_letter_topic(topic))).values())
    result.peak_rss_mib = max((s.rss_mib for s in result.samples), default=0.0)
    result.peak_lag = max((s.lag for s in result.samples), default=0)
    _write(result)
    return result


def _write(result: DemoResult) -> None:
    Path(result.data).write_text(json.dumps(asdict(result), indent=1))
    samples = result.samples
    chart = Chart(
        title=f"streams demo backpressure: {result.messages:,} messages into a slow, failing, then fast sink",
        panels=[
            Panel("consumer lag", "records, from the broker", [(s.t, s.lag) for s in samples]),
            Panel("processing rate", "records/s, committed offsets", [(s.t, s.rate) for s in samples]),
            Panel("worker memory", "RSS MiB", [(s.t, s.rss_mib) for s in samples],
                  reference=(MEMORY_BOUND_MIB, f"documented bound {MEMORY_BOUND_MIB} MiB")),
        ],
        phases=result.phases,
        notes=[f"published in {result.publish_seconds:.0f}s; lag drained in {result.drain_seconds:.0f}s after "
               f"recovery; peak lag {result.peak_lag:,}; worker peak RSS {result.vm_hwm_mib:.0f} MiB "
               f"(VmHWM); dead letters: {result.dead_letters}",
               f"group {result.group}, topic {result.topic}"],
    )
    Path(result.chart).write_text(render_html(chart))


#: The worker memory bound documented in the README (see "Backpressure"): a worker's RSS
#: with the default flow-control settings stays below this however large the backlog.
MEMORY_BOUND_MIB = 300


def summary_table(result: DemoResult) -> Table:
    """Per-phase figures of a run."""
    table = Table(title="backpressure demo")
    for col in ("phase", "seconds", "lag at end", "peak lag", "mean rate/s", "peak RSS MiB"):
        table.add_column(col, justify="left" if col == "phase" else "right")
    for start, end, name in result.phases:
        rows = [s for s in result.samples if start <= s.t <= end]
        if not rows:
            continue
        table.add_row(name, f"{end - start:.0f}", f"{rows[-1].lag:,}", f"{max(r.lag for r in rows):,}",
                      f"{sum(r.rate for r in rows) / len(rows):,.0f}", f"{max(r.rss_mib for r in rows):.0f}")
    return table


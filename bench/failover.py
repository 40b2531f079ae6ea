"""Failover benchmark: how long partitions stop when a worker joins, leaves or dies.

    .venv/bin/python -m bench.failover [--ids 1000000] [--rate 10] [--session-timeout 30]

Starts its own Kafka broker (free ports, temp dir), writes ``--ids`` processed-ID
entries into the changelog of the benchmark app's table (``bench.apps``, the
deduplicating handler, 6 partitions), and produces a steady trickle of ``Ping``
envelopes on every partition (``--rate`` per partition per second) for the whole
run. Worker A starts alone (and restores the table); then, one after the other:

* **join**: worker B starts (empty data dir) and the group rebalances;
* **leave**: B stops gracefully (SIGTERM);
* **rejoin**: B starts again, on the data dir it left;
* **kill**: B is killed (SIGKILL): the group notices after the session timeout;
* **restart (static)**: both workers run with ``STREAMS_GROUP_INSTANCE_ID``; B is
  stopped and started again within the session timeout. Rebalances A went through are
  counted (Faust logs each generation it joins); with static membership: none.

For each, the **pause** is the longest time any partition's committed offset did
not move (read from the broker every ``--poll`` seconds; the workers commit every
0.5 s), from the disturbance until every partition moved again and stayed moving.
The steady state's own longest gap (commit interval plus poll) is reported beside it.
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import json
import os
import shutil
import sys
import tempfile
import threading
import time
import uuid
from dataclasses import asdict, dataclass, field
from datetime import datetime
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "bench" / "results"
LOGS = ROOT / ".streams" / "bench"

for _name in [n for n in os.environ if n.startswith("STREAMS_")]:
    del os.environ[_name]

from bench.consume import RssSampler, fill_changelog, loadavg  # noqa: E402
from bench.messages import PARTITIONS, TOPIC, Ping, registry  # noqa: E402
from streams.consume.dedup import changelog_configs  # noqa: E402
from streams.dev.kafka import KAFKA_VERSION, LocalKafka  # noqa: E402
from streams.dev.process import free_port  # noqa: E402
from streams.dev.worker import WorkerProcess  # noqa: E402
from streams.kafka.admin import TopicSpec, ensure_topics  # noqa: E402
from streams.kafka.clients import admin_client  # noqa: E402
from streams.settings import Settings  # noqa: E402


# --- the trickle and the watch ------------------------------------------------------------------
class Trickle(threading.Thread):
    """Produces ``rate`` Ping envelopes per second on every partition until stopped."""

    def __init__(self, settings: Settings, topic: str, rate: float) -> None:
        super().__init__(daemon=True)
        self.settings, self.topic, self.rate = settings, topic, rate
        self.halt = threading.Event()
        self.sent = 0
        self.error: BaseException | None = None

    def run(self) -> None:
        try:
            asyncio.run(self._run())
        except BaseException as exc:  # noqa: BLE001 - reported by the benchmark
            self.error = exc

    async def _run(self) -> None:
        from aiokafka import AIOKafkaProducer

        producer = AIOKafkaProducer(**self.settings.kafka_client_kwargs(), acks="all", linger_ms=5)
        await producer.start()
        try:
            interval = 1.0 / self.rate
            next_at = time.monotonic()
            while not self.halt.is_set():
                for p in range(PARTITIONS):
                    envelope = registry.envelope(Ping(n=self.sent, note="trickle"), key=f"t-{self.sent}",
                                                 source="bench-failover")
                    key, value, headers = envelope.to_record()
                    await producer.send(self.topic, key=key, value=value, headers=headers, partition=p)
                    self.sent += 1
                next_at += interval
                await asyncio.sleep(max(0.0, next_at - time.monotonic()))
        finally:
            await producer.stop()


class Watch(threading.Thread):
    """Reads the group's committed offsets every ``poll`` seconds; remembers when each partition's
    offset moved."""

    def __init__(self, settings: Settings, group: str, topic: str, poll: float) -> None:
        super().__init__(daemon=True)
        self.settings, self.group, self.topic, self.poll = settings, group, topic, poll
        self.halt = threading.Event()
        self.moves: dict[int, list[float]] = {p: [] for p in range(PARTITIONS)}
        self.offsets: dict[int, int] = {}
        self.lock = threading.Lock()
        self.error: BaseException | None = None

    def run(self) -> None:
        try:
            asyncio.run(self._run())
        except BaseException as exc:  # noqa: BLE001
            self.error = exc

    async def _run(self) -> None:
        admin = admin_client(self.settings)
        await admin.start()
        try:
            while not self.halt.is_set():
                try:
                    result = await admin.list_consumer_group_offsets(self.group)
                except Exception:  # noqa: BLE001 - the coordinator is busy: read again
                    await asyncio.sleep(self.poll)
                    continue
                now = time.monotonic()
                with self.lock:
                    for tp, meta in result.items():
                        if (tp.topic == self.topic and meta.offset >= 0
                                and self.offsets.get(tp.partition) != meta.offset):
                            if tp.partition in self.offsets:
                                self.moves[tp.partition].append(now)
                            self.offsets[tp.partition] = meta.offset
                await asyncio.sleep(self.poll)
        finally:
            await admin.close()

    def moved_since(self, since: float) -> dict[int, int]:
        with self.lock:
            return {p: sum(1 for t in times if t >= since) for p, times in self.moves.items()}

    def longest_pause(self, start: float, end: float) -> tuple[float, int]:
        """The longest gap between two moves of one partition that overlaps [start, end]
        (a gap still open at ``end`` counts up to ``end``); (seconds, partition)."""
        worst, where = 0.0, -1
        with self.lock:
            for p, times in self.moves.items():
                before = [t for t in times if t < start]
                inside = [t for t in times if start <= t <= end]
                points = ([before[-1]] if before else [start]) + inside + [end]
                for a, b in itertools.pairwise(points):
                    if b - a > worst:
                        worst, where = b - a, p
        return worst, where


# --- one phase ------------------------------------------------------------------------------
@dataclass
class Phase:
    name: str
    pause_s: float | None = None
    partition: int | None = None
    settle_s: float | None = None
    rebalances_of_a: int | None = None
    loadavg_1m: float | None = None
    note: str = ""


@dataclass
class Run:
    ids: int
    rate_per_partition: float
    session_timeout_s: float
    steady_gap_s: float | None = None
    restore_a_s: float | None = None
    phases: list[Phase] = field(default_factory=list)
    peak_rss_mib: dict[str, float] = field(default_factory=dict)
    error: str | None = None


def settle(watch: Watch, since: float, *, moves: int = 4, quiet: float = 5.0, timeout: float = 600.0) -> float:
    """Wait until every partition moved ``moves`` times since ``since`` (and ``quiet`` seconds more);
    returns when they had."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        counts = watch.moved_since(since)
        if min(counts.values()) >= moves:
            time.sleep(quiet)
            return time.monotonic()
        time.sleep(0.2)
    raise TimeoutError(f"partitions did not all move again within {timeout:.0f}s: {watch.moved_since(since)}")


def generations(worker: WorkerProcess) -> int:
    return worker.log_text().count("generation id ")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.failover", description=__doc__.split("\n\n")[0])
    parser.add_argument("--ids", type=int, default=1_000_000, help="processed-ID entries in the table (default 1000000)")
    parser.add_argument("--rate", type=float, default=10.0, help="trickle: messages per partition per second")
    parser.add_argument("--session-timeout", type=float, default=30.0, help="STREAMS_BROKER_SESSION_TIMEOUT (s)")
    parser.add_argument("--poll", type=float, default=0.2, help="seconds between committed-offset reads")
    parser.add_argument("--phases", default="join,leave,rejoin,kill,restart",
                        help="comma-separated subset of: join, leave, rejoin, kill, restart")
    parser.add_argument("--env", action="append", default=[], metavar="NAME=VALUE",
                        help="extra STREAMS_* setting for both workers (repeatable)")
    parser.add_argument("--keep", action="store_true", help="keep the temp dir")
    args = parser.parse_args(argv)
    wanted = [p.strip() for p in args.phases.split(",") if p.strip()]

    stamp = datetime.now().strftime("%Y-%m-%d-%H%M%S")
    suffix = uuid.uuid4().hex[:6]
    tmp = Path(tempfile.mkdtemp(prefix="streams-failover-"))
    broker = LocalKafka(data_dir=tmp / "kafka", cache_dir=ROOT / ".streams" / "cache",
                        port=free_port(), controller_port=free_port())
    result = Run(args.ids, args.rate, args.session_timeout)
    workers: dict[str, WorkerProcess] = {}
    rss: dict[str, RssSampler] = {}
    trickle = watch = None
    try:
        print(f"[failover] temp dir {tmp}", flush=True)
        broker.up()
        prefix = f"failover{suffix}."
        group = f"bench-failover-{suffix}"
        settings = Settings(kafka_bootstrap=broker.bootstrap, app_id=group, topic_prefix=prefix, home=tmp / "home")
        topic = f"{prefix}{TOPIC}"
        changelog = f"{group}-processed-bench-ping-changelog"
        asyncio.run(ensure_topics(settings, [TopicSpec(topic, PARTITIONS),
                                             TopicSpec(changelog, PARTITIONS, config=changelog_configs(7 * 86400.0))]))
        t0 = time.monotonic()
        asyncio.run(fill_changelog(settings, changelog, args.ids))
        print(f"[failover] {args.ids:,} ids written to {changelog} in {time.monotonic() - t0:.1f}s", flush=True)
        base_env = {
            "STREAMS_KAFKA_BOOTSTRAP": broker.bootstrap, "STREAMS_TOPIC_PREFIX": prefix, "STREAMS_APP_ID": group,
            "STREAMS_HOME": str(tmp / "home"), "STREAMS_BROKER_COMMIT_INTERVAL": "0.5",
            "STREAMS_BROKER_SESSION_TIMEOUT": str(args.session_timeout), "STREAMS_LOG_LEVEL": "info",
            "BENCH_IDEMPOTENT": "1", "PYTHONUNBUFFERED": "1",
            **dict(e.split("=", 1) for e in args.env),
        }

        def worker(label: str, **env: str) -> WorkerProcess:
            proc = WorkerProcess({**base_env, "STREAMS_WORKER_DATA_DIR": str(tmp / "worker" / label), **env},
                                 tmp / "logs" / f"{label}.log", args=["--without-web", "--app", "bench.apps:app"],
                                 cwd=ROOT)
            workers[label] = proc
            return proc

        def start(proc: WorkerProcess, label: str) -> float:
            started = time.monotonic()
            proc.start()
            rss[label] = rss.get(label) or RssSampler(proc.started_pid)
            rss[label].pid = proc.started_pid
            proc.wait_ready(timeout=1800)
            rss[label].sample()
            return time.monotonic() - started

        a = worker("a")
        result.restore_a_s = round(start(a, "a"), 1)
        print(f"[failover] worker A ready after {result.restore_a_s}s (restored {args.ids:,} ids)", flush=True)
        trickle = Trickle(settings, topic, args.rate)
        watch = Watch(settings, group, topic, args.poll)
        trickle.start()
        watch.start()
        t_steady = time.monotonic()
        settle(watch, t_steady, moves=10, quiet=10)
        gap, _ = watch.longest_pause(t_steady + 5, time.monotonic())
        result.steady_gap_s = round(gap, 2)
        print(f"[failover] steady: longest gap {gap:.2f}s", flush=True)

        def phase(name: str, act, note: str = "", before_a: int | None = None) -> None:
            load = loadavg()
            t_event = time.monotonic()
            act()
            settled = settle(watch, time.monotonic())
            pause, where = watch.longest_pause(t_event, settled)
            for sampler in rss.values():
                sampler.sample()
            row = Phase(name, round(pause, 2), where, round(settled - t_event, 1), loadavg_1m=max(load, loadavg()),
                        note=note)
            if before_a is not None:
                row.rebalances_of_a = generations(workers["a"]) - before_a
            result.phases.append(row)
            print(f"[failover] {name}: longest pause {pause:.2f}s (partition {where}); {note}", flush=True)

        b = worker("b")
        if "join" in wanted:
            phase("join", lambda: start(b, "b"), "B starts with an empty data dir")
        elif not b.running():
            start(b, "b")
        if "leave" in wanted:
            phase("leave", lambda: b.stop(), "B stops (SIGTERM)")
        if "rejoin" in wanted:
            if b.running():
                b.stop()
                settle(watch, time.monotonic())
            phase("rejoin", lambda: start(b, "b"), "B starts again on its data dir")
        if "kill" in wanted:
            if not b.running():
                start(b, "b")
                settle(watch, time.monotonic())
            phase("kill", lambda: b.kill(), f"B killed (SIGKILL); session timeout {args.session_timeout:.0f}s")
        if "restart" in wanted:
            for label in ("a", "b"):
                if workers[label].running():
                    workers[label].stop()
            a = worker("a", STREAMS_GROUP_INSTANCE_ID="bench-a")
            b = worker("b", STREAMS_GROUP_INSTANCE_ID="bench-b")
            start(a, "a")
            start(b, "b")
            settle(watch, time.monotonic(), moves=6, quiet=10)
            before = generations(a)

            def restart() -> None:
                b.stop()
                start(b, "b")

            phase("restart (static)", restart, "both static members; B stopped and started again", before_a=before)
        result.peak_rss_mib = {label: round(s.mib, 1) for label, s in rss.items()}
    except Exception as exc:  # noqa: BLE001 - reported with the table
        result.error = f"{type(exc).__name__}: {exc}"
        print(f"[failover] FAILED: {result.error}", flush=True)
    finally:
        for thread in (trickle, watch):
            if thread is not None:
                thread.halt.set()
                thread.join(30)
        for proc in workers.values():
            proc.stop(timeout=60)
        broker.down()
        log_dir = LOGS / f"failover-{stamp}"
        if (tmp / "logs").exists():
            shutil.copytree(tmp / "logs", log_dir, dirs_exist_ok=True)
        if not args.keep:
            shutil.rmtree(tmp, ignore_errors=True)
    print_table(result)
    RESULTS.mkdir(parents=True, exist_ok=True)
    out = RESULTS / f"failover-{stamp}.json"
    out.write_text(json.dumps({"date": stamp, "cpus": os.cpu_count(), "kafka": KAFKA_VERSION, **asdict(result)},
                              indent=2) + "\n")
    print(f"[failover] results written to {out.relative_to(ROOT)}; worker logs in .streams/bench/failover-{stamp}/")
    return 1 if result.error else 0


def print_table(result: Run) -> None:
    from rich.console import Console
    from rich.table import Table

    table = Table(title=f"failover: {result.ids:,} ids, {PARTITIONS} partitions, {result.rate_per_partition:g} msgs/s "
                        f"per partition, session timeout {result.session_timeout_s:g}s")
    for col in ("phase", "longest pause s", "partition", "settled after s", "rebalances of A", "load", "what"):
        table.add_column(col, justify="left" if col in ("phase", "what") else "right")
    for p in result.phases:
        table.add_row(p.name, f"{p.pause_s:.2f}" if p.pause_s is not None else "—", str(p.partition),
                      f"{p.settle_s:.1f}" if p.settle_s is not None else "—",
                      "—" if p.rebalances_of_a is None else str(p.rebalances_of_a),
                      f"{p.loadavg_1m:.1f}" if p.loadavg_1m is not None else "—", p.note)
    console = Console(width=140)
    console.print(table)
    console.print(f"steady state: longest gap {result.steady_gap_s}s (commit interval 0.5 s + poll); worker A "
                  f"restored the table and was ready after {result.restore_a_s}s; peak RSS {result.peak_rss_mib} MiB",
                  highlight=False)
    if result.error:
        console.print(f"[bold red]failed:[/] {result.error}", highlight=False)


if __name__ == "__main__":
    sys.exit(main())

"""CDC benchmark: rows/s through Debezium into a handler, and commit → handler latency of the
outbox through the log versus the polling relay, in one run.

    .venv/bin/python -m bench.cdc [--rows 100000] [--rate 1000 --seconds 20]

Starts its own Kafka broker, PostgreSQL server and Kafka Connect worker (free ports, data
in a temp dir; jars from the shared ``.streams/cache``) and stops them at the end. The
handlers run in one ``streams worker`` process (``bench/cdc_app.py``).

* **throughput**: a connector on ``public.bench_rows`` (snapshot ``no_data``) runs and the
  worker is ready; N rows (a 200-character note) are inserted in transactions of 1,000
  as fast as one connection can. Timed from the first commit until (a) all N change
  events are on Kafka (log-end offsets) and (b) the worker's group has committed them
  all after its idempotent handler ran.
* **snapshot**: N rows already in a table; a connector created with snapshot ``initial``
  (one consistent read, then the log) and one with ``incremental`` (chunks read while
  the log streams; resumable). Timed from the create call until all N reads are on Kafka.
* **latency**: a writer commits one outbox row per transaction at a steady rate (4
  threads, one connection each), first with a ``streams relay`` process running, then
  with an outbox connector (``streams cdc create --outbox``) and no relay. The worker's
  handler appends each message's arrival time to a file; latency = arrival − the
  writer's clock right after ``COMMIT`` returned. p50/p95/p99/max over all rows.
  Database load: rows read by the relay's/connector's sessions are not comparable, so
  the table shows what each path costs PostgreSQL in round trips: the relay's
  statements per row (``pg_stat_statements`` is not available, so from
  ``pg_stat_database.xact_commit`` of the relay's database minus the writer's own
  commits) and, for the log, the WAL bytes per row that the slot had to read.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import sys
import tempfile
import time
from dataclasses import asdict, dataclass
from datetime import datetime
from pathlib import Path
from typing import Literal

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "bench" / "results"
LOGS = ROOT / ".streams" / "bench"

for _name in [n for n in os.environ if n.startswith("STREAMS_")]:
    del os.environ[_name]

import psycopg  # noqa: E402

from bench.cdc_app import PARTITIONS, PINGS_TOPIC, ROWS_TOPIC, Ping, registry  # noqa: E402
from bench.latency import latencies_ms, percentiles, steady_writes  # noqa: E402
from streams.cdc.config import CdcSpec  # noqa: E402
from streams.cdc.connectors import CdcConnectors  # noqa: E402
from streams.dev.connect import LocalConnect  # noqa: E402
from streams.dev.kafka import LocalKafka  # noqa: E402
from streams.dev.postgres import LocalPostgres  # noqa: E402
from streams.dev.process import free_port  # noqa: E402
from streams.dev.worker import WorkerProcess  # noqa: E402
from streams.kafka.admin import TopicSpec, committed_offsets, end_offsets, ensure_topics  # noqa: E402
from streams.outbox.schema import migrate  # noqa: E402
from streams.settings import Settings  # noqa: E402

GROUP = "bench-cdc"


@dataclass
class ThroughputResult:
    rows: int
    insert_s: float
    to_kafka_s: float
    to_handler_s: float
    kafka_rows_per_s: float
    handler_rows_per_s: float
    load_1m: float = 0.0  # the 1-minute load average when the last change was handled


@dataclass
class SnapshotResult:
    mode: str
    rows: int
    to_kafka_s: float
    rows_per_s: float


@dataclass
class LatencyResult:
    path: str
    rate: int
    seconds: int
    rows: int
    achieved_rate: float
    p50_ms: float
    p95_ms: float
    p99_ms: float
    max_ms: float
    db_commits_per_row: float
    wal_bytes_per_row: float


class Bench:
    def __init__(self, workdir: Path) -> None:
        self.workdir = workdir
        self.kafka = LocalKafka(data_dir=workdir / "kafka", cache_dir=ROOT / ".streams" / "cache",
                                port=free_port(), controller_port=free_port())
        self.postgres = LocalPostgres(root=workdir / "postgres", port=free_port())
        self.connect: LocalConnect | None = None
        self.run_id = datetime.now().strftime("%H%M%S")
        self.arrivals = workdir / "arrivals.txt"

    def up(self) -> None:
        self.kafka.up()
        self.postgres.up()
        self.connect = LocalConnect(self.workdir / "connect", ROOT / ".streams" / "cache", self.kafka.bootstrap,
                                    port=free_port(), group="bench-connect")
        self.connect.up()

    def down(self) -> None:
        if self.connect:
            self.connect.down()
        self.postgres.down()
        self.kafka.down()

    @property
    def settings(self) -> Settings:
        return Settings(kafka_bootstrap=self.kafka.bootstrap, database_url=self.postgres.url,
                        home=self.workdir / "home", app_id=GROUP, topic_partitions=PARTITIONS,
                        connect_url=self.connect.url if self.connect else None)

    def env(self) -> dict[str, str]:
        s = self.settings
        return {"STREAMS_KAFKA_BOOTSTRAP": s.bootstrap_servers, "STREAMS_DATABASE_URL": s.dsn,
                "STREAMS_HOME": str(s.home), "STREAMS_APP_ID": GROUP, "STREAMS_TOPIC_PARTITIONS": str(PARTITIONS),
                "STREAMS_LOG_LEVEL": "warning", "STREAMS_BROKER_COMMIT_INTERVAL": "0.5"}

    def worker(self) -> WorkerProcess:
        env = {**self.env(), "STREAMS_WORKER_APP": "bench.cdc_app:app", "BENCH_ARRIVALS": str(self.arrivals),
               "STREAMS_LOG_LEVEL": "info"}
        return WorkerProcess(env, LOGS / f"cdc-{self.run_id}-worker.log", cwd=ROOT)

    def relay(self) -> WorkerProcess:
        env = {**self.env(), "STREAMS_LOG_LEVEL": "info"}
        return WorkerProcess(env, LOGS / f"cdc-{self.run_id}-relay.log", cwd=ROOT,
                             command=[sys.executable, "-m", "streams.cli", "relay", "--name", "bench"],
                             ready_marker="relay bench started")

    # --- throughput ------------------------------------------------------------------
    def throughput(self, rows: int, profile_pid: int | None = None) -> ThroughputResult:
        s = self.settings
        with psycopg.connect(s.dsn, autocommit=True) as conn:
            conn.execute("CREATE TABLE bench_rows (id bigint PRIMARY KEY, note text NOT NULL)")
        connectors = CdcConnectors(s)
        connectors.create(CdcSpec(name="bench-rows", tables=["public.bench_rows"], snapshot="no_data",
                                  topic_prefix="bench.cdc.rows", before_rows="key"))
        topic = ROWS_TOPIC
        spy = raw = None
        if profile_pid is not None:  # py-spy on the worker while it handles the changes
            from bench import profile

            LOGS.mkdir(parents=True, exist_ok=True)
            raw = LOGS / f"cdc-{self.run_id}-worker-profile.txt"
            spy = profile.start(profile_pid, 900, raw, rate=100)
        started = time.monotonic()
        batch = 1000
        with psycopg.connect(s.dsn, autocommit=True) as conn:
            for first in range(1, rows + 1, batch):
                conn.execute("INSERT INTO bench_rows SELECT g, repeat('x', 200) FROM generate_series(%s::bigint, %s::bigint) g",
                             (first, min(rows, first + batch - 1)))
        inserted = time.monotonic() - started
        to_kafka = to_handler = None
        deadline = time.monotonic() + 900
        while time.monotonic() < deadline and to_handler is None:
            ends = asyncio.run(end_offsets(s, topic))
            total = sum(ends.values())
            if to_kafka is None and total >= rows:
                to_kafka = time.monotonic() - started
            if total >= rows:
                committed = asyncio.run(committed_offsets(s, GROUP, topic))
                if all(committed.get((topic, p), 0) >= e for p, e in ends.items()):
                    to_handler = time.monotonic() - started
                    load = os.getloadavg()[0]
            time.sleep(0.25)
        if spy is not None and raw is not None:
            from bench import profile

            spy.send_signal(2)  # SIGINT: py-spy writes what it sampled
            spy.wait(60)
            profile.print_summary("worker handling the changes", profile.summarise(raw, top=25))
            print(f"py-spy samples (raw): {raw}")
        if to_kafka is None or to_handler is None:
            raise RuntimeError("the change events did not all arrive within 15 minutes")
        connectors.delete("bench-rows")
        return ThroughputResult(rows, round(inserted, 2), round(to_kafka, 2), round(to_handler, 2),
                                round(rows / to_kafka), round(rows / to_handler), round(load, 1))

    # --- snapshot --------------------------------------------------------------------
    def snapshot(self, rows: int, mode: Literal["initial", "incremental"]) -> SnapshotResult:
        s = self.settings
        table = f"bench_snap_{mode}"
        with psycopg.connect(s.dsn, autocommit=True) as conn:
            conn.execute(f"CREATE TABLE {table} (id bigint PRIMARY KEY, note text NOT NULL)")
            conn.execute(f"INSERT INTO {table} SELECT g, repeat('x', 200) FROM generate_series(1, %s::bigint) g",
                         (rows,))
            conn.execute(f"VACUUM ANALYZE {table}")
        connectors = CdcConnectors(s)
        prefix = f"bench.cdc.snap-{mode}"
        topic = f"{prefix}.public.{table}"
        started = time.monotonic()
        connectors.create(CdcSpec(name=f"bench-snap-{mode.replace('_', '-')}", tables=[f"public.{table}"],
                                  snapshot=mode, topic_prefix=prefix, before_rows="key"),
                          position_timeout=0)
        deadline = time.monotonic() + 900
        took = None
        while time.monotonic() < deadline:
            try:
                if sum(asyncio.run(end_offsets(s, topic)).values()) >= rows:
                    took = time.monotonic() - started
                    break
            except Exception:  # noqa: BLE001 - the topic appears with the first read
                pass
            time.sleep(0.25)
        if took is None:
            raise RuntimeError(f"the {mode} snapshot did not reach Kafka within 15 minutes")
        connectors.delete(f"bench-snap-{mode.replace('_', '-')}")
        return SnapshotResult(mode, rows, round(took, 2), round(rows / took))

    # --- latency ---------------------------------------------------------------------
    def latency(self, path: str, rate: int, seconds: int) -> LatencyResult:
        s = self.settings
        total = rate * seconds
        self.arrivals.write_text("")
        with psycopg.connect(s.dsn, autocommit=True) as conn:
            before = self._db_counters(conn)
        committed, achieved = steady_writes(s.dsn, PINGS_TOPIC, rate, seconds,
                                            lambda i: registry.envelope(Ping(n=i), key=f"key-{i % 1000}"))
        deadline = time.monotonic() + 60
        arrived: dict[str, float] = {}
        while time.monotonic() < deadline:
            arrived = self._arrived()
            if len(arrived) >= total:
                break
            time.sleep(0.5)
        with psycopg.connect(s.dsn, autocommit=True) as conn:
            after = self._db_counters(conn)
        lat = latencies_ms(committed, arrived)
        if len(lat) < total:
            print(f"warning ({path}): {total - len(lat)} rows did not arrive within 60 s", file=sys.stderr)
        commits = (after[0] - before[0] - total) / total  # the writer's own commits taken out
        wal = (after[1] - before[1]) / total
        p = percentiles(lat)
        return LatencyResult(path, rate, seconds, len(lat), round(achieved, 1), p["p50"], p["p95"], p["p99"], p["max"],
                             round(commits, 3), round(wal))

    def _arrived(self) -> dict[str, float]:
        out = {}
        for line in self.arrivals.read_text().splitlines():
            mid, _, ts = line.partition(" ")
            if ts:
                out.setdefault(mid, float(ts))
        return out

    @staticmethod
    def _db_counters(conn: psycopg.Connection) -> tuple[int, int]:
        """(commits in this database, WAL bytes written so far)."""
        row = conn.execute("SELECT xact_commit, pg_wal_lsn_diff(pg_current_wal_lsn(), '0/0')::bigint "
                           "FROM pg_stat_database WHERE datname = current_database()").fetchone()
        assert row is not None
        return int(row[0]), int(row[1])

    def latencies(self, rate: int, seconds: int) -> list[LatencyResult]:
        s = self.settings
        with psycopg.connect(s.dsn, autocommit=True) as conn:
            migrate(conn, s.outbox_table)
        asyncio.run(ensure_topics(s, [TopicSpec(PINGS_TOPIC, PARTITIONS)]))
        relay = self.relay().start()
        relay.wait_ready(60)
        results = [self.latency("polling relay", rate, seconds)]
        relay.stop()
        connectors = CdcConnectors(s)
        connectors.create(CdcSpec(name="bench-outbox", outbox=True, topic_prefix="bench.cdc.outbox"))
        results.append(self.latency("Debezium (log)", rate, seconds))
        connectors.delete("bench-outbox")
        return results


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rows", type=int, default=100_000, help="Rows for the throughput run.")
    parser.add_argument("--rate", type=int, default=1000, help="Outbox rows/s for the latency runs.")
    parser.add_argument("--seconds", type=int, default=20, help="Length of each latency run.")
    parser.add_argument("--snapshot-rows", type=int, default=100_000, help="Rows for the snapshot runs (0: skip).")
    parser.add_argument("--profile", action="store_true", help="py-spy the worker during the throughput run.")
    parser.add_argument("--skip-latency", action="store_true", help="Only the throughput (and snapshot) runs.")
    args = parser.parse_args(argv)
    LOGS.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="bench-cdc-") as tmp:
        bench = Bench(Path(tmp))
        bench.up()
        worker = None
        try:
            worker = bench.worker().start()
            worker.wait_ready(120)
            tp = bench.throughput(args.rows, worker.pid if args.profile else None)
            snaps = [bench.snapshot(args.snapshot_rows, mode) for mode in ("initial", "incremental")
                     if args.snapshot_rows]
            lats = [] if args.skip_latency else bench.latencies(args.rate, args.seconds)
        finally:
            if worker is not None:
                worker.stop()
            bench.down()
    print(f"\nChange events through Debezium into an idempotent handler ({tp.rows:,} inserted rows, "
          f"transactions of 1,000, {PARTITIONS} partitions)")
    print(f"{'insert s':>9} {'on Kafka s':>11} {'handled s':>10} {'to Kafka rows/s':>16} {'handled rows/s':>15} "
          f"{'handled/Kafka':>14} {'load':>5}")
    print(f"{tp.insert_s:>9.2f} {tp.to_kafka_s:>11.2f} {tp.to_handler_s:>10.2f} {tp.kafka_rows_per_s:>16,.0f} "
          f"{tp.handler_rows_per_s:>15,.0f} {tp.handler_rows_per_s / tp.kafka_rows_per_s:>14.2f} {tp.load_1m:>5.1f}")
    if snaps:
        print(f"\nSnapshot of {args.snapshot_rows:,} existing rows, create → all reads on Kafka")
        print(f"{'snapshot mode':<14} {'seconds':>8} {'rows/s':>8}")
        for sn in snaps:
            print(f"{sn.mode:<14} {sn.to_kafka_s:>8.2f} {sn.rows_per_s:>8,.0f}")
    print(f"\nOutbox commit → handler latency, {args.rate:,} rows/s offered for {args.seconds}s, one row per transaction")
    print(f"{'path':<16} {'rows':>7} {'rows/s':>8} {'p50 ms':>8} {'p95 ms':>8} {'p99 ms':>8} {'max ms':>8} "
          f"{'extra commits/row':>18} {'WAL B/row':>10}")
    for r in lats:
        print(f"{r.path:<16} {r.rows:>7,} {r.achieved_rate:>8,.0f} {r.p50_ms:>8} {r.p95_ms:>8} {r.p99_ms:>8} "
              f"{r.max_ms:>8} {r.db_commits_per_row:>18} {r.wal_bytes_per_row:>10,.0f}")
    RESULTS.mkdir(parents=True, exist_ok=True)
    out = RESULTS / f"cdc-{datetime.now():%Y-%m-%d-%H%M%S}.json"
    out.write_text(json.dumps({"machine": {"cpus": os.cpu_count(), "python": platform.python_version()},
                               "throughput": asdict(tp), "snapshot": [asdict(sn) for sn in snaps],
                               "latency": [asdict(r) for r in lats]}, indent=2))
    print(f"\nresults: {out.relative_to(ROOT)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""Outbox relay benchmark: throughput with 1, 2 and 4 relays, and commit → Kafka latency.

    .venv/bin/python -m bench.relay [--rows 50000] [--relays 1,2,4] [--rate 1000 --seconds 30]
    .venv/bin/python -m bench.relay --relays 2 --seconds 0 --repeat 3 --baseline /tmp/before   # paired runs
    .venv/bin/python -m bench.relay --relays 2 --seconds 0 --profile                          # where time goes
    .venv/bin/python -m bench.relay --databases postgresql,mariadb                            # MariaDB beside it

Starts its own Kafka broker and PostgreSQL server (free ports, data in a temp dir)
and stops them at the end. Relays run as separate ``streams relay`` processes
(status mode, batch 500).

* **throughput**: N pending rows over 1,000 keys are inserted in one statement, then
  K relays start together; time = from the first relay's "started" line until every
  row is ``done`` (polled every 0.1 s with two index probes: none ``pending``, none
  ``failed``); rows/s = N / time. Peak RSS per relay from /proc (VmHWM). WAL B/row = WAL
  written from the start of the relays to the end of the run (``pg_current_wal_lsn``), per
  row: the relays' claims, marks and commits. Relay CPU µs/row = user + system CPU time of
  all relay processes (/proc) from "started" to the end, per row: unlike rows/s, it hardly depends
  on what else runs on the machine; PostgreSQL and Kafka CPU µs/row: the same for the servers
  (every PostgreSQL process, the bench's own polls included; the broker's JVM).
* ``--baseline DIR``: each throughput run is also made with the relays of another checkout
  (e.g. ``git worktree add /tmp/before <commit>``) and the outbox table its migration makes,
  right before the run with this one, on the same servers: paired figures. ``--repeat N`` makes N such rounds; the 1-minute load
  average is printed beside every run.
* ``--profile``: PostgreSQL runs with ``pg_stat_statements``; each throughput run prints
  the relays' statements with the most total time, and py-spy samples relay 0
  (``--profile-seconds``; :mod:`bench.profile`) and prints where its time goes.
* **latency**: one relay runs; a writer commits one row per transaction at a steady
  rate (default 1,000 rows/s for 30 s, via ``write_message`` from 4 threads, one
  connection each); a
  consumer (assigned all partitions, at the end offsets) stamps each record on
  arrival. Latency = arrival time − the writer's clock right after ``COMMIT``
  returned, per message_id; p50/p95/p99/max over all rows.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import asdict, dataclass
from datetime import datetime
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "bench" / "results"
LOGS = ROOT / ".streams" / "bench"

for _name in [n for n in os.environ if n.startswith("STREAMS_")]:
    del os.environ[_name]

import psycopg  # noqa: E402
from aiokafka import AIOKafkaConsumer, TopicPartition  # noqa: E402

from bench.latency import latencies_ms, percentiles, steady_writes  # noqa: E402
from streams import mysql  # noqa: E402
from streams.dev.kafka import LocalKafka  # noqa: E402
from streams.dev.mariadb import LocalMariaDB  # noqa: E402
from streams.dev.postgres import LocalPostgres  # noqa: E402
from streams.dev.process import free_port  # noqa: E402
from streams.dev.worker import WorkerProcess  # noqa: E402
from streams.kafka.admin import TopicSpec, ensure_topics  # noqa: E402
from streams.messages.envelope import event  # noqa: E402
from streams.outbox import mysql_schema  # noqa: E402
from streams.outbox.schema import migrate  # noqa: E402
from streams.settings import Settings  # noqa: E402

TOPIC = "bench.outbox"
PARTITIONS = 6
TABLE = "streams_outbox"


@dataclass
class ThroughputResult:
    relays: int
    rows: int
    seconds: float
    rows_per_s: float
    peak_rss_mib_per_relay: float
    wal_bytes_per_row: float = 0.0
    relay_cpu_us_per_row: float = 0.0
    postgres_cpu_us_per_row: float = 0.0
    kafka_cpu_us_per_row: float = 0.0
    build: str = "this checkout"
    load_1m: float = 0.0
    profile: dict | None = None
    statements: list | None = None


@dataclass
class LatencyResult:
    rate: int
    seconds: int
    rows: int
    achieved_rate: float
    p50_ms: float
    p95_ms: float
    p99_ms: float
    max_ms: float
    build: str = "this checkout"
    load_1m: float = 0.0


def cpu_seconds(pid: int) -> float:
    """User + system CPU time the process has used so far (/proc/<pid>/stat)."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    except (OSError, ValueError, IndexError):
        return float("nan")


def tree_cpu_seconds(root: int | None) -> float:
    """CPU time used so far by ``root`` and its descendants (a server and its backends)."""
    if root is None:
        return float("nan")
    children: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                ppid = int((entry / "stat").read_text().rpartition(")")[2].split()[1])
            except (OSError, ValueError, IndexError):
                continue
            children.setdefault(ppid, []).append(int(entry.name))
    total, todo = 0.0, [root]
    while todo:
        pid = todo.pop()
        used = cpu_seconds(pid)
        total += 0.0 if used != used else used  # a process gone meanwhile: nan
        todo += children.get(pid, [])
    return total


def peak_rss_mib(pid: int) -> float:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return float("nan")


class Bench:
    def __init__(self, workdir: Path, *, profile_seconds: float = 0.0, batch_size: int = 500) -> None:
        self.workdir = workdir
        self.batch_size = batch_size
        self.profile_seconds = profile_seconds
        self.kafka = LocalKafka(data_dir=workdir / "kafka", cache_dir=ROOT / ".streams" / "cache",
                                port=free_port(), controller_port=free_port())
        self.postgres = LocalPostgres(root=workdir / "postgres", port=free_port())
        self.mariadb = LocalMariaDB(workdir / "mariadb", free_port())
        self.run_id = datetime.now().strftime("%H%M%S")

    def settings(self, db: str) -> Settings:
        return Settings(kafka_bootstrap=self.kafka.bootstrap,
                        database_url=self.postgres.url.rsplit("/", 1)[0] + f"/{db}", home=self.workdir / "home")

    def env(self, settings: Settings) -> dict[str, str]:
        return {"STREAMS_KAFKA_BOOTSTRAP": settings.bootstrap_servers, "STREAMS_DATABASE_URL": settings.dsn,
                "STREAMS_HOME": str(settings.home), "STREAMS_RELAY_BATCH_SIZE": str(self.batch_size),
                "STREAMS_LOG_LEVEL": "warning"}

    def fresh_database(self, name: str, code: Path = ROOT) -> Settings:
        """A new database with the outbox table as ``code``'s migration makes it."""
        admin = self.postgres.url.rsplit("/", 1)[0] + "/postgres"
        with psycopg.connect(admin, autocommit=True) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{name}"')
            conn.execute(f'CREATE DATABASE "{name}"')
        settings = self.settings(name)
        if code == ROOT:
            with psycopg.connect(settings.dsn, autocommit=True) as conn:
                migrate(conn, TABLE)
        else:  # the baseline's own schema (its indexes), not this checkout's
            subprocess.run([sys.executable, "-c", "import sys, psycopg; from streams.outbox.schema import migrate; "
                            "migrate(psycopg.connect(sys.argv[1], autocommit=True), sys.argv[2])", settings.dsn, TABLE],
                           cwd=code, env={**os.environ, "PYTHONPATH": str(code)}, check=True)
        return settings

    def with_pg_stat_statements(self) -> None:
        """Restart PostgreSQL with ``pg_stat_statements`` loaded (``--profile``)."""
        with psycopg.connect(self.postgres.admin_url(), autocommit=True) as conn:
            conn.execute("ALTER SYSTEM SET shared_preload_libraries = 'pg_stat_statements'")
            conn.execute("ALTER SYSTEM SET pg_stat_statements.track = 'all'")
        self.postgres.down()
        self.postgres.up()

    def relay(self, settings: Settings, label: str, code: Path = ROOT) -> WorkerProcess:
        env = {**self.env(settings), "STREAMS_LOG_LEVEL": "info"}
        if code != ROOT:  # the relays of another checkout (--baseline), with this venv's libraries
            env["PYTHONPATH"] = str(code)
        proc = WorkerProcess(env, LOGS / f"relay-{self.run_id}-{label}.log", cwd=code,
                             command=[sys.executable, "-m", "streams.cli", "relay", "--name", label],
                             ready_marker=f"relay {label} started")
        return proc

    # --- throughput on MariaDB (--databases ...,mariadb) --------------------
    def throughput_mariadb(self, relays: int, rows: int) -> ThroughputResult:
        """The same run on MariaDB: rows inserted with ``executemany`` in chunks of 2,000 (through the
        outbox's key-lock trigger), the relays of this checkout; rows/s, peak RSS and relay CPU."""
        import uuid

        name = f"tpm{relays}"
        conn = mysql.connect(self.mariadb.url)
        with conn.cursor() as cur:
            cur.execute(f"DROP DATABASE IF EXISTS `{name}`")
            cur.execute(f"CREATE DATABASE `{name}`")
        conn.close()
        settings = Settings(kafka_bootstrap=self.kafka.bootstrap, home=self.workdir / "home",
                            database_url=self.mariadb.url.rsplit("/", 1)[0] + f"/{name}")
        topic = f"{TOPIC}.mariadb.tp{relays}.{time.monotonic_ns()}"
        asyncio.run(ensure_topics(settings, [TopicSpec(topic, PARTITIONS)]))
        conn = mysql.connect(settings.dsn)
        mysql_schema.migrate(conn, TABLE)
        columns = "(message_id, message_type, topic, `key`, payload, occurred_at)"
        with conn.cursor() as cur:
            for start in range(0, rows, 2000):
                cur.executemany(f"INSERT INTO {TABLE} {columns} VALUES (%s, 'Ping', %s, %s, %s, UTC_TIMESTAMP(6))",
                                [(str(uuid.uuid4()), topic, f"key-{g % 1000}", json.dumps({"n": g, "note": "x" * 200}))
                                 for g in range(start + 1, min(start + 2000, rows) + 1)])
            cur.execute(f"ANALYZE TABLE {TABLE}")
            cur.fetchall()
        procs = [self.relay(settings, f"tp-mariadb{relays}-{i}") for i in range(relays)]
        for p in procs:
            p.start()
        for p in procs:
            p.wait_ready(60)
        started = time.monotonic()
        cpu_ready = sum(cpu_seconds(p.started_pid) for p in procs)
        with conn.cursor() as cur:
            while True:
                cur.execute(f"SELECT EXISTS (SELECT 1 FROM {TABLE} WHERE status <> 'done')")
                if not cur.fetchone()[0]:
                    break
                time.sleep(0.1)
        seconds = time.monotonic() - started
        conn.close()
        rss = max(peak_rss_mib(p.started_pid) for p in procs)
        cpu = sum(cpu_seconds(p.started_pid) for p in procs) - cpu_ready
        for p in procs:
            p.stop()
        return ThroughputResult(relays, rows, round(seconds, 2), round(rows / seconds), round(rss, 1),
                                relay_cpu_us_per_row=round(cpu * 1e6 / rows, 1), build="this checkout, MariaDB",
                                load_1m=round(os.getloadavg()[0], 2))

    # --- throughput -------------------------------------------------------
    def throughput(self, relays: int, rows: int, code: Path = ROOT, build: str = "this checkout") -> ThroughputResult:
        settings = self.fresh_database(f"tp{relays}", code)
        topic = f"{TOPIC}.tp{relays}.{time.monotonic_ns()}"
        asyncio.run(ensure_topics(settings, [TopicSpec(topic, PARTITIONS)]))
        with psycopg.connect(settings.dsn, autocommit=True) as conn:
            conn.execute(
                f"INSERT INTO {TABLE} (message_id, message_type, topic, key, payload) "
                "SELECT gen_random_uuid()::text, 'Ping', %s, 'key-' || (g %% 1000), "
                "jsonb_build_object('n', g, 'note', repeat('x', 200)) FROM generate_series(1, %s) g",
                (topic, rows))
            conn.execute(f"VACUUM ANALYZE {TABLE}")
            conn.execute("CHECKPOINT")  # every run starts with the same full-page-write state
            if self.profile_seconds:
                conn.execute("CREATE EXTENSION IF NOT EXISTS pg_stat_statements")
                conn.execute("SELECT pg_stat_statements_reset()")
        procs = [self.relay(settings, f"tp{relays}-{i}", code) for i in range(relays)]
        for p in procs:
            p.start()
        with psycopg.connect(settings.dsn, autocommit=True) as conn:
            wal_start = conn.execute("SELECT pg_current_wal_lsn()").fetchone()[0]
        for p in procs:
            p.wait_ready(60)
        started = time.monotonic()
        cpu_ready = sum(cpu_seconds(p.started_pid) for p in procs)
        servers_ready = (tree_cpu_seconds(self.postgres.pid()), tree_cpu_seconds(self.kafka.pid()))
        spy = raw_profile = None
        if self.profile_seconds:
            from bench import profile

            raw_profile = self.workdir / f"relay-tp{relays}-{build.replace(' ', '_')}-{time.monotonic_ns()}.txt"
            spy = profile.start(procs[0].started_pid, self.profile_seconds, raw_profile, native=True)
        with psycopg.connect(settings.dsn, autocommit=True) as conn:
            # until no row is pending or parked (both partial indexes: the poll must not scan the table)
            while conn.execute(f"SELECT EXISTS (SELECT FROM {TABLE} WHERE status = 'pending') "
                               f"OR EXISTS (SELECT FROM {TABLE} WHERE status = 'failed')").fetchone()[0]:
                time.sleep(0.1)
            seconds = time.monotonic() - started
            wal = conn.execute("SELECT pg_wal_lsn_diff(pg_current_wal_lsn(), %s)", (wal_start,)).fetchone()[0]
            statements = self.top_statements(conn) if self.profile_seconds else None
        rss = max(peak_rss_mib(p.started_pid) for p in procs)
        cpu = sum(cpu_seconds(p.started_pid) for p in procs) - cpu_ready
        pg_cpu = tree_cpu_seconds(self.postgres.pid()) - servers_ready[0]
        kafka_cpu = tree_cpu_seconds(self.kafka.pid()) - servers_ready[1]
        for p in procs:
            p.stop()
        summary = None
        if spy is not None and raw_profile is not None:
            from bench import profile

            spy.wait(timeout=self.profile_seconds + 30)
            summary = profile.summarise(raw_profile, top=20) if raw_profile.exists() else None
        return ThroughputResult(relays, rows, round(seconds, 2), round(rows / seconds), round(rss, 1),
                                round(float(wal) / rows, 1), round(cpu * 1e6 / rows, 1),
                                round(pg_cpu * 1e6 / rows, 1), round(kafka_cpu * 1e6 / rows, 1), build,
                                round(os.getloadavg()[0], 2), summary, statements)

    @staticmethod
    def top_statements(conn: psycopg.Connection, n: int = 8) -> list[dict]:
        """The statements of this database with the most total execution time (``--profile``)."""
        rows = conn.execute(
            "SELECT calls, round(total_exec_time::numeric, 1), round(mean_exec_time::numeric, 3), rows, "
            "wal_bytes, left(regexp_replace(query, '\\s+', ' ', 'g'), 160) FROM pg_stat_statements "
            "WHERE dbid = (SELECT oid FROM pg_database WHERE datname = current_database()) "
            "ORDER BY total_exec_time DESC LIMIT %s", (n,)).fetchall()
        return [{"calls": c, "total_ms": float(t), "mean_ms": float(m), "rows": r, "wal_bytes": int(w), "query": q}
                for c, t, m, r, w, q in rows]

    # --- latency ------------------------------------------------------------
    def latency(self, rate: int, seconds: int, code: Path = ROOT, build: str = "this checkout") -> LatencyResult:
        settings = self.fresh_database("latency", code)
        topic = f"{TOPIC}.latency.{time.monotonic_ns()}"
        asyncio.run(ensure_topics(settings, [TopicSpec(topic, PARTITIONS)]))
        relay = self.relay(settings, "latency", code).start()
        relay.wait_ready(60)
        arrived: dict[str, float] = {}
        ready = threading.Event()
        stop = threading.Event()
        consumer = threading.Thread(target=lambda: asyncio.run(self._consume(settings, topic, arrived, ready, stop)))
        consumer.start()
        ready.wait(60)
        total = rate * seconds
        committed, achieved = steady_writes(settings.dsn, topic, rate, seconds,
                                            lambda i: event("Ping", {"n": i}, key=f"key-{i % 1000}"))
        deadline = time.monotonic() + 60
        while len(arrived) < total and time.monotonic() < deadline:
            time.sleep(0.2)
        stop.set()
        consumer.join(30)
        relay.stop()
        lat = latencies_ms(committed, arrived)
        if len(lat) < total:
            print(f"warning: {total - len(lat)} rows did not arrive within 60 s", file=sys.stderr)
        p = percentiles(lat)
        return LatencyResult(rate, seconds, len(lat), round(achieved, 1), p["p50"], p["p95"], p["p99"], p["max"],
                             build, round(os.getloadavg()[0], 2))

    @staticmethod
    async def _consume(settings: Settings, topic: str, arrived: dict, ready: threading.Event,
                       stop: threading.Event) -> None:
        consumer = AIOKafkaConsumer(**settings.kafka_client_kwargs(), group_id=None, enable_auto_commit=False,
                                    fetch_max_wait_ms=10)
        await consumer.start()
        try:
            tps = [TopicPartition(topic, p) for p in range(PARTITIONS)]
            consumer.assign(tps)
            await consumer.seek_to_end(*tps)
            for tp in tps:
                await consumer.position(tp)
            ready.set()
            while not stop.is_set():
                batch = await consumer.getmany(timeout_ms=100)
                now = time.time()
                for records in batch.values():
                    for r in records:
                        arrived.setdefault(dict(r.headers)["message_id"].decode(), now)
        finally:
            await consumer.stop()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rows", type=int, default=50_000, help="Rows per throughput run.")
    parser.add_argument("--relays", default="1,2,4", help="Relay counts for the throughput runs.")
    parser.add_argument("--rate", type=int, default=1000, help="Rows/s for the latency run.")
    parser.add_argument("--seconds", type=int, default=30, help="Length of the latency run (0: no latency run).")
    parser.add_argument("--batch-size", type=int, default=500, help="STREAMS_RELAY_BATCH_SIZE of the relays.")
    parser.add_argument("--repeat", type=int, default=1, help="Rounds of throughput runs.")
    parser.add_argument("--baseline", type=Path, default=None,
                        help="Another checkout whose relays run before this one's, in every round (paired runs).")
    parser.add_argument("--profile", action="store_true",
                        help="pg_stat_statements and py-spy (relay 0) on every throughput run.")
    parser.add_argument("--profile-seconds", type=float, default=6.0, help="How long py-spy samples relay 0.")
    parser.add_argument("--databases", default="postgresql",
                        help="Databases of the throughput runs: postgresql, mariadb (this checkout's relays only).")
    args = parser.parse_args(argv)
    LOGS.mkdir(parents=True, exist_ok=True)
    builds: list[tuple[Path, str]] = [(ROOT, "this checkout")]
    if args.baseline is not None:
        builds.insert(0, (args.baseline.resolve(), f"baseline {args.baseline}"))
    lats: list[LatencyResult] = []
    with tempfile.TemporaryDirectory(prefix="bench-relay-") as tmp:
        bench = Bench(Path(tmp), profile_seconds=args.profile_seconds if args.profile else 0.0,
                      batch_size=args.batch_size)
        bench.kafka.up()
        bench.postgres.up()
        databases = {d.strip() for d in args.databases.split(",") if d.strip()}
        if "mariadb" in databases:
            bench.mariadb.up()
        try:
            if args.profile:
                bench.with_pg_stat_statements()
            tps = [bench.throughput(int(k), args.rows, code, build)
                   for _ in range(args.repeat) for k in args.relays.split(",") for code, build in builds
                   if "postgresql" in databases]
            if "mariadb" in databases:
                tps += [bench.throughput_mariadb(int(k), args.rows) for _ in range(args.repeat)
                        for k in args.relays.split(",")]
            if args.seconds > 0:
                lats = [bench.latency(args.rate, args.seconds, code, build) for code, build in builds]
        finally:
            bench.mariadb.down()
            bench.postgres.down()
            bench.kafka.down()
    print(f"\nOutbox relay throughput ({args.rows:,} pending rows, 1,000 keys, batch {args.batch_size}, status mode)")
    print(f"{'relays':>6} {'seconds':>8} {'rows/s':>8} {'peak RSS/relay MiB':>19} {'WAL B/row':>10} "
          f"{'CPU µs/row: relays':>19} {'PostgreSQL':>10} {'Kafka':>6} {'load 1m':>8}  build")
    for r in tps:
        print(f"{r.relays:>6} {r.seconds:>8.2f} {r.rows_per_s:>8,} {r.peak_rss_mib_per_relay:>19.1f} "
              f"{r.wal_bytes_per_row:>10,.0f} {r.relay_cpu_us_per_row:>19,.0f} {r.postgres_cpu_us_per_row:>10,.0f} "
              f"{r.kafka_cpu_us_per_row:>6,.0f} {r.load_1m:>8.2f}  {r.build}")
    for r in tps:
        if r.statements:
            print(f"\n[pg_stat_statements] {r.relays} relay(s), {r.build}: most total time")
            for st in r.statements:
                print(f"  {st['total_ms']:>9,.0f} ms {st['calls']:>7,} calls {st['mean_ms']:>8.3f} ms/call "
                      f"{st['rows']:>8,} rows {st['wal_bytes']:>11,} WAL B  {st['query']}")
        if r.profile:
            from bench.profile import print_summary

            print_summary(f"relay 0 of {r.relays}, {r.build}", r.profile)
    for lat in lats:
        print(f"\nCommit → Kafka latency, 1 relay, {lat.rate:,} rows/s offered for {lat.seconds}s "
              f"(achieved {lat.achieved_rate:,.0f} rows/s, {lat.rows:,} rows), {lat.build}, load 1m {lat.load_1m}")
        print(f"{'p50 ms':>8} {'p95 ms':>8} {'p99 ms':>8} {'max ms':>8}")
        print(f"{lat.p50_ms:>8} {lat.p95_ms:>8} {lat.p99_ms:>8} {lat.max_ms:>8}")
    RESULTS.mkdir(parents=True, exist_ok=True)
    out = RESULTS / f"relay-{datetime.now():%Y-%m-%d-%H%M%S}.json"
    out.write_text(json.dumps({"machine": {"cpus": os.cpu_count(), "python": platform.python_version()},
                               "batch_size": args.batch_size,
                               "command": " ".join(["python -m bench.relay", *(argv or sys.argv[1:])]),
                               "throughput": [asdict(r) for r in tps],
                               "latency": [asdict(lat) for lat in lats]}, indent=2))
    print(f"\nresults: {out.relative_to(ROOT)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""Outbox relay benchmark: throughput with 1, 2 and 4 relays, and commit → Kafka latency.

    .venv/bin/python -m bench.relay [--rows 50000] [--relays 1,2,4] [--rate 1000 --seconds 30]
                                    [--databases postgresql,mariadb]

Starts its own Kafka broker, PostgreSQL server and MariaDB server (free ports, data in
a temp dir) and stops them at the end. Relays run as separate ``streams relay``
processes (status mode, batch 500).

* **throughput**, per database: N pending rows over 1,000 keys are inserted (PostgreSQL: one
  statement; MariaDB: ``executemany`` in chunks of 2,000, through the outbox's key-lock trigger), then
  K relays start together; time = from the first relay's "started" line until every
  row is ``done`` (polled every 0.1 s); rows/s = N / time. Peak RSS per relay from
  /proc (VmHWM).
* **latency** (PostgreSQL): one relay runs; a writer commits one row per transaction at a steady
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
    database: str
    relays: int
    rows: int
    seconds: float
    rows_per_s: float
    peak_rss_mib_per_relay: float


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


def peak_rss_mib(pid: int) -> float:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return float("nan")


class Bench:
    def __init__(self, workdir: Path) -> None:
        self.workdir = workdir
        self.kafka = LocalKafka(data_dir=workdir / "kafka", cache_dir=ROOT / ".streams" / "cache",
                                port=free_port(), controller_port=free_port())
        self.postgres = LocalPostgres(root=workdir / "postgres", port=free_port())
        self.mariadb = LocalMariaDB(workdir / "mariadb", free_port())
        self.run_id = datetime.now().strftime("%H%M%S")

    def settings(self, db: str, database: str = "postgresql") -> Settings:
        server = self.mariadb.url if database == "mariadb" else self.postgres.url
        return Settings(kafka_bootstrap=self.kafka.bootstrap,
                        database_url=server.rsplit("/", 1)[0] + f"/{db}", home=self.workdir / "home")

    def env(self, settings: Settings) -> dict[str, str]:
        return {"STREAMS_KAFKA_BOOTSTRAP": settings.bootstrap_servers, "STREAMS_DATABASE_URL": settings.dsn,
                "STREAMS_HOME": str(settings.home), "STREAMS_RELAY_BATCH_SIZE": "500", "STREAMS_LOG_LEVEL": "warning"}

    def fresh_database(self, name: str, database: str = "postgresql") -> Settings:
        if database == "mariadb":
            conn = mysql.connect(self.mariadb.url)
            with conn.cursor() as cur:
                cur.execute(f"DROP DATABASE IF EXISTS `{name}`")
                cur.execute(f"CREATE DATABASE `{name}`")
            conn.close()
            settings = self.settings(name, database)
            conn = mysql.connect(settings.dsn)
            mysql_schema.migrate(conn, TABLE)
            conn.close()
            return settings
        admin = self.postgres.url.rsplit("/", 1)[0] + "/postgres"
        with psycopg.connect(admin, autocommit=True) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{name}"')
            conn.execute(f'CREATE DATABASE "{name}"')
        settings = self.settings(name)
        with psycopg.connect(settings.dsn, autocommit=True) as conn:
            migrate(conn, TABLE)
        return settings

    def relay(self, settings: Settings, label: str) -> WorkerProcess:
        env = {**self.env(settings), "STREAMS_LOG_LEVEL": "info"}
        proc = WorkerProcess(env, LOGS / f"relay-{self.run_id}-{label}.log", cwd=ROOT,
                             command=[sys.executable, "-m", "streams.cli", "relay", "--name", label],
                             ready_marker=f"relay {label} started")
        return proc

    # --- throughput -------------------------------------------------------
    def throughput(self, relays: int, rows: int, database: str = "postgresql") -> ThroughputResult:
        settings = self.fresh_database(f"tp{relays}", database)
        topic = f"{TOPIC}.{database}.tp{relays}"
        asyncio.run(ensure_topics(settings, [TopicSpec(topic, PARTITIONS)]))
        if database == "mariadb":
            return self._throughput_mysql(settings, topic, relays, rows)
        with psycopg.connect(settings.dsn, autocommit=True) as conn:
            conn.execute(
                f"INSERT INTO {TABLE} (message_id, message_type, topic, key, payload) "
                "SELECT gen_random_uuid()::text, 'Ping', %s, 'key-' || (g %% 1000), "
                "jsonb_build_object('n', g, 'note', repeat('x', 200)) FROM generate_series(1, %s) g",
                (topic, rows))
            conn.execute(f"VACUUM ANALYZE {TABLE}")
        procs = [self.relay(settings, f"tp{relays}-{i}") for i in range(relays)]
        for p in procs:
            p.start()
        for p in procs:
            p.wait_ready(60)
        started = time.monotonic()
        with psycopg.connect(settings.dsn, autocommit=True) as conn:
            while conn.execute(f"SELECT count(*) FROM {TABLE} WHERE status <> 'done'").fetchone()[0]:
                time.sleep(0.1)
        seconds = time.monotonic() - started
        rss = max(peak_rss_mib(p.pid) for p in procs)
        for p in procs:
            p.stop()
        return ThroughputResult("postgresql", relays, rows, round(seconds, 2), round(rows / seconds), round(rss, 1))

    def _throughput_mysql(self, settings: Settings, topic: str, relays: int, rows: int) -> ThroughputResult:
        import uuid

        conn = mysql.connect(settings.dsn)
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
        with conn.cursor() as cur:
            while True:
                cur.execute(f"SELECT count(*) FROM {TABLE} WHERE status <> 'done'")
                if not cur.fetchone()[0]:
                    break
                time.sleep(0.1)
        seconds = time.monotonic() - started
        conn.close()
        rss = max(peak_rss_mib(p.pid) for p in procs)
        for p in procs:
            p.stop()
        return ThroughputResult("mariadb", relays, rows, round(seconds, 2), round(rows / seconds), round(rss, 1))

    # --- latency ------------------------------------------------------------
    def latency(self, rate: int, seconds: int) -> LatencyResult:
        settings = self.fresh_database("latency")
        topic = f"{TOPIC}.latency"
        asyncio.run(ensure_topics(settings, [TopicSpec(topic, PARTITIONS)]))
        relay = self.relay(settings, "latency").start()
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
        return LatencyResult(rate, seconds, len(lat), round(achieved, 1), p["p50"], p["p95"], p["p99"], p["max"])

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
    parser.add_argument("--seconds", type=int, default=30, help="Length of the latency run.")
    parser.add_argument("--databases", default="postgresql,mariadb",
                        help="Databases of the throughput runs (postgresql, mariadb).")
    args = parser.parse_args(argv)
    databases = [d.strip() for d in args.databases.split(",") if d.strip()]
    LOGS.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="bench-relay-") as tmp:
        bench = Bench(Path(tmp))
        bench.kafka.up()
        bench.postgres.up()
        if "mariadb" in databases:
            bench.mariadb.up()
        try:
            tps = [bench.throughput(int(k), args.rows, database) for database in databases
                   for k in args.relays.split(",")]
            lat = bench.latency(args.rate, args.seconds)
        finally:
            bench.mariadb.down()
            bench.postgres.down()
            bench.kafka.down()
    print(f"\nOutbox relay throughput ({args.rows:,} pending rows, 1,000 keys, batch 500, status mode)")
    print(f"{'database':>10} {'relays':>6} {'seconds':>8} {'rows/s':>8} {'peak RSS/relay MiB':>19}")
    for r in tps:
        print(f"{r.database:>10} {r.relays:>6} {r.seconds:>8.2f} {r.rows_per_s:>8,} {r.peak_rss_mib_per_relay:>19.1f}")
    print(f"\nCommit → Kafka latency, 1 relay, {lat.rate:,} rows/s offered for {lat.seconds}s "
          f"(achieved {lat.achieved_rate:,.0f} rows/s, {lat.rows:,} rows)")
    print(f"{'p50 ms':>8} {'p95 ms':>8} {'p99 ms':>8} {'max ms':>8}")
    print(f"{lat.p50_ms:>8} {lat.p95_ms:>8} {lat.p99_ms:>8} {lat.max_ms:>8}")
    RESULTS.mkdir(parents=True, exist_ok=True)
    out = RESULTS / f"relay-{datetime.now():%Y-%m-%d-%H%M%S}.json"
    out.write_text(json.dumps({"machine": {"cpus": os.cpu_count(), "python": platform.python_version()},
                               "throughput": [asdict(r) for r in tps], "latency": asdict(lat)}, indent=2))
    print(f"\nresults: {out.relative_to(ROOT)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""``python -m bench.brokers``: the source notes' claims about Kafka, RabbitMQ and Redis, measured here.

Starts its own Kafka, PostgreSQL, RabbitMQ and Redis (the project's harness, free ports, a temp
folder; all stopped at the end), then, with the same envelopes and the same handler
(:mod:`bench.brokers.consumer`, one process per run, messages handled one at a time):

1. **throughput**: N envelopes (default 100,000) published and acknowledged, then consumed;
   producer and consumer msgs/s, peak RSS of the consumer and of the broker;
2. **slow consumer**: the handler sleeps 5 ms while a producer publishes 2,000 msg/s for 60 s;
   consumer memory, broker memory and backlog over time (RabbitMQ with a prefetch of 100 and
   with no prefetch limit: pure push), charted;
3. **absent consumer**: 10,000 published while the consumer is not running (its group / queues
   exist), then it starts: how many it gets (Redis pub/sub too); and how many a group created
   only afterwards gets;
4. **crashes**: a consumer applying an effect in PostgreSQL per message, killed -9 five times
   during 50,000, restarted each time; lost messages, redeliveries, repeated effects with the
   processed-ID check on and off, keys whose effects applied out of order;
5. **replay**: after (1), re-reading the last hour: how many messages each broker gives back.

Output: a table on stdout, ``bench/results/brokers-<date>.json`` and the slow-consumer chart
``bench/results/brokers-<date>.html``. ``--quick`` runs every scenario at a tenth of its size.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

for _name in [n for n in os.environ if n.startswith("STREAMS_")]:
    del os.environ[_name]

from bench.brokers.transports import LANES, Broker, envelopes, rss_mib  # noqa: E402
from streams.demos.chart import Chart, Panel, render_html  # noqa: E402
from streams.dev.kafka import KAFKA_VERSION, LocalKafka  # noqa: E402
from streams.dev.postgres import LocalPostgres  # noqa: E402
from streams.dev.process import free_port  # noqa: E402
from streams.dev.rabbitmq import LocalRabbitMQ  # noqa: E402
from streams.dev.redis import LocalRedis  # noqa: E402
from streams.settings import Settings  # noqa: E402

ROOT = Path(__file__).resolve().parents[2]
RESULTS = ROOT / "bench" / "results"


class Consumer:
    """One ``bench.brokers.consumer`` process; its stdout is read by a thread."""

    def __init__(self, broker: Broker, topic: str, group: str, **env: Any) -> None:
        self.env = {**os.environ, "BENCH_BROKER": broker.name, "BENCH_URL": broker.url, "BENCH_TOPIC": topic,
                    "BENCH_GROUP": group, "BENCH_LANES": str(LANES), **{k: str(v) for k, v in env.items()}}
        self.ready = threading.Event()
        self.handled = 0
        self.result: dict | None = None
        self.proc: subprocess.Popen | None = None
        self.errors: list[str] = []

    def start(self) -> "Consumer":
        self.ready.clear()
        self.result = None
        self.proc = subprocess.Popen([sys.executable, "-m", "bench.brokers.consumer"], env=self.env, cwd=ROOT,
                                     stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        threading.Thread(target=self._read, args=(self.proc,), daemon=True).start()
        if not self.ready.wait(60):
            raise RuntimeError(f"consumer not ready: {self.errors[-5:]}")
        return self

    def _read(self, proc: subprocess.Popen) -> None:
        assert proc.stdout is not None
        for line in proc.stdout:
            if line.startswith("READY"):
                self.ready.set()
            elif line.startswith("HANDLED "):
                self.handled = int(line.split()[1])
            elif line.startswith("RESULT "):
                self.result = json.loads(line[7:])
            else:
                self.errors.append(line.rstrip())

    @property
    def pid(self) -> int | None:
        return self.proc.pid if self.proc else None

    def wait_result(self, timeout: float) -> dict:
        deadline = time.monotonic() + timeout
        while self.result is None and time.monotonic() < deadline:
            time.sleep(0.1)
        if self.result is None:
            self.stop()
            raise RuntimeError(f"consumer did not finish in {timeout:.0f}s (handled {self.handled}): {self.errors[-5:]}")
        assert self.proc is not None
        self.proc.wait(30)
        return self.result

    def kill(self) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(30)

    def stop(self) -> dict | None:
        if self.proc and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
            time.sleep(0.2)
        return self.result


class Sampler:
    """Peak RSS of the broker (sampled every 0.2 s) while a block runs."""

    def __init__(self, broker: Broker) -> None:
        self.broker, self.peak = broker, 0.0
        self._stop = threading.Event()

    def __enter__(self) -> "Sampler":
        threading.Thread(target=self._run, daemon=True).start()
        return self

    def _run(self) -> None:
        while not self._stop.is_set():
            self.peak = max(self.peak, rss_mib(self.broker.pid()))
            time.sleep(0.2)

    def __exit__(self, *exc) -> None:
        self._stop.set()


def wait_stable(consumer: Consumer, target: int, quiet: float = 3.0, limit: float = 600.0) -> int:
    """Until the consumer has handled ``target`` or its count stopped moving for ``quiet`` seconds."""
    last, since, deadline = -1, time.monotonic(), time.monotonic() + limit
    while time.monotonic() < deadline:
        if consumer.handled >= target:
            return consumer.handled
        if consumer.handled != last:
            last, since = consumer.handled, time.monotonic()
        elif time.monotonic() - since >= quiet:
            return last
        time.sleep(0.1)
    return consumer.handled


# --- scenarios ------------------------------------------------------------------------------------
def throughput(brokers: dict[str, Broker], n: int) -> dict[str, dict]:
    out = {}
    for name, broker in brokers.items():
        topic = f"tp-{name}"
        items = envelopes(n, "tp")
        with Sampler(broker) as sampler:
            if name == "pubsub":  # nothing is kept: the subscriber must be there first
                consumer = Consumer(broker, topic, "g", BENCH_EXPECT=n).start()
                publish_s = asyncio.run(broker.publish(topic, items))
                got = wait_stable(consumer, n)
                result = consumer.stop() or {"handled": got, "seconds": 0, "peak_rss_mib": 0}
                result["handled"] = max(result["handled"], got)
            else:
                asyncio.run(broker.prepare(topic, "g"))
                publish_s = asyncio.run(broker.publish(topic, items))
                consumer = Consumer(broker, topic, "g", BENCH_EXPECT=n).start()
                result = consumer.wait_result(900)
        row = {"messages": n, "produce_s": round(publish_s, 2), "produce_msgs_s": round(n / publish_s),
               "consumed": result["handled"], "consume_s": result["seconds"],
               "consume_msgs_s": round(result["handled"] / result["seconds"]) if result["seconds"] else None,
               "consumer_peak_rss_mib": result["peak_rss_mib"], "broker_peak_rss_mib": round(sampler.peak, 1)}
        print(f"  throughput {name}: {row}", flush=True)
        out[name] = row
    return out


def slow_consumer(brokers: dict[str, Broker], seconds: int, rate: int) -> dict[str, dict]:
    variants = [("kafka", {}), ("rabbitmq", {"BENCH_PREFETCH": 100}), ("rabbitmq-noprefetch", {"BENCH_PREFETCH": 0}),
                ("redis", {})]
    out = {}
    for label, env in variants:
        broker = brokers[label.split("-")[0]]
        topic, group = f"slow-{label}", "g"
        asyncio.run(broker.prepare(topic, group))
        consumer = Consumer(broker, topic, group, BENCH_SLEEP_MS=5, **env).start()
        samples: list[dict] = []
        stop = threading.Event()

        def sample(broker=broker, consumer=consumer, topic=topic, samples=samples, stop=stop) -> None:
            t0 = time.monotonic()
            while not stop.is_set():
                try:
                    backlog = asyncio.run(broker.backlog(topic, group))
                except Exception as exc:  # noqa: BLE001 - a reading that failed is recorded as such
                    backlog = -1
                    print(f"  backlog reading failed: {exc}", flush=True)
                samples.append({"t": round(time.monotonic() - t0, 1), "backlog": backlog,
                                "consumer_rss_mib": round(rss_mib(consumer.pid), 1),
                                "broker_rss_mib": round(rss_mib(broker.pid()), 1), "handled": consumer.handled})
                stop.wait(1.0)

        sampler = threading.Thread(target=sample, daemon=True)
        sampler.start()
        publish_s = asyncio.run(broker.publish(topic, envelopes(rate * seconds, "slow"), rate=rate))
        time.sleep(2)
        stop.set()
        sampler.join()
        alive = consumer.proc is not None and consumer.proc.poll() is None
        consumer.stop()
        asyncio.run(broker.drop(topic, group))
        out[label] = {"published": rate * seconds, "publish_s": round(publish_s, 1), "consumer_alive": alive,
                      "handled": samples[-1]["handled"] if samples else 0,
                      "max_backlog": max((s["backlog"] for s in samples), default=0),
                      "max_consumer_rss_mib": max((s["consumer_rss_mib"] for s in samples), default=0),
                      "max_broker_rss_mib": max((s["broker_rss_mib"] for s in samples), default=0),
                      "samples": samples}
        print(f"  slow {label}: " + json.dumps({k: v for k, v in out[label].items() if k != "samples"}), flush=True)
    return out


def absent(brokers: dict[str, Broker], n: int) -> dict[str, dict]:
    out = {}
    for name, broker in brokers.items():
        topic = f"absent-{name}"
        asyncio.run(broker.prepare(topic, "g"))
        asyncio.run(broker.publish(topic, envelopes(n, "absent")))
        consumer = Consumer(broker, topic, "g").start()
        got = wait_stable(consumer, n, quiet=3.0)
        consumer.stop()
        out[name] = {"published": n, "received": got}
        if name != "pubsub":  # a group that did not exist when they were published
            asyncio.run(broker.prepare(topic, "late"))
            late = Consumer(broker, topic, "late").start()
            out[name]["new_group_received"] = wait_stable(late, n, quiet=3.0)
            late.stop()
        print(f"  absent {name}: {out[name]}", flush=True)
    return out


SCHEMA = """
DROP TABLE IF EXISTS effects, processed, counters;
CREATE TABLE effects (id bigserial PRIMARY KEY, message_id text NOT NULL, key text, n int NOT NULL);
CREATE TABLE processed (message_id text PRIMARY KEY);
CREATE TABLE counters (redelivered bigint NOT NULL);
INSERT INTO counters VALUES (0);
"""


def crashes(brokers: dict[str, Broker], dsn: str, n: int, kills: int) -> dict[str, dict]:
    import psycopg

    out = {}
    for name in ("kafka", "rabbitmq", "redis"):
        broker = brokers[name]
        for dedup in (True, False):
            label = f"{name}-{'check' if dedup else 'nocheck'}"
            topic = f"crash-{label}"
            with psycopg.connect(dsn, autocommit=True) as conn:
                conn.execute(SCHEMA)
            asyncio.run(broker.prepare(topic, "g"))
            items = envelopes(n, "crash")
            asyncio.run(broker.publish(topic, items))
            consumer = Consumer(broker, topic, "g", BENCH_DSN=dsn, BENCH_DEDUP=int(dedup)).start()

            def applied() -> int:
                with psycopg.connect(dsn, autocommit=True) as conn:
                    return conn.execute("SELECT count(*) FROM effects").fetchone()[0]

            kill_points = []
            for k in range(1, kills + 1):
                threshold = n * k // (kills + 1)
                while applied() < threshold:
                    time.sleep(0.05)
                consumer.kill()
                kill_points.append(applied())
                consumer.start()
            deadline = time.monotonic() + 900
            while time.monotonic() < deadline and asyncio.run(broker.backlog(topic, "g")) > 0:
                time.sleep(0.5)
            time.sleep(1.5)
            consumer.stop()
            asyncio.run(broker.drop(topic, "g"))
            with psycopg.connect(dsn, autocommit=True) as conn:
                total, distinct = conn.execute("SELECT count(*), count(DISTINCT message_id) FROM effects").fetchone()
                redelivered = conn.execute("SELECT redelivered FROM counters").fetchone()[0]
                rows = conn.execute("SELECT DISTINCT ON (message_id) key, n, id FROM effects "
                                    "ORDER BY message_id, id").fetchall()
            per_key: dict[str, list[tuple[int, int]]] = {}
            for key, seq, applied_id in rows:
                per_key.setdefault(key, []).append((applied_id, seq))
            out_of_order = sum(1 for v in per_key.values() if [s for _, s in sorted(v)] != sorted(s for _, s in v))
            out[label] = {"messages": n, "kills": kills, "killed_at_effects": kill_points,
                          "lost": n - distinct, "repeated_effects": total - distinct,
                          "redelivered_and_skipped": redelivered, "keys_out_of_order": out_of_order}
            print(f"  crashes {label}: {out[label]}", flush=True)
    return out


def replay(brokers: dict[str, Broker], n: int) -> dict[str, dict]:
    """After the throughput run (everything consumed and acknowledged): re-read the last hour."""
    since_ms = int((time.time() - 3600) * 1000)
    out: dict[str, dict] = {}

    async def kafka() -> int:
        from aiokafka import AIOKafkaConsumer

        from streams.kafka.admin import topic_partitions

        topic = "tp-kafka"
        consumer = AIOKafkaConsumer(bootstrap_servers=brokers["kafka"].url, enable_auto_commit=False)
        await consumer.start()
        try:
            tps = await topic_partitions(consumer, topic)
            consumer.assign(tps)
            found = await consumer.offsets_for_times(dict.fromkeys(tps, since_ms))
            ends = await consumer.end_offsets(tps)
            for tp in tps:
                consumer.seek(tp, found[tp].offset if found[tp] else ends[tp])
            count = 0
            while True:
                positions = [await consumer.position(tp) for tp in tps]
                if all(pos >= ends[tp] for pos, tp in zip(positions, tps, strict=True)):
                    return count
                for records in (await consumer.getmany(timeout_ms=1000)).values():
                    count += len(records)
        finally:
            try:
                await consumer.stop()
            except asyncio.CancelledError:  # aiokafka 0.14 without a group: its committed-offsets task
                pass

    async def redis() -> int:
        import redis.asyncio as aioredis

        client = aioredis.Redis.from_url(brokers["redis"].url)
        try:
            await client.xgroup_setid("tp-redis", "g", id=f"{since_ms}-0")
            count = 0
            while True:
                reply = await client.xreadgroup("g", "replayer", {"tp-redis": ">"}, count=5000)
                entries = reply[0][1] if reply else []
                if not entries:
                    return count
                count += len(entries)
                await client.xack("tp-redis", "g", *[e for e, _ in entries])
        finally:
            await client.aclose()

    out["kafka"] = {"replayed": asyncio.run(kafka()), "of": n,
                    "how": "seek each partition to offsets_for_times(now - 1 h) (streams offsets reset --to-datetime)"}
    out["redis"] = {"replayed": asyncio.run(redis()), "of": n,
                    "how": "XGROUP SETID <group> <ms of now - 1 h>-0: entry ids are timestamps (while MAXLEN kept them)"}
    out["rabbitmq"] = {"replayed": asyncio.run(brokers["rabbitmq"].backlog("tp-rabbitmq", "g")), "of": n,
                       "how": "acknowledged messages are deleted: nothing to re-read; only a re-publish from the "
                              "source (the outbox keeps done rows for STREAMS_RELAY_RETENTION) brings them back"}
    out["pubsub"] = {"replayed": 0, "of": n, "how": "nothing is kept"}
    for name, row in out.items():
        print(f"  replay {name}: {row}", flush=True)
    return out


# --- the run -----------------------------------------------------------------------------------------
@dataclass
class Servers:
    kafka: LocalKafka
    postgres: LocalPostgres
    rabbitmq: LocalRabbitMQ
    redis: LocalRedis
    timings: dict[str, float] = field(default_factory=dict)

    def up(self) -> None:
        with ThreadPoolExecutor(4) as pool:
            futures = {name: pool.submit(getattr(self, name).up) for name in ("kafka", "postgres", "rabbitmq", "redis")}
            for name, fut in futures.items():
                self.timings[name] = round(fut.result(), 1)

    def down(self) -> None:
        for server in (self.redis, self.rabbitmq, self.postgres, self.kafka):
            try:
                server.down()
            except Exception as exc:  # noqa: BLE001 - stop the others all the same
                print(f"stopping {server}: {exc}", file=sys.stderr)


def table(results: dict) -> str:
    lines = []
    tp = results["throughput"]
    lines.append(f"{'broker':<20}{'produce msg/s':>14}{'consume msg/s':>15}{'consumer RSS':>14}{'broker RSS':>12}")
    for name, r in tp.items():
        lines.append(f"{name:<20}{r['produce_msgs_s']:>14}{r['consume_msgs_s']!s:>15}"
                     f"{r['consumer_peak_rss_mib']:>11} MiB{r['broker_peak_rss_mib']:>9} MiB"
                     + ("" if r["consumed"] == r["messages"] else f"  (received {r['consumed']} of {r['messages']})"))
    lines.append("")
    lines.append(f"{'slow consumer':<20}{'max backlog':>12}{'consumer RSS':>14}{'broker RSS':>12}{'alive':>7}")
    for name, r in results["slow_consumer"].items():
        lines.append(f"{name:<20}{r['max_backlog']:>12}{r['max_consumer_rss_mib']:>11} MiB"
                     f"{r['max_broker_rss_mib']:>9} MiB{r['consumer_alive']!s:>7}")
    lines.append("")
    lines.append(f"{'absent consumer':<20}{'received':>10}{'a group created after':>24}")
    for name, r in results["absent"].items():
        lines.append(f"{name:<20}{r['received']:>10}{r.get('new_group_received', '-')!s:>24}  of {r['published']}")
    lines.append("")
    lines.append(f"{'crashes (kill -9)':<22}{'lost':>6}{'repeated effects':>18}{'skipped repeats':>17}"
                 f"{'keys out of order':>19}")
    for name, r in results["crashes"].items():
        lines.append(f"{name:<22}{r['lost']:>6}{r['repeated_effects']:>18}{r['redelivered_and_skipped']:>17}"
                     f"{r['keys_out_of_order']:>19}")
    lines.append("")
    lines.append(f"{'replay last hour':<20}{'re-read':>10}")
    for name, r in results["replay"].items():
        lines.append(f"{name:<20}{r['replayed']:>10} of {r['of']}  ({r['how']})")
    return "\n".join(lines)


def chart(slow: dict, rate: int) -> str:
    panels = []
    for label, r in slow.items():
        pts = r["samples"]
        panels.append(Panel(f"{label}: backlog (messages not acknowledged)", "msgs",
                            [(s["t"], s["backlog"]) for s in pts]))
        panels.append(Panel(f"{label}: consumer RSS", "MiB", [(s["t"], s["consumer_rss_mib"]) for s in pts]))
        panels.append(Panel(f"{label}: broker RSS", "MiB", [(s["t"], s["broker_rss_mib"]) for s in pts]))
    return render_html(Chart(f"A slow consumer (5 ms per message) under {rate} msg/s", panels,
                             notes=["python -m bench.brokers; one sample per second"]))


def main() -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.brokers", description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="every scenario at a tenth of its size")
    parser.add_argument("--only", default="throughput,slow,absent,crashes,replay")
    args = parser.parse_args()
    scale = 10 if args.quick else 1
    sizes = {"throughput": 100_000 // scale, "slow_seconds": max(6, 60 // scale), "rate": 2000,
             "absent": 10_000 // scale, "crashes": 50_000 // scale, "kills": 5}
    only = set(args.only.split(","))
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))  # the servers are stopped on the way out
    tmp = Path(tempfile.mkdtemp(prefix="bench-brokers-"))
    os.chmod(tmp, 0o755)
    servers = Servers(
        LocalKafka(data_dir=tmp / "kafka", cache_dir=ROOT / ".streams" / "cache", port=free_port(),
                   controller_port=free_port()),
        LocalPostgres(root=tmp / "postgres", port=free_port(), database="bench"),
        LocalRabbitMQ(tmp / "rabbitmq", free_port(), dist_port=free_port(), epmd_port=free_port()),
        LocalRedis(tmp / "redis", free_port()))
    started = time.monotonic()
    results: dict[str, Any] = {"date": datetime.now().isoformat(timespec="seconds"), "sizes": sizes,
                               "machine": {"cpus": os.cpu_count(), "python": platform.python_version(),
                                           "kafka": KAFKA_VERSION}}
    try:
        servers.up()
        results["startup_s"] = servers.timings
        results["machine"]["rabbitmq"] = _version(["dpkg-query", "-W", "-f=${Version}", "rabbitmq-server"])
        results["machine"]["redis"] = _version(["dpkg-query", "-W", "-f=${Version}", "redis-server"])
        kafka_settings = Settings(kafka_bootstrap=servers.kafka.bootstrap)
        brokers = {
            "kafka": Broker("kafka", servers.kafka.bootstrap, servers.kafka.pid, kafka_settings),
            "rabbitmq": Broker("rabbitmq", servers.rabbitmq.url, servers.rabbitmq.beam_pid),
            "redis": Broker("redis", servers.redis.url, lambda: _pid(servers.redis.pid_file)),
            "pubsub": Broker("pubsub", servers.redis.url, lambda: _pid(servers.redis.pid_file)),
        }
        empty: dict = {}
        results["throughput"] = throughput(brokers, sizes["throughput"]) if "throughput" in only else empty
        results["slow_consumer"] = (slow_consumer(brokers, sizes["slow_seconds"], sizes["rate"])
                                    if "slow" in only else empty)
        results["absent"] = absent(brokers, sizes["absent"]) if "absent" in only else empty
        results["crashes"] = (crashes(brokers, servers.postgres.url, sizes["crashes"], sizes["kills"])
                              if "crashes" in only else empty)
        results["replay"] = (replay(brokers, sizes["throughput"]) if "replay" in only and "throughput" in only
                             else empty)
    finally:
        servers.down()
        shutil.rmtree(tmp, ignore_errors=True)
    results["total_s"] = round(time.monotonic() - started, 1)
    stamp = datetime.now().strftime("%Y-%m-%d-%H%M%S")
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / f"brokers-{stamp}.json").write_text(json.dumps(results, indent=1) + "\n")
    if results["slow_consumer"]:
        (RESULTS / f"brokers-{stamp}.html").write_text(chart(results["slow_consumer"], sizes["rate"]))
    print()
    print(table(results))
    print(f"\nresults: bench/results/brokers-{stamp}.json (+ .html chart); {results['total_s']} s in all")
    return 0


def _pid(path: Path) -> int | None:
    try:
        return int(path.read_text().strip())
    except (OSError, ValueError):
        return None


def _version(cmd: list[str]) -> str:
    try:
        return subprocess.run(cmd, capture_output=True, text=True, timeout=10).stdout.strip()
    except OSError:
        return "?"


if __name__ == "__main__":
    sys.exit(main())

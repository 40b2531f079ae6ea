"""Consumer throughput benchmark: ``streams`` handlers beside the peers a user would compare.

    .venv/bin/python -m bench.consume [--messages 200000] [--restore 1000000]

Starts its own Kafka broker (``streams.dev.kafka.LocalKafka``, free ports, data
in a temp dir), produces N small ``Ping`` envelopes once into one 6-partition
topic, then runs each consumer variant as a separate OS process, one after the
other, each in a fresh consumer group so it reads the topic from the start:

* ``raw``         AIOKafkaConsumer + getmany + ``registry.decode`` + periodic commit (the Python limit)
* ``bare``        a bare faust-streaming agent, raw values, no decode (Faust's own ceiling)
* ``quix``        Quix Streams app with the same decode
* ``quix-dedup``  the same, plus a ``message_id`` dedup in Quix's RocksDB state store
* ``plain-events`` / ``dedup-events``  the handlers below on the previous path (one Faust agent each)
* ``plain``       StreamsApp handler, ``idempotent=False`` (decode only)
* ``dedup``       the same, ``idempotent=True`` (processed-ID table in RocksDB)
* ``eos``         the same with ``processing_guarantee=exactly_once``
* ``dedup-traced``  ``dedup`` with tracing on: a consumer span per record, every one sampled, exported
                  over OTLP/HTTP to a receiver in this process (``bench/otlp_sink.py``)
* ``dedup-traced-10``  the same, one trace in ten sampled (``parentbased_traceidratio``, 0.1)
* ``dedup-baseline``  ``dedup`` run from another checkout (``--baseline DIR``, e.g. the commit before a
                  change), side by side with this one

Then (``--restore N``, 0 to skip) it writes N entries into the processed-ID
changelog of a fresh app and times a worker with an empty data dir restoring it.

Every variant runs with its framework's own default settings, the commit interval
included (streams and bare Faust 2.8 s, Quix Streams 5 s, the raw loop 5 s as
aiokafka's auto-commit): the table prints it beside each figure. ``dedup-0.5``
(not run unless named) is ``dedup`` with a 0.5 s commit interval.

Time = one clock for all variants, read from the broker: from the moment the broker
reports the variant's consumer group stable (its partitions assigned) until the
group's committed offsets equal the log-end offsets on every partition. CPU
µs/msg = the process's CPU time over the same span, per message (far less
sensitive to the machine's load than msgs/s).
Peak RSS = the consumer process's VmHWM from /proc.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
import uuid
from dataclasses import asdict, dataclass, field
from datetime import datetime
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "bench" / "results"
LOGS = ROOT / ".streams" / "bench"  # git-ignored; worker logs of each run are copied here

# The benchmark's settings come from here, not from a developer's shell or .env.
for _name in [n for n in os.environ if n.startswith("STREAMS_")]:
    del os.environ[_name]

from bench.messages import PARTITIONS, TOPIC, Ping, registry  # noqa: E402
from bench.raw_consumer import READY_MARKER as RAW_READY  # noqa: E402
from streams.dev.kafka import KAFKA_VERSION, LocalKafka  # noqa: E402
from streams.dev.process import ServiceError, free_port, tail  # noqa: E402
from streams.dev.worker import WorkerProcess  # noqa: E402
from streams.kafka.admin import TopicSpec, committed_offsets, end_offsets, ensure_topics, produce_envelopes  # noqa: E402
from streams.settings import Settings  # noqa: E402


@dataclass(frozen=True)
class Variant:
    key: str
    label: str
    kind: str  # "faust" | "raw"
    env: dict[str, str] = field(default_factory=dict)
    #: the checkout the consumer runs from (None: this one)
    cwd: Path | None = None
    #: its spans go to the benchmark's OTLP receiver
    traced: bool = False
    #: run only when named in --variants
    optional: bool = False


VARIANTS = [
    Variant("raw", "raw aiokafka loop + decode", "raw"),
    Variant("bare", "bare Faust agent (no decode)", "bare"),
    Variant("quix", "Quix Streams + decode", "quix", {"BENCH_DEDUP": "0"}),
    Variant("quix-dedup", "Quix Streams + decode + dedup", "quix", {"BENCH_DEDUP": "1"}),
    Variant("plain-events", "streams plain, events path (before)", "faust",
            {"BENCH_IDEMPOTENT": "0", "STREAMS_CONSUME_PATH": "events"}),
    Variant("dedup-events", "streams dedup, events path (before)", "faust",
            {"BENCH_IDEMPOTENT": "1", "STREAMS_CONSUME_PATH": "events"}),
    Variant("plain", "streams plain (idempotent=False)", "faust", {"BENCH_IDEMPOTENT": "0"}),
    Variant("dedup", "streams dedup (RocksDB)", "faust", {"BENCH_IDEMPOTENT": "1"}),
    Variant("eos", "streams dedup + exactly_once", "faust",
            {"BENCH_IDEMPOTENT": "1", "STREAMS_PROCESSING_GUARANTEE": "exactly_once"}),
    Variant("dedup-traced", "streams dedup, tracing on (all sampled, OTLP)", "faust", {"BENCH_IDEMPOTENT": "1"},
            traced=True),
    Variant("dedup-traced-10", "streams dedup, tracing on (10% sampled, OTLP)", "faust",
            {"BENCH_IDEMPOTENT": "1", "OTEL_TRACES_SAMPLER": "parentbased_traceidratio", "OTEL_TRACES_SAMPLER_ARG": "0.1"},
            traced=True),
    Variant("dedup-0.5", "streams dedup, commit interval 0.5 s", "faust",
            {"BENCH_IDEMPOTENT": "1", "STREAMS_BROKER_COMMIT_INTERVAL": "0.5"}, optional=True),
]


def commit_interval(variant: Variant) -> float:
    """The commit interval ``variant`` runs with: its env's, else its framework's default."""
    if variant.kind in ("faust", "bare"):
        return float(variant.env.get("STREAMS_BROKER_COMMIT_INTERVAL") or Settings.model_fields["broker_commit_interval"].default)
    if variant.kind == "quix":
        if variant.env.get("BENCH_COMMIT_INTERVAL"):
            return float(variant.env["BENCH_COMMIT_INTERVAL"])
        # Quix Streams lives in its own environment (quix_python): ask its interpreter
        probe = ("import inspect; from quixstreams import Application; "
                 "print(inspect.signature(Application).parameters['commit_interval'].default)")
        out = subprocess.run([str(quix_python()), "-c", probe], capture_output=True, text=True, timeout=60, check=True)
        return float(out.stdout.strip())
    from bench.raw_consumer import DEFAULT_COMMIT_INTERVAL

    return float(variant.env.get("BENCH_COMMIT_INTERVAL") or DEFAULT_COMMIT_INTERVAL)


@dataclass
class Result:
    variant: str
    key: str
    messages: int
    seconds: float | None = None
    msgs_per_s: float | None = None
    #: the commit interval the variant ran with (its framework's default unless its env sets one)
    commit_interval_s: float | None = None
    peak_rss_mib: float | None = None
    ratio_vs_raw: float | None = None
    ratio_vs_quix_dedup: float | None = None
    startup_s: float | None = None   # process start -> group stable (the clock's start)
    total_s: float | None = None     # process start -> all offsets committed
    stop_s: float | None = None      # SIGTERM -> exit
    exit_code: int | None = None
    log_warnings: int | None = None
    log_errors: int | None = None
    log_file: str | None = None
    loadavg_1m_max: float | None = None  # machine load seen while it ran (others' work skews numbers)
    error: str | None = None
    profile: dict | None = None
    spans_exported: int | None = None  # traced variants: spans the OTLP receiver got
    export_requests: int | None = None
    #: CPU seconds (user + system, all threads) the consumer process used from ready to caught up, and
    #: per message: far less sensitive than msgs/s to what else runs on a shared machine
    cpu_s: float | None = None
    cpu_us_per_msg: float | None = None
    #: the round (--repeat) it ran in; the "vs" ratios compare within a round
    round: int = 0



# --- /proc ----------------------------------------------------------------------------
def cpu_seconds(pid: int) -> float | None:
    """User + system CPU seconds ``pid`` has used (all its threads), from /proc/<pid>/stat."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except (OSError, IndexError):
        return None
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def loadavg() -> float:
    try:
        return float(Path("/proc/loadavg").read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return 0.0


class RssSampler:
    """Peak resident set of one pid (VmHWM, and the max VmRSS seen, in KiB)."""

    def __init__(self, pid: int) -> None:
        self.pid = pid
        self.peak_kib = 0

    def sample(self) -> None:
        try:
            text = Path(f"/proc/{self.pid}/status").read_text()
        except OSError:
            return
        for line in text.splitlines():
            if line.startswith(("VmHWM:", "VmRSS:")):
                self.peak_kib = max(self.peak_kib, int(line.split()[1]))

    @property
    def mib(self) -> float:
        return self.peak_kib / 1024


# --- broker-side progress -------------------------------------------------------------
def committed(settings: Settings, group: str, topic: str) -> dict[int, int]:
    return {p: off for (_, p), off in asyncio.run(committed_offsets(settings, group, topic)).items()}


def lag(ends: dict[int, int], done: dict[int, int]) -> int:
    return sum(max(0, end - done.get(p, 0)) for p, end in ends.items())


def group_stable(settings: Settings, group: str) -> bool:
    """The broker reports ``group`` stable with members (its partitions assigned): every
    variant's clock starts here, whatever its framework logs."""
    from streams.kafka.admin import admin_client

    async def state() -> bool:
        admin = admin_client(settings)
        await admin.start()
        try:
            responses = await admin.describe_consumer_groups([group])
        finally:
            await admin.close()
        for response in responses:
            for described in response.groups:
                # (error_code, group_id, state, protocol_type, protocol, members, ...)
                if described[1] == group and described[2] == "Stable" and described[5]:
                    return True
        return False

    try:
        return asyncio.run(state())
    except Exception:  # noqa: BLE001 - no coordinator yet: not stable
        return False


# --- one consumer process ---------------------------------------------------------------
def consumer_process(kind: str, env: dict[str, str], log_file: Path, cwd: Path | None = None) -> WorkerProcess:
    """The process of one variant, run and watched like a worker (``cwd``: another checkout to run from)."""
    if kind == "faust":
        if cwd is not None:  # `python -m` puts the working directory first on sys.path: that checkout's streams
            return WorkerProcess({**env, "PYTHONPATH": str(cwd)}, log_file, cwd=cwd,
                                 command=[sys.executable, "-m", "streams.cli", "worker", "--without-web", "--app",
                                          "bench.apps:app"])
        return WorkerProcess(env, log_file, args=["--without-web", "--app", "bench.apps:app"], cwd=ROOT)
    if kind == "bare":
        return WorkerProcess(env, log_file, cwd=ROOT, command=[sys.executable, "-m", "bench.bare_faust", "worker",
                                                              "-l", "info", "--without-web"])
    if kind == "quix":
        return WorkerProcess(env, log_file, cwd=ROOT, command=[str(quix_python()), "-m", "bench.quix_consumer"],
                             ready_marker="BENCH-QUIX READY")
    return WorkerProcess(env, log_file, cwd=ROOT, command=[sys.executable, "-m", "bench.raw_consumer"],
                         ready_marker=RAW_READY)


def quix_python() -> Path:
    """The interpreter of the Quix Streams peer: its own environment (``make bench`` makes ``.venv-quix``:
    Quix Streams pins pydantic below the version the project's environment has), ``BENCH_QUIX_PYTHON``
    to name another."""
    return Path(os.environ.get("BENCH_QUIX_PYTHON", ROOT / ".venv-quix" / "bin" / "python"))


def run_variant(variant: Variant, *, n: int, base_env: dict[str, str], settings: Settings, topic: str,
                ends: dict[int, int], tmp: Path, suffix: str, poll: float, timeout: float,
                stall: float, profile_seconds: float = 0.0, sink: object = None) -> Result:
    group = f"bench-{variant.key}-{suffix}"
    log_file = tmp / "logs" / f"{variant.key}-{suffix}.log"
    env = {
        **base_env,
        "STREAMS_APP_ID": group,
        "STREAMS_WORKER_DATA_DIR": str(tmp / "worker" / f"{variant.key}-{suffix}"),
        **variant.env,
    }
    if variant.traced:
        assert sink is not None
        sink.reset()  # type: ignore[attr-defined]
        env.update({"OTEL_EXPORTER_OTLP_ENDPOINT": sink.endpoint, "OTEL_SERVICE_NAME": group})  # type: ignore[attr-defined]
    result = Result(variant.label, variant.key, n, log_file=str(log_file), commit_interval_s=commit_interval(variant))
    proc = consumer_process(variant.kind, env, log_file, variant.cwd)
    t_start = time.monotonic()
    proc.start()
    rss = RssSampler(proc.pid)
    load = loadavg()
    try:
        while not group_stable(settings, group):
            if not proc.running():
                raise ServiceError(f"consumer exited with code {proc.proc.returncode} before its group was "
                                   f"stable:\n{tail(log_file, 40)}")
            if time.monotonic() - t_start > 180:
                raise ServiceError(f"group {group} not stable after 180s:\n{tail(log_file, 40)}")
            rss.sample()
            time.sleep(0.05)
        t_ready = time.monotonic()
        cpu_ready = cpu_seconds(proc.pid)
        spy = None
        if profile_seconds:
            from bench import profile

            raw_profile = tmp / "logs" / f"{variant.key}.profile.txt"
            spy = profile.start(proc.pid, profile_seconds, raw_profile)
        rss.sample()
        result.startup_s = t_ready - t_start
        last_lag, last_progress = None, t_ready
        while True:
            rss.sample()
            load = max(load, loadavg())
            if not proc.running():
                log_text = log_file.read_text(errors="replace")
                why = (" after a SIGTERM the benchmark did not send (someone else signalled the process)"
                       if "Signal received: 15" in log_text else "")
                raise ServiceError(f"consumer exited with code {proc.proc.returncode} before catching up{why}:\n"
                                   f"{tail(log_file, 40)}")
            remaining = lag(ends, committed(settings, group, topic))
            now = time.monotonic()
            if remaining == 0:
                break
            if remaining != last_lag:
                last_lag, last_progress = remaining, now
            if now - last_progress > stall:
                raise ServiceError(f"no committed progress for {stall:.0f}s (lag {remaining}):\n{tail(log_file, 40)}")
            if now - t_ready > timeout:
                raise ServiceError(f"not caught up after {timeout:.0f}s (lag {remaining}):\n{tail(log_file, 40)}")
            time.sleep(poll)
        t_done = time.monotonic()
        cpu_done = cpu_seconds(proc.pid)
        if cpu_ready is not None and cpu_done is not None:
            result.cpu_s = cpu_done - cpu_ready
            result.cpu_us_per_msg = result.cpu_s / n * 1e6
        rss.sample()
        if spy is not None:
            spy.wait(timeout=profile_seconds + 30)
            if raw_profile.exists():
                result.profile = profile.summarise(raw_profile)
        result.seconds = t_done - t_ready
        result.total_s = t_done - t_start
        result.msgs_per_s = n / result.seconds
    except Exception as exc:  # noqa: BLE001 - a failed variant is reported, the others still run
        result.error = f"{type(exc).__name__}: {exc}"
    finally:
        rss.sample()
        result.peak_rss_mib = rss.mib or None
        result.loadavg_1m_max = load
        t_stop = time.monotonic()
        result.exit_code = proc.stop(timeout=60)
        result.stop_s = time.monotonic() - t_stop
        text = log_file.read_text(errors="replace") if log_file.exists() else ""
        result.log_warnings = sum(1 for line in text.splitlines() if "[WARNING]" in line)
        result.log_errors = sum(1 for line in text.splitlines() if "[ERROR]" in line or "Traceback" in line)
        if variant.traced and sink is not None:  # after the stop: the exporter flushed what it held
            result.spans_exported, result.export_requests = sink.spans()  # type: ignore[attr-defined]
    return result


# --- table restore -------------------------------------------------------------------------
def restore_logged(log: str) -> float | None:
    """Seconds between Faust's "Restoring state from changelog topics" and "Done reading from
    changelog topics" in a worker's log (the restore itself, without start-up and group join);
    for a warm-up before joining, between its first and its last line."""
    if "warming up" in log:
        markers = (("start", "warming up"), ("end", "warmed up before joining"))
    else:
        markers = (("start", "Restoring state from changelog topics"), ("end", "Done reading from changelog"))
    stamps = {}
    for line in log.splitlines():
        for key, marker in markers:
            if marker in line and key not in stamps:
                try:
                    stamp = line[1:24] if line.startswith("[") else line[:23]
                    stamps[key] = datetime.strptime(stamp, "%Y-%m-%d %H:%M:%S,%f")
                except ValueError:
                    pass
    if "start" in stamps and "end" in stamps:
        return round((stamps["end"] - stamps["start"]).total_seconds(), 2)
    return None


async def fill_changelog(settings: Settings, changelog: str, count: int) -> None:
    """Write ``count`` processed-ID entries (``id-<i>`` in partition i mod 6) as a worker leaves them."""
    from aiokafka import AIOKafkaProducer

    producer = AIOKafkaProducer(**settings.kafka_client_kwargs(), acks="all", linger_ms=20,
                                max_batch_size=512 * 1024)
    await producer.start()
    try:
        now, pending = time.time(), []
        for i in range(count):
            value = {"at": now, "outcome": "handled", "p": i % PARTITIONS, "o": i // PARTITIONS, "attempts": 1}
            pending.append(await producer.send(changelog, key=json.dumps(f"id-{i}").encode(),
                                               value=json.dumps(value).encode(), partition=i % PARTITIONS))
            if len(pending) >= 20_000:
                await asyncio.gather(*pending)
                pending.clear()
        await asyncio.gather(*pending)
    finally:
        await producer.stop()


def time_restore(entries: int, *, base_env: dict[str, str], settings: Settings, tmp: Path, suffix: str,
                 paths: tuple[str, ...] = ("batch",), profile_seconds: float = 0.0) -> dict:
    """Write ``entries`` processed-ID entries into the changelog of a fresh app (what a worker
    leaves behind), then start a dedup worker on an empty data dir — once with an empty
    changelog (baseline) and once per restore path (``STREAMS_RESTORE_PATH``) with the full
    one — and time each to Ready; the restore's time is the difference to the baseline."""
    from streams.consume.dedup import changelog_configs

    out: dict = {"entries": entries, "paths": {}}
    try:
        timings = {}
        for label, count in (("baseline", 0), ("full", entries)):
            group = f"bench-restore-{label}-{suffix}"
            changelog = f"{group}-processed-bench-ping-changelog"
            asyncio.run(ensure_topics(settings, [TopicSpec(changelog, PARTITIONS,
                                                           config=changelog_configs(7 * 24 * 3600.0))]))

            t0 = time.monotonic()
            asyncio.run(fill_changelog(settings, changelog, count))
            if count:
                out["write_s"] = round(time.monotonic() - t0, 1)
            for path in (("batch",) if label == "baseline" else paths):
                # batch / events: the restore after joining (Faust's recovery); warmup: before joining
                env = {**base_env, "STREAMS_APP_ID": group, "BENCH_IDEMPOTENT": "1",
                       "STREAMS_RESTORE_PATH": "events" if path == "events" else "batch",
                       "STREAMS_WARMUP_BEFORE_JOIN": "true" if path == "warmup" else "false",
                       "STREAMS_WORKER_DATA_DIR": str(tmp / "worker" / f"{group}-{path}")}
                proc = consumer_process("faust", env, tmp / "logs" / f"restore-{label}-{path}.log")
                started = time.monotonic()
                proc.start()
                rss = RssSampler(proc.pid)
                load = loadavg()
                spy, raw_profile = None, tmp / "logs" / f"restore-{path}.profile.txt"
                try:
                    while True:
                        try:
                            proc.wait_ready(timeout=0.5)
                            break
                        except ServiceError as exc:
                            if not proc.running() or time.monotonic() - started > 1800:
                                raise exc
                        rss.sample()
                        load = max(load, loadavg())
                        if (profile_seconds and count and spy is None
                                and ("Restoring state from changelog topics" in proc.log_text()
                                     or "warming up" in proc.log_text())):
                            from bench import profile

                            spy = profile.start(proc.started_pid, profile_seconds, raw_profile)
                    timings[label, path] = time.monotonic() - started
                    rss.sample()
                finally:
                    proc.stop(timeout=60)
                if spy is not None:
                    from bench import profile

                    spy.wait(timeout=profile_seconds + 30)
                    if raw_profile.exists():
                        profile.print_summary(f"restore ({path} path)", profile.summarise(raw_profile, top=25))
                if label == "full":
                    data_dir = Path(env["STREAMS_WORKER_DATA_DIR"])
                    disk = sum(f.stat().st_size for f in data_dir.rglob("*") if f.is_file())
                    out["paths"][path] = {"ready_s": round(timings[label, path], 2), "peak_rss_mib": round(rss.mib, 1),
                                          "loadavg_1m_max": load, "logged_s": restore_logged(proc.log_text()),
                                          "disk_mib": round(disk / 2**20, 1)}
        baseline = timings["baseline", "batch"]
        out["baseline_s"] = round(baseline, 2)
        for row in out["paths"].values():
            row["seconds"] = round(max(0.01, row["ready_s"] - baseline), 2)
            row["entries_per_s"] = round(entries / row["seconds"])
            if row["logged_s"]:
                row["logged_entries_per_s"] = round(entries / row["logged_s"])
    except Exception as exc:  # noqa: BLE001 - reported with the table
        out["error"] = f"{type(exc).__name__}: {exc}"
    return out


# --- output -----------------------------------------------------------------------------
def fmt(value: float | None, spec: str) -> str:
    return "—" if value is None else format(value, spec)


def print_table(results: list[Result], meta: dict) -> None:
    from rich.console import Console
    from rich.table import Table

    table = Table(title=f"consume benchmark: {meta['messages']:,} Ping envelopes, {PARTITIONS} partitions "
                        f"(Kafka {KAFKA_VERSION}, {meta['cpus']} CPUs)")
    for col in ("variant", "commit interval s", "messages", "seconds", "msgs/s", "CPU µs/msg", "load",
                "peak RSS MiB", "vs raw", "vs Quix dedup"):
        table.add_column(col, justify="left" if col == "variant" else "right")
    for r in results:
        table.add_row(r.variant, fmt(r.commit_interval_s, ".1f"), f"{r.messages:,}", fmt(r.seconds, ".2f"),
                      fmt(r.msgs_per_s, ",.0f"),
                      fmt(r.cpu_us_per_msg, ".1f"), fmt(r.loadavg_1m_max, ".1f"),
                      fmt(r.peak_rss_mib, ".1f"), fmt(r.ratio_vs_raw, ".2f"), fmt(r.ratio_vs_quix_dedup, ".2f"))
    console = Console(width=160)
    console.print(table)
    restore = meta.get("restore")
    if restore:
        if restore.get("error"):
            console.print(f"[bold red]table restore failed:[/] {restore['error']}", highlight=False)
        for path, row in restore.get("paths", {}).items():
            logged = (f"; in the worker's log {row['logged_s']:.1f}s = {row['logged_entries_per_s']:,.0f} entries/s"
                      if row.get("logged_s") else "")
            console.print(f"table restore ({path} path): {restore['entries']:,} processed-ID entries restored on a "
                          f"fresh node in {row['seconds']:.1f}s = {row['entries_per_s']:,.0f} entries/s{logged} (ready after "
                          f"{row['ready_s']:.1f}s; an empty changelog: {restore['baseline_s']:.1f}s; peak RSS "
                          f"{row['peak_rss_mib']:.0f} MiB; on disk {row['disk_mib']:.0f} MiB; load average up to "
                          f"{row['loadavg_1m_max']:.1f})",
                          highlight=False)
    for r in results:
        if r.error:
            console.print(f"[bold red]{r.variant} failed:[/]", highlight=False)
            console.print(r.error, markup=False, highlight=False)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.consume", description=__doc__.split("\n\n")[0])
    parser.add_argument("--messages", type=int, default=200_000, help="envelopes to produce (default 200000)")
    parser.add_argument("--variants", default=",".join(v.key for v in VARIANTS),
                        help="comma-separated subset of: " + ", ".join(v.key for v in VARIANTS))
    parser.add_argument("--poll", type=float, default=0.25, help="seconds between committed-offset polls")
    parser.add_argument("--timeout", type=float, default=1200.0, help="max seconds per variant once ready")
    parser.add_argument("--stall", type=float, default=120.0, help="fail a variant after this long without progress")
    parser.add_argument("--keep", action="store_true", help="keep the temp dir (broker data, worker state)")
    parser.add_argument("--profile", default="", help="comma-separated variants to sample with py-spy while they run "
                                                      "(restore: the restoring worker)")
    parser.add_argument("--profile-seconds", type=float, default=10.0, help="how long to sample each profiled variant")
    parser.add_argument("--restore", type=int, default=1_000_000,
                        help="processed-ID entries for the table-restore timing (0: skip)")
    parser.add_argument("--restore-paths", default="batch",
                        help="restore paths to time, comma-separated: batch (after joining, write batches), "
                             "events (after joining, Faust's per-event path), warmup (before joining)")
    parser.add_argument("--baseline", type=Path, default=None,
                        help="another checkout (e.g. `git archive <commit> | tar -x -C DIR`): adds dedup-baseline, "
                             "the dedup variant run from it")
    parser.add_argument("--repeat", type=int, default=1, help="run the selected variants this many rounds, "
                                                              "interleaved (a loaded machine: compare the spread)")
    args = parser.parse_args(argv)
    wanted = [k.strip() for k in args.variants.split(",") if k.strip()]
    if args.variants == parser.get_default("variants"):
        wanted = [v.key for v in VARIANTS if not v.optional]
    catalogue = list(VARIANTS)
    if args.baseline is not None:
        catalogue.append(Variant("dedup-baseline", f"streams dedup from {args.baseline}", "faust",
                                 {"BENCH_IDEMPOTENT": "1"}, cwd=args.baseline.resolve()))
        if "dedup-baseline" not in wanted:
            wanted.append("dedup-baseline")
    unknown = set(wanted) - {v.key for v in catalogue}
    if unknown:
        parser.error(f"unknown variant(s): {', '.join(sorted(unknown))}")
    variants = [v for v in catalogue if v.key in wanted] * max(args.repeat, 1)
    if any(v.kind == "quix" for v in variants) and subprocess.run(
            [str(quix_python()), "-c", "import quixstreams"], capture_output=True).returncode:
        parser.error(f"the Quix Streams variants need Quix Streams in {quix_python()} (`make bench` makes that "
                     "environment), or leave them out with --variants")
    n = args.messages

    stamp = datetime.now().strftime("%Y-%m-%d-%H%M%S")
    suffix = uuid.uuid4().hex[:6]
    tmp = Path(tempfile.mkdtemp(prefix="streams-bench-"))
    broker = LocalKafka(data_dir=tmp / "kafka", cache_dir=ROOT / ".streams" / "cache",
                        port=free_port(), controller_port=free_port())
    results: list[Result] = []
    sink = None
    meta: dict = {"date": stamp, "messages": n, "partitions": PARTITIONS, "cpus": os.cpu_count(),
                  "python": platform.python_version(), "kafka": KAFKA_VERSION}
    try:
        import aiokafka
        import faust

        meta.update(faust=faust.__version__, aiokafka=aiokafka.__version__)
    except Exception:  # noqa: BLE001
        pass
    try:
        print(f"[bench] temp dir {tmp}", flush=True)
        meta["broker_start_s"] = round(broker.up(), 2)
        print(f"[bench] Kafka {KAFKA_VERSION} up on {broker.bootstrap} in {meta['broker_start_s']}s", flush=True)
        prefix = f"bench{suffix}."
        settings = Settings(kafka_bootstrap=broker.bootstrap, app_id=f"bench-producer-{suffix}",
                            topic_prefix=prefix, home=tmp / "home")
        topic = f"{prefix}{TOPIC}"
        asyncio.run(ensure_topics(settings, [TopicSpec(topic, PARTITIONS)]))

        envelopes = (registry.envelope(Ping(n=i, note=f"ping {i}"), key=f"ping-{i}", source="bench")
                     for i in range(n))
        t0 = time.monotonic()
        produced = asyncio.run(produce_envelopes(settings, topic, envelopes))
        meta["produce_s"] = round(time.monotonic() - t0, 2)
        ends = asyncio.run(end_offsets(settings, topic))
        meta["partition_sizes"] = ends
        if produced != n or sum(ends.values()) != n:
            raise ServiceError(f"produced {produced}, log-end offsets sum to {sum(ends.values())}, expected {n}")
        sample = registry.envelope(Ping(n=n - 1, note=f"ping {n - 1}"), key=f"ping-{n - 1}", source="bench")
        meta["record_value_bytes"] = len(sample.to_json())
        print(f"[bench] produced {n:,} envelopes in {meta['produce_s']}s "
              f"({n / meta['produce_s']:,.0f}/s); per partition {ends}", flush=True)

        base_env = {
            "STREAMS_KAFKA_BOOTSTRAP": broker.bootstrap,
            "STREAMS_TOPIC_PREFIX": prefix,
            "STREAMS_HOME": str(tmp / "home"),
            "STREAMS_PROCESSING_GUARANTEE": "at_least_once",
            "STREAMS_LOG_LEVEL": "info",
            "PYTHONUNBUFFERED": "1",
        }
        if any(v.traced for v in variants):
            from bench.otlp_sink import DiscardingSink

            sink = DiscardingSink().start()
        for round_, variant in enumerate(variants):
            print(f"[bench] {variant.label}: running ...", flush=True)
            profiled = variant.key in {k.strip() for k in args.profile.split(",")}
            r = run_variant(variant, n=n, base_env=base_env, settings=settings, topic=topic, ends=ends,
                            tmp=tmp, suffix=f"{suffix}-{round_}", poll=args.poll, timeout=args.timeout,
                            stall=args.stall, profile_seconds=args.profile_seconds if profiled else 0.0, sink=sink)
            if r.profile:
                from bench.profile import print_summary

                print_summary(variant.label, r.profile)
            r.round = round_ // max(1, len(variants) // max(args.repeat, 1))
            results.append(r)
            if r.error:
                print(f"[bench] {variant.label}: FAILED ({r.error.splitlines()[0]})", flush=True)
            else:
                spans = f", {r.spans_exported:,} spans exported" if r.spans_exported is not None else ""
                spans += f", {r.cpu_us_per_msg:.1f} CPU µs/msg" if r.cpu_us_per_msg is not None else ""
                print(f"[bench] {variant.label}: {r.seconds:.2f}s, {r.msgs_per_s:,.0f} msgs/s, "
                      f"peak RSS {r.peak_rss_mib:.1f} MiB (ready after {r.startup_s:.1f}s, "
                      f"stopped in {r.stop_s:.1f}s, exit {r.exit_code}, load ≤ {r.loadavg_1m_max:.1f}{spans})",
                      flush=True)
        if args.restore:
            print(f"[bench] table restore: writing {args.restore:,} processed-ID entries ...", flush=True)
            meta["restore"] = time_restore(args.restore, base_env=base_env, settings=settings, tmp=tmp,
                                           suffix=suffix, paths=tuple(p.strip() for p in args.restore_paths.split(",")
                                                                      if p.strip()),
                                           profile_seconds=args.profile_seconds if "restore" in args.profile else 0.0)
            print(f"[bench] table restore: {meta['restore']}", flush=True)
    finally:
        if sink is not None:
            sink.stop()
        broker.down()
        log_dir = LOGS / f"consume-{stamp}"
        if (tmp / "logs").exists():
            shutil.copytree(tmp / "logs", log_dir, dirs_exist_ok=True)
            if (tmp / "kafka" / "broker.log").exists():
                shutil.copy2(tmp / "kafka" / "broker.log", log_dir / "broker.log")
            for r in results:
                r.log_file = str(log_dir / Path(r.log_file).name) if r.log_file else None
        if not args.keep:
            shutil.rmtree(tmp, ignore_errors=True)

    for r in results:
        raw = next((x for x in results if x.key == "raw" and x.msgs_per_s and x.round == r.round), None)
        quix_dedup = next((x for x in results if x.key == "quix-dedup" and x.msgs_per_s and x.round == r.round), None)
        if raw and r.msgs_per_s:
            r.ratio_vs_raw = r.msgs_per_s / raw.msgs_per_s
        if quix_dedup and r.msgs_per_s:
            r.ratio_vs_quix_dedup = r.msgs_per_s / quix_dedup.msgs_per_s
    print_table(results, meta)
    RESULTS.mkdir(parents=True, exist_ok=True)
    out = RESULTS / f"consume-{stamp}.json"
    out.write_text(json.dumps({**meta, "results": [asdict(r) for r in results]}, indent=2) + "\n")
    print(f"[bench] results written to {out.relative_to(ROOT)}; worker logs in {LOGS.relative_to(ROOT)}/consume-{stamp}/")
    return 1 if any(r.error for r in results) else 0


if __name__ == "__main__":
    sys.exit(main())

"""Batch transfer benchmark: rows/s of export and import per file format.

    .venv/bin/python -m bench.batch [--rows 1000000] [--formats csv,kv,jsonl] [--repeat N] [--profile]

Uses the local services (``streams dev up`` and ``streams dev sftp up``, started
if they are not running, or the servers the ``STREAMS_*`` settings name). Fills
a table with N rows once (an order-like row: id, buyer, amount, a note with a
comma and a quote in some rows), then for each format:

* **export**: ``run_export`` of the whole table (query → file → upload → manifest →
  watermark), timed end to end;
* **import**: ``run_import`` of that file (download → checksum → count pass →
  parse + validate into a pydantic model → publish with an idempotent
  ``acks=all`` producer), timed end to end, into a fresh topic.

``--repeat N`` imports each exported file N times (each into a fresh topic, under a new source
name so nothing counts as published before); ``--profile`` samples the first import of each
format with py-spy (:mod:`bench.profile`) and prints where its time went. The 1-minute load
average is recorded beside each import. Prints a table and writes
``bench/results/batch-<timestamp>.json``.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import time
import uuid
from datetime import UTC, datetime
from decimal import Decimal
from pathlib import Path

import psycopg
from pydantic import BaseModel
from rich.console import Console
from rich.table import Table

from bench import profile as profiling
from streams import MessageRegistry, load_settings
from streams.batch.export import ExportSpec, run_export
from streams.batch.formats import FormatOptions
from streams.batch.imports import ImportSpec, run_import
from streams.dev.services import ensure_services
from streams.dev.sftp import LocalSftp
from streams.kafka.admin import TopicSpec, ensure_topics

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "bench" / "results"
PROFILES = ROOT / ".streams" / "bench"
console = Console()
registry = MessageRegistry()


@registry.event("BenchRow")
class BenchRow(BaseModel):
    """One benchmark row."""

    seq: int
    order_id: str
    buyer: str
    amount: Decimal
    note: str | None = None


def fill(dsn: str, rows: int) -> float:
    started = time.monotonic()
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute("DROP TABLE IF EXISTS bench_batch_rows")
        conn.execute("CREATE TABLE bench_batch_rows (seq bigint PRIMARY KEY, order_id text NOT NULL, "
                     "buyer text NOT NULL, amount numeric NOT NULL, note text)")
        conn.execute("INSERT INTO bench_batch_rows SELECT g, 'order-' || g, 'buyer-' || mod(g, 997), g * 0.25, "
                     "CASE WHEN mod(g, 10) = 0 THEN 'gift, \"fragile\"' ELSE 'standard' END "
                     "FROM generate_series(1, %s::int) g", (rows,))
    return time.monotonic() - started


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.batch", description=__doc__.split("\n\n")[0])
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--formats", default="csv,kv,jsonl")
    parser.add_argument("--repeat", type=int, default=1, help="imports of each exported file")
    parser.add_argument("--profile", action="store_true", help="py-spy the first import of each format")
    args = parser.parse_args(argv)
    settings = load_settings()
    services = ensure_services(settings)
    sftp = LocalSftp.from_settings(settings) if settings.uses_local_sftp else None
    if sftp is not None:
        sftp.up()
    run_id = uuid.uuid4().hex[:8]
    settings = settings.model_copy(update={"sftp_remote_dir": f"/bench-{run_id}"})
    console.print(f"filling bench_batch_rows with {args.rows:,} rows ...")
    console.print(f"  {fill(settings.dsn, args.rows):.1f}s")
    results = []
    try:
        for fmt in args.formats.split(","):
            name = f"bench-{run_id}-{fmt}"
            started = time.monotonic()
            exported = asyncio.run(run_export(settings, ExportSpec(name, "seq", table="bench_batch_rows",
                                                                   options=FormatOptions(fmt))))
            export_s = time.monotonic() - started
            size = (sftp.files / f"bench-{run_id}" / str(exported.file)).stat().st_size if sftp else 0
            imports = []
            for attempt in range(args.repeat):
                topic = f"bench.batch.{run_id}.{fmt}.{attempt}"
                asyncio.run(ensure_topics(settings, [TopicSpec(topic, 6)]))
                if attempt:  # the file is in done/ now: put it back for the next import
                    for name in (str(exported.file), f"{exported.file}.manifest.json"):
                        assert sftp is not None, "--repeat needs the local SFTP server"
                        folder = sftp.files / f"bench-{run_id}"
                        (folder / "done" / name).rename(folder / name)
                spy = raw = None
                if args.profile and attempt == 0:
                    PROFILES.mkdir(parents=True, exist_ok=True)
                    raw = PROFILES / f"batch-profile-{run_id}-{fmt}.txt"
                    spy = profiling.start(os.getpid(), 600, raw, rate=100)
                started = time.monotonic()
                imported = asyncio.run(run_import(settings, ImportSpec(f"bench-{run_id}-{attempt}", topic, registry,
                                                                       "BenchRow", "order_id")))
                import_s = time.monotonic() - started
                load = os.getloadavg()[0]
                if spy is not None and raw is not None:
                    spy.send_signal(2)  # SIGINT: py-spy writes what it sampled and exits
                    spy.wait(60)
                    profiling.print_summary(f"import {fmt}", profiling.summarise(raw, top=25))
                    console.print(f"py-spy samples (raw): {raw}")
                published = sum(r.published + r.already_published for r in imported if r.file == exported.file)
                assert exported.rows == args.rows and published == args.rows, (exported, imported)
                imports.append({"import_s": round(import_s, 1), "import_rows_s": round(args.rows / import_s),
                                "load_1m": round(load, 1)})
                console.print(f"{fmt} import {attempt + 1}: {imports[-1]}")
            best = max(imports, key=lambda i: i["import_rows_s"])
            results.append({"format": fmt, "rows": args.rows, "file_mib": round(size / 2**20, 1),
                            "export_s": round(export_s, 1), "export_rows_s": round(args.rows / export_s),
                            "import_s": best["import_s"], "import_rows_s": best["import_rows_s"],
                            "imports": imports})
            console.print(results[-1])
    finally:
        if sftp is not None:
            import shutil

            shutil.rmtree(sftp.files / f"bench-{run_id}", ignore_errors=True)
        services.stop_started()
    table = Table(title=f"batch transfer, {args.rows:,} rows per format (export: PostgreSQL → SFTP; "
                        "import: SFTP → Kafka)")
    for col in ("format", "file MiB", "export s", "export rows/s", "import s", "import rows/s",
                "each import rows/s (load)"):
        table.add_column(col, justify="right")
    for r in results:
        each = ", ".join(f"{i['import_rows_s']:,} ({i['load_1m']})" for i in r["imports"])
        table.add_row(r["format"], f"{r['file_mib']}", f"{r['export_s']}", f"{r['export_rows_s']:,}",
                      f"{r['import_s']}", f"{r['import_rows_s']:,}", each)
    console.print(table)
    RESULTS.mkdir(parents=True, exist_ok=True)
    out = RESULTS / f"batch-{datetime.now(UTC):%Y-%m-%d-%H%M%S}.json"
    out.write_text(json.dumps({"machine": platform.platform(), "cpus": os.cpu_count(),
                               "results": results}, indent=2))
    console.print(f"written {out.relative_to(ROOT)}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

"""What a table-size read costs on the event loop: RocksDB's estimate vs counting keys.

    .venv/bin/python -m bench.table_sizes [--ids 10000000]

Builds a processed-ID table of ``--ids`` entries over 6 partition databases through Faust's
RocksDB store (write batches, keys ``"id-<i>"`` or UUID4 with ``--uuid``, values as a handler writes them; no broker),
then times, per read of all 6 partitions: what ``/metrics`` and ``/api/tables`` now do
(:func:`streams.faust_compat.table_store.entries`) and what they did before (counting every key,
``table_store.count``). Also reports the data on disk and the process's peak RSS.
"""

from __future__ import annotations

import argparse
import json
import resource
import shutil
import tempfile
import time
import uuid
from pathlib import Path

PARTITIONS = 6


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.table_sizes", description=__doc__.split("\n\n")[0])
    parser.add_argument("--ids", type=int, default=10_000_000)
    parser.add_argument("--repeat", type=int, default=20, help="estimate reads to time")
    parser.add_argument("--uuid", action="store_true", help="message ids as the framework makes them (UUID4) "
                                                              "instead of id-<i> (which compress far better)")
    args = parser.parse_args(argv)
    import faust
    import rocksdict

    from streams.faust_compat import table_store

    tmp = Path(tempfile.mkdtemp(prefix="streams-sizes-"))
    try:
        app = faust.App("sizes", store="rocksdb://", datadir=str(tmp))
        table = app.Table("processed-bench", partitions=PARTITIONS,
                          options={"block_cache_size": 64 * 2**20, "write_buffer_size": 8 * 2**20,
                                   "max_write_buffer_number": 2})
        store = table.data
        dbs = [store._db_for_partition(p) for p in range(PARTITIONS)]
        t0 = time.monotonic()
        now = time.time()
        for start in range(0, args.ids, 60_000):
            batches = [rocksdict.WriteBatch(raw_mode=True) for _ in range(PARTITIONS)]
            for i in range(start, min(args.ids, start + 60_000)):
                value = {"at": now, "outcome": "handled", "p": i % PARTITIONS, "o": i // PARTITIONS, "attempts": 1}
                key = str(uuid.uuid4()) if args.uuid else f"id-{i}"
                batches[i % PARTITIONS].put(json.dumps(key).encode(), json.dumps(value).encode())
            for p, batch in enumerate(batches):
                batch.put(store.offset_key, str(start).encode())
                dbs[p].write(batch)
        write_s = time.monotonic() - t0
        estimates = []
        for _ in range(args.repeat):
            t = time.perf_counter()
            sizes = [table_store.entries(store, db) for db in dbs]
            estimates.append(time.perf_counter() - t)
        t = time.perf_counter()
        counted = [table_store.count(store, db) for db in dbs]
        count_s = time.perf_counter() - t
        disk = sum(f.stat().st_size for f in tmp.rglob("*") if f.is_file())
        rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
        estimated_total, exact_total = sum(n for n, _ in sizes), sum(counted)
        kind = "UUID4" if args.uuid else "id-<i>"
        print(f"table of {args.ids:,} {kind} ids in {PARTITIONS} partitions (written in {write_s:.1f}s, "
              f"{disk / 2**20:.0f} MiB on disk, peak RSS {rss:.0f} MiB)")
        print(f"  estimate (now):  {1000 * min(estimates):.3f} ms best, {1000 * max(estimates):.3f} ms worst of "
              f"{args.repeat} reads of all {PARTITIONS} partitions -> {estimated_total:,} entries "
              f"({100 * (estimated_total - exact_total) / exact_total:+.2f} %)")
        print(f"  counting keys (before): {1000 * count_s:,.0f} ms for one read -> {exact_total:,} entries")
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

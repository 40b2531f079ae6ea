"""CPU per change event through the change decoder alone (no broker, no Connect).

    .venv/bin/python -m bench.cdc_decode [--events 20000] [--rounds 3] [--baseline DIR]

Decodes N Debezium change events of ``public.bench_rows`` (the rows ``bench.cdc`` inserts:
an id and a 200-character note; the value and key bytes Debezium 3.x writes with the JSON
converter, schemas off) with ``ChangeDecoder.decode``, and prints the process CPU time per
event (the best of each round's pass; CPU time, not wall time, so a loaded machine skews
it less). ``--baseline DIR`` runs the same in a checkout of another commit (``git worktree
add DIR <commit>``), each round alternating between the two.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def events(n: int) -> list[tuple[bytes, bytes]]:
    """(value, key) of n inserts, as Debezium's PostgreSQL connector writes them."""
    out = []
    for i in range(n):
        value = {"before": None, "after": {"id": i, "note": "x" * 200},
                 "source": {"version": "3.4.3.Final", "connector": "postgresql", "name": "bench.cdc.rows",
                            "ts_ms": 1765040000000 + i, "snapshot": "false", "db": "postgres",
                            "sequence": f'["{i}","{i + 1}"]', "ts_us": 1765040000000000 + i,
                            "ts_ns": 1765040000000000000 + i, "schema": "public", "table": "bench_rows",
                            "txId": 1000 + i // 1000, "lsn": 123456 + i * 300, "xmin": None},
                 "transaction": None, "op": "c", "ts_ms": 1765040000100 + i}
        out.append((json.dumps(value).encode(), json.dumps({"id": i}).encode()))
    return out


def measure(n: int, passes: int = 3) -> float:
    """CPU µs per event, the best of ``passes`` passes (in this process's checkout)."""
    from bench.cdc_app import Row
    from streams.cdc.changes import ChangeDecoder

    decoder = ChangeDecoder({"public.bench_rows": Row})
    records = events(n)
    best = float("inf")
    for _ in range(passes):
        started = time.process_time()
        for value, key in records:
            decoder.decode(value, key)
        best = min(best, time.process_time() - started)
    return best / n * 1e6


def _in(checkout: Path, n: int) -> float:
    # this file's measure(), with the checkout's streams (and bench.cdc_app) first on the path
    code = (f"import runpy, sys; sys.path.insert(0, {str(checkout)!r}); "
            f"print(runpy.run_path({__file__!r})['measure']({n}))")
    return float(subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                                cwd=checkout).stdout)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.cdc_decode", description=__doc__.split("\n\n")[0])
    parser.add_argument("--events", type=int, default=20_000)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--baseline", type=Path, help="a checkout of another commit to compare with")
    args = parser.parse_args(argv)
    for round_ in range(1, args.rounds + 1):
        line = f"round {round_}: this checkout {_in(ROOT, args.events):.2f} µs/event"
        if args.baseline is not None:
            line += f", baseline {_in(args.baseline.resolve(), args.events):.2f} µs/event"
        print(line, flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

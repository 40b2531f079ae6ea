"""What the latency benchmarks share: a writer committing outbox rows at a steady rate, and percentiles."""

from __future__ import annotations

import statistics
import threading
import time
from collections.abc import Callable

import psycopg

from streams.messages.envelope import Envelope
from streams.outbox.writer import write_message


def steady_writes(dsn: str, topic: str, rate: int, seconds: int, envelope_for: Callable[[int], Envelope],
                  writers: int = 4) -> tuple[dict[str, float], float]:
    """Commit ``rate * seconds`` outbox rows, one per transaction, at ``rate`` rows/s from ``writers``
    threads (one connection each: a single connection cannot commit 1,000 times a second on 2 cores).
    Returns (message_id → the writer's clock right after COMMIT returned, the rate achieved)."""
    total = rate * seconds
    committed: dict[str, float] = {}
    lock = threading.Lock()

    def write_share(w: int) -> None:
        with psycopg.connect(dsn) as conn:
            for i in range(w, total, writers):
                delay = start + i / rate - time.monotonic()
                if delay > 0:
                    time.sleep(delay)
                envelope = envelope_for(i)
                write_message(conn, envelope, topic=topic)
                conn.commit()
                now = time.time()
                with lock:
                    committed[envelope.message_id] = now

    start = time.monotonic()
    threads = [threading.Thread(target=write_share, args=(w,)) for w in range(writers)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return committed, total / (time.monotonic() - start)


def latencies_ms(committed: dict[str, float], arrived: dict[str, float]) -> list[float]:
    """Sorted arrival − commit times in ms of the messages that arrived."""
    return sorted((arrived[m] - committed[m]) * 1000 for m in committed if m in arrived)


def percentiles(lat: list[float]) -> dict[str, float]:
    """p50 / p95 / p99 / max of sorted latencies (ms, one decimal)."""
    def pct(p: float) -> float:
        return round(lat[min(len(lat) - 1, int(p * len(lat)))], 1)

    return {"p50": round(statistics.median(lat), 1), "p95": pct(0.95), "p99": pct(0.99), "max": round(lat[-1], 1)}

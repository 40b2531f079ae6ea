"""The reference app end to end (``make demo``).

1. starts (or finds) Kafka and PostgreSQL;
2. creates the app's topics and starts ``streams worker`` as a separate process;
3. publishes ``OrderPlaced`` events across the topic's partitions, plus a few
   malformed records (not JSON, unknown type, invalid payload);
4. waits until every event was pushed to its seller (a row in PostgreSQL) and
   the group's committed offsets reach the log end, reading both from the
   servers, not from the worker;
5. prints a summary and stops the worker and the services it started.

Exit code 0 only if every event was handled exactly once and every bad record
was parked in the dead-letter topic.
"""

from __future__ import annotations

import argparse
import asyncio
import random
import sys
import time
import uuid
from decimal import Decimal

from rich.console import Console
from rich.table import Table

from streams import load_settings
from streams.dev.services import ensure_services
from streams.dev.worker import WorkerProcess
from streams.kafka_admin import committed_offsets, end_offsets, produce_raw, produce_envelopes

console = Console()


def _bad_records(run: str) -> list[tuple[bytes, bytes]]:
    """One record of each kind of bad input a producer can send by mistake."""
    return [
        (f"{run}-bad-1".encode(), b"\xff\xfe not json at all"),
        (f"{run}-bad-2".encode(),
         b'{"message_type":"OrderShipped","kind":"event","payload":{"order_id":"x"}}'),
        (f"{run}-bad-3".encode(),
         b'{"message_type":"OrderPlaced","kind":"event","payload":{"order_id":"","total_amount":-5}}'),
    ]


def run(events: int, keep_services: bool, timeout: float) -> int:
    settings = load_settings()
    t0 = time.monotonic()
    console.rule("[bold]streams demo: push the seller when an order is placed")
    services = ensure_services(settings)
    for name, took in services.timings.items():
        console.print(f"  {name}: {'started in %.1fs' % took if took else 'already running'}")
    console.print(f"  kafka bootstrap: {settings.bootstrap_servers}")

    from agents.app import order_placed_topic
    from agents.main import app
    from agents.messages import OrderPlaced, registry

    topic = order_placed_topic.name
    dlq = order_placed_topic.dead_letter_name
    asyncio.run(app.ensure_topics())

    log_file = settings.home_path / "demo" / "worker.log"
    worker = WorkerProcess({}, log_file)
    try:
        worker.start()
        ready = worker.wait_ready(timeout)
        console.print(f"  worker pid {worker.pid} ready in {ready:.1f}s (log: {log_file})")

        run_id = uuid.uuid4().hex[:8]
        rng = random.Random(run_id)
        envelopes = [
            registry.envelope(
                OrderPlaced(order_id=f"{run_id}-{i}", seller_id=f"seller-{rng.randint(1, 20)}",
                            buyer_id=f"buyer-{rng.randint(1, 500)}",
                            total_amount=Decimal(rng.randint(1000, 90000)), item_count=rng.randint(1, 5)),
                key=f"{run_id}-{i}", source="demo",
            )
            for i in range(events)
        ]
        dlq_before = sum(asyncio.run(end_offsets(settings, dlq)).values())
        produced_at = time.monotonic()
        asyncio.run(produce_envelopes(settings, topic, envelopes))
        bad = _bad_records(run_id)
        asyncio.run(produce_raw(settings, topic, bad))
        console.print(f"  published {events} OrderPlaced events and {len(bad)} malformed records to {topic}")

        handled = _wait_for_rows(settings, run_id, events, timeout)
        took = time.monotonic() - produced_at
        ends, committed = _wait_for_commits(settings, topic, app.app_id, timeout)
        dlq_after = sum(asyncio.run(end_offsets(settings, dlq)).values())
        rows = _rows_by_partition(settings, run_id)
    finally:
        worker.stop()
        if not keep_services:
            services.stop_started()

    table = Table(title=f"{topic} (consumer group {app.app_id})")
    for col in ("partition", "pushes this run", "committed offset", "log-end offset", "lag"):
        table.add_column(col, justify="right")
    for p in sorted(ends):
        c = committed.get((topic, p), 0)
        table.add_row(str(p), str(rows.get(p, 0)), str(c), str(ends[p]), str(ends[p] - c))
    console.print(table)
    distinct, total = handled
    parked = dlq_after - dlq_before
    ok = distinct == events and total == events and parked == len(bad) and all(
        committed.get((topic, p), 0) == ends[p] for p in ends
    )
    console.print(
        f"  events: {events}  handled: {total} ({distinct} distinct message ids)  "
        f"dead-lettered: {parked} of {len(bad)} bad records  processing time: {took:.1f}s  "
        f"total: {time.monotonic() - t0:.1f}s"
    )
    console.print("[bold green]OK[/]: every event pushed exactly once, offsets committed to the log end, "
                  "bad records parked in " + dlq if ok else "[bold red]MISMATCH[/]: see above and " + str(log_file))
    return 0 if ok else 1


def _wait_for_rows(settings, run_id: str, expected: int, timeout: float) -> tuple[int, int]:
    import psycopg

    deadline = time.monotonic() + timeout
    with console.status("waiting for the seller pushes...") as status:
        while True:
            try:
                with psycopg.connect(settings.dsn) as conn:
                    distinct, total = conn.execute(
                        "SELECT count(DISTINCT message_id), count(*) FROM seller_push_notifications "
                        "WHERE order_id LIKE %s", (f"{run_id}-%",)).fetchone()
            except psycopg.errors.UndefinedTable:
                distinct = total = 0
            status.update(f"seller pushes: {total}/{expected}")
            if distinct >= expected or time.monotonic() > deadline:
                time.sleep(0.5)  # let stragglers (duplicates, if any) show
                return distinct, total
            time.sleep(0.3)


def _wait_for_commits(settings, topic: str, group: str, timeout: float):
    deadline = time.monotonic() + timeout
    while True:
        ends = asyncio.run(end_offsets(settings, topic))
        committed = asyncio.run(committed_offsets(settings, group, topic))
        if all(committed.get((topic, p), 0) == e for p, e in ends.items()) or time.monotonic() > deadline:
            return ends, committed
        time.sleep(0.5)


def _rows_by_partition(settings, run_id: str) -> dict[int, int]:
    import psycopg

    with psycopg.connect(settings.dsn) as conn:
        return dict(conn.execute(
            "SELECT partition, count(*) FROM seller_push_notifications WHERE order_id LIKE %s GROUP BY partition",
            (f"{run_id}-%",)).fetchall())


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--events", type=int, default=500, help="OrderPlaced events to publish (default 500)")
    parser.add_argument("--keep-services", action="store_true", help="leave Kafka and PostgreSQL running")
    parser.add_argument("--timeout", type=float, default=120.0, help="seconds to wait for each step")
    args = parser.parse_args(argv)
    sys.exit(run(args.events, args.keep_services, args.timeout))


if __name__ == "__main__":
    main()

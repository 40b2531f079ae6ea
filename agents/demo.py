"""The reference app end to end (``make demo``).

1. starts (or finds) Kafka and PostgreSQL;
2. creates the app's topics and the outbox table, starts ``streams worker`` and
   ``streams relay`` as separate processes;
3. the order service places orders: each order row and its ``OrderPlaced`` event
   are written in one transaction (transactional outbox); about one order in 20
   is declined and rolled back, so its event must never appear; the relay
   publishes the committed ones. A few malformed records (not JSON, unknown type,
   invalid payload) are also sent straight to the topic;
4. waits until every committed order was pushed to its seller (a row in
   PostgreSQL) and the group's committed offsets reach the log end, reading both
   from the servers, not from the worker;
5. prints a summary and stops the worker, the relay and the services it started.

Exit code 0 only if every committed order was handled exactly once, no declined
order was announced, and every bad record was parked in the dead-letter topic.
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
from streams.kafka.admin import committed_offsets, end_offsets, produce_raw
from streams.outbox.schema import migrate as migrate_outbox
from streams.outbox.stats import outbox_stats

console = Console()


def _bad_records(run: str) -> list[tuple[bytes, bytes]]:
    """One record of each kind of bad input a producer can send by mistake."""
    return [
        (f"{run}-bad-1".encode(), b"\xff\xfe not json at all"),
        (f"{run}-bad-2".encode(),
         f'{{"message_id":"{run}-u","message_type":"OrderShipped","kind":"event","payload":{{"order_id":"x"}}}}'.encode()),
        (f"{run}-bad-3".encode(),
         f'{{"message_id":"{run}-i","message_type":"OrderPlaced","kind":"event","payload":{{"order_id":"","total_amount":-5}}}}'.encode()),
    ]


def run(events: int, keep_services: bool, timeout: float) -> int:
    settings = load_settings()
    t0 = time.monotonic()
    console.rule("[bold]streams demo: push the seller when an order is placed")
    services = ensure_services(settings)
    for name, took in services.timings.items():
        console.print(f"  {name}: {f'started in {took:.1f}s' if took else 'already running'}")
    console.print(f"  kafka bootstrap: {settings.bootstrap_servers}")

    from agents.app import order_placed_topic
    from agents.main import app
    from agents.messages import OrderPlaced

    topic = order_placed_topic.name
    dlq = order_placed_topic.dead_letter_name
    asyncio.run(app.ensure_topics())

    import psycopg

    from agents import order_service

    with psycopg.connect(settings.dsn, autocommit=True) as conn:
        migrate_outbox(conn, settings.outbox_table)
        order_service.migrate(conn)

    log_file = settings.home_path / "demo" / "worker.log"
    relay_log = settings.home_path / "demo" / "relay.log"
    worker = WorkerProcess({}, log_file)
    relay = WorkerProcess({}, relay_log, command=[sys.executable, "-m", "streams.cli", "relay", "--name", "demo"],
                          ready_marker="relay demo started")
    try:
        worker.start()
        relay.start()
        ready = worker.wait_ready(timeout)
        console.print(f"  worker pid {worker.pid} ready in {ready:.1f}s (log: {log_file})")
        relay.wait_ready(timeout)
        console.print(f"  relay pid {relay.pid} running (log: {relay_log})")

        run_id = uuid.uuid4().hex[:8]
        rng = random.Random(run_id)
        dlq_before = sum(asyncio.run(end_offsets(settings, dlq)).values())
        produced_at = time.monotonic()
        placed, declined = 0, []
        with psycopg.connect(settings.dsn) as conn:
            for i in range(events):
                order = OrderPlaced(order_id=f"{run_id}-{i}", seller_id=f"seller-{rng.randint(1, 20)}",
                                    buyer_id=f"buyer-{rng.randint(1, 500)}",
                                    total_amount=Decimal(rng.randint(1000, 90000)), item_count=rng.randint(1, 5))
                try:
                    order_service.place_order(conn, order, outbox_table=settings.outbox_table,
                                              payment_ok=rng.random() >= 0.05)
                    placed += 1
                except order_service.OrderRejected:
                    declined.append(order.order_id)
        bad = _bad_records(run_id)
        asyncio.run(produce_raw(settings, topic, bad))
        console.print(f"  placed {placed} orders through the outbox ({len(declined)} declined and rolled back), "
                      f"sent {len(bad)} malformed records to {topic}")

        handled = _wait_for_rows(settings, run_id, placed, timeout)
        took = time.monotonic() - produced_at
        ends, committed = _wait_for_commits(settings, topic, app.app_id, timeout)
        dlq_after = sum(asyncio.run(end_offsets(settings, dlq)).values())
        rows = _rows_by_partition(settings, run_id)
        announced_declined = _announced(settings, declined)
        stats = asyncio.run(outbox_stats(settings))
    finally:
        relay.stop()
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
    ok = distinct == placed and total == placed and parked == len(bad) and not announced_declined and all(
        committed.get((topic, p), 0) == ends[p] for p in ends
    )
    console.print(
        f"  outbox: {stats.done} published, {stats.pending} pending, {stats.failed} parked; "
        f"declined orders that reached the seller: {announced_declined}"
    )
    console.print(
        f"  orders placed: {placed}  handled: {total} ({distinct} distinct message ids)  "
        f"dead-lettered: {parked} of {len(bad)} bad records  processing time: {took:.1f}s  "
        f"total: {time.monotonic() - t0:.1f}s"
    )
    console.print("[bold green]OK[/]: every committed order pushed exactly once, no declined order announced, "
                  "offsets committed to the log end, bad records parked in " + dlq if ok
                  else "[bold red]MISMATCH[/]: see above and " + str(log_file))
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


def _announced(settings, order_ids: list[str]) -> int:
    """How many of ``order_ids`` reached the seller-push agent (must be 0 for declined orders)."""
    import psycopg

    if not order_ids:
        return 0
    with psycopg.connect(settings.dsn) as conn:
        return conn.execute("SELECT count(*) FROM seller_push_notifications WHERE order_id = ANY(%s)",
                            (order_ids,)).fetchone()[0]


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
    parser.add_argument("--events", type=int, default=500, help="orders to place (default 500)")
    parser.add_argument("--keep-services", action="store_true", help="leave Kafka and PostgreSQL running")
    parser.add_argument("--timeout", type=float, default=120.0, help="seconds to wait for each step")
    args = parser.parse_args(argv)
    sys.exit(run(args.events, args.keep_services, args.timeout))


if __name__ == "__main__":
    main()

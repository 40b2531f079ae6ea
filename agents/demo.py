"""The reference app end to end (``make demo``): one business change, five follow-ups.

1. starts (or finds) Kafka and PostgreSQL, creates every service's topics and
   tables, starts the SMS provider simulator (rate limit, an outage, lost
   replies), four workers (one consumer group per integration) and the outbox relay;
2. the order service places orders: the order row, its ``OrderPlaced`` event and
   its ``GrantPoints`` command in one transaction (about one order in 20 is
   declined and rolled back, so nothing of it may appear anywhere); after each
   commit the receipt e-mail runs as a background task. Three malformed records
   go straight to the orders topic, and 25 ``GrantPoints`` commands are published
   a second time (a relay re-sending after a crash);
3. waits until every integration made its effect, read from the servers:
   seller pushes, points ledger, search documents (PostgreSQL), SMS (the
   provider), receipts; then the receipts that failed are re-run from the
   failure log, and the search index — built by a buggy indexer — is rebuilt by
   a forced reprocess (``streams offsets reset --execute --reprocess``) with the
   fixed one;
4. prints one table: per integration, messages in, effects made, duplicates
   suppressed, retried, parked, and the check it passed.

With ``--tracing`` every process also sends its spans to a local Jaeger (``streams dev
jaeger up``, built once from its Go module; see :mod:`streams.tracing`), and the summary
prints one order's trace: its id and the spans it produced across the five integrations.

Exit code 0 only if every check passed.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import subprocess
import sys
import time
import urllib.request
import uuid
from collections import Counter
from contextlib import closing
from dataclasses import dataclass, field
from datetime import UTC, datetime
from decimal import Decimal
from pathlib import Path

from rich.console import Console
from rich.table import Table

from streams import db, load_settings
from streams.dev.process import free_port
from streams.dev.services import ensure_services
from streams.dev.worker import WorkerProcess
from streams.kafka.admin import committed_offsets, end_offsets, produce_envelopes, produce_raw
from streams.outbox.stats import outbox_stats
from streams.settings import Settings, redact_url

#: wide enough for the summary table when the output is a file or a pipe (CI logs, the README)
console = Console(width=None if sys.stdout.isatty() else 150)
ROOT = Path(__file__).resolve().parents[1]
#: buyers whose mailbox refuses receipts during the run (they end in the failure log)
FAILING_BUYERS = {"buyer-13", "buyer-42", "buyer-77"}
REDELIVERED_COMMANDS = 25


def _bad_records(run: str) -> list[tuple[bytes, bytes]]:
    """One record of each kind of bad input a producer can send by mistake."""
    return [
        (f"{run}-bad-1".encode(), b"\xff\xfe not json at all"),
        (f"{run}-bad-2".encode(),
         f'{{"message_id":"{run}-u","message_type":"OrderShipped","kind":"event","payload":{{"order_id":"x"}}}}'.encode()),
        (f"{run}-bad-3".encode(),
         f'{{"message_id":"{run}-i","message_type":"OrderPlaced","kind":"event","payload":{{"order_id":"","total_amount":-5}}}}'.encode()),
    ]


@dataclass
class Service:
    """One worker process of the demo and what it reported before it stopped."""

    name: str
    app_path: str
    handler: str
    group: str
    topic: str
    env: dict[str, str] = field(default_factory=dict)
    process: WorkerProcess | None = None
    port: int = 0
    counters: Counter = field(default_factory=Counter)

    def start(self, settings: Settings, label: str | None = None) -> WorkerProcess:
        self.port = free_port()
        log = settings.home_path / "demo" / f"{label or self.name}.log"
        self.process = WorkerProcess(self.env, log, cwd=ROOT, args=["--app", self.app_path, "--web-port",
                                                                    str(self.port)])
        return self.process.start()

    def scrape(self, settings: Settings) -> None:
        """Add the worker's handler counters (``/api/metrics``) to :attr:`counters`."""
        request = urllib.request.Request(f"http://127.0.0.1:{self.port}/api/metrics")
        if settings.web_token:
            request.add_header("Authorization", f"Bearer {settings.web_token.get_secret_value()}")
        with urllib.request.urlopen(request, timeout=10) as resp:
            self.counters.update(json.loads(resp.read())["totals"])

    def stop(self, settings: Settings) -> None:
        if self.process is not None and self.process.running():
            try:
                self.scrape(settings)
            except OSError as exc:
                console.print(f"  [yellow]could not read {self.name}'s counters: {exc}")
            self.process.stop()

    def messages_in(self) -> int:
        return sum(self.counters[k] for k in ("handled", "duplicate", "dead_lettered", "ignored"))


def run(events: int, keep_services: bool, timeout: float, traced: bool = False, mariadb: bool = False) -> int:
    t0 = time.monotonic()
    local_mariadb = _start_mariadb() if mariadb else None
    try:
        return _run(events, keep_services, timeout, traced, t0)
    finally:
        if local_mariadb is not None and not keep_services:
            local_mariadb.down()


def _run(events: int, keep_services: bool, timeout: float, traced: bool, t0: float) -> int:
    settings = load_settings()
    _log_to_file(settings.home_path / "demo" / "demo.log")
    console.rule("[bold]streams demo: one order, five integrations")
    services = ensure_services(settings)
    for name, took in services.timings.items():
        console.print(f"  {name}: {f'started in {took:.1f}s' if took else 'already running'}")
    console.print(f"  kafka bootstrap: {settings.bootstrap_servers}")
    console.print(f"  database: {_database_name(settings)} at {redact_url(settings.dsn)}", highlight=False)
    jaeger = _start_tracing(settings) if traced else None

    from agents import order_service, points, receipts, search_index, sms
    from agents.main import app
    from agents.messages import OrderPlaced
    from agents.seller_push import schema as push_schema
    from agents.sms_provider import SmsProvider

    apps = {"orders": app, "points": points.app, "search": search_index.app, "sms": sms.app}
    for a in apps.values():
        asyncio.run(a.ensure_topics())
    with closing(db.connect(settings, autocommit=True)) as conn:
        _migrate_outbox(settings, conn)
        order_service.migrate(conn)
        receipts.migrate(conn)
        for schema in (push_schema, points.schema, search_index.schema):
            schema.migrate(conn)
        search_before = db.query(conn, "SELECT count(*) FROM order_search")[0][0]

    orders_topic = settings.topic_prefix + "orders.order-placed"
    points_topic = points.grant_points_topic.name
    outage_at = max(10, events // 4)  # early enough that every run, however small, goes through it
    provider = SmsProvider(port=free_port(), rate=100, burst=10, outage_at=outage_at, outage_seconds=3.0,
                           lost_reply_every=40, throttle_at=outage_at // 2, throttle_count=5).start()
    console.print(f"  SMS provider simulator on {provider.url}: 100 SMS/s (429 above, and for requests "
                  f"{outage_at // 2}-{outage_at // 2 + 4}), a 3 s outage (503) from request {outage_at}, "
                  "every 40th reply lost (504)")
    svc = {
        "orders": Service("seller push", "agents.main:app", "push_seller", app.app_id, orders_topic),
        "points": Service("points", "agents.points:app", "grant_points", points.app.app_id, points_topic),
        "search": Service("search index", "agents.search_index:app", "index_order", search_index.app.app_id,
                          orders_topic, env={"AGENTS_SEARCH_INDEXER_VERSION": "1"}),
        "sms": Service("sms", "agents.sms:app", "send_sms", sms.app.app_id, orders_topic,
                       env={"AGENTS_SMS_PROVIDER_URL": provider.url}),
    }
    relay = WorkerProcess({}, settings.home_path / "demo" / "relay.log", cwd=ROOT,
                          command=[sys.executable, "-m", "streams.cli", "relay", "--name", "demo"],
                          ready_marker="relay demo started")
    receipts.mail_api.failing_buyers = set(FAILING_BUYERS)
    receipts.mail_api.flaky_every = 25
    run_id = uuid.uuid4().hex[:8]
    started_at = datetime.now(UTC)
    outcome: dict = {}
    try:
        for s in svc.values():
            s.start(settings, f"{s.name.replace(' ', '-')}-worker")
        relay.start()
        for s in svc.values():
            s.process.wait_ready(timeout)
        relay.wait_ready(timeout)
        console.print(f"  workers ready after {time.monotonic() - t0:.1f}s: "
                      + ", ".join(f"{s.name} (group {s.group})" for s in svc.values()) + "; outbox relay running")

        rng = random.Random(run_id)
        placed, declined, grants = 0, [], []
        # the first orders are paid by the buyers whose mailboxes are down, so some receipts always fail
        # (with random buyers a 40-order run missed all three about one time in three)
        first = sorted(FAILING_BUYERS)
        with closing(db.connect(settings)) as conn:
            for i in range(events):
                buyer = first[i] if i < len(first) else f"buyer-{rng.randint(1, 100)}"
                order = OrderPlaced(order_id=f"{run_id}-{i}", seller_id=f"seller-{rng.randint(1, 20)}",
                                    buyer_id=buyer,
                                    total_amount=Decimal(rng.randint(1000, 90000)), item_count=rng.randint(1, 5))
                paid = i < len(first) or rng.random() >= 0.05
                try:
                    _, grant = order_service.place_order(conn, order, outbox_table=settings.outbox_table,
                                                         payment_ok=paid, tasks=receipts.tasks)
                    placed += 1
                    grants.append(grant)
                except order_service.OrderRejected:
                    declined.append(order.order_id)
        bad = _bad_records(run_id)
        asyncio.run(produce_raw(settings, orders_topic, bad))
        console.print(f"  placed {placed} orders ({len(declined)} declined and rolled back); sent {len(bad)} "
                      f"malformed records to {orders_topic}")
        _wait(lambda: _outbox_pending(settings) == 0, timeout, "the relay to publish the outbox")
        again = rng.sample(grants, min(REDELIVERED_COMMANDS, len(grants)))
        asyncio.run(produce_envelopes(settings, points_topic, again))
        console.print(f"  published {len(again)} GrantPoints commands a second time (a relay re-sending after a crash)")

        like = f"{run_id}-%"
        _wait(lambda: _count(settings, "seller_push_notifications", like) >= placed, timeout, "seller pushes")
        _wait(lambda: _count(settings, "points_ledger", like) >= placed, timeout, "points credits")
        _wait(lambda: _count(settings, "order_search", like) >= placed, timeout, "search documents")
        _wait(lambda: sum(t.startswith(f"Order {run_id}-") for _, t in list(provider.messages.values())) >= placed,
              timeout, "SMS")
        receipts.tasks.close(wait=True)
        for s in svc.values():
            _wait(lambda s=s: _committed_to_end(settings, s.group, s.topic), timeout, f"{s.name} commits")
        console.print(f"  every integration caught up after {time.monotonic() - t0:.1f}s")

        failed_receipts = _failure_rows(settings, run_id)
        rerun = subprocess.run([sys.executable, "-m", "streams.cli", "tasks", "retry", "--all",
                                "--task", "send-receipt", "--tasks", "agents.receipts:tasks"],
                               cwd=ROOT, capture_output=True, text=True, timeout=timeout,
                               env={**os.environ, "AGENTS_MAIL_FAILING_BUYERS": ""})
        console.print(f"  receipts: {failed_receipts} in the failure log (mailboxes of {', '.join(sorted(FAILING_BUYERS))} "
                      f"unavailable); mailboxes back: `streams tasks retry --all --tasks agents.receipts:tasks` → "
                      f"{(rerun.stdout.strip().splitlines() or [rerun.stderr.strip()])[-1]}")

        # the search index was built by the buggy indexer (no seller): fix it and rebuild by reprocessing
        buggy_hits = _seller_hits(settings, like)
        search = svc["search"]
        search.stop(settings)
        reset = subprocess.run([sys.executable, "-m", "streams.cli", "offsets", "reset", "--group", search.group,
                                "--topic", orders_topic, "--to-datetime", started_at.isoformat(), "--execute",
                                "--reprocess"], cwd=ROOT, capture_output=True, text=True, timeout=timeout)
        if reset.returncode != 0:
            raise RuntimeError(f"offsets reset failed: {reset.stdout}{reset.stderr}")
        console.print(f"  search index: {buggy_hits} of {placed} orders found by seller with indexer v1; "
                      f"`streams offsets reset --group {search.group} --to-datetime <run start> --execute "
                      f"--reprocess` → {reset.stdout.strip().splitlines()[-1]}")
        search.env = {"AGENTS_SEARCH_INDEXER_VERSION": "2"}
        search.start(settings, "search-index-worker-v2")
        search.process.wait_ready(timeout)
        _wait(lambda: _count(settings, "order_search", like, "indexer_version = 2") >= placed, timeout,
              "the rebuilt search documents")
        _wait(lambda: _committed_to_end(settings, search.group, search.topic), timeout, "search commits")

        outcome = _outcome(settings, run_id, placed, declined, provider, failed_receipts, search_before)
        outcome["dead_letters"] = _dead_letters(settings, orders_topic + ".dlq", started_at)
        outcome["outbox"] = asyncio.run(outbox_stats(settings))
    finally:
        for s in svc.values():
            s.stop(settings)  # a worker exports the spans it still holds as it stops
        relay.stop()
        provider.stop()
        receipts.tasks.close(wait=False)
        if not keep_services:
            services.stop_started()

    if not outcome:
        return 1
    summary = settings.home_path / "demo" / "summary.json"
    ok = _report(outcome, svc, receipts.tasks.stats, provider.snapshot(), placed, len(bad), len(again), summary)
    if jaeger is not None:
        ok = _report_trace(jaeger, svc, _first_clean_order(settings, run_id), summary, timeout) and ok
        if not keep_services:
            jaeger.down()
    console.print(f"  total: {time.monotonic() - t0:.1f}s; logs and summary.json in {settings.home_path / 'demo'}")
    return 0 if ok else 1


# --- tracing (--tracing) ------------------------------------------------------------
def _start_tracing(settings: Settings):
    """Start the local Jaeger (built once) and send every process's spans there: this one's
    (the order service, ``order-service``) and, through the environment, the workers', the
    relay's and the commands' (each under its own name: a worker's is its app id)."""
    from streams import tracing
    from streams.dev.jaeger import LocalJaeger

    jaeger = LocalJaeger.from_settings(settings)
    took = jaeger.up()
    console.print(f"  jaeger: {f'started in {took:.1f}s' if took else 'already running'}; OTLP {jaeger.otlp_endpoint}, "
                  f"API {jaeger.ui_url}")
    os.environ.update(jaeger.otel_env())
    tracing.configure(service_name="order-service")
    return jaeger


def _first_clean_order(settings: Settings, run_id: str) -> str | None:
    """An order of this run whose receipt went out at the first try (not via the failure log)."""
    failed_order = _order_id_of_failure(settings).replace("args", "f.args")
    rows = _sql(settings, "SELECT o.order_id FROM orders o WHERE o.order_id LIKE %s AND NOT EXISTS ("
                          f"SELECT 1 FROM streams_task_failures f WHERE {failed_order} = o.order_id) "
                          "ORDER BY o.placed_at LIMIT 1", (f"{run_id}-%",))
    return rows[0][0] if rows else None


#: (integration, the span that shows it did its part): worker spans by service (the app id) and operation
def _expected_spans(svc: dict[str, Service]) -> list[tuple[str, str, str]]:
    return [("seller push", svc["orders"].group, "process"), ("points", svc["points"].group, "process"),
            ("search index", svc["search"].group, "process"), ("sms", svc["sms"].group, "process"),
            ("receipt e-mail", "order-service", "task send-receipt")]


def _report_trace(jaeger, svc: dict[str, Service], order_id: str | None, summary: Path, timeout: float) -> bool:
    """Print one order's trace from Jaeger (and add it to the summary): True if all five integrations are in it."""
    from streams import tracing
    from streams.dev.jaeger import span_rows

    tracing.shutdown()  # this process's spans (place_order, the outbox rows, the receipts) go out now
    if order_id is None:
        console.print("[red]FAILED[/] trace: no order to show")
        return False
    expected = _expected_spans(svc)
    deadline = time.monotonic() + min(timeout, 30)
    rows, trace_id, missing = [], None, [name for name, _, _ in expected]
    while time.monotonic() < deadline:
        found = jaeger.api.find_traces("order-service", {"order.id": order_id}, limit=1)
        if found:
            trace_id = found[0]["traceID"]
            rows = span_rows(jaeger.api.trace(trace_id) or {})
            missing = [name for name, service, op in expected
                       if not any(r.service == service and r.name.startswith(op) for r in rows)]
            if not missing:
                break
        time.sleep(0.5)
    console.print(f"  trace of order {order_id}: {trace_id or 'not found'} — {len(rows)} spans in "
                  f"{len({r.service for r in rows})} services (`streams trace show {trace_id}`)", highlight=False)
    for r in rows:
        detail = r.tags.get("messaging.message.id") or r.tags.get("order.id") or ""
        outcome = r.tags.get("streams.outcome")
        console.print(f"    {'  ' * r.depth}{r.service}: {r.name}  +{r.start_ms:.0f} ms ({r.duration_ms:.1f} ms)"
                      + (f" {detail}" if detail else "") + (f" → {outcome}" if outcome else ""), highlight=False)
    data = json.loads(summary.read_text())
    data["trace"] = {"order_id": order_id, "trace_id": trace_id, "missing": missing,
                     "spans": [{"depth": r.depth, "service": r.service, "name": r.name, "start_ms": round(r.start_ms, 1),
                                "duration_ms": round(r.duration_ms, 1), "message_id": r.tags.get("messaging.message.id"),
                                "outcome": r.tags.get("streams.outcome")} for r in rows]}
    summary.write_text(json.dumps(data, indent=2))
    if missing:
        console.print(f"  [red]FAILED[/] trace: no span of {', '.join(missing)} in the order's trace")
        return False
    console.print("  [green]OK[/] trace: the order's five integrations are in one trace")
    return True


def _log_to_file(path: Path) -> None:
    """The demo process's own log lines (background tasks' retries and failures) go to a file."""
    import logging

    path.parent.mkdir(parents=True, exist_ok=True)
    handler = logging.FileHandler(path)
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    logging.basicConfig(level=logging.INFO, handlers=[handler], force=True)


# --- reading the servers ----------------------------------------------------------
def _wait(check, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    with console.status(f"waiting for {what}..."):
        while not check():
            if time.monotonic() > deadline:
                raise TimeoutError(f"timed out after {timeout:.0f}s waiting for {what}")
            time.sleep(0.3)


def _sql(settings: Settings, query: str, params=None) -> list[tuple]:
    with closing(db.connect(settings, autocommit=True)) as conn:
        return db.query(conn, query, params)


def _mysql(settings: Settings) -> bool:
    return settings.database_dialect == "mysql"


def _order_id_of_failure(settings: Settings) -> str:
    """The ``order_id`` argument of a failure-log row, in the database's JSON syntax."""
    return "JSON_UNQUOTE(JSON_EXTRACT(args, '$.order_id'))" if _mysql(settings) else "args->>'order_id'"


def _database_name(settings: Settings) -> str:
    return "MySQL / MariaDB" if _mysql(settings) else "PostgreSQL"


def _migrate_outbox(settings: Settings, conn) -> None:
    if _mysql(settings):
        from streams.outbox.mysql_schema import migrate
    else:
        from streams.outbox.schema import migrate
    migrate(conn, settings.outbox_table)


def _start_mariadb():
    """``--database mariadb``: the project's own MariaDB (``streams dev mariadb up``) becomes this
    run's database: ``STREAMS_DATABASE_URL`` is set for this process and every one it starts."""
    from streams.dev.mariadb import LocalMariaDB

    server = LocalMariaDB.from_settings(load_settings())
    took = server.up()
    console.print(f"  mariadb: {f'started in {took:.1f}s' if took else 'already running'}")
    os.environ["STREAMS_DATABASE_URL"] = server.url
    return server if took else None


def _count(settings: Settings, table: str, like: str, extra: str = "TRUE") -> int:
    return _sql(settings, f"SELECT count(*) FROM {table} WHERE order_id LIKE %s AND {extra}", (like,))[0][0]


def _outbox_pending(settings: Settings) -> int:
    return asyncio.run(outbox_stats(settings)).pending


def _committed_to_end(settings: Settings, group: str, topic: str) -> bool:
    ends = asyncio.run(end_offsets(settings, topic))
    committed = asyncio.run(committed_offsets(settings, group, topic))
    return all(committed.get((topic, p), 0) == e for p, e in ends.items())


def _seller_hits(settings: Settings, like: str) -> int:
    """Orders a search by their seller finds (the index is searchable by seller only when fixed)."""
    from agents.search_index import FOUND_BY_SELLER

    return _sql(settings, FOUND_BY_SELLER[settings.database_dialect], (like,))[0][0]


def _failure_rows(settings: Settings, run_id: str) -> int:
    return _sql(settings, "SELECT count(*) FROM streams_task_failures WHERE task = 'send-receipt' "
                          f"AND {_order_id_of_failure(settings)} LIKE %s", (f"{run_id}-%",))[0][0]


def _dead_letters(settings: Settings, dlq: str, since: datetime) -> Counter:
    """(handler, reason) -> dead letters parked since the run started."""
    from streams.kafka.failure_log import Filter, read_dead_letters

    letters = asyncio.run(read_dead_letters(settings, dlq, Filter(set(), set(), set(), since, None)))
    return Counter((dl.header("dlq.agent"), dl.header("dlq.reason")) for dl in letters)


def _outcome(settings: Settings, run_id: str, placed: int, declined: list[str], provider, failed_receipts: int,
             search_before: int) -> dict:
    like = f"{run_id}-%"
    # SUM and COUNT of either server as ints (MySQL's SUM is a DECIMAL)
    q = lambda query: tuple(int(v) for v in _sql(settings, query, (like,))[0])  # noqa: E731
    declined_in = ", ".join(["%s"] * len(declined)) or "NULL"
    from agents.order_service import POINTS_PER

    return {
        "pushes": q("SELECT count(*), count(DISTINCT message_id) FROM seller_push_notifications "
                    "WHERE order_id LIKE %s"),
        "declined_announced": _sql(settings, "SELECT (SELECT count(*) FROM seller_push_notifications WHERE "
                                             f"order_id IN ({declined_in})) + (SELECT count(*) FROM points_ledger "
                                             f"WHERE order_id IN ({declined_in}))", (*declined, *declined))[0][0],
        "ledger": q("SELECT count(*), count(DISTINCT message_id), coalesce(sum(points), 0) FROM points_ledger "
                    "WHERE order_id LIKE %s"),
        "points_expected": q(f"SELECT coalesce(sum(floor(total_amount / {POINTS_PER})), 0) FROM orders "
                             "WHERE order_id LIKE %s")[0],
        "search": q("SELECT count(*), coalesce(sum(CASE WHEN indexer_version = 2 THEN 1 ELSE 0 END), 0), "
                    "coalesce(sum(CASE WHEN writes = 2 THEN 1 ELSE 0 END), 0), coalesce(sum(writes), 0) "
                    "FROM order_search WHERE order_id LIKE %s"),
        "seller_hits": _seller_hits(settings, like),
        "sms": sum(t.startswith(f"Order {run_id}-") for _, t in list(provider.messages.values())),
        "receipts": q("SELECT count(*), count(DISTINCT order_id) FROM order_receipts WHERE order_id LIKE %s"),
        "failed_receipts": failed_receipts,
        "still_failed": _sql(settings, "SELECT count(*) FROM streams_task_failures WHERE status = 'failed' "
                                       f"AND {_order_id_of_failure(settings)} LIKE %s", (like,))[0][0],
    }


# --- the summary ------------------------------------------------------------------
def _report(o: dict, svc: dict[str, Service], task_stats: Counter, provider: dict, placed: int, bad: int,
            redelivered: int, summary: Path) -> bool:
    """Print the summary table (and write it as JSON to ``summary``); True if every check passed."""
    dl = o["dead_letters"]

    def parked(handler: str) -> tuple[int, int]:
        """(bad input, handler errors) this handler parked during the run."""
        mine = {reason: n for (agent, reason), n in dl.items() if agent == handler}
        return sum(n for r, n in mine.items() if r != "handler_error"), mine.get("handler_error", 0)

    rows = []
    pushes, push_ids = o["pushes"]
    bad_in, errors = parked("push_seller")
    s = svc["orders"]
    rows.append(("seller push", "event, row + processed id in one tx", s.messages_in(), pushes,
                 s.counters["duplicate"], s.counters["retried"], f"{bad_in} bad + {errors}",
                 pushes == push_ids == placed and bad_in == bad and not errors and not o["declined_announced"],
                 f"pushes = orders placed ({placed}), {bad_in}/{bad} bad records parked, 0 declined announced"))
    credits, credit_ids, credited = o["ledger"]
    s = svc["points"]
    bad_in, errors = parked("grant_points")
    rows.append(("points", "command, one owner, transactional effects", s.messages_in(), credits,
                 s.counters["duplicate"], s.counters["retried"], f"{bad_in} bad + {errors}",
                 credits == credit_ids == placed and credited == o["points_expected"]
                 and s.counters["duplicate"] >= redelivered and not errors,
                 f"points ledger = orders placed ({placed}), {credited:,} points = expected, "
                 f"{redelivered} redelivered commands not credited"))
    docs, v2, twice, writes = o["search"]
    s = svc["search"]
    bad_in, errors = parked("index_order")
    rows.append(("search index", "event, own group, rebuilt by reprocess", s.messages_in(), writes,
                 s.counters["duplicate"], s.counters["retried"], f"{bad_in} bad + {errors}",
                 docs == v2 == twice == placed and o["seller_hits"] == placed and not errors,
                 f"index rebuilt: {v2} docs at v2, each written twice, found by seller: {o['seller_hits']}"))
    s = svc["sms"]
    bad_in, errors = parked("send_sms")
    retried = s.counters["retried"] + s.counters["sink_throttled"] + s.counters["sink_failures"]
    rows.append(("sms", "event, flaky HTTP provider, sink guards", s.messages_in(), o["sms"],
                 provider.get("repeats", 0) + s.counters["duplicate"], retried, f"{bad_in} bad + {errors}",
                 o["sms"] == placed and provider["sent_twice"] == 0 and not errors and provider.get("unavailable")
                 and provider.get("throttled"),
                 f"{o['sms']} SMS, {provider['sent_twice']} sent twice, outage: "
                 f"{provider.get('unavailable', 0)} × 503, {provider.get('throttled', 0)} × 429, 0 parked"))
    receipts, receipt_orders = o["receipts"]
    rows.append(("receipt e-mail", "background task after commit", task_stats["submitted"], receipts, 0,
                 task_stats["retried"], f"{o['failed_receipts']} in failure log",
                 receipts == receipt_orders == placed and o["failed_receipts"] > 0 and not o["still_failed"],
                 f"{o['failed_receipts']} failed → re-run from the failure log → receipts = orders ({placed})"))

    table = Table(title=f"one business change, five integrations ({placed} orders placed)")
    for col in ("integration", "messages in", "effects", "duplicates suppressed", "retried", "parked", "check"):
        table.add_column(col, justify="right" if col in ("messages in", "effects", "duplicates suppressed",
                                                         "retried") else "left")
    for name, pattern, msgs, effects, dups, retried, parked_, ok, check in rows:
        table.add_row(f"[bold]{name}[/]\n[dim]{pattern}[/]", f"{msgs:,}", f"{effects:,}", f"{dups:,}",
                      f"{retried:,}", parked_, ("[green]OK[/] " if ok else "[red]FAILED[/] ") + check)
    console.print(table)
    columns = ("integration", "pattern", "messages_in", "effects", "duplicates_suppressed", "retried", "parked",
               "ok", "check")
    summary.write_text(json.dumps({"orders_placed": placed, "integrations": [dict(zip(columns, r, strict=True))
                                                                              for r in rows]}, indent=2))
    stats = o["outbox"]
    console.print(f"  outbox: {stats.done} published, {stats.pending} pending, {stats.failed} parked; dead letters "
                  f"this run: {sum(dl.values())} ({', '.join(f'{a}/{r}: {n}' for (a, r), n in sorted(dl.items()))})")
    failed = [r[0] for r in rows if not r[7]]
    if failed:
        console.print(f"[bold red]MISMATCH[/]: {', '.join(failed)} (see the table and the logs)")
        return False
    console.print("[bold green]OK[/]: every integration made each effect once; what failed was retried or parked, "
                  "nothing lost")
    return True


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--events", type=int, default=500, help="orders to place (default 500)")
    parser.add_argument("--keep-services", action="store_true", help="leave Kafka and the database running")
    parser.add_argument("--database", choices=("postgresql", "mariadb"), default="postgresql",
                        help="mariadb: run on the project's own MariaDB (started like `streams dev mariadb up`) "
                             "instead of PostgreSQL; a mysql:// STREAMS_DATABASE_URL runs on that server either way")
    parser.add_argument("--timeout", type=float, default=120.0, help="seconds to wait for each step")
    parser.add_argument("--tracing", action="store_true",
                        help="send every process's spans to a local Jaeger (built once from its Go module) and "
                             "print one order's trace")
    args = parser.parse_args(argv)
    sys.exit(run(args.events, args.keep_services, args.timeout, args.tracing, args.database == "mariadb"))


if __name__ == "__main__":
    main()

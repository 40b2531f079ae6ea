"""One trace per order, end to end on a real broker and database: the reference app's order
service places orders (``place_order`` starts the trace), the outbox is published by the relay
or by Debezium's outbox router, and the four workers (seller push, points, search index, SMS)
and the receipt e-mail's background task all add their spans to that trace.

Every process exports its spans over OTLP/HTTP to a receiver in the test process
(:class:`tests.spans.OtlpSink`), as it would to a collector or Jaeger.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from agents.sms_provider import SmsProvider
from streams.dev.process import free_port
from tests.harness import ROOT, Isolated
from tests.helpers import wait_for
from tests.outbox_helpers import relay_process
from tests.spans import OtlpSink, Span

# the Debezium case uses the session's Connect worker, which the CDC tests share
pytestmark = pytest.mark.xdist_group("cdc")

WORKERS = {"seller-push": "agents.main:app", "points": "agents.points:app", "search-index": "agents.search_index:app",
           "sms": "agents.sms:app"}
#: worker service → (which message of the order it takes, its handler)
TAKES = {"seller-push": ("placed", "push_seller"), "search-index": ("placed", "index_order"),
         "sms": ("placed", "send_sms"), "points": ("grant", "grant_points")}
ORDERS = 6


def place_orders(iso: Isolated, sink: OtlpSink, n: int) -> list[dict]:
    done = subprocess.run([sys.executable, "-m", "tests.apps.order_client", str(n)], cwd=ROOT, capture_output=True,
                          text=True, timeout=180, env={**os.environ, **iso.env, **sink.env("order-service")})
    (iso.artifacts / "order-client.log").write_text(done.stdout + done.stderr)
    assert done.returncode == 0, done.stderr[-3000:]
    return [json.loads(line) for line in done.stdout.splitlines() if line.startswith("{")]


def effects_of(iso: Isolated, provider: SmsProvider, order_id: str) -> dict[str, int]:
    count = {table: iso.sql(f"SELECT count(*) FROM {table} WHERE order_id = %s", (order_id,))[0][0]
             for table in ("seller_push_notifications", "points_ledger", "order_search", "order_receipts")}
    count["sms"] = sum(text.startswith(f"Order {order_id} ") for _, text in list(provider.messages.values()))
    return count


@pytest.mark.timeout(400)
@pytest.mark.parametrize("path", ["relay", "debezium"])
def test_every_effect_of_an_order_is_in_the_trace_place_order_started(isolated: Isolated, request, path: str) -> None:
    iso = isolated
    sink = OtlpSink().start()
    provider = SmsProvider(port=free_port(), rate=10_000, burst=1000).start()
    connector = None
    try:
        workers = [iso.worker(name, STREAMS_WORKER_APP=app, AGENTS_SMS_PROVIDER_URL=provider.url,
                              **sink.env(name)).start() for name, app in WORKERS.items()]
        for w in workers:
            w.wait_ready()
        if path == "relay":
            relay_process(iso, "relay", **sink.env("streams-relay")).start().wait_ready()
        else:
            connect = request.getfixturevalue("connect_worker")
            connector = f"outbox-{iso.settings.app_id.removeprefix('test-')}"
            created = subprocess.run([sys.executable, "-m", "streams.cli", "cdc", "create", connector, "--outbox"],
                                     cwd=ROOT, capture_output=True, text=True, timeout=180,
                                     env={**os.environ, **iso.env, "STREAMS_CONNECT_URL": connect.url})
            assert created.returncode == 0, created.stdout + created.stderr
        orders = place_orders(iso, sink, ORDERS)
        assert len(orders) == ORDERS
        for order in orders:
            wait_for(lambda o=order: all(effects_of(iso, provider, o["order_id"]).values()), 120,
                     what=f"every effect of order {order['order_id']}")

        def spans_of(order: dict) -> tuple[Span, list[Span]] | None:
            spans = sink.snapshot()
            roots = [s for s in spans if s.name == "place_order" and s.attr("order.id") == order["order_id"]]
            if not roots:
                return None
            trace = [s for s in spans if s.trace_id == roots[0].trace_id]
            processed = {s.service for s in trace if s.kind == "CONSUMER"}
            tasks = [s for s in trace if s.name == "task send-receipt"]
            return (roots[0], trace) if processed >= set(TAKES) and tasks else None

        for order in orders:
            root, trace = wait_for(lambda o=order: spans_of(o), 60, what=f"the spans of order {order['order_id']}")
            assert root.parent_id is None and root.service == "order-service"
            by_id = {s.span_id: s for s in trace}
            creates = {s.attr("messaging.message.id"): s for s in trace if s.name.startswith("create ")}
            assert set(creates) == {order["placed"], order["grant"]}
            assert all(c.parent_id == root.span_id and c.kind == "PRODUCER" for c in creates.values())
            sends = {s.attr("messaging.message.id"): s for s in trace if s.service == "streams-relay"}
            if path == "relay":  # the relay's send span between the row's creation and the consumers
                assert set(sends) == {order["placed"], order["grant"]}
                assert all(s.parent_id == creates[m].span_id for m, s in sends.items())
            else:  # Debezium's router sends the stored context as it is
                assert not sends
            for service, (which, handler) in TAKES.items():
                [process] = [s for s in trace if s.service == service and s.kind == "CONSUMER"]
                message_id = order[which]
                assert process.attr("messaging.message.id") == message_id
                assert process.attr("streams.handler") == handler
                assert process.attr("streams.outcome") == "handled"
                parent = by_id[process.parent_id]
                assert parent is (sends[message_id] if path == "relay" else creates[message_id])
            [task] = [s for s in trace if s.name == "task send-receipt"]
            assert task.parent_id == root.span_id and task.service == "order-service"
            assert effects_of(iso, provider, order["order_id"]) == {
                "seller_push_notifications": 1, "points_ledger": 1, "order_search": 1, "order_receipts": 1, "sms": 1}
        # one trace per order: no two orders share one
        traces = {s.trace_id for s in sink.snapshot() if s.name == "place_order"}
        assert len(traces) == ORDERS
    finally:
        for w in iso.workers:
            w.kill()
        if connector is not None:
            subprocess.run([sys.executable, "-m", "streams.cli", "cdc", "delete", connector], cwd=ROOT,
                           capture_output=True, text=True, timeout=180,
                           env={**os.environ, **iso.env,
                                "STREAMS_CONNECT_URL": request.getfixturevalue("connect_worker").url})
        provider.stop()
        sink.stop()

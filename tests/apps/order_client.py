"""The reference app's order service as a process of its own: ``python -m tests.apps.order_client N``.

Creates the reference app's tables, places ``N`` orders with :func:`agents.order_service.place_order`
(each with its receipt e-mail as a background task), waits for the tasks, flushes its spans
(tracing from the ``OTEL_*`` variables, service ``order-service``) and prints one JSON line per
order: ``{"order_id", "placed", "grant"}`` (the message ids of its event and command).
"""

from __future__ import annotations

import json
import sys
import uuid
from decimal import Decimal

import psycopg

from streams import load_settings, tracing


def main(n: int) -> None:
    tracing.configure(service_name="order-service")
    from agents import order_service, points, receipts, search_index, seller_push
    from agents.messages import OrderPlaced
    from streams.outbox.schema import migrate

    settings = load_settings()
    with psycopg.connect(settings.dsn, autocommit=True) as conn:
        migrate(conn, settings.outbox_table)
        order_service.migrate(conn)
        receipts.migrate(conn)
        for schema in (seller_push.schema, points.schema, search_index.schema):
            schema.migrate(conn)
    receipts.mail_api.failing_buyers = set()
    receipts.mail_api.flaky_every = 0
    tag = uuid.uuid4().hex[:6]
    out = []
    with psycopg.connect(settings.dsn) as conn:
        for i in range(n):
            order = OrderPlaced(order_id=f"{tag}-{i}", seller_id=f"seller-{i % 3}", buyer_id=f"buyer-{i}",
                                total_amount=Decimal(1000 + i), item_count=1)
            placed, grant = order_service.place_order(conn, order, outbox_table=settings.outbox_table,
                                                      tasks=receipts.tasks)
            out.append({"order_id": order.order_id, "placed": placed.message_id, "grant": grant.message_id})
    receipts.tasks.close(wait=True)
    tracing.shutdown()
    for line in out:
        print(json.dumps(line), flush=True)


if __name__ == "__main__":
    main(int(sys.argv[1]))

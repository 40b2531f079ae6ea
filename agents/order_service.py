"""The order service of the reference app: places orders and announces them through the outbox.

``place_order`` writes the order row and its ``OrderPlaced`` event in **one**
database transaction (the transactional outbox): if the order is rejected and the
transaction rolls back, no event exists to be published; if it commits, the relay
(``streams relay``) publishes the event, with the message id fixed here.
"""

from __future__ import annotations

import psycopg

from agents.app import order_placed_topic
from agents.messages import OrderPlaced, registry
from streams.messages.envelope import Envelope
from streams.outbox import write_message

SCHEMA = """
CREATE TABLE IF NOT EXISTS orders (
    order_id     text PRIMARY KEY,
    seller_id    text NOT NULL,
    buyer_id     text NOT NULL,
    total_amount numeric(14, 2) NOT NULL,
    item_count   integer NOT NULL,
    placed_at    timestamptz NOT NULL DEFAULT now()
)
"""


class OrderRejected(Exception):
    """The order cannot be placed (e.g. payment declined); nothing is kept or announced."""


def migrate(conn: psycopg.Connection) -> None:
    """Create the orders table."""
    with conn.transaction():
        conn.execute(SCHEMA)


def place_order(conn: psycopg.Connection, order: OrderPlaced, *, outbox_table: str = "streams_outbox",
                payment_ok: bool = True) -> Envelope:
    """Insert ``order`` and its ``OrderPlaced`` event atomically; raises :class:`OrderRejected` (rolled back)."""
    envelope = registry.envelope(order, key=order.order_id, source="order-service")
    with conn.transaction():
        conn.execute(
            "INSERT INTO orders (order_id, seller_id, buyer_id, total_amount, item_count) VALUES (%s, %s, %s, %s, %s)",
            (order.order_id, order.seller_id, order.buyer_id, order.total_amount, order.item_count))
        write_message(conn, envelope, topic=order_placed_topic.name, table=outbox_table)
        if not payment_ok:
            raise OrderRejected(f"payment declined for order {order.order_id}")
    return envelope

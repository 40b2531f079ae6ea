"""The order service of the reference app: places orders and announces them through the outbox.

``place_order`` writes the order row and its ``OrderPlaced`` event in **one**
database transaction (the transactional outbox): if the order is rejected and the
transaction rolls back, no event exists to be published; if it commits, the relay
(``streams relay``) publishes the event, with the message id fixed here.

It also sends the points service a ``GrantPoints`` command, in the same
transaction (a command must not be lost: the outbox keeps it until the relay
published it), and — after the commit — hands the receipt e-mail to a
background task (:mod:`agents.receipts`), which a crash can lose.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from agents.messages import GrantPoints, OrderPlaced, registry
from agents.schema import Schema
from agents.services import GRANT_POINTS, ORDER_PLACED
from streams import load_settings, tracing
from streams.db import query, transaction
from streams.messages.envelope import Envelope
from streams.outbox import write_message

if TYPE_CHECKING:
    from streams.background import BackgroundTasks

#: points credited per this many units of the order's currency
POINTS_PER = 100

schema = Schema(postgresql="""
CREATE TABLE IF NOT EXISTS orders (
    order_id     text PRIMARY KEY,
    seller_id    text NOT NULL,
    buyer_id     text NOT NULL,
    total_amount numeric(14, 2) NOT NULL,
    item_count   integer NOT NULL,
    placed_at    timestamptz NOT NULL DEFAULT now()
)
""", mysql="""
CREATE TABLE IF NOT EXISTS orders (
    order_id     VARCHAR(191)   NOT NULL PRIMARY KEY,
    seller_id    VARCHAR(191)   NOT NULL,
    buyer_id     VARCHAR(191)   NOT NULL,
    total_amount DECIMAL(14, 2) NOT NULL,
    item_count   INT            NOT NULL,
    placed_at    DATETIME(6)    NOT NULL DEFAULT CURRENT_TIMESTAMP(6)
) ENGINE=InnoDB DEFAULT CHARSET=utf8mb4
""")


class OrderRejected(Exception):
    """The order cannot be placed (e.g. payment declined); nothing is kept or announced."""


def migrate(conn: Any) -> None:
    """Create the orders table (a connection of :func:`streams.db.connect`)."""
    schema.migrate(conn)


def points_for(order: OrderPlaced) -> int:
    return int(order.total_amount // POINTS_PER)


def place_order(conn: Any, order: OrderPlaced, *, outbox_table: str = "streams_outbox",
                payment_ok: bool = True, tasks: BackgroundTasks | None = None) -> tuple[Envelope, Envelope]:
    """Insert ``order``, its ``OrderPlaced`` event and its ``GrantPoints`` command atomically;
    raises :class:`OrderRejected` (rolled back: nothing kept, nothing announced). With
    ``tasks``, the receipt e-mail is submitted after the commit. Returns (event, command).

    ``conn`` is a connection of :func:`streams.db.connect` (psycopg, or PyMySQL for MySQL /
    MariaDB): the same statements run on either."""
    prefix = load_settings().topic_prefix
    placed = registry.envelope(order, key=order.order_id, source="order-service")
    grant = registry.envelope(GrantPoints(order_id=order.order_id, buyer_id=order.buyer_id,
                                          points=points_for(order)),
                              key=order.buyer_id, source="order-service", causation_id=placed.message_id)
    # the trace of this business change: the outbox rows, and everything they cause, are its children
    with tracing.span("place_order", attributes={"order.id": order.order_id, "order.buyer_id": order.buyer_id,
                                                 "streams.message_id": placed.message_id}):
        with transaction(conn):
            query(
                conn, "INSERT INTO orders (order_id, seller_id, buyer_id, total_amount, item_count) "
                "VALUES (%s, %s, %s, %s, %s)",
                (order.order_id, order.seller_id, order.buyer_id, order.total_amount, order.item_count))
            write_message(conn, placed, topic=prefix + ORDER_PLACED, table=outbox_table)
            write_message(conn, grant, topic=prefix + GRANT_POINTS, table=outbox_table)
            if not payment_ok:
                raise OrderRejected(f"payment declined for order {order.order_id}")
        if tasks is not None:  # after the commit: a crash from here on loses the receipt
            tasks.submit("send-receipt", order_id=order.order_id, buyer_id=order.buyer_id,
                         total=f"{order.total_amount} {order.currency}")
    return placed, grant

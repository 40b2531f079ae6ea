"""Push the seller when an order is placed (the seeds' first example).

The "push" is recorded as a row in the application's database (``seller_push_notifications``;
PostgreSQL, or MySQL / MariaDB for a ``mysql://`` ``STREAMS_DATABASE_URL``),
which is what a notification service would consume; one row per handler call,
so a repeated call would show as a second row for the same ``message_id``.

The row is written with the framework's transactional effects: the message's id
goes into ``streams_processed_messages`` in the same database transaction, so a
redelivery — after a crash, or an aborted Kafka transaction under exactly_once —
finds it and is skipped instead of pushing the seller twice. The
``SellerNotified`` output is sent inside that transaction, so it is recorded with
the id and sent again if a skipped redelivery's first send was aborted.
"""

from __future__ import annotations

import asyncio
from typing import Any

from agents.app import app, order_placed_topic, order_push_status, seller_notified_topic
from agents.config import agent_settings
from agents.messages import OrderPlaced, SellerNotified, registry
from agents.schema import Schema
from streams import Database, Delivery, Envelope, TransientError

schema = Schema(postgresql="""
CREATE TABLE IF NOT EXISTS seller_push_notifications (
    id          bigserial PRIMARY KEY,
    message_id  text        NOT NULL,
    order_id    text        NOT NULL,
    seller_id   text        NOT NULL,
    body        text        NOT NULL,
    topic       text        NOT NULL,
    partition   int         NOT NULL,
    "offset"    bigint      NOT NULL,
    pushed_at   timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX IF NOT EXISTS seller_push_notifications_message_id
    ON seller_push_notifications (message_id);
""", mysql="""
CREATE TABLE IF NOT EXISTS seller_push_notifications (
    id          BIGINT       NOT NULL AUTO_INCREMENT PRIMARY KEY,
    message_id  VARCHAR(191) NOT NULL,
    order_id    VARCHAR(191) NOT NULL,
    seller_id   VARCHAR(191) NOT NULL,
    body        TEXT         NOT NULL,
    topic       VARCHAR(255) NOT NULL,
    `partition` INT          NOT NULL,
    `offset`    BIGINT       NOT NULL,
    pushed_at   DATETIME(6)  NOT NULL DEFAULT CURRENT_TIMESTAMP(6),
    KEY seller_push_notifications_message_id (message_id)
) ENGINE=InnoDB DEFAULT CHARSET=utf8mb4
""")
#: the push's row in each dialect (MySQL 8 has no INSERT ... RETURNING: the cursor's lastrowid)
INSERT_PUSH = {
    "postgresql": 'INSERT INTO seller_push_notifications (message_id, order_id, seller_id, body, topic, partition, '
                  '"offset") VALUES (%s, %s, %s, %s, %s, %s, %s) RETURNING id',
    "mysql": "INSERT INTO seller_push_notifications (message_id, order_id, seller_id, body, topic, `partition`, "
             "`offset`) VALUES (%s, %s, %s, %s, %s, %s, %s)",
}


class SellerApiUnavailable(TransientError):
    """The seller push API failed (worth retrying)."""


class SellerNotifier:
    """Writes push notifications for sellers into the application's database."""

    def __init__(self, db: Database, latency_ms: float = 0.0, failing_sellers: set[str] | None = None) -> None:
        self.db = db
        self.latency = latency_ms / 1000
        self.failing_sellers = failing_sellers or set()

    async def ensure_schema(self) -> None:
        await schema.ensure(self.db)

    async def push(self, order: OrderPlaced, delivery: Delivery, tx: Any) -> int:
        """Record the push in ``tx`` (the delivery's effect transaction: a psycopg or an asyncmy
        connection); returns its id."""
        await self.ensure_schema()
        if self.latency:
            await asyncio.sleep(self.latency)  # the seller API's round trip
        if order.seller_id in self.failing_sellers:
            raise SellerApiUnavailable(f"seller API returned 503 for seller {order.seller_id}")
        body = (
            f"New order {order.order_id}: {order.item_count} item(s), "
            f"{order.total_amount} {order.currency}"
        )
        values = (delivery.idempotency_key, order.order_id, order.seller_id, body,
                  delivery.topic, delivery.partition, delivery.offset)
        async with tx.cursor() as cur:
            await cur.execute(INSERT_PUSH[self.db.dialect], values)
            if self.db.dialect == "mysql":
                return int(cur.lastrowid)
            return (await cur.fetchone())[0]


notifier = SellerNotifier(Database(app.settings), agent_settings.seller_api_latency_ms,
                          agent_settings.failing_sellers())


@app.handler(order_placed_topic, "OrderPlaced", effects=app.effects())
async def push_seller(message: Envelope[OrderPlaced], delivery: Delivery) -> None:
    """Tell the seller about a new order (once: the push and the processed id commit
    together), remember it in the order's table row and announce it (``SellerNotified``,
    part of the Kafka transaction under exactly_once, recorded with the processed id)."""
    async with delivery.transaction() as tx:
        notification_id = await notifier.push(message.payload, delivery, tx)
        order_push_status[message.key or message.payload.order_id] = {
            "message_id": message.message_id,
            "seller_id": message.payload.seller_id,
            "partition": delivery.partition,
            "offset": delivery.offset,
        }
        notified = registry.envelope(
            SellerNotified(order_id=message.payload.order_id, seller_id=message.payload.seller_id,
                           notification_id=notification_id),
            key=message.key, causation_id=message.message_id, correlation_id=message.correlation_id,
            source=app.app_id,
        )
        await app.send(seller_notified_topic, notified)

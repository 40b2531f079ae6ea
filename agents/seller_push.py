"""Push the seller when an order is placed (the seeds' first example).

The "push" is recorded as a row in PostgreSQL (``seller_push_notifications``),
which is what a notification service would consume; one row per handler call,
so a repeated call would show as a second row for the same ``message_id``.
"""

from __future__ import annotations

import asyncio

from streams import Database, Delivery, Envelope

from agents.app import app, order_placed_topic, order_push_status
from agents.config import agent_settings
from agents.messages import OrderPlaced

SCHEMA = """
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
"""


class SellerNotifier:
    """Writes push notifications for sellers into PostgreSQL."""

    def __init__(self, db: Database, latency_ms: float = 0.0) -> None:
        self.db = db
        self.latency = latency_ms / 1000
        self._schema_ready = False

    async def ensure_schema(self) -> None:
        if not self._schema_ready:
            await self.db.execute(SCHEMA)
            self._schema_ready = True

    async def push(self, order: OrderPlaced, delivery: Delivery) -> None:
        await self.ensure_schema()
        if self.latency:
            await asyncio.sleep(self.latency)  # the seller API's round trip
        body = (
            f"New order {order.order_id}: {order.item_count} item(s), "
            f"{order.total_amount} {order.currency}"
        )
        await self.db.execute(
            'INSERT INTO seller_push_notifications (message_id, order_id, seller_id, body, topic, partition, "offset")'
            " VALUES (%s, %s, %s, %s, %s, %s, %s)",
            (delivery.idempotency_key, order.order_id, order.seller_id, body,
             delivery.topic, delivery.partition, delivery.offset),
        )


notifier = SellerNotifier(Database(app.settings), agent_settings.seller_api_latency_ms)


@app.handler(order_placed_topic, "OrderPlaced")
async def push_seller(message: Envelope[OrderPlaced], delivery: Delivery) -> None:
    """Tell the seller about a new order, and remember it in the order's table row."""
    await notifier.push(message.payload, delivery)
    order_push_status[message.key or message.payload.order_id] = {
        "message_id": message.message_id,
        "seller_id": message.payload.seller_id,
        "partition": delivery.partition,
        "offset": delivery.offset,
    }

"""The MariaDB effects test's app: one handler whose effect is a row in MySQL, written in
``delivery.transaction()`` (an asyncmy connection from the effects pool) with the processed id.
One row per handler call in ``pushes``, so repeats show as extra rows."""

from __future__ import annotations

from pydantic import BaseModel

from streams import Delivery, Envelope, Kind, MessageRegistry, StreamsApp, mysql

registry = MessageRegistry()

SCHEMA = ("CREATE TABLE IF NOT EXISTS pushes (id BIGINT AUTO_INCREMENT PRIMARY KEY, message_id VARCHAR(64) NOT NULL, "
          "order_id VARCHAR(64) NOT NULL, worker BIGINT, at DATETIME(6) DEFAULT UTC_TIMESTAMP(6))")
ORDERS_SCHEMA = "CREATE TABLE IF NOT EXISTS orders (order_id VARCHAR(64) PRIMARY KEY, amount INT)"


@registry.event("OrderPlaced")
class OrderPlaced(BaseModel):
    order_id: str
    amount: int


app = StreamsApp("mysql-effects", registry=registry)
orders = app.topic("mysql.orders", kind=Kind.EVENT, partitions=6)


@app.handler(orders, "OrderPlaced", effects=app.effects())
async def push(message: Envelope[OrderPlaced], delivery: Delivery) -> None:
    async with delivery.transaction() as tx:
        await mysql.execute(tx, "INSERT INTO pushes (message_id, order_id, worker) VALUES (%s, %s, CONNECTION_ID())",
                            (message.message_id, message.payload.order_id))

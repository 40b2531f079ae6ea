"""The chaos test's app: two handlers of the same orders, one with transactional effects.

``tx_push`` records its push in PostgreSQL inside ``delivery.transaction()`` (the
processed id commits with the row); ``plain_push`` records it with an autocommit
insert and relies on the RocksDB processed-ID table alone. One row per handler
call in ``tx_pushes`` / ``plain_pushes``, so repeats show as extra rows.
"""

from __future__ import annotations

from pydantic import BaseModel

from streams import Database, Delivery, Envelope, Kind, MessageRegistry, StreamsApp

registry = MessageRegistry()

SCHEMA = """
CREATE TABLE IF NOT EXISTS chaos_orders (order_id text PRIMARY KEY, placed_at timestamptz DEFAULT now());
CREATE TABLE IF NOT EXISTS tx_pushes (id bigserial PRIMARY KEY, message_id text NOT NULL, order_id text NOT NULL,
                                      key text, seq bigint, worker int, at timestamptz DEFAULT clock_timestamp());
CREATE TABLE IF NOT EXISTS plain_pushes (message_id text NOT NULL, order_id text NOT NULL, worker int,
                                         at timestamptz DEFAULT clock_timestamp());
"""


@registry.event("OrderPlaced")
class OrderPlaced(BaseModel):
    order_id: str
    amount: int


app = StreamsApp("chaos", registry=registry)
orders = app.topic("chaos.orders", kind=Kind.EVENT, partitions=6)
db = Database(app.settings)


@app.handler(orders, "OrderPlaced", effects=app.effects())
async def tx_push(message: Envelope[OrderPlaced], delivery: Delivery) -> None:
    async with delivery.transaction() as tx:
        await tx.execute("INSERT INTO tx_pushes (message_id, order_id, key, seq, worker) "
                         "VALUES (%s, %s, %s, %s, pg_backend_pid())",
                         (message.message_id, message.payload.order_id, message.key, message.payload.amount))


@app.handler(orders, "OrderPlaced")
async def plain_push(message: Envelope[OrderPlaced], delivery: Delivery) -> None:
    await db.execute("INSERT INTO plain_pushes (message_id, order_id, worker) VALUES (%s, %s, pg_backend_pid())",
                     (message.message_id, message.payload.order_id))

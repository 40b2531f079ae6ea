"""The broker consumer tests' app: one handler applying an effect in PostgreSQL with ``effects=``.

``apply_order`` inserts one row per call into ``broker_effects`` inside ``delivery.transaction()``:
the processed id commits with the row, so a message handled twice shows as an extra row only if
the effects check failed. ``seq`` is the payload's sequence within its key (order checks).
"""

from __future__ import annotations

from pydantic import BaseModel

from streams import Delivery, Envelope, Kind, MessageRegistry, StreamsApp

registry = MessageRegistry()

SCHEMA = """
CREATE TABLE IF NOT EXISTS broker_effects (id bigserial PRIMARY KEY, message_id text NOT NULL, key text,
                                           seq bigint NOT NULL, lane int, at timestamptz DEFAULT clock_timestamp());
"""


@registry.event("OrderPlaced")
class OrderPlaced(BaseModel):
    order_id: str
    seq: int


app = StreamsApp("broker-app", registry=registry)
orders = app.topic("broker.orders", kind=Kind.EVENT, partitions=4)


@app.handler(orders, "OrderPlaced", effects=app.effects())
async def apply_order(message: Envelope[OrderPlaced], delivery: Delivery) -> None:
    async with delivery.transaction() as tx:
        await tx.execute("INSERT INTO broker_effects (message_id, key, seq, lane) VALUES (%s, %s, %s, %s)",
                         (message.message_id, message.key, message.payload.seq, delivery.partition))

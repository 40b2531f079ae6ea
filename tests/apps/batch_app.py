"""A consumer of imported rows (tests/test_batch_transfer.py): each row is stored whole, once.

The handler writes the row with the framework's transactional effects, so a
re-published row (same message id) is never stored twice, and records which
file and line it came from (the ``batch.*`` headers of the envelope).
"""

from __future__ import annotations

from decimal import Decimal

from pydantic import BaseModel, Field

from streams import Delivery, Envelope, Kind, MessageRegistry, StreamsApp

registry = MessageRegistry()


@registry.event("PartnerOrder")
class PartnerOrder(BaseModel):
    """One row of a partner's order file."""

    order_id: str = Field(min_length=1)
    buyer: str = Field(min_length=1)
    amount: Decimal = Field(ge=0)
    note: str | None = None


app = StreamsApp("batch-test", registry=registry)
orders = app.topic("partner.orders", kind=Kind.EVENT, partitions=3)
effects = app.effects()
SCHEMA = """CREATE TABLE IF NOT EXISTS imported_rows (
    id bigserial PRIMARY KEY, message_id text NOT NULL, file text NOT NULL, line int NOT NULL,
    order_id text NOT NULL, buyer text NOT NULL, amount numeric NOT NULL, note text)"""


@app.handler(orders, "PartnerOrder", effects=effects)
async def store_row(message: Envelope[PartnerOrder], delivery: Delivery) -> None:
    row = message.payload
    async with delivery.transaction() as tx:
        await tx.execute(
            "INSERT INTO imported_rows (message_id, file, line, order_id, buyer, amount, note) "
            "VALUES (%s, %s, %s, %s, %s, %s, %s)",
            (message.message_id, message.headers.get("batch.file", ""), int(message.headers.get("batch.line", 0)),
             row.order_id, row.buyer, row.amount, row.note))

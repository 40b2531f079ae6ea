"""A test app in two releases, for the rolling upgrade of a message type (tests/test_schema_upgrade.py).

``UPGRADE_APP_VERSION=1`` is the release whose ``PaymentTaken`` has ``amount`` (whole
units); ``2`` (the default) renames it ``amount_minor`` (minor units) and adds
``currency``, with an upcaster from version 1, so the new release reads the messages
producers still write in version 1. The handler books each payment once: a ledger row
in the effect's transaction (``effects=``), noting which release booked it.
"""

from __future__ import annotations

import os

from pydantic import BaseModel

from streams import Delivery, Envelope, Kind, MessageRegistry, StreamsApp

RELEASE = int(os.environ.get("UPGRADE_APP_VERSION", "2"))
LEDGER = """
CREATE TABLE IF NOT EXISTS upgrade_ledger (
    message_id   text PRIMARY KEY,
    order_id     text NOT NULL,
    amount_minor bigint NOT NULL,
    currency     text NOT NULL,
    release      int NOT NULL
)
"""

registry = MessageRegistry()

if RELEASE == 1:
    @registry.event("PaymentTaken")
    class PaymentTaken(BaseModel):
        order_id: str
        amount: int
else:
    @registry.event("PaymentTaken", version=2)
    class PaymentTaken(BaseModel):  # type: ignore[no-redef]
        order_id: str
        amount_minor: int
        currency: str

    @registry.upcaster("PaymentTaken", from_version=1)
    def payment_v1_to_v2(payload: dict) -> dict:
        return {"order_id": payload["order_id"], "amount_minor": payload["amount"] * 100, "currency": "KRW"}


app = StreamsApp("upgrade-test", registry=registry)
payments = app.topic("payments", kind=Kind.EVENT, partitions=4)


@app.handler(payments, "PaymentTaken", effects=app.effects())
async def book(message: Envelope[PaymentTaken], delivery: Delivery) -> None:
    payment = message.payload
    if RELEASE == 1:
        amount_minor, currency = payment.amount * 100, "KRW"
    else:
        amount_minor, currency = payment.amount_minor, payment.currency
    async with delivery.transaction() as tx:
        await tx.execute("INSERT INTO upgrade_ledger (message_id, order_id, amount_minor, currency, release) "
                         "VALUES (%s, %s, %s, %s, %s)", (message.message_id, payment.order_id, amount_minor, currency,
                                                         RELEASE))

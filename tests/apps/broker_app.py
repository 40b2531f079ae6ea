"""The broker consumer tests' app: handlers applying an effect in PostgreSQL with ``effects=``.

``apply_order`` inserts one row per call into ``broker_effects`` inside ``delivery.transaction()``:
the processed id commits with the row, so a message handled twice shows as an extra row only if
the effects check failed. ``seq`` is the payload's sequence within its key (order checks).

``flaky_order`` (topic ``broker.flaky``, one attempt in place, then delayed retries of
:data:`FLAKY_DELAYS`) records every attempt in ``broker_attempts`` (outside the effect's
transaction, with the database's clock) and fails as the order id says: ``flaky-<n>-…`` fails its
first n attempts, ``doomed-…`` every one; any other order succeeds at once.
"""

from __future__ import annotations

import asyncio

from pydantic import BaseModel

from streams import Database, Delivery, Envelope, Kind, MessageRegistry, RetryPolicy, StreamsApp, TransientError

registry = MessageRegistry()

SCHEMA = """
CREATE TABLE IF NOT EXISTS broker_effects (id bigserial PRIMARY KEY, message_id text NOT NULL, key text,
                                           seq bigint NOT NULL, lane int, at timestamptz DEFAULT clock_timestamp());
CREATE TABLE IF NOT EXISTS broker_attempts (id bigserial PRIMARY KEY, message_id text NOT NULL, order_id text NOT NULL,
                                            topic text NOT NULL, at timestamptz DEFAULT clock_timestamp());
"""
#: the delayed-retry levels of ``flaky_order`` (seconds)
FLAKY_DELAYS = (1.0, 6.0)


@registry.event("OrderPlaced")
class OrderPlaced(BaseModel):
    order_id: str
    seq: int


app = StreamsApp("broker-app", registry=registry)
db = Database(app.settings)
orders = app.topic("broker.orders", kind=Kind.EVENT, partitions=4)


#: ``slow-…`` orders take this long inside their effect's transaction (the graceful-stop test)
SLOW_SECONDS = 3.0


@app.handler(orders, "OrderPlaced", effects=app.effects())
async def apply_order(message: Envelope[OrderPlaced], delivery: Delivery) -> None:
    async with delivery.transaction() as tx:
        if message.payload.order_id.startswith("slow-"):
            await db.execute("INSERT INTO broker_attempts (message_id, order_id, topic) VALUES (%s, %s, %s)",
                             (message.message_id, message.payload.order_id, delivery.topic))
            await asyncio.sleep(SLOW_SECONDS)
        await tx.execute("INSERT INTO broker_effects (message_id, key, seq, lane) VALUES (%s, %s, %s, %s)",
                         (message.message_id, message.key, message.payload.seq, delivery.partition))


flaky = app.topic("broker.flaky", kind=Kind.EVENT, partitions=4)


class OrderSystemDown(TransientError):
    """The simulated downstream failed (worth a delayed retry)."""


@app.handler(flaky, "OrderPlaced", effects=app.effects(),
             retry=RetryPolicy(max_attempts=1, delayed_retries=FLAKY_DELAYS))
async def flaky_order(message: Envelope[OrderPlaced], delivery: Delivery) -> None:
    order = message.payload.order_id
    await db.execute("INSERT INTO broker_attempts (message_id, order_id, topic) VALUES (%s, %s, %s)",
                     (message.message_id, order, delivery.topic))
    attempt = (await db.fetch("SELECT count(*) FROM broker_attempts WHERE message_id = %s",
                              (message.message_id,)))[0][0]
    kind, _, rest = order.partition("-")
    if kind == "doomed" or (kind == "flaky" and attempt <= int(rest.split("-")[0])):
        raise OrderSystemDown(f"attempt {attempt} of {order} failed")
    async with delivery.transaction() as tx:
        await tx.execute("INSERT INTO broker_effects (message_id, key, seq, lane) VALUES (%s, %s, %s, %s)",
                         (message.message_id, message.key, message.payload.seq, delivery.partition))

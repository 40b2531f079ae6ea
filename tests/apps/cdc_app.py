"""A consumer of change events and outbox messages (tests/test_cdc.py).

``on_order`` handles Debezium's change events of ``public.cdc_orders``; ``on_shop_event``
handles envelopes that reach ``shop.events`` through the polling relay or through the
log. Both write their effect with the framework's transactional effects into tables with
no unique constraint, so a repeated effect would show as a second row. ``on_event``
handles the changes of ``public.cdc_events``, a table without a primary key, with the
RocksDB processed-ID table alone (an autocommit insert per call).
"""

from __future__ import annotations

from pydantic import BaseModel

from streams import Database, Delivery, Envelope, Kind, MessageRegistry, StreamsApp
from streams.cdc.changes import ChangeEvent

registry = MessageRegistry()


class Order(BaseModel):
    """A row of ``public.cdc_orders``."""

    id: int
    status: str
    version: int
    note: str | None = None


class Event(BaseModel):
    """A row of ``public.cdc_events`` (no primary key)."""

    kind: str
    n: int
    note: str | None = None


@registry.event("ShopEvent")
class ShopEvent(BaseModel):
    """What the shop publishes through its outbox."""

    seq: int
    text: str


app = StreamsApp("cdc-test", registry=registry)
orders = app.changes("cdc.orders.public.cdc_orders", Order)
shop_events = app.topic("shop.events", kind=Kind.EVENT)
events = app.changes("cdc.events.public.cdc_events", Event)
effects = app.effects()
db = Database(app.settings)

SCHEMA = """
CREATE TABLE IF NOT EXISTS cdc_orders (id bigint PRIMARY KEY, status text NOT NULL, version int NOT NULL, note text);
CREATE TABLE IF NOT EXISTS order_changes (
    n bigserial PRIMARY KEY, message_id text NOT NULL, op text NOT NULL, order_id bigint NOT NULL,
    version int, status text, before_status text, lsn bigint, snapshot boolean NOT NULL,
    partition int NOT NULL, kafka_offset bigint NOT NULL);
CREATE TABLE IF NOT EXISTS shop_events_seen (
    n bigserial PRIMARY KEY, message_id text NOT NULL, seq int NOT NULL, text text NOT NULL, key text);
CREATE TABLE IF NOT EXISTS cdc_events (kind text NOT NULL, n int NOT NULL, note text);
CREATE TABLE IF NOT EXISTS event_changes (
    message_id text NOT NULL, op text NOT NULL, kind text, n int, partition int NOT NULL, kafka_offset bigint NOT NULL);
"""


@app.handler(orders, effects=effects)
async def on_order(message: Envelope[ChangeEvent[Order]], delivery: Delivery) -> None:
    change = message.payload
    row = change.row
    async with delivery.transaction() as tx:
        await tx.execute(
            "INSERT INTO order_changes (message_id, op, order_id, version, status, before_status, lsn, snapshot, "
            "partition, kafka_offset) VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s, %s)",
            (message.message_id, change.op.value, (change.key or {}).get("id"),
             row.version if row else None, change.after.status if change.after else None,
             change.before.status if change.before else None, change.source.lsn, change.source.in_snapshot,
             delivery.partition, delivery.offset))


@app.handler(shop_events, "ShopEvent", effects=effects)
async def on_shop_event(message: Envelope[ShopEvent], delivery: Delivery) -> None:
    async with delivery.transaction() as tx:
        await tx.execute("INSERT INTO shop_events_seen (message_id, seq, text, key) VALUES (%s, %s, %s, %s)",
                         (message.message_id, message.payload.seq, message.payload.text, message.key))


@app.handler(events)
async def on_event(message: Envelope[ChangeEvent[Event]], delivery: Delivery) -> None:
    change = message.payload
    row = change.row
    await db.execute("INSERT INTO event_changes (message_id, op, kind, n, partition, kafka_offset) "
                     "VALUES (%s, %s, %s, %s, %s, %s)",
                     (message.message_id, change.op.value, row.kind if row else None, row.n if row else None,
                      delivery.partition, delivery.offset))

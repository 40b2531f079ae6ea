"""The order search index: an event with many subscribers, rebuilt by reprocessing.

Consumer group ``<base>.search`` reads the same ``OrderPlaced`` events as the
seller push, at its own offsets, and upserts one document per order into a
full-text table (``order_search``: a ``tsvector`` with a GIN index on PostgreSQL, a
``FULLTEXT`` index on the body on MySQL / MariaDB). Writes are upserts, and the
handler is idempotent by the framework's processed-ID table (RocksDB), so a
redelivery changes nothing.

``AGENTS_SEARCH_INDEXER_VERSION=1`` is the released bug: its documents leave the
seller out, so a search by seller finds nothing. Version 2 (the default) is the
fix. After deploying a fix, the index is rebuilt by reprocessing the orders of a
time range (``streams offsets reset --group <base>.search --topic orders.order-placed
--to-datetime T --execute --reprocess``, with the search workers stopped): the
re-read events are handled again although their ids are processed, once each,
and every document is rewritten (``writes`` counts the upserts of an order).
"""

from __future__ import annotations

from agents.config import agent_settings
from agents.messages import OrderPlaced
from agents.schema import Schema
from agents.services import ORDER_PARTITIONS, ORDER_PLACED, service_app
from streams import Database, Delivery, Envelope, Kind

schema = Schema(postgresql="""
CREATE TABLE IF NOT EXISTS order_search (
    order_id        text        PRIMARY KEY,
    seller_id       text        NOT NULL,
    buyer_id        text        NOT NULL,
    body            text        NOT NULL,
    document        tsvector    NOT NULL,
    indexer_version integer     NOT NULL,
    message_id      text        NOT NULL,
    writes          integer     NOT NULL DEFAULT 1,
    indexed_at      timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX IF NOT EXISTS order_search_document ON order_search USING gin (document);
""", mysql="""
CREATE TABLE IF NOT EXISTS order_search (
    order_id        VARCHAR(191) NOT NULL PRIMARY KEY,
    seller_id       VARCHAR(191) NOT NULL,
    buyer_id        VARCHAR(191) NOT NULL,
    body            TEXT         NOT NULL,
    indexer_version INT          NOT NULL,
    message_id      VARCHAR(191) NOT NULL,
    writes          INT          NOT NULL DEFAULT 1,
    indexed_at      DATETIME(6)  NOT NULL DEFAULT CURRENT_TIMESTAMP(6),
    FULLTEXT KEY order_search_document (body)
) ENGINE=InnoDB DEFAULT CHARSET=utf8mb4
""")
#: the document's upsert in each dialect (the body twice on PostgreSQL: the text and its tsvector)
UPSERT = {
    "postgresql": (
        "INSERT INTO order_search (order_id, seller_id, buyer_id, body, document, indexer_version, message_id) "
        "VALUES (%s, %s, %s, %s, to_tsvector('simple', %s), %s, %s) "
        "ON CONFLICT (order_id) DO UPDATE SET body = EXCLUDED.body, document = EXCLUDED.document, "
        "indexer_version = EXCLUDED.indexer_version, writes = order_search.writes + 1, indexed_at = now()"),
    "mysql": (
        "INSERT INTO order_search (order_id, seller_id, buyer_id, body, indexer_version, message_id) "
        "VALUES (%s, %s, %s, %s, %s, %s) "
        "ON DUPLICATE KEY UPDATE body = VALUES(body), indexer_version = VALUES(indexer_version), "
        "writes = writes + 1, indexed_at = CURRENT_TIMESTAMP(6)"),
}
#: orders whose document a search by their seller finds (``%s``: an order-id pattern)
FOUND_BY_SELLER = {
    "postgresql": "SELECT count(*) FROM order_search WHERE order_id LIKE %s "
                  "AND document @@ plainto_tsquery('simple', seller_id)",
    # MATCH ... AGAINST takes a constant only (one seller's search: MATCH(body) AGAINST('"seller-7"'
    # IN BOOLEAN MODE)); the check of every order against its own seller looks for the word in the body
    "mysql": "SELECT count(*) FROM order_search WHERE order_id LIKE %s "
             "AND LOCATE(CONCAT(' ', seller_id, ' '), CONCAT(' ', body, ' ')) > 0",
}

app = service_app("search")
order_placed_topic = app.topic(ORDER_PLACED, kind=Kind.EVENT, partitions=ORDER_PARTITIONS)
db = Database(app.settings)


def document_text(order: OrderPlaced, version: int) -> str:
    """What the index makes searchable. Version 1 forgot the seller (the bug the demo fixes)."""
    words = [order.order_id, order.buyer_id, f"{order.item_count} items", f"{order.total_amount} {order.currency}"]
    if version >= 2:
        words.insert(1, order.seller_id)
    return " ".join(words)


@app.handler(order_placed_topic, "OrderPlaced")
async def index_order(message: Envelope[OrderPlaced], delivery: Delivery) -> None:
    """Upsert the order's search document (idempotent: same input, same row)."""
    await schema.ensure(db)
    order, version = message.payload, agent_settings.search_indexer_version
    body = document_text(order, version)
    values: tuple
    if db.dialect == "mysql":
        values = (order.order_id, order.seller_id, order.buyer_id, body, version, message.message_id)
    else:
        values = (order.order_id, order.seller_id, order.buyer_id, body, body, version, message.message_id)
    await db.execute(UPSERT[db.dialect], values)

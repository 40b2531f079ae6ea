"""A consumer of Debezium's binlog change events of ``<database>.cdc_orders`` on MariaDB
(tests/test_cdc_mysql.py). The database is the one ``STREAMS_DATABASE_URL`` names (each test has
its own), so the topic is ``cdc.orders.<database>.cdc_orders``. ``on_order`` writes its effect
with the framework's transactional effects (in MariaDB) into ``order_changes``, which has no
unique constraint: a repeated effect would show as a second row. The captured database is also
the effects database: a breaker on MySQL's connection errors makes ``on_order`` wait while the
server is away (a failed connection inside the handler is otherwise the handler's error, retried
then parked: docs/guarantees.md)."""

from __future__ import annotations

from pydantic import BaseModel

from streams import CircuitBreaker, Delivery, Envelope, MessageRegistry, StreamsApp, mysql
from streams.cdc.changes import ChangeEvent

registry = MessageRegistry()


class Order(BaseModel):
    """A row of ``cdc_orders``."""

    id: int
    status: str
    version: int
    note: str | None = None


SCHEMA = [
    "CREATE TABLE IF NOT EXISTS cdc_orders (id BIGINT PRIMARY KEY, status VARCHAR(40) NOT NULL, version INT NOT NULL, "
    "note VARCHAR(200))",
    "CREATE TABLE IF NOT EXISTS order_changes (n BIGINT AUTO_INCREMENT PRIMARY KEY, message_id VARCHAR(255) NOT NULL, "
    "op CHAR(1) NOT NULL, order_id BIGINT NOT NULL, version INT, status VARCHAR(40), before_status VARCHAR(40), "
    "gtid VARCHAR(100), binlog_file VARCHAR(100), binlog_pos BIGINT, snapshot BOOLEAN NOT NULL, "
    "`partition` INT NOT NULL, kafka_offset BIGINT NOT NULL)",
]

app = StreamsApp("cdc-mysql-test", registry=registry)
DATABASE = mysql.database_name(app.settings.dsn) if app.settings.database_dialect == "mysql" else "streams"
orders = app.changes(f"cdc.orders.{DATABASE}.cdc_orders", Order)
effects = app.effects()
database_down = CircuitBreaker("effects-database", failure_threshold=1, reset_timeout=1.0,
                               trip_on=mysql.connection_errors())


@app.handler(orders, effects=effects, sink=database_down)
async def on_order(message: Envelope[ChangeEvent[Order]], delivery: Delivery) -> None:
    change = message.payload
    row = change.row
    async with delivery.transaction() as tx:
        await mysql.execute(
            tx, "INSERT INTO order_changes (message_id, op, order_id, version, status, before_status, gtid, "
                "binlog_file, binlog_pos, snapshot, `partition`, kafka_offset) "
                "VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s)",
            (message.message_id, change.op.value, (change.key or {}).get("id"), row.version if row else None,
             change.after.status if change.after else None, change.before.status if change.before else None,
             change.source.gtid, change.source.file, change.source.pos, change.source.in_snapshot,
             delivery.partition, delivery.offset))

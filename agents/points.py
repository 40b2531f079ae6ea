"""The points service: owns the ``GrantPoints`` command (consumer group ``<base>.points``).

A command has one owner and one effect: credit the buyer. The credit is a
ledger row plus the buyer's balance in the application's database (PostgreSQL, or MySQL /
MariaDB when ``STREAMS_DATABASE_URL`` is a ``mysql://`` URL), written with the framework's
transactional effects — the command's ``message_id`` is recorded in
``streams_processed_messages`` **in the same database transaction** — so a
redelivered command (a relay re-sending after a crash, a worker crash before its
offset commit, an aborted Kafka transaction under ``exactly_once``) finds its id
and is skipped: never two credits for one command, under either guarantee.

The ledger deliberately has no unique constraint on the order: a second credit
would show up as a second row, which is what the tests and the demo check.
"""

from __future__ import annotations

from typing import Any

from agents.messages import GrantPoints
from agents.schema import Schema
from agents.services import GRANT_POINTS, POINTS_PARTITIONS, service_app
from streams import Database, Delivery, Envelope, Kind

schema = Schema(postgresql="""
CREATE TABLE IF NOT EXISTS points_ledger (
    id          bigserial   PRIMARY KEY,
    message_id  text        NOT NULL,
    order_id    text        NOT NULL,
    buyer_id    text        NOT NULL,
    points      integer     NOT NULL,
    credited_at timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX IF NOT EXISTS points_ledger_order ON points_ledger (order_id);
CREATE TABLE IF NOT EXISTS points_balance (
    buyer_id   text        PRIMARY KEY,
    points     bigint      NOT NULL,
    updated_at timestamptz NOT NULL DEFAULT now()
);
""", mysql="""
CREATE TABLE IF NOT EXISTS points_ledger (
    id          BIGINT       NOT NULL AUTO_INCREMENT PRIMARY KEY,
    message_id  VARCHAR(191) NOT NULL,
    order_id    VARCHAR(191) NOT NULL,
    buyer_id    VARCHAR(191) NOT NULL,
    points      INT          NOT NULL,
    credited_at DATETIME(6)  NOT NULL DEFAULT CURRENT_TIMESTAMP(6),
    KEY points_ledger_order (order_id)
) ENGINE=InnoDB DEFAULT CHARSET=utf8mb4;
CREATE TABLE IF NOT EXISTS points_balance (
    buyer_id   VARCHAR(191) NOT NULL PRIMARY KEY,
    points     BIGINT       NOT NULL,
    updated_at DATETIME(6)  NOT NULL DEFAULT CURRENT_TIMESTAMP(6)
) ENGINE=InnoDB DEFAULT CHARSET=utf8mb4
""")
#: the balance upsert in each dialect
ADD_TO_BALANCE = {
    "postgresql": "INSERT INTO points_balance (buyer_id, points) VALUES (%s, %s) ON CONFLICT (buyer_id) "
                  "DO UPDATE SET points = points_balance.points + EXCLUDED.points, updated_at = now()",
    "mysql": "INSERT INTO points_balance (buyer_id, points) VALUES (%s, %s) ON DUPLICATE KEY UPDATE "
             "points = points + VALUES(points), updated_at = CURRENT_TIMESTAMP(6)",
}

app = service_app("points")

#: the command topic, keyed by buyer id: one buyer's credits are applied in order
grant_points_topic = app.topic(GRANT_POINTS, kind=Kind.COMMAND, partitions=POINTS_PARTITIONS)

effects = app.effects()
db = Database(app.settings)


async def credit(tx: Any, command: GrantPoints, message_id: str, dialect: str = "postgresql") -> None:
    """The effect: one ledger row and the buyer's new balance, in ``tx`` (the delivery's effect
    transaction: a psycopg or an asyncmy connection)."""
    async with tx.cursor() as cur:
        await cur.execute("INSERT INTO points_ledger (message_id, order_id, buyer_id, points) VALUES (%s, %s, %s, %s)",
                          (message_id, command.order_id, command.buyer_id, command.points))
        await cur.execute(ADD_TO_BALANCE[dialect], (command.buyer_id, command.points))


@app.handler(grant_points_topic, "GrantPoints", effects=effects)
async def grant_points(message: Envelope[GrantPoints], delivery: Delivery) -> None:
    """Credit the buyer once: the ledger row, the balance and the processed id commit together."""
    await schema.ensure(db)
    async with delivery.transaction() as tx:
        await credit(tx, message.payload, message.message_id, db.dialect)

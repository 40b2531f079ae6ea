"""Receipt e-mails as background tasks after the order commits (the source notes' simplest option).

The order service commits the order, then hands ``send-receipt`` to a bounded
thread pool (:class:`streams.background.BackgroundTasks`). The simulated mail
API fails now and then (a timeout: retried and usually fine on the next
attempt) and always for the buyers in ``AGENTS_MAIL_FAILING_BUYERS`` (their
mailbox is unavailable: after the retries the task goes to the failure log,
``streams tasks list``; once the mailbox is back, ``streams tasks retry --all
--tasks agents.receipts:tasks`` sends them).

What this pattern loses, on purpose: a crash between the order's commit and the
task's run loses the receipt with no trace (tests/test_reference_receipts.py
shows it). Acceptable for a receipt a buyer can ask for again; not for points,
which go through the outbox as a command.
"""

from __future__ import annotations

import itertools
import threading
import time
from typing import Any

from agents.config import agent_settings
from agents.schema import Schema
from streams import RetryPolicy, TransientError, load_settings
from streams.background import BackgroundTasks
from streams.db import connect, query

schema = Schema(postgresql="""
CREATE TABLE IF NOT EXISTS order_receipts (
    id       bigserial   PRIMARY KEY,
    order_id text        NOT NULL,
    buyer_id text        NOT NULL,
    body     text        NOT NULL,
    sent_at  timestamptz NOT NULL DEFAULT now()
);
""", mysql="""
CREATE TABLE IF NOT EXISTS order_receipts (
    id       BIGINT       NOT NULL AUTO_INCREMENT PRIMARY KEY,
    order_id VARCHAR(191) NOT NULL,
    buyer_id VARCHAR(191) NOT NULL,
    body     TEXT         NOT NULL,
    sent_at  DATETIME(6)  NOT NULL DEFAULT CURRENT_TIMESTAMP(6)
) ENGINE=InnoDB DEFAULT CHARSET=utf8mb4
""")

settings = load_settings()
tasks = BackgroundTasks(settings, max_workers=4, max_pending=200,
                        policy=RetryPolicy(max_attempts=3, initial_backoff=0.05, max_backoff=0.5))


class MailUnavailable(TransientError):
    """The mail API could not take the message."""


class MailApi:
    """The simulated mail API: a receipt is a row in ``order_receipts``."""

    def __init__(self) -> None:
        self.failing_buyers = {b.strip() for b in agent_settings.mail_failing_buyers.split(",") if b.strip()}
        self.flaky_every = agent_settings.mail_flaky_every
        self.latency = agent_settings.mail_latency_ms / 1000
        self._calls = itertools.count(1)
        self._local = threading.local()

    def _conn(self) -> Any:
        conn = getattr(self._local, "conn", None)
        if conn is None or not _is_open(conn):
            conn = self._local.conn = connect(settings, autocommit=True, connect_timeout=5)
        return conn

    def send(self, order_id: str, buyer_id: str, body: str) -> None:
        if self.latency:
            time.sleep(self.latency)
        if buyer_id in self.failing_buyers:
            raise MailUnavailable(f"mailbox of {buyer_id} unavailable (550 4.2.2 mailbox full)")
        if self.flaky_every and next(self._calls) % self.flaky_every == 0:
            raise MailUnavailable("mail API timed out (try again)")
        query(self._conn(), "INSERT INTO order_receipts (order_id, buyer_id, body) VALUES (%s, %s, %s)",
              (order_id, buyer_id, body))


def _is_open(conn: Any) -> bool:
    """Whether a psycopg or PyMySQL connection is still open."""
    closed = getattr(conn, "closed", None)
    return not closed if closed is not None else bool(conn.open)


mail_api = MailApi()


def migrate(conn: Any) -> None:
    """Create the receipts table and the failure log (a connection of :func:`streams.db.connect`)."""
    schema.migrate(conn)
    tasks.failure_log.migrate(conn)


@tasks.task("send-receipt")
def send_receipt(order_id: str, buyer_id: str, total: str) -> None:
    """E-mail the buyer a receipt for a committed order."""
    mail_api.send(order_id, buyer_id, f"Thank you for order {order_id}: {total}")

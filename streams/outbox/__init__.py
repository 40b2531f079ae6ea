"""Transactional outbox on PostgreSQL and the relay that publishes it to Kafka.

* :mod:`.schema` creates the outbox table (``streams outbox migrate``);
* :mod:`.writer` adds a message to the outbox inside the caller's transaction;
* :mod:`.relay` publishes pending rows (``streams relay``);
* :mod:`.admin` re-queues parked rows and purges old ones;
* :mod:`.stats` reports the relay's lag and health figures.
"""

from streams.outbox.schema import migrate
from streams.outbox.stats import OutboxStats, outbox_stats
from streams.outbox.writer import (
    OutboxError,
    write_message,
    write_message_async,
    write_message_sqlalchemy,
)

__all__ = [
    "OutboxError",
    "OutboxStats",
    "migrate",
    "outbox_stats",
    "write_message",
    "write_message_async",
    "write_message_sqlalchemy",
]

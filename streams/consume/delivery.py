"""What a handler is given with each message: where it came from, and its database transaction."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any


@dataclass(frozen=True)
class Delivery:
    """Where a message came from. ``idempotency_key`` is the message id: pass it
    to downstream APIs so that a repeated delivery cannot repeat their effect."""

    topic: str
    partition: int
    offset: int
    attempt: int
    idempotency_key: str
    retry_level: int = 0
    replayed: bool = False
    #: who records the message as processed: ``<app id>:<handler>``
    consumer: str = ""
    effects: Any = field(default=None, repr=False, compare=False)
    #: handled again on purpose (a reprocess window of ``streams offsets reset --reprocess``)
    reprocessing: bool = False
    #: when that reprocess window was opened (epoch seconds): the effect is applied again once in it
    reprocess_since: float | None = None

    def transaction(self, conn: Any = None) -> Any:
        """A database transaction that first records this message as processed, committed
        together with the handler's writes (see :mod:`streams.consume.effects`)::

            async with delivery.transaction() as tx:    # psycopg AsyncConnection from the pool
                await tx.execute("INSERT ...")

        ``conn`` may be a psycopg ``AsyncConnection`` (``async with``), a psycopg
        ``Connection`` or SQLAlchemy ``Session`` (``with``), or an ``AsyncSession``.
        Raises :class:`~streams.consume.effects.AlreadyProcessed` (handled by the framework)
        when the message was processed already. Needs ``@app.handler(..., effects=...)``."""
        if self.effects is None:
            from streams.errors import ConfigurationError

            raise ConfigurationError("delivery.transaction() needs the handler declared with "
                                     "effects=app.effects()")
        return self.effects.transaction(self.consumer, self.idempotency_key,
                                        (self.topic, self.partition, self.offset), conn,
                                        reprocess_since=self.reprocess_since)

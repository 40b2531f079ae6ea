"""Writing records while messages are handled: outputs, dead letters, retry-topic copies.

Every write goes to the broker and is awaited; under ``exactly_once`` it joins the
Kafka transaction of the record being handled (:mod:`streams.consume.transactions`),
so it commits with that record's offset.
"""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from streams.consume.outputs import Output
    from streams.consume.transactions import Transactions


class Publisher:
    """The writes of the records being handled, through Faust's producer (raw bytes)."""

    def __init__(self, faust_app: Any, transactions: "Transactions") -> None:
        self.faust = faust_app
        self.transactions = transactions
        self._topics: dict[str, Any] = {}

    def _topic(self, name: str) -> Any:
        topic = self._topics.get(name)
        if topic is None:
            topic = self._topics[name] = self.faust.topic(name, key_serializer="raw", value_serializer="raw")
        return topic

    async def publish(self, topic: str, key: bytes | None, value: bytes | None, headers: Any,
                      partition: int | None = None) -> None:
        """Write one record to ``topic`` and wait for the broker's ack (under ``exactly_once``: in the
        transaction of the record being handled)."""
        if self.transactions.enabled:
            await self.transactions.send(topic, key, value, headers, partition)
            return
        fut = await self._topic(topic).send(key=key, value=value, headers=headers, partition=partition)
        await fut

    async def publish_all(self, outputs: "list[Output]") -> None:
        """Write ``outputs`` in order and wait for every ack (a succeeded attempt's outputs)."""
        if not outputs:
            return
        if self.transactions.enabled:
            sent = [self.transactions.send_soon(o.topic, o.key, o.value, o.headers) for o in outputs]
        else:
            sent = [await self._topic(o.topic).send(key=o.key, value=o.value, headers=o.headers) for o in outputs]
        await asyncio.gather(*sent)

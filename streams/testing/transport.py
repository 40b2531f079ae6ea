"""The test driver's transport: records written to in-memory topics instead of a broker.

:class:`MemoryTopics` holds every record written while the driver runs, per topic and
partition with increasing offsets; :class:`CapturingPublisher` takes the place of the
worker's :class:`~streams.consume.publishing.Publisher` (outputs, dead letters,
retry-topic copies all go through it). What the producer would refuse, it refuses the
same way: a record larger than the producer's ``max_request_size`` raises aiokafka's
``MessageSizeTooLargeError`` (so a dead letter too large to send is parked without its
value, as on a broker). Keys go to partitions as the producer sends them (murmur2, as
Kafka's default partitioner); a record without a key goes to partition 0.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from aiokafka.errors import MessageSizeTooLargeError
from aiokafka.partitioner import murmur2
from aiokafka.record.default_records import DefaultRecordBatchBuilder

from streams.consume.publishing import Publisher

if TYPE_CHECKING:
    from streams.consume.outputs import Output
    from streams.consume.transactions import Transactions


@dataclass(frozen=True)
class Record:
    """One record of a topic, as a consumer reads it (header names decoded)."""

    topic: str
    partition: int
    offset: int
    key: bytes | None
    value: bytes | None
    headers: list[tuple[str, bytes | None]] = field(default_factory=list)
    timestamp: float = 0.0

    def header(self, name: str) -> str | None:
        """The last header ``name`` as text (None: absent)."""
        found = None
        for key, value in self.headers:
            if key == name:
                found = (value or b"").decode("utf-8", "replace")
        return found


def partition_for(key: bytes | None, partitions: int) -> int:
    """The partition Kafka's default partitioner gives ``key`` (0 for no key)."""
    if key is None:
        return 0
    return (murmur2(key) & 0x7FFFFFFF) % partitions


class MemoryTopics:
    """Records per topic, each partition with its own offsets."""

    def __init__(self, partitions_of: Callable[[str], int]) -> None:
        self.partitions_of = partitions_of
        self.records: dict[str, list[Record]] = {}
        self._next: dict[tuple[str, int], int] = {}

    def append(self, topic: str, key: bytes | None, value: bytes | None, headers: list[tuple[str, bytes | None]],
               partition: int | None = None, offset: int | None = None) -> Record:
        """Append a record; ``partition`` defaults to the key's, ``offset`` to the partition's next."""
        if partition is None:
            partition = partition_for(key, self.partitions_of(topic))
        at = self._next.get((topic, partition), 0) if offset is None else offset
        self._next[(topic, partition)] = max(at + 1, self._next.get((topic, partition), 0))
        record = Record(topic, partition, at, key, value, list(headers), time.time())
        self.records.setdefault(topic, []).append(record)
        return record

    def of(self, topic: str) -> list[Record]:
        return list(self.records.get(topic, []))


class CapturingPublisher(Publisher):
    """Writes to :class:`MemoryTopics`; ``written(record)`` is told of each record."""

    def __init__(self, faust_app: Any, transactions: "Transactions", topics: MemoryTopics,
                 written: Callable[[Record], None], max_request_size: int) -> None:
        super().__init__(faust_app, transactions)
        self.topics = topics
        self.written = written
        self.max_request_size = max_request_size

    async def publish(self, topic: str, key: bytes | None, value: bytes | None, headers: Any,
                      partition: int | None = None) -> None:
        """Write one record (refused as the producer would refuse it)."""
        items = [(str(k), v) for k, v in (headers.items() if hasattr(headers, "items") else headers or [])]
        size = DefaultRecordBatchBuilder.estimate_size_in_bytes(key, value, items)
        if size > self.max_request_size:
            raise MessageSizeTooLargeError(
                f"The message is {size} bytes when serialized which is larger than the maximum request size "
                "you have configured with the max_request_size configuration")
        self.written(self.topics.append(topic, key, value, items, partition))

    async def publish_all(self, outputs: "list[Output]") -> None:
        """Write ``outputs`` in order."""
        for output in outputs:
            await self.publish(output.topic, output.key, output.value, output.headers)

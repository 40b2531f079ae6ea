"""The benchmark's one message type, shared by the producer, the apps and the raw consumer."""

from __future__ import annotations

from pydantic import BaseModel

from streams import MessageRegistry

#: Topic name without the prefix (the prefix comes from STREAMS_TOPIC_PREFIX / settings).
TOPIC = "bench.ping"
PARTITIONS = 6

registry = MessageRegistry()


@registry.event("Ping")
class Ping(BaseModel):
    n: int
    note: str

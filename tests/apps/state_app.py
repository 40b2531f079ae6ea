"""A test app for the processed-ID table at scale (tests/test_state_at_scale.py): one idempotent
handler on a 6-partition topic; each message it handles is appended to ``TEST_SEEN_FILE``
(``<message_id> <pid>`` per line), so a test counts what was handled, and by which process."""

from __future__ import annotations

import os

from pydantic import BaseModel

from streams import Delivery, Envelope, Kind, MessageRegistry, StreamsApp

registry = MessageRegistry()
TOPIC = "state.pings"
PARTITIONS = 6


@registry.event("StatePing")
class StatePing(BaseModel):
    n: int


app = StreamsApp("state-test", registry=registry)
pings = app.topic(TOPIC, kind=Kind.EVENT, partitions=PARTITIONS)
SEEN = os.environ.get("TEST_SEEN_FILE")


@app.handler(pings, "StatePing", name="state-ping")
async def on_ping(message: Envelope[StatePing], delivery: Delivery) -> None:
    if SEEN:
        with open(SEEN, "a") as fh:
            fh.write(f"{message.message_id} {os.getpid()}\n")

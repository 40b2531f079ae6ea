"""The app behind ``streams demo backpressure`` and the backpressure tests.

One handler, ``deliver``, writes each ``Tick`` to a simulated downstream whose
behaviour a small JSON control file sets while the worker runs
(``STREAMS_DEMO_SINK_CONTROL``, re-read at most every 0.5 s)::

    {"mode": "slow", "latency_ms": 5}     # each call takes 5 ms
    {"mode": "fail"}                      # each call raises DownstreamUnavailable
    {"mode": "fast"}                      # no delay

The handler declares a circuit breaker for the downstream, so a failing sink
pauses the partitions instead of retrying hot or dead-lettering. It is not
idempotent (``idempotent=False``): the demo measures flow control, and a
million processed-ID entries would only slow it down.
"""

from __future__ import annotations

import asyncio
import json
import os
import time
from pathlib import Path

from pydantic import BaseModel

from streams import (
    CircuitBreaker,
    Delivery,
    Envelope,
    Kind,
    MessageRegistry,
    StreamsApp,
    TransientError,
)

registry = MessageRegistry()
TOPIC = "demo.ticks"
PARTITIONS = 6


@registry.event("Tick")
class Tick(BaseModel):
    n: int
    pad: str = ""


class DownstreamUnavailable(TransientError):
    """The simulated downstream is failing."""


class SinkControl:
    """Reads the control file (cached for ``ttl`` seconds)."""

    def __init__(self, path: str | None, ttl: float = 0.5) -> None:
        self.path = Path(path) if path else None
        self.ttl = ttl
        self._at = 0.0
        self._state: dict = {"mode": "fast"}

    def state(self) -> dict:
        now = time.monotonic()
        if self.path is not None and now - self._at >= self.ttl:
            self._at = now
            try:
                self._state = json.loads(self.path.read_text())
            except (OSError, ValueError):
                pass
        return self._state


app = StreamsApp("backpressure-demo", registry=registry)
ticks = app.topic(TOPIC, kind=Kind.EVENT, partitions=PARTITIONS)
control = SinkControl(os.environ.get("STREAMS_DEMO_SINK_CONTROL"))
breaker = CircuitBreaker("demo-downstream", failure_threshold=5, reset_timeout=3.0,
                         trip_on=(DownstreamUnavailable,))


@app.handler(ticks, "Tick", idempotent=False, sink=breaker)
async def deliver(message: Envelope[Tick], delivery: Delivery) -> None:
    state = control.state()
    mode = state.get("mode", "fast")
    if mode == "fail":
        raise DownstreamUnavailable("the demo downstream is down")
    if mode == "slow":
        await asyncio.sleep(float(state.get("latency_ms", 5)) / 1000)

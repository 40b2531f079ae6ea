"""The StreamsApp the benchmark runs as a worker (``--app bench.apps:app``).

Settings come from ``STREAMS_*`` variables (``streams.load_settings()``);
``BENCH_IDEMPOTENT`` (1/0, default 1) picks ``idempotent=`` of the handler.
The handler does nothing: the framework decodes each record through the
registry and (when idempotent) checks and writes the processed-ID table.
"""

from __future__ import annotations

import os

from bench.messages import PARTITIONS, TOPIC, Ping, registry
from streams import Delivery, Envelope, Kind, StreamsApp

IDEMPOTENT = os.environ.get("BENCH_IDEMPOTENT", "1").strip().lower() not in ("0", "false", "no", "off")

app = StreamsApp("bench-consume", registry=registry)
pings = app.topic(TOPIC, kind=Kind.EVENT, partitions=PARTITIONS)


@app.handler(pings, "Ping", name="bench-ping", idempotent=IDEMPOTENT)
async def on_ping(message: Envelope[Ping], delivery: Delivery) -> None:
    return None

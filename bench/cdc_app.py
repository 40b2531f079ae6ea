"""The StreamsApp ``bench.cdc`` runs as a worker (``STREAMS_WORKER_APP=bench.cdc_app:app``).

* ``on_row``: Debezium change events of ``public.bench_rows`` (idempotent: the
  processed-ID table drops re-deliveries); does nothing else.
* ``on_ping``: outbox messages on ``bench.cdc.pings``, from the relay or through the log;
  appends ``<message_id> <unix time>`` to the file ``BENCH_ARRIVALS`` names, so the
  benchmark can measure commit → handler latency.
"""

from __future__ import annotations

import os
import time

from pydantic import BaseModel

from streams import Delivery, Envelope, Kind, MessageRegistry, StreamsApp
from streams.cdc.changes import ChangeEvent

registry = MessageRegistry()
PARTITIONS = 6
ROWS_TOPIC = "bench.cdc.rows.public.bench_rows"
PINGS_TOPIC = "bench.cdc.pings"


class Row(BaseModel):
    """A row of ``public.bench_rows``."""

    id: int
    note: str


@registry.event("Ping")
class Ping(BaseModel):
    """An outbox message."""

    n: int


app = StreamsApp("bench-cdc", registry=registry)
rows = app.changes(ROWS_TOPIC, Row, partitions=PARTITIONS)
pings = app.topic(PINGS_TOPIC, kind=Kind.EVENT, partitions=PARTITIONS)
_arrivals = open(os.environ["BENCH_ARRIVALS"], "a", buffering=1) if os.environ.get("BENCH_ARRIVALS") else None  # noqa: SIM115


@app.handler(rows, name="bench-row")
async def on_row(message: Envelope[ChangeEvent[Row]], delivery: Delivery) -> None:
    return None


@app.handler(pings, "Ping", name="bench-ping")
async def on_ping(message: Envelope[Ping], delivery: Delivery) -> None:
    if _arrivals is not None:
        _arrivals.write(f"{message.message_id} {time.time()}\n")

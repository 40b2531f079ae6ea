"""A test app whose handler fails on purpose, to exercise delayed retry topics.

``flaky`` fails the first ``TEST_FAILURES`` attempts of every message (counted in
PostgreSQL), with in-place retries off and two delayed levels of 1 s each. With
``TEST_RETRY_GATE=1`` an attempt from a retry level first waits until the test puts a row in
``retry_gate`` (so a test can let every first attempt happen before any retry, whatever the load).
"""

from __future__ import annotations

import asyncio
import os

from pydantic import BaseModel

from streams import (
    Database,
    Delivery,
    Envelope,
    Kind,
    MessageRegistry,
    RetryPolicy,
    StreamsApp,
)

registry = MessageRegistry()


@registry.event("Job")
class Job(BaseModel):
    n: int


app = StreamsApp("retry-test", registry=registry)
jobs = app.topic("jobs", kind=Kind.EVENT, partitions=3)
db = Database(app.settings)
FAILURES = int(os.environ.get("TEST_FAILURES", "2"))
GATED = os.environ.get("TEST_RETRY_GATE") == "1"


@app.handler(jobs, "Job", retry=RetryPolicy(max_attempts=1, delayed_retries=(1.0, 1.0)))
async def flaky(message: Envelope[Job], delivery: Delivery) -> None:
    await db.execute("CREATE TABLE IF NOT EXISTS attempts (message_id text, level int, ok bool,"
                     " at timestamptz DEFAULT clock_timestamp())")
    if GATED and delivery.retry_level > 0:  # the test made the table
        while not await db.fetch("SELECT 1 FROM retry_gate"):
            await asyncio.sleep(0.1)
    rows = await db.fetch("SELECT count(*) FROM attempts WHERE message_id = %s", (message.message_id,))
    ok = rows[0][0] >= FAILURES
    await db.execute("INSERT INTO attempts (message_id, level, ok) VALUES (%s, %s, %s)",
                     (message.message_id, delivery.retry_level, ok))
    if not ok:
        raise RuntimeError(f"attempt {delivery.attempt} of {message.message_id} fails on purpose")

"""A test app whose handler fails on purpose, to exercise delayed retry topics.

``flaky`` fails the first ``TEST_FAILURES`` attempts of every message (counted in
PostgreSQL), with in-place retries off and two delayed levels of 1 s each.
"""

from __future__ import annotations

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


@app.handler(jobs, "Job", retry=RetryPolicy(max_attempts=1, delayed_retries=(1.0, 1.0)))
async def flaky(message: Envelope[Job], delivery: Delivery) -> None:
    await db.execute("CREATE TABLE IF NOT EXISTS attempts (message_id text, level int, ok bool,"
                     " at timestamptz DEFAULT clock_timestamp())")
    rows = await db.fetch("SELECT count(*) FROM attempts WHERE message_id = %s", (message.message_id,))
    ok = rows[0][0] >= FAILURES
    await db.execute("INSERT INTO attempts (message_id, level, ok) VALUES (%s, %s, %s)",
                     (message.message_id, delivery.retry_level, ok))
    if not ok:
        raise RuntimeError(f"attempt {delivery.attempt} of {message.message_id} fails on purpose")

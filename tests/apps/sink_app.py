"""A test app whose downstream can be switched off: the ``downstream`` row in PostgreSQL
says ``up`` or ``down``. The handler declares a circuit breaker and a rate limiter for it
and records every call (``calls`` table), so a test can count calls during an outage."""

from __future__ import annotations

import time

from pydantic import BaseModel

from streams import (
    CircuitBreaker,
    Database,
    Delivery,
    Envelope,
    Kind,
    MessageRegistry,
    RateLimiter,
    RetryPolicy,
    StreamsApp,
    TransientError,
)

registry = MessageRegistry()


@registry.event("Job")
class Job(BaseModel):
    n: int


class DownstreamDown(TransientError):
    """The downstream service answered 503."""


SCHEMA = """
CREATE TABLE IF NOT EXISTS downstream (id int PRIMARY KEY, state text NOT NULL);
INSERT INTO downstream VALUES (1, 'up') ON CONFLICT DO NOTHING;
CREATE TABLE IF NOT EXISTS calls (message_id text, ok bool, at timestamptz DEFAULT clock_timestamp());
"""

app = StreamsApp("sink-test", registry=registry)
jobs = app.topic("jobs", kind=Kind.EVENT, partitions=3)
db = Database(app.settings)
breaker = CircuitBreaker("downstream", failure_threshold=3, reset_timeout=2.0, trip_on=(DownstreamDown,))
limiter = RateLimiter("downstream", rate=40, burst=5)


@app.handler(jobs, "Job", sink=(breaker, limiter), retry=RetryPolicy(max_attempts=2))
async def deliver(message: Envelope[Job], delivery: Delivery) -> None:
    # when the sink guards let this call through (not when its row is written: the statements before
    # the insert share one connection with the other partitions' calls and may wait for it)
    admitted = time.time()
    state = (await db.fetch("SELECT state FROM downstream WHERE id = 1"))[0][0]
    await db.execute("INSERT INTO calls (message_id, ok, at) VALUES (%s, %s, to_timestamp(%s))",
                     (message.message_id, state == "up", admitted))
    if state != "up":
        raise DownstreamDown("downstream returned 503")

"""A test app for the guarantees that must hold when attempts fail and waits run long
(tests/test_guarantees.py).

``work`` (3 partitions) is handled by ``handle``, which sends two ``Result`` outputs per
job and then behaves as the job's ``mode`` says:

* ``ok``: succeeds;
* ``flaky``: fails its first two attempts (in place), then succeeds;
* ``doomed``: always fails (in place, then the retry level, then the dead-letter topic);
* ``commit_fails``: sends its outputs inside ``delivery.transaction()``, whose commit
  PostgreSQL refuses (a deferred foreign key), every attempt;
* ``retry_later``: fails every attempt on the source topic, succeeds on the retry level
  (``TEST_RETRY_DELAY`` seconds later);
* ``throttled``: the first attempt raises ``SinkThrottled(TEST_THROTTLE)``, then succeeds;
* ``effect``: writes one ``effects_applied`` row in ``delivery.transaction()``; with
  ``TEST_DIE_ON_REPROCESS=1`` the worker process dies right after such a transaction of a
  forced reprocess committed (before the framework wrote the processed-ID entry or the offset).

Every attempt is a row in ``attempts`` (written on its own connection, so it stays even
when the attempt's transaction rolls back). ``other`` (3 partitions) is handled by
``count_other``, which only records what it saw: the traffic that must keep committing
while ``work`` waits.
"""

from __future__ import annotations

import os

from pydantic import BaseModel

from streams import Database, Delivery, Envelope, Kind, MessageRegistry, RetryPolicy, StreamsApp
from streams.consume.sink import SinkThrottled

registry = MessageRegistry()


@registry.event("Job")
class Job(BaseModel):
    n: int
    mode: str = "ok"


@registry.event("Result")
class Result(BaseModel):
    job: int
    part: int


SCHEMA = """
CREATE TABLE IF NOT EXISTS attempts (message_id text NOT NULL, n int NOT NULL, mode text NOT NULL,
    level int NOT NULL, attempt int NOT NULL, at timestamptz NOT NULL DEFAULT clock_timestamp());
CREATE TABLE IF NOT EXISTS other_seen (n int NOT NULL, message_id text NOT NULL,
    at timestamptz NOT NULL DEFAULT clock_timestamp());
CREATE TABLE IF NOT EXISTS effects_applied (message_id text NOT NULL, n int NOT NULL, reprocessing bool NOT NULL,
    at timestamptz NOT NULL DEFAULT clock_timestamp());
CREATE TABLE IF NOT EXISTS parents (id int PRIMARY KEY);
CREATE TABLE IF NOT EXISTS children (id serial PRIMARY KEY,
    parent int REFERENCES parents (id) DEFERRABLE INITIALLY DEFERRED);
"""

app = StreamsApp("guarantees-test", registry=registry)
work = app.topic("work", kind=Kind.EVENT, partitions=3)
other = app.topic("other", kind=Kind.EVENT, partitions=3)
results = app.output("results", kind=Kind.EVENT, partitions=3)
effects = app.effects()
db = Database(app.settings)
RETRY_DELAY = float(os.environ.get("TEST_RETRY_DELAY", "1"))
THROTTLE = float(os.environ.get("TEST_THROTTLE", "1"))
DIE_ON_REPROCESS = os.environ.get("TEST_DIE_ON_REPROCESS") == "1"


@app.handler(work, "Job", effects=effects,
             retry=RetryPolicy(max_attempts=3, initial_backoff=0.05, max_backoff=0.1, delayed_retries=(RETRY_DELAY,)))
async def handle(message: Envelope[Job], delivery: Delivery) -> None:
    job = message.payload
    done = await db.fetch("SELECT count(*) FROM attempts WHERE message_id = %s", (message.message_id,))
    await db.execute("INSERT INTO attempts (message_id, n, mode, level, attempt) VALUES (%s, %s, %s, %s, %s)",
                     (message.message_id, job.n, job.mode, delivery.retry_level, delivery.attempt))
    if job.mode == "throttled" and done[0][0] == 0:
        raise SinkThrottled(THROTTLE, "the downstream asked to slow down")
    if job.mode == "effect":
        async with delivery.transaction() as tx:
            await tx.execute("INSERT INTO effects_applied (message_id, n, reprocessing) VALUES (%s, %s, %s)",
                             (message.message_id, job.n, delivery.reprocessing))
        if DIE_ON_REPROCESS and delivery.reprocessing:
            os._exit(17)  # a crash between the effect's commit and everything the framework writes after it
        return
    outputs = [registry.envelope(Result(job=job.n, part=part), key=str(job.n)) for part in (0, 1)]
    if job.mode == "commit_fails":
        async with delivery.transaction() as tx:
            for out in outputs:
                await app.send(results, out)
            await tx.execute("INSERT INTO children (parent) VALUES (-1)")  # refused at commit
        return
    for out in outputs:
        await app.send(results, out)
    if job.mode == "flaky" and done[0][0] < 2:
        raise RuntimeError(f"attempt {done[0][0] + 1} of job {job.n} fails on purpose")
    if job.mode == "doomed":
        raise RuntimeError(f"job {job.n} always fails")
    if job.mode == "retry_later" and delivery.retry_level == 0:
        raise RuntimeError(f"job {job.n} succeeds only on its retry level")


@app.handler(other, "Job")
async def count_other(message: Envelope[Job], delivery: Delivery) -> None:
    await db.execute("INSERT INTO other_seen (n, message_id) VALUES (%s, %s)", (message.payload.n, message.message_id))

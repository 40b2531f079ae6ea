"""A test app whose handler fails as each job says: in place, on the retry topics, or for good.

``run_job`` fails a ``Job`` until its attempt number passes ``fail_times`` (attempts
count across retry levels), fails it at once for ``permanent`` jobs, and sends a
``JobDone`` on success. Two in-place attempts per level, then two delayed levels of
1 s: a job fails for good after six attempts. The test driver's parity test runs it
both in-process and in a worker on a real broker.
"""

from __future__ import annotations

from pydantic import BaseModel

from streams import Delivery, Envelope, Kind, MessageRegistry, PermanentError, RetryPolicy, StreamsApp

registry = MessageRegistry()


@registry.event("Job")
class Job(BaseModel):
    n: int
    fail_times: int = 0
    permanent: bool = False


@registry.event("JobDone")
class JobDone(BaseModel):
    n: int
    attempts: int
    level: int


app = StreamsApp("jobs-contract", registry=registry)
jobs = app.topic("jobs", kind=Kind.EVENT, partitions=3)
done = app.output("jobs.done", kind=Kind.EVENT, partitions=3)
POLICY = RetryPolicy(max_attempts=2, initial_backoff=0.05, max_backoff=0.1, delayed_retries=(1.0, 1.0))


@app.handler(jobs, "Job", retry=POLICY)
async def run_job(message: Envelope[Job], delivery: Delivery) -> None:
    job = message.payload
    if job.permanent:
        raise PermanentError(f"job {job.n} cannot run")
    if delivery.attempt <= job.fail_times:
        raise RuntimeError(f"job {job.n} fails attempt {delivery.attempt} on purpose")
    await app.send(done, registry.envelope(JobDone(n=job.n, attempts=delivery.attempt, level=delivery.retry_level),
                                           key=message.key))

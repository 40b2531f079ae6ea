"""Guards for a handler's downstream ("sink"): a circuit breaker and a rate limiter.

A handler declares them with ``@app.handler(topic, "T", sink=CircuitBreaker(...))``
(one guard or a tuple of guards). Before each call the handler's runner asks
every guard how long to wait; while a guard says "wait" (the breaker is open, the
rate limit is used up, the downstream answered "slow down"), the handler's
source partitions on this worker are **paused** — the consumer stops fetching
them, lag grows in Kafka instead of memory — and they resume by themselves when
the guard allows the next call. Failures a guard counts as the downstream's
(``trip_on``) never use up a message's retry attempts, so a transient outage
dead-letters nothing: the message waits and is retried after recovery.

* :class:`CircuitBreaker` — closed → open after ``failure_threshold``
  consecutive downstream failures; open for ``reset_timeout`` seconds; then
  half-open: one probe call; success closes it, failure opens it again (a probe that never
  reports back is given out again after ``reset_timeout``).
* :class:`RateLimiter` — token bucket: ``rate`` calls per second, bursts of
  ``burst``.
* :class:`SinkThrottled` — raise it from a handler when the downstream says
  "429 / retry after N s": the partitions pause that long and the same message
  is tried again, without using an attempt.

A message whose own content makes the downstream fail with a ``trip_on`` error
keeps the partition waiting (it looks like an outage); classify such errors as
permanent (:class:`streams.PermanentError`) or leave them out of ``trip_on``.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Protocol, runtime_checkable


class SinkThrottled(Exception):
    """The downstream asked to slow down: wait ``retry_after`` seconds, then try the same message again."""

    def __init__(self, retry_after: float = 1.0, message: str = "downstream asked to slow down") -> None:
        super().__init__(f"{message} (retry after {retry_after:.1f}s)")
        self.retry_after = max(0.0, float(retry_after))


@runtime_checkable
class SinkGuard(Protocol):
    """What the handler runner asks a guard (implement it for a custom guard)."""

    name: str

    def acquire(self) -> float:
        """0.0 and take a permit if a call may go out now; otherwise the seconds to wait."""

    def on_success(self) -> None:
        """The call succeeded."""

    def on_failure(self, exc: BaseException) -> bool:
        """The call failed with ``exc``; True if it is the downstream's failure (the
        message then waits instead of using an attempt)."""


class CircuitBreaker:
    """Stops calling a failing downstream for a while (closed / open / half-open)."""

    CLOSED, OPEN, HALF_OPEN = "closed", "open", "half_open"

    def __init__(self, name: str = "sink", *, failure_threshold: int = 5, reset_timeout: float = 5.0,
                 trip_on: tuple[type[BaseException], ...] = (Exception,),
                 clock: Callable[[], float] = time.monotonic) -> None:
        if failure_threshold < 1:
            raise ValueError("failure_threshold must be at least 1")
        if reset_timeout <= 0:
            raise ValueError("reset_timeout must be positive")
        self.name = name
        self.failure_threshold = failure_threshold
        self.reset_timeout = reset_timeout
        self.trip_on = trip_on
        self.clock = clock
        self.state = self.CLOSED
        self.failures = 0
        self.opened_at = 0.0
        self.times_opened = 0
        #: when the half-open probe went out (None: none out); a probe whose caller never reports
        #: (it waited on something else, was cancelled, or asks again itself) is given out again
        #: one reset timeout later, so the breaker never waits for it forever
        self._probe_since: float | None = None

    def acquire(self) -> float:
        if self.state == self.CLOSED:
            return 0.0
        if self.state == self.OPEN:
            remaining = self.opened_at + self.reset_timeout - self.clock()
            if remaining > 0:
                return remaining
            self.state = self.HALF_OPEN
            self._probe_since = None
        now = self.clock()
        if self._probe_since is not None:  # one probe at a time, for a reset timeout at most
            remaining = self._probe_since + self.reset_timeout - now
            if remaining > 0:
                return min(1.0, remaining)
        self._probe_since = now
        return 0.0

    def on_success(self) -> None:
        self.state = self.CLOSED
        self.failures = 0
        self._probe_since = None

    def on_failure(self, exc: BaseException) -> bool:
        if not isinstance(exc, self.trip_on):
            return False
        self.failures += 1
        if self.state == self.HALF_OPEN or self.failures >= self.failure_threshold:
            self._open()
        return True

    def _open(self) -> None:
        self.state = self.OPEN
        self.opened_at = self.clock()
        self.times_opened += 1
        self._probe_since = None

    def __repr__(self) -> str:
        return f"CircuitBreaker({self.name!r}, state={self.state}, failures={self.failures})"


class RateLimiter:
    """Token bucket: at most ``rate`` calls per second on average, ``burst`` at once."""

    def __init__(self, name: str = "sink", *, rate: float, burst: int = 1,
                 clock: Callable[[], float] = time.monotonic) -> None:
        if rate <= 0:
            raise ValueError("rate must be positive")
        if burst < 1:
            raise ValueError("burst must be at least 1")
        self.name = name
        self.rate = rate
        self.burst = burst
        self.clock = clock
        self._tokens = float(burst)
        self._at = clock()

    def acquire(self) -> float:
        now = self.clock()
        self._tokens = min(self.burst, self._tokens + (now - self._at) * self.rate)
        self._at = now
        if self._tokens >= 1:
            self._tokens -= 1
            return 0.0
        return (1 - self._tokens) / self.rate

    def on_success(self) -> None:
        return None

    def on_failure(self, exc: BaseException) -> bool:
        return False

    def __repr__(self) -> str:
        return f"RateLimiter({self.name!r}, rate={self.rate}/s, burst={self.burst})"

"""Circuit breaker and rate limiter on a fake clock (pure logic: no downstream, no waiting)."""

from __future__ import annotations

import pytest

from streams import CircuitBreaker, RateLimiter


class Clock:
    def __init__(self) -> None:
        self.now = 64.0  # binary fractions below stay exact

    def __call__(self) -> float:
        return self.now


class Down(Exception):
    pass


def test_breaker_opens_after_the_threshold_and_half_opens_after_the_timeout() -> None:
    clock = Clock()
    breaker = CircuitBreaker("api", failure_threshold=3, reset_timeout=5.0, trip_on=(Down,), clock=clock)
    for _ in range(2):
        assert breaker.acquire() == 0.0
        assert breaker.on_failure(Down())
    assert breaker.state == CircuitBreaker.CLOSED
    assert breaker.on_failure(Down())
    assert breaker.state == CircuitBreaker.OPEN and breaker.times_opened == 1
    clock.now += 2.0
    assert breaker.acquire() == pytest.approx(3.0)  # still open: wait the rest
    clock.now += 3.0
    assert breaker.acquire() == 0.0  # half-open: one probe goes out
    assert breaker.state == CircuitBreaker.HALF_OPEN
    assert breaker.acquire() > 0  # a second call waits for the probe
    breaker.on_success()
    assert breaker.state == CircuitBreaker.CLOSED and breaker.failures == 0


def test_a_failed_probe_opens_again_at_once() -> None:
    clock = Clock()
    breaker = CircuitBreaker(failure_threshold=1, reset_timeout=1.0, trip_on=(Down,), clock=clock)
    breaker.on_failure(Down())
    clock.now += 1.0
    assert breaker.acquire() == 0.0
    breaker.on_failure(Down())
    assert breaker.state == CircuitBreaker.OPEN and breaker.times_opened == 2
    assert breaker.acquire() == pytest.approx(1.0)


def test_a_probe_never_reported_is_given_out_again_after_the_reset_timeout() -> None:
    """The call that took the probe may never report back: it waited on something else (the effects
    database's outage wait, another guard), was cancelled by a revocation, or asks again itself.
    The breaker must not wait for it forever (seen: a CDC worker paused at half_open for minutes
    after its effects database restarted, every lane waiting for a probe nobody held)."""
    clock = Clock()
    breaker = CircuitBreaker(failure_threshold=1, reset_timeout=2.0, trip_on=(Down,), clock=clock)
    breaker.on_failure(Down())
    clock.now += 2.0
    assert breaker.acquire() == 0.0  # the probe goes out ... and its caller never reports
    clock.now += 1.0
    assert breaker.acquire() == pytest.approx(1.0)  # the probe is still young: wait the rest
    clock.now += 1.0
    assert breaker.acquire() == 0.0  # a reset timeout later, another probe goes out
    assert breaker.acquire() > 0  # one at a time still
    breaker.on_success()
    assert breaker.state == CircuitBreaker.CLOSED


def test_other_errors_do_not_trip_the_breaker() -> None:
    breaker = CircuitBreaker(failure_threshold=1, trip_on=(Down,), clock=Clock())
    assert not breaker.on_failure(ValueError("a bug in the handler"))
    assert breaker.state == CircuitBreaker.CLOSED


def test_rate_limiter_allows_the_burst_then_the_rate() -> None:
    clock = Clock()
    limiter = RateLimiter(rate=4.0, burst=2, clock=clock)
    assert [limiter.acquire() for _ in range(2)] == [0.0, 0.0]
    assert limiter.acquire() == 0.25
    clock.now += 0.25
    assert limiter.acquire() == 0.0
    clock.now += 10
    assert [limiter.acquire() for _ in range(3)][:2] == [0.0, 0.0]  # refilled only up to the burst


@pytest.mark.parametrize("make", [lambda: CircuitBreaker(failure_threshold=0), lambda: CircuitBreaker(reset_timeout=0),
                                  lambda: RateLimiter(rate=0), lambda: RateLimiter(rate=1, burst=0)])
def test_invalid_guards_are_refused(make) -> None:
    with pytest.raises(ValueError):
        make()

"""RetryPolicy: which errors are retried, how often, and the backoff between tries."""

from __future__ import annotations

import pytest

from streams import PermanentError, RetryPolicy, TransientError


class Boom(Exception):
    pass


def test_attempts_count_the_first_try() -> None:
    policy = RetryPolicy(max_attempts=3)
    assert [policy.should_retry(Boom(), n) for n in (1, 2, 3)] == [True, True, False]


def test_permanent_errors_are_never_retried() -> None:
    policy = RetryPolicy(max_attempts=5, permanent=(KeyError,))
    assert not policy.should_retry(PermanentError("no"), 1)
    assert not policy.should_retry(KeyError("k"), 1)
    assert policy.should_retry(ValueError("v"), 1)


def test_retryable_narrows_what_is_retried() -> None:
    policy = RetryPolicy(max_attempts=5, retryable=(TransientError,))
    assert policy.should_retry(TransientError("later"), 1)
    assert not policy.should_retry(ValueError("bug"), 1)


def test_backoff_grows_and_is_capped_without_jitter() -> None:
    policy = RetryPolicy(initial_backoff=0.5, multiplier=2.0, max_backoff=3.0, jitter=0.0)
    assert [policy.delay(n) for n in (1, 2, 3, 4, 5)] == [0.5, 1.0, 2.0, 3.0, 3.0]


def test_jitter_stays_within_its_fraction() -> None:
    policy = RetryPolicy(initial_backoff=1.0, jitter=0.1)
    delays = [policy.delay(1) for _ in range(500)]
    assert all(0.9 <= d <= 1.1 for d in delays)
    assert max(delays) - min(delays) > 0.05  # it does vary


@pytest.mark.parametrize("kwargs", [{"max_attempts": 0}, {"initial_backoff": -1}, {"delayed_retries": (5, -1)}])
def test_invalid_policies_are_refused(kwargs) -> None:
    with pytest.raises(ValueError):
        RetryPolicy(**kwargs)

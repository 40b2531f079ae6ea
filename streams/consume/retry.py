"""Retry policy for handlers: how many attempts, which errors, what backoff."""

from __future__ import annotations

import random
from dataclasses import dataclass, field


class PermanentError(Exception):
    """Raise (or subclass) from a handler for a failure that retrying cannot fix:
    the message goes to the dead-letter topic at once."""


class TransientError(Exception):
    """Raise (or subclass) from a handler for a failure worth retrying."""


@dataclass(frozen=True)
class RetryPolicy:
    """In-place retries with exponential backoff and jitter, then optional
    delayed retries on retry topics.

    ``max_attempts`` counts the first try (per level). Errors listed in ``permanent`` (and
    :class:`PermanentError`) are never retried; if ``retryable`` is given, only
    those errors are retried.
    """

    max_attempts: int = 3
    initial_backoff: float = 0.2
    max_backoff: float = 10.0
    multiplier: float = 2.0
    jitter: float = 0.1
    retryable: tuple[type[BaseException], ...] = ()
    permanent: tuple[type[BaseException], ...] = field(default=(PermanentError,))
    #: delays (seconds) of non-blocking retry levels after the in-place attempts;
    #: empty = no retry topics (see :mod:`streams.consume.retry_topics`)
    delayed_retries: tuple[float, ...] = ()

    def __post_init__(self) -> None:
        if self.max_attempts < 1:
            raise ValueError("max_attempts must be at least 1")
        if self.initial_backoff < 0 or self.max_backoff < 0:
            raise ValueError("backoff must not be negative")
        if any(d < 0 for d in self.delayed_retries):
            raise ValueError("delayed retry delays must not be negative")

    def is_retryable(self, exc: BaseException) -> bool:
        if isinstance(exc, (self.permanent, PermanentError)):
            return False
        if self.retryable:
            return isinstance(exc, self.retryable)
        return True

    def should_retry(self, exc: BaseException, attempt: int) -> bool:
        """True if attempt number ``attempt`` failed with ``exc`` and another try is due."""
        return attempt < self.max_attempts and self.is_retryable(exc)

    def delay(self, attempt: int) -> float:
        """Seconds to wait after failed attempt number ``attempt`` (1-based)."""
        base = min(self.max_backoff, self.initial_backoff * self.multiplier ** (attempt - 1))
        if self.jitter:
            base *= 1 + random.uniform(-self.jitter, self.jitter)
        return max(0.0, base)

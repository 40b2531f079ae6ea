"""A lag-gate: "go" / "hold" for a producer, from a consumer group's lag on a topic.

A producer that can wait (the outbox relay: its rows wait durably in PostgreSQL)
asks the gate before publishing to ``topic``. The gate reads the lag of
``group`` on that topic from the broker (committed offsets vs. log-end offsets,
see :mod:`streams.kafka.lag`) and keeps **hysteresis** between two watermarks:

* open (go) → closed (hold) when the lag reaches ``high``;
* closed → open when the lag falls to ``low`` or below.

So a burst waits upstream instead of driving the consumers toward the topic's
retention limit, and the gate does not flap around one threshold.

::

    gate = LagGate(settings, "search-indexer", "content.content-published", high=50_000, low=10_000)
    await gate.wait_until_open()        # before each batch
    ...publish...
    await gate.check()                   # or let wait_until_open re-check after check_interval

A partition the group never committed counts its whole retained log (what the
group would read from the earliest offset).
"""

from __future__ import annotations

import asyncio
import logging
import time

from streams.kafka.lag import group_lag
from streams.settings import Settings

log = logging.getLogger(__name__)


class LagGate:
    """Holds a producer while ``group``'s lag on ``topic`` is high (``high`` / ``low`` watermarks)."""

    def __init__(self, settings: Settings, group: str, topic: str, *, high: int, low: int,
                 check_interval: float = 1.0) -> None:
        if low < 0 or high <= low:
            raise ValueError(f"lag-gate watermarks need 0 <= low < high (got low={low}, high={high})")
        if check_interval <= 0:
            raise ValueError("check_interval must be positive")
        self.settings = settings
        self.group = group
        self.topic = topic
        self.high = high
        self.low = low
        self.check_interval = check_interval
        self._open = True
        self.last_lag: int | None = None
        self.checked_at: float | None = None
        self.closed_count = 0
        self.opened_count = 0
        self.held_seconds = 0.0

    def is_open(self) -> bool:
        """The state after the last check (open before the first one)."""
        return self._open

    async def check(self) -> bool:
        """Read the lag now, apply the watermarks, return whether the gate is open."""
        lag = (await group_lag(self.settings, self.group, [self.topic])).topic_lag(self.topic)
        self.last_lag = lag
        self.checked_at = time.monotonic()
        if self._open and lag >= self.high:
            self._open = False
            self.closed_count += 1
            log.warning("lag-gate %s: holding publishes, lag of %s is %d (high watermark %d)",
                        self.topic, self.group, lag, self.high)
        elif not self._open and lag <= self.low:
            self._open = True
            self.opened_count += 1
            log.info("lag-gate %s: publishing again, lag of %s is %d (low watermark %d)",
                     self.topic, self.group, lag, self.low)
        return self._open

    async def wait_until_open(self) -> None:
        """Return when the gate is open: at once if the last check (within ``check_interval``)
        said so, else re-check every ``check_interval`` seconds."""
        fresh = self.checked_at is not None and time.monotonic() - self.checked_at < self.check_interval
        if fresh and self._open:
            return
        started = time.monotonic()
        while not await self.check():
            await asyncio.sleep(self.check_interval)
        if not fresh or time.monotonic() - started > 0.001:
            self.held_seconds += time.monotonic() - started

    def to_dict(self) -> dict:
        """State for status pages and logs."""
        return {"group": self.group, "topic": self.topic, "high": self.high, "low": self.low,
                "open": self._open, "last_lag": self.last_lag, "closed_count": self.closed_count,
                "opened_count": self.opened_count, "held_seconds": round(self.held_seconds, 3)}

"""Pausing a handler's source partitions on this worker while its downstream cannot take more.

Faust's consumer leaves paused partitions out of its fetches (the partitions stay
assigned, the group keeps its members and heartbeats, offsets of finished work
keep being committed). Records wait in Kafka — the group's lag grows — instead
of in the worker's memory.
"""

from __future__ import annotations

import asyncio
import logging
import time
from typing import Any

log = logging.getLogger(__name__)


class SourcePause:
    """Pause / resume fetching of the partitions of ``topics`` this worker holds (``faust_app``'s consumer)."""

    def __init__(self, faust_app: Any, topics: list[str], name: str) -> None:
        self.faust = faust_app
        self.topics = set(topics)
        self.name = name
        self.paused: set[Any] = set()
        self.pauses = 0
        self.paused_seconds = 0.0

    def _consumer(self) -> Any:
        return self.faust.consumer

    def pause(self) -> set[Any]:
        """Pause every assigned partition of the topics (again: a rebalance may have brought new ones)."""
        consumer = self._consumer()
        tps = {tp for tp in consumer.assignment() if tp.topic in self.topics}
        new = tps - self.paused
        if new:
            consumer.pause_partitions(new)
            self.paused |= new
        return tps

    def resume(self) -> None:
        """Resume the partitions paused here that are still assigned."""
        if not self.paused:
            return
        consumer = self._consumer()
        still = self.paused & set(consumer.assignment())
        if still:
            consumer.resume_partitions(still)
        self.paused.clear()

    async def hold(self, seconds: float, why: str, check_every: float = 1.0) -> None:
        """Keep the partitions paused for ``seconds`` (re-pausing after a rebalance), then resume them."""
        started = time.monotonic()
        tps = self.pause()
        self.pauses += 1
        log.warning("%s: paused %d partition(s) of %s for %.1fs: %s", self.name, len(tps),
                    ",".join(sorted(self.topics)), seconds, why)
        try:
            deadline = started + seconds
            while (left := deadline - time.monotonic()) > 0:
                await asyncio.sleep(min(left, check_every))
                self.pause()
        finally:
            self.paused_seconds += time.monotonic() - started
            self.resume()
            log.info("%s: resumed %s after %.1fs", self.name, ",".join(sorted(self.topics)),
                     time.monotonic() - started)

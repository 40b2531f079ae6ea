"""Counters of what each handler did, per agent and partition, kept in one place.

Names: ``handled``, ``ignored`` (a registered type the handler does not take),
``retried``, ``dead_lettered`` (and later ``duplicate``). The web/metrics views
read :meth:`Metrics.snapshot`.
"""

from __future__ import annotations

from collections import Counter
from typing import NamedTuple


class CounterKey(NamedTuple):
    name: str
    agent: str
    topic: str
    partition: int


class Metrics:
    """In-process counters keyed by (name, agent, topic, partition)."""

    def __init__(self) -> None:
        self._counts: Counter[CounterKey] = Counter()

    def inc(self, name: str, agent: str, topic: str, partition: int, amount: int = 1) -> None:
        self._counts[CounterKey(name, agent, topic, partition)] += amount

    def get(self, name: str, agent: str | None = None) -> int:
        """Total of counter ``name`` (for one agent, or all)."""
        return sum(v for k, v in self._counts.items() if k.name == name and (agent is None or k.agent == agent))

    def snapshot(self) -> list[dict]:
        """All counters as rows, sorted."""
        return [
            {"name": k.name, "agent": k.agent, "topic": k.topic, "partition": k.partition, "value": v}
            for k, v in sorted(self._counts.items())
        ]

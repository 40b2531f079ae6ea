"""Lag-aware publishing: topics the relay holds back while a consumer group is far behind.

Each :class:`~streams.kafka.lag_gate.LagGate` watches one (group, topic) pair with high/low
watermarks. :class:`HeldTopics` is the relay's ``held_topics`` callback: it
re-checks a gate once its ``check_interval`` has passed and returns the topics
whose gate is closed. Rows for a held topic stay pending in the outbox (durable,
in ``id`` order) and flow again when the group's lag falls to the low watermark.
A gate whose check fails (broker unreachable) keeps its last state.

Between two checks the relay counts what it sent to each gated topic and holds
the topic as soon as ``last lag + sent since`` reaches the high watermark, so
the overshoot past ``high`` is at most one batch, however fast the relay drains.
"""

from __future__ import annotations

import logging
import time

from streams.kafka.lag_gate import LagGate
from streams.settings import Settings

log = logging.getLogger(__name__)


class HeldTopics:
    """Callable for :class:`~streams.outbox.relay.Relay`: the set of topics to hold now."""

    def __init__(self, gates: list[LagGate]) -> None:
        self.gates = gates
        #: rows sent per topic since its gate's last successful check
        self.sent_since_check: dict[str, int] = {g.topic: 0 for g in gates}

    def published(self, topic: str, count: int) -> None:
        """The relay reports rows it sent (acknowledged by Kafka)."""
        if topic in self.sent_since_check:
            self.sent_since_check[topic] += count

    async def __call__(self) -> set[str]:
        held = set()
        for gate in self.gates:
            if gate.checked_at is None or time.monotonic() - gate.checked_at >= gate.check_interval:
                try:
                    await gate.check()
                    self.sent_since_check[gate.topic] = 0
                except Exception as exc:  # noqa: BLE001 - keep the last known state
                    log.warning("lag-gate %s/%s: lag check failed (%s); keeping it %s", gate.group, gate.topic,
                                exc, "open" if gate.is_open() else "closed")
                    gate.checked_at = time.monotonic()
            estimate = (gate.last_lag or 0) + self.sent_since_check[gate.topic]
            if not gate.is_open() or estimate >= gate.high:
                held.add(gate.topic)
        return held


def parse_gate(settings: Settings, spec: str, check_interval: float = 1.0) -> LagGate:
    """``GROUP:TOPIC:HIGH:LOW`` (the CLI's ``--gate``) → a :class:`LagGate`."""
    parts = spec.rsplit(":", 3)
    if len(parts) != 4 or not parts[0] or not parts[1]:
        raise ValueError(f"--gate wants GROUP:TOPIC:HIGH:LOW, got {spec!r}")
    group, topic, high, low = parts
    try:
        return LagGate(settings, group, topic, high=int(high), low=int(low), check_interval=check_interval)
    except ValueError as exc:
        raise ValueError(f"--gate {spec!r}: {exc}") from None

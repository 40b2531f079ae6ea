"""Which broker a topic lives on (``STREAMS_BROKER_ROUTES``): the relay publishes its rows there,
``streams consume`` reads it there.

``STREAMS_BROKER_ROUTES="orders.*=rabbitmq,sms.*=redis"``: comma-separated ``PATTERN=BROKER``
pairs, fnmatch patterns matched against the full topic name, first match wins; a topic no pattern
matches is on Kafka. Brokers: ``kafka``, ``rabbitmq`` (the topic names a fanout exchange,
:mod:`streams.rabbitmq.topology`), ``redis`` (the topic names a stream).
"""

from __future__ import annotations

from dataclasses import dataclass
from fnmatch import fnmatchcase
from typing import Literal

Broker = Literal["kafka", "rabbitmq", "redis"]
BROKERS: tuple[Broker, ...] = ("kafka", "rabbitmq", "redis")


@dataclass(frozen=True)
class Route:
    pattern: str
    broker: Broker


def parse_routes(text: str) -> tuple[Route, ...]:
    """``PATTERN=BROKER,...`` → routes; a ValueError names the part that is wrong."""
    routes = []
    for part in (p.strip() for p in text.split(",")):
        if not part:
            continue
        pattern, sep, broker = (s.strip() for s in part.rpartition("="))
        if not sep or not pattern:
            raise ValueError(f"expected PATTERN=BROKER, got {part!r}")
        if broker not in BROKERS:
            raise ValueError(f"{part!r}: unknown broker {broker!r} (known: {', '.join(BROKERS)})")
        routes.append(Route(pattern, BROKERS[BROKERS.index(broker)]))
    return tuple(routes)


class Routes:
    """The relay's routing table: :meth:`broker` of a topic, and which brokers can be used at all."""

    def __init__(self, text: str) -> None:
        self.routes = parse_routes(text)
        self._cache: dict[str, Broker] = {}

    def broker(self, topic: str) -> Broker:
        if topic not in self._cache:
            self._cache[topic] = next((r.broker for r in self.routes if fnmatchcase(topic, r.pattern)), "kafka")
        return self._cache[topic]

    def brokers(self) -> set[Broker]:
        """Brokers some topic may be routed to (Kafka unless a ``*`` route catches everything first)."""
        used: set[Broker] = set()
        for route in self.routes:
            used.add(route.broker)
            if route.pattern == "*":
                return used
        return used | {"kafka"}

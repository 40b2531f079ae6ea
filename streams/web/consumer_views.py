"""The web endpoints of ``streams consume``: health, counters and backlog of handlers running on
RabbitMQ queues or Redis streams (no Faust worker, so no tables and no Kafka lag).

==========================  ===================================================================
``GET /health/live``        liveness (never needs the token)
``GET /health/ready``       200 while connected to the broker, 503 with the reason if not
``GET /api/metrics``        handler counters and timings as JSON (the worker's shape)
``GET /api/lag``            the group's backlog per topic, read from the broker
``GET /metrics``            Prometheus text format: the handler counters and processing times,
                            ``streams_broker_backlog{broker,group,topic}`` and ``streams_lag_up``
==========================  ===================================================================

The backlog is what the broker holds for the group: on RabbitMQ the ready messages of its lane,
retry and unrouted queues (:mod:`streams.rabbitmq.lag`), on Redis the entries pending in the group
plus those it has not read (:mod:`streams.redis_streams.lag`). The same middleware as the worker's
views: read-only, ``STREAMS_WEB_TOKEN`` as a bearer token, JSON errors.
"""

from __future__ import annotations

import asyncio
import logging
import time
from typing import Any

from aiohttp import web

from streams.metrics import Gauge, render_prometheus
from streams.web.http import json_response, middleware, unavailable

log = logging.getLogger(__name__)

#: seconds a backlog reading is reused (a scrape every few seconds should not open a connection each time)
LAG_CACHE = 2.0
READ_TIMEOUT = 10.0


class ConsumerViews:
    """Serves the endpoints above for ``consumer`` (a ``RabbitConsumer`` or ``RedisStreamConsumer``:
    ``app``, ``group``, ``connected``, ``handled`` and ``lag()``)."""

    def __init__(self, consumer: Any, broker: str) -> None:
        self.consumer = consumer
        self.broker = broker
        self.settings = consumer.settings
        self._lag: tuple[float, dict[str, int]] | None = None
        self._lag_lock = asyncio.Lock()
        self._runner: web.AppRunner | None = None

    def web_app(self) -> web.Application:
        token = self.settings.web_token
        app = web.Application(middlewares=[middleware(lambda: token.get_secret_value() if token else None)])
        app.router.add_get("/health/live", self.live)
        app.router.add_get("/health/ready", self.ready)
        app.router.add_get("/api/metrics", self.metrics_json)
        app.router.add_get("/api/lag", self.lag)
        app.router.add_get("/metrics", self.metrics)
        return app

    async def start(self, host: str, port: int) -> None:
        """Serve on ``host:port`` until :meth:`stop`."""
        self._runner = web.AppRunner(self.web_app(), access_log=None)
        await self._runner.setup()
        await web.TCPSite(self._runner, host, port).start()
        log.info("web views of the %s consumer on http://%s:%d (/metrics, /health/ready)", self.broker, host, port)

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

    # --- views ---------------------------------------------------------------------------
    async def live(self, request: web.Request) -> web.Response:
        return json_response({"live": True})

    async def ready(self, request: web.Request) -> web.Response:
        """Ready while the consumer holds a connection to its broker."""
        if self.consumer.connected.is_set():
            return json_response({"ready": True, "broker": self.broker, "group": self.consumer.group})
        return json_response({"ready": False, "broker": self.broker, "group": self.consumer.group,
                              "reasons": [f"not connected to {self.broker} (reconnecting)"]}, status=503)

    async def metrics_json(self, request: web.Request) -> web.Response:
        """Handler counters and processing times, as JSON (``totals`` summed over topics)."""
        m = self.consumer.app.metrics
        totals: dict[str, int] = {}
        for row in m.snapshot():
            totals[row["name"]] = totals.get(row["name"], 0) + row["value"]
        return json_response({"broker": self.broker, "group": self.consumer.group, "totals": totals,
                              "counters": m.snapshot(), "timings": m.timings()})

    async def read_lag(self) -> dict[str, int]:
        """The group's backlog per topic (cached for :data:`LAG_CACHE` s)."""
        async with self._lag_lock:
            now = time.monotonic()
            if self._lag is not None and now - self._lag[0] < LAG_CACHE:
                return self._lag[1]
            backlog = await asyncio.wait_for(self.consumer.lag(), READ_TIMEOUT)
            self._lag = (now, backlog)
            return backlog

    async def lag(self, request: web.Request) -> web.Response:
        """The backlog per topic and its total."""
        try:
            backlog = await self.read_lag()
        except Exception as exc:  # noqa: BLE001 - never leak the broker's URL
            raise unavailable(f"could not read the backlog from {self.broker}: {type(exc).__name__}") from None
        return json_response({"broker": self.broker, "group": self.consumer.group, "topics": backlog,
                              "lag": sum(backlog.values())})

    async def metrics(self, request: web.Request) -> web.Response:
        """Prometheus text format: counters, processing-time histogram, the backlog gauge."""
        up = Gauge("streams_lag_up", "1 when the last backlog reading from the broker succeeded.", ())
        gauges = [up]
        try:
            backlog = await self.read_lag()
        except Exception as exc:  # noqa: BLE001 - a scrape reports what it could read
            log.warning("backlog not read from %s for /metrics: %s: %s", self.broker, type(exc).__name__, exc)
            up.add(0)
        else:
            up.add(1)
            gauge = Gauge("streams_broker_backlog", "Messages the broker holds for the group: ready in its queues "
                          "(RabbitMQ), pending plus unread (Redis Streams).", ("broker", "group", "topic"))
            for topic, n in sorted(backlog.items()):
                gauge.add(n, self.broker, self.consumer.group, topic)
            gauges.append(gauge)
        ready = Gauge("streams_worker_ready", "1 while connected to the broker.", ())
        ready.add(1 if self.consumer.connected.is_set() else 0)
        gauges.append(ready)
        return web.Response(body=render_prometheus(self.consumer.app.metrics, gauges),
                            headers={"Content-Type": "text/plain; version=0.0.4; charset=utf-8"})

"""The worker's web endpoints, served by Faust's web server (aiohttp).

===================================================  =================================================
``GET /``                                            dashboard (HTML, self-contained)
``GET /health/live``                                 liveness (never needs the token)
``GET /health/ready``                                readiness: 200 when ready, 503 with reasons if not
``GET /api``                                         this list
``GET /api/info``                                    app id, this worker, handlers, topics, tables
``GET /api/tables``                                  every table with its stats here
``GET /api/tables/{table}``                          one table: per partition role, entries, recovery
``GET /api/tables/{table}/items``                    a page of entries (``page``, ``page_size``,
                                                     ``partition`` — routed to that partition's owner)
``GET /api/tables/{table}/keys/{key}``               one key, answered by the worker owning it
``GET /api/processed/{handler}/{message_id}``        was it processed, when, with what outcome
``GET /api/lag``                                     the app's consumer-group lag per partition
``GET /api/deadletters``                             dead letters per topic: counts and newest
``GET /api/deadletters/{topic}``                     one dead-letter topic (``recent`` = how many)
``GET /api/outbox``                                  outbox pending, oldest age, failed, publish rate
``GET /api/metrics``                                 handler counters and timings as JSON
``GET /metrics``                                     Prometheus text format
``GET /asyncapi.json``                               the app's AsyncAPI 3.0 document (streams.asyncapi)
``GET /asyncapi``                                    that document as a page (HTML, self-contained)
===================================================  =================================================

A request for a key or a partition another worker owns is forwarded to it (the
owner is read from the group assignment, ``app.faust.router.table_metadata``)
and its answer returned, with ``served_by`` naming who answered. A
processed-ID lookup asks every worker, because entries sit in the partition of
the message's record key, which a message id does not reveal.
"""

from __future__ import annotations

import asyncio
import logging
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

from aiohttp import ClientError, ClientTimeout, web
from yarl import URL

from streams.faust_compat import table_store
from streams.faust_compat.private import web_server as faust_web_server
from streams.kafka.names import dead_letter_topic
from streams.metrics import Gauge, render_prometheus
from streams.web.health import Health
from streams.web.http import (
    ApiError,
    bad_request,
    json_response,
    middleware,
    not_found,
    unavailable,
)
from streams.web.tables import MAX_KEY_LENGTH, TableViews

if TYPE_CHECKING:
    from streams.app import StreamsApp

log = logging.getLogger(__name__)

#: set on a request one worker forwards to another (the receiver answers itself, never forwards again)
FORWARDED = "X-Streams-Forwarded-By"
DASHBOARD = Path(__file__).with_name("dashboard.html")
ASYNCAPI_PAGE = Path(__file__).with_name("asyncapi.html")
PAGE_HEADERS = {"Cache-Control": "no-store",
                "Content-Security-Policy": "default-src 'self'; script-src 'unsafe-inline'; style-src 'unsafe-inline'; "
                                           "img-src 'self' data:"}
FORWARD_TIMEOUT = ClientTimeout(total=10)
READ_TIMEOUT = 10.0


def _int_arg(request: web.Request, name: str, default: int, low: int, high: int) -> int:
    raw = request.query.get(name)
    if raw is None or raw == "":
        return default
    try:
        value = int(raw)
    except ValueError:
        raise bad_request(f"{name} must be an integer, got {raw!r}") from None
    if not low <= value <= high:
        raise bad_request(f"{name} must be between {low} and {high}, got {value}")
    return value


class WebApi:
    """Registers the endpoints on ``app.faust``'s web server and answers them."""

    def __init__(self, app: "StreamsApp") -> None:
        self.app = app
        self.health = Health(app)
        self.tables = TableViews(app)
        self._lag: tuple[float, Any] | None = None
        self._lag_previous: Any = None
        self._lag_lock = asyncio.Lock()
        self._asyncapi: dict[str, Any] | None = None
        web_server = faust_web_server(app.faust)
        # serve only these views: Faust's own /router, /table and statistics pages would bypass the token
        web_server.blueprints = type(web_server.blueprints)([])
        token = app.settings.web_token
        web_server.web_app.middlewares.append(middleware(lambda: token.get_secret_value() if token else None))
        for path, fn in self._routes().items():
            app.faust.page(path, name=f"streams:{path}")(fn)

    def _routes(self) -> dict[str, Any]:
        def view(method):
            async def get(_view: Any, request: web.Request, **match: str) -> web.Response:
                return await method(request, **match)
            get.__name__ = method.__name__
            get.__doc__ = method.__doc__
            return get

        return {
            "/": view(self.dashboard),
            "/health/live": view(self.live),
            "/health/ready": view(self.ready),
            "/api": view(self.index),
            "/api/info": view(self.info),
            "/api/tables": view(self.table_list),
            "/api/tables/{name}": view(self.table_stats),
            "/api/tables/{name}/items": view(self.table_items),
            "/api/tables/{name}/keys/{key:.+}": view(self.table_key),
            "/api/processed/{handler}/{message_id:.+}": view(self.processed),
            "/api/lag": view(self.lag),
            "/api/deadletters": view(self.dead_letters),
            "/api/deadletters/{topic}": view(self.dead_letter_topic),
            "/api/outbox": view(self.outbox),
            "/api/metrics": view(self.metrics_json),
            "/metrics": view(self.metrics),
            "/asyncapi.json": view(self.asyncapi_json),
            "/asyncapi": view(self.asyncapi_page),
        }

    # --- pages and health ------------------------------------------------------------
    async def dashboard(self, request: web.Request) -> web.Response:
        """The dashboard page (static: its data comes from /api/*)."""
        return web.Response(text=DASHBOARD.read_text(), content_type="text/html", headers=PAGE_HEADERS)

    async def asyncapi_page(self, request: web.Request) -> web.Response:
        """The AsyncAPI document as a page (static: it reads /asyncapi.json)."""
        return web.Response(text=ASYNCAPI_PAGE.read_text(), content_type="text/html", headers=PAGE_HEADERS)

    async def asyncapi_json(self, request: web.Request) -> web.Response:
        """This app's AsyncAPI 3.0 document: its topics, messages and consumer group."""
        if self._asyncapi is None:
            from streams.asyncapi import document

            self._asyncapi = document([self.app])
        return json_response(self._asyncapi)

    async def live(self, request: web.Request) -> web.Response:
        """Liveness: the worker's event loop answers."""
        return json_response(self.health.live())

    async def ready(self, request: web.Request) -> web.Response:
        """Readiness: partitions assigned and tables recovered (503 until then)."""
        state = self.health.readiness()
        return json_response(state, 200 if state["ready"] else 503)

    async def index(self, request: web.Request) -> web.Response:
        """The endpoints."""
        return json_response({"endpoints": sorted(self._routes())})

    async def info(self, request: web.Request) -> web.Response:
        """What this worker runs (no settings values that could be secret)."""
        app = self.app
        return json_response({
            "app_id": app.app_id,
            "group": app.app_id,
            "worker": self.tables.local_url(),
            "processing_guarantee": app.settings.processing_guarantee.value,
            "ready": self.health.readiness()["ready"],
            "handlers": [{"name": h.name, "topic": h.topic.name, "message_types": sorted(h.message_types),
                          "dead_letter_topic": h.topic.dead_letter_name,
                          "processed_table": h.processed.table.name if h.processed else None}
                         for h in app.handlers.values()],
            "topics": [{"name": t.name, "kind": t.kind.value, "partitions": t.partitions}
                       for t in app.topics.values()],
            "tables": self.tables.names(),
            "auth": app.settings.web_token is not None,
        })

    # --- tables -----------------------------------------------------------------------
    async def table_list(self, request: web.Request) -> web.Response:
        """Every table with its stats on this worker."""
        stats = [self.tables.stats(self.tables.table(n)) for n in self.tables.names()]
        return json_response({"worker": self.tables.local_url(), "tables": stats,
                              "recovery": self.health.recovery_state()})

    async def table_stats(self, request: web.Request, name: str) -> web.Response:
        """One table's stats on this worker."""
        stats = self.tables.stats(self.tables.table(name))
        return json_response({"worker": self.tables.local_url(), **stats})

    async def table_items(self, request: web.Request, name: str) -> web.Response:
        """A page of entries: of one partition (from its owner), or of this worker's active partitions."""
        table = self.tables.table(name)
        partition = self.tables.check_partition(table, request.query.get("partition"))
        page = _int_arg(request, "page", 1, 1, 1_000_000)
        page_size = _int_arg(request, "page_size", 50, 1, 500)
        if partition is not None:
            forwarded = await self._maybe_forward(request, table, partition)
            if forwarded is not None:
                return forwarded
            partitions = [partition]
        else:
            partitions = [p for p in range(self.tables.partitions(table)) if self.tables.role(table, p) == "active"]
        result = self.tables.page(table, partitions, page, page_size)
        return json_response({"served_by": self.tables.local_url(), **result})

    async def table_key(self, request: web.Request, name: str, key: str) -> web.Response:
        """One key, answered by the worker that owns its partition."""
        table = self.tables.table(name)
        parsed = self.tables.parse_key(table, key)
        here = self.tables.local_url()
        candidates = self.tables.key_partitions(table, parsed)
        if request.headers.get(FORWARDED):  # the asking worker chose us as the owner: answer from here
            found = self.tables.lookup(table, parsed)
        else:
            found = None
            for partition in candidates:
                owner = self.tables.owner_url(table, partition)
                if owner is not None and owner != here:
                    reply = await self._forward(request, owner)
                    if reply.status != 404:
                        return reply
                    continue
                found = self.tables.lookup(table, parsed, [partition])
                if found is not None:
                    break
        if found is None:
            raise not_found(f"key {key!r} is not in table {name!r}", table=name, key=key,
                            partition=candidates[0], served_by=here)
        return json_response({"table": name, "key": key, "served_by": here, **found})

    async def _maybe_forward(self, request: web.Request, table: Any, partition: int) -> web.Response | None:
        """The owner's answer when another worker owns ``partition`` (None: answer here)."""
        owner = self.tables.owner_url(table, partition)
        here = self.tables.local_url()
        if owner is None:
            if self.tables.role(table, partition) is None:
                raise unavailable(f"partition {partition} of {table.name!r} has no owner right now "
                                  "(rebalancing?); retry shortly", partition=partition)
            return None
        if owner == here:
            return None
        if request.headers.get(FORWARDED):
            raise unavailable(f"partition {partition} of {table.name!r} moved during the request; retry",
                              partition=partition)
        return await self._forward(request, owner)

    async def _forward(self, request: web.Request, owner: str) -> web.Response:
        target = URL(owner + request.raw_path, encoded=True)
        headers = {FORWARDED: self.tables.local_url()}
        if "Authorization" in request.headers:
            headers["Authorization"] = request.headers["Authorization"]
        try:
            async with self.app.faust.http_client.get(target, headers=headers, timeout=FORWARD_TIMEOUT) as resp:
                body = await resp.read()
                return web.Response(body=body, status=resp.status, content_type=resp.content_type,
                                    headers={"Cache-Control": "no-store"})
        except (TimeoutError, ClientError) as exc:
            raise ApiError(502, "owner_unreachable", f"the worker owning this partition ({owner}) did not "
                           f"answer: {type(exc).__name__}", owner=owner) from None

    # --- processed IDs ------------------------------------------------------------------
    async def processed(self, request: web.Request, handler: str, message_id: str) -> web.Response:
        """Was ``message_id`` processed by ``handler``: when, with what outcome, where."""
        spec = self.app.handlers.get(handler)
        if spec is None:
            raise not_found(f"no handler named {handler!r}", handlers=sorted(self.app.handlers))
        if spec.processed is None:
            raise bad_request(f"handler {handler!r} is not idempotent: it keeps no processed-ID table")
        if len(message_id) > MAX_KEY_LENGTH:
            raise bad_request(f"a message id has at most {MAX_KEY_LENGTH} characters")
        here = self.tables.local_url()
        local = self._processed_local(spec, message_id)
        if (local and local["role"] == "active") or request.query.get("local") == "1" or request.headers.get(FORWARDED):
            if local is None:
                raise not_found(f"{message_id!r} is not in processed-{handler} on {here}", processed=False,
                                served_by=here)
            return json_response(local)
        answers = [local] if local else []
        for other in self._other_workers():
            try:
                async with self.app.faust.http_client.get(
                        URL(other + request.raw_path, encoded=True).update_query(local="1"),
                        headers={FORWARDED: here, **({"Authorization": request.headers["Authorization"]}
                                                     if "Authorization" in request.headers else {})},
                        timeout=FORWARD_TIMEOUT) as resp:
                    if resp.status == 200:
                        answers.append(await resp.json())
            except (TimeoutError, ClientError, ValueError):
                log.warning("processed lookup: %s did not answer", other)
        if not answers:
            raise not_found(f"{message_id!r} was not processed by {handler!r} (or its entry expired)",
                            processed=False, handler=handler, message_id=message_id)
        answers.sort(key=lambda a: a.get("role") != "active")
        return json_response(answers[0])

    def _processed_local(self, spec: Any, message_id: str) -> dict[str, Any] | None:
        table = spec.processed.table
        found = self.tables.lookup(table, message_id)
        if found is None:
            return None
        value = found["value"] or {}
        return {
            "handler": spec.name, "message_id": message_id, "processed": True,
            "outcome": value.get("outcome"), "at": value.get("at"),
            "at_iso": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(float(value.get("at", 0)))),
            "source_topic": spec.topic.name, "partition": value.get("p"), "offset": value.get("o"),
            "attempts": value.get("attempts"), "table": table.name, "role": found["role"],
            "served_by": self.tables.local_url(),
        }

    def _other_workers(self) -> list[str]:
        here = self.tables.local_url()
        urls = {str(u).rstrip("/") for u in self.app.faust.router.tables_metadata()}
        return sorted(u for u in urls if u != here)

    # --- lag, dead letters, outbox ---------------------------------------------------------
    def _source_topics(self) -> list[str]:
        return list(dict.fromkeys(t for h in self.app.handlers.values() for t in h.source_topics()))

    async def read_lag(self) -> Any:
        """The group's lag (cached for ``STREAMS_WEB_LAG_CACHE`` s), with rates against the previous reading."""
        from streams.kafka.lag import group_lag, with_rates

        async with self._lag_lock:
            now = time.monotonic()
            if self._lag and now - self._lag[0] < self.app.settings.web_lag_cache:
                return self._lag[1]
            current = await asyncio.wait_for(
                group_lag(self.app.settings, self.app.app_id, self._source_topics() or None), READ_TIMEOUT)
            shown = with_rates(self._lag_previous, current) if self._lag_previous is not None else current
            if self._lag_previous is None or current.sampled_at - self._lag_previous.sampled_at >= 1.0:
                self._lag_previous = current
            self._lag = (now, shown)
            return shown

    async def lag(self, request: web.Request) -> web.Response:
        """Lag of the app's consumer group on its source topics, per partition."""
        try:
            lag = await self.read_lag()
        except (TimeoutError, LookupError, OSError, Exception) as exc:
            if isinstance(exc, ApiError):
                raise
            raise unavailable(f"could not read the group's lag from the broker: {type(exc).__name__}") from None
        return json_response(lag.to_dict())

    def _dead_letter_topics(self) -> list[str]:
        return list(dict.fromkeys(h.topic.dead_letter_name for h in self.app.handlers.values()))

    async def dead_letters(self, request: web.Request) -> web.Response:
        """Counts and newest dead letters of every dead-letter topic of the app."""
        recent = _int_arg(request, "recent", 10, 0, 100)
        topics = await asyncio.gather(*(self._dlq(t, recent) for t in self._dead_letter_topics()))
        return json_response({"topics": topics, "total": sum(t.get("count") or 0 for t in topics)})

    async def dead_letter_topic(self, request: web.Request, topic: str) -> web.Response:
        """One dead-letter topic (its name or its source topic's name)."""
        recent = _int_arg(request, "recent", 20, 0, 100)
        known = self._dead_letter_topics()
        name = topic if topic in known else dead_letter_topic(topic)
        if name not in known:
            raise not_found(f"{topic!r} is not a dead-letter topic of this app", topics=known)
        result = await self._dlq(name, recent)
        if result.get("error"):
            raise unavailable(result["error"])
        return json_response(result)

    async def _dlq(self, topic: str, recent: int) -> dict[str, Any]:
        from streams.kafka.failure_log import dead_letter_overview

        try:
            return await asyncio.wait_for(dead_letter_overview(self.app.settings, topic, recent), READ_TIMEOUT)
        except LookupError:
            return {"topic": topic, "count": 0, "per_partition": {}, "recent": [], "exists": False}
        except Exception as exc:  # noqa: BLE001 - one unreadable topic must not hide the others
            return {"topic": topic, "count": None, "recent": [], "error": f"broker read failed: {type(exc).__name__}"}

    async def read_outbox(self) -> dict[str, Any]:
        """Outbox figures; ``exists: false`` when the table is not in the database."""
        from streams.outbox.stats import outbox_stats

        stats = await asyncio.wait_for(outbox_stats(self.app.settings), READ_TIMEOUT)
        if not stats.exists:
            return {"table": stats.table, "exists": False,
                    "detail": f"the outbox table {stats.table!r} does not exist in the database "
                              "(the outbox is not set up)"}
        return stats.to_dict()

    async def read_slots(self) -> list[Any]:
        """Replication slots of the app's database (CDC): a slot nobody reads holds WAL forever."""
        import psycopg

        from streams.cdc.slots import database_slots

        async with await psycopg.AsyncConnection.connect(self.app.settings.dsn, autocommit=True,
                                                         connect_timeout=5) as conn:
            return await asyncio.wait_for(database_slots(conn), READ_TIMEOUT)

    async def outbox(self, request: web.Request) -> web.Response:
        """Outbox: pending rows, oldest pending age, failed rows, publish rate."""
        try:
            return json_response(await self.read_outbox())
        except Exception as exc:  # noqa: BLE001 - never leak the connection string
            raise unavailable(f"could not read the outbox from the database: {type(exc).__name__}") from None

    # --- metrics ------------------------------------------------------------------------
    async def metrics_json(self, request: web.Request) -> web.Response:
        """Handler counters and processing times of this worker, as JSON."""
        m = self.app.metrics
        totals: dict[str, int] = {}
        for row in m.snapshot():
            totals[row["name"]] = totals.get(row["name"], 0) + row["value"]
        return json_response({"worker": self.tables.local_url(), "totals": totals, "counters": m.snapshot(),
                              "timings": m.timings()})

    async def metrics(self, request: web.Request) -> web.Response:
        """Prometheus text format: counters, processing-time histogram, lag, outbox and table gauges."""
        gauges = self._table_gauges()
        lag, outbox, slots, dlqs = await asyncio.gather(
            self._safe(self.read_lag()), self._safe(self.read_outbox()), self._safe(self.read_slots()),
            asyncio.gather(*(self._dlq(t, 0) for t in self._dead_letter_topics())))
        up = Gauge("streams_lag_up", "1 when the last lag reading from the broker succeeded.", ())
        up.add(0 if isinstance(lag, Exception) else 1)
        gauges.append(up)
        if not isinstance(lag, Exception):
            lag_g = Gauge("streams_consumer_lag", "Log-end minus committed offset (backlog if never committed).",
                          ("group", "topic", "partition"))
            committed = Gauge("streams_consumer_committed_offset", "Offset the group committed.",
                              ("group", "topic", "partition"))
            end = Gauge("streams_log_end_offset", "Log-end offset of the partition.", ("topic", "partition"))
            for p in lag.partitions:
                lag_g.add(p.backlog, lag.group, p.topic, p.partition)
                if p.committed is not None:
                    committed.add(p.committed, lag.group, p.topic, p.partition)
                end.add(p.end, p.topic, p.partition)
            gauges += [lag_g, committed, end]
        dl = Gauge("streams_dead_letters", "Records in the dead-letter topic.", ("topic",))
        for d in dlqs:
            if d.get("count") is not None:
                dl.add(d["count"], d["topic"])
        gauges.append(dl)
        gauges += self._outbox_gauges(outbox)
        if not isinstance(slots, Exception):
            gauges += slot_gauges(slots)
        return web.Response(body=render_prometheus(self.app.metrics, gauges),
                            headers={"Content-Type": "text/plain; version=0.0.4; charset=utf-8"})

    @staticmethod
    async def _safe(coro: Any) -> Any:
        try:
            return await coro
        except Exception as exc:  # noqa: BLE001 - a scrape reports what it could read
            return exc

    def _table_gauges(self) -> list[Gauge]:
        ready = Gauge("streams_worker_ready", "1 when partitions are assigned and tables recovered.", ())
        ready.add(1 if self.health.readiness()["ready"] else 0)
        entries = Gauge("streams_table_entries", "Entries of a table partition held by this worker (RocksDB's "
                        f"estimate above {table_store.EXACT_BELOW:,}, no scan).",
                        ("table", "partition", "role"))
        left = Gauge("streams_table_recovery_remaining", "Changelog records left to recover.",
                     ("table", "partition", "role"))
        for name in self.tables.names():
            for row in self.tables.stats(self.tables.table(name))["per_partition"]:
                if row["entries"] is not None:
                    entries.add(row["entries"], name, row["partition"], row["role"] or "unassigned")
                if row["role"]:
                    left.add(row["recovery_remaining"] or 0, name, row["partition"], row["role"])
        return [ready, entries, left]

    @staticmethod
    def _outbox_gauges(outbox: Any) -> list[Gauge]:
        up = Gauge("streams_outbox_up", "1 when the outbox could be read from the database.", ())
        up.add(0 if isinstance(outbox, Exception) else 1)
        if isinstance(outbox, Exception):
            return [up]
        table = outbox["table"]
        exists = Gauge("streams_outbox_table_exists", "1 when the outbox table exists.", ("table",))
        exists.add(1 if outbox["exists"] else 0, table)
        out = [up, exists]
        if outbox["exists"]:
            for field, name, text in (
                ("pending", "streams_outbox_pending", "Outbox rows waiting to be published."),
                ("retrying", "streams_outbox_retrying", "Pending rows that failed at least once."),
                ("failed", "streams_outbox_failed", "Outbox rows parked after their last attempt."),
                ("oldest_pending_age_s", "streams_outbox_oldest_pending_age_seconds", "Age of the oldest pending row."),
                ("published_last_minute", "streams_outbox_published_last_minute", "Rows published in the last 60 s."),
                ("publish_rate", "streams_outbox_publish_rate", "Rows published per second (last minute)."),
            ):
                g = Gauge(name, text, ("table",))
                g.add(outbox[field] or 0, table)
                out.append(g)
            waiting = Gauge("streams_outbox_waiting_for_topic", "Pending rows whose topic does not exist in Kafka "
                            "(parked after STREAMS_RELAY_MISSING_TOPIC_WAIT).", ("table", "topic"))
            for topic, w in (outbox.get("waiting_topics") or {}).items():
                waiting.add(w["rows"], table, topic)
            out.append(waiting)
        return out


def slot_gauges(slots: list[Any]) -> list[Gauge]:
    """``streams_replication_slot_*`` gauges of the database's logical slots."""
    active = Gauge("streams_replication_slot_active", "1 when a process reads the replication slot.", ("slot",))
    lag = Gauge("streams_replication_slot_lag_bytes", "WAL written since the slot's reader confirmed its position.",
                ("slot",))
    kept = Gauge("streams_replication_slot_retained_bytes", "WAL the server keeps for the slot.", ("slot",))
    for slot in slots:
        active.add(1 if slot.active else 0, slot.name)
        if slot.lag_bytes is not None:
            lag.add(slot.lag_bytes, slot.name)
        if slot.retained_bytes is not None:
            kept.add(slot.retained_bytes, slot.name)
    return [active, lag, kept]

"""Handlers on Redis Streams: a consumer group per app, entries acknowledged (``XACK``) after the
handler's effect.

For every stream its handlers read, the consumer creates the group (the app id) if it is missing
(from the stream's first entry: a new group reads what the stream holds), then loops:

* ``XREADGROUP`` of up to ``STREAMS_REDIS_READ_COUNT`` entries — first the entries this consumer
  (``STREAMS_APP_ID`` + a name per process, :attr:`RedisStreamConsumer.name`) was given and never
  acknowledged (a restart under the same name finishes them), then new ones (``>``);
* each entry is handled by every handler of the stream (:class:`~streams.consume.runner.HandlerRunner`,
  the same decode and bad-input rules as Kafka), then ``XACK`` ed: a crash in between leaves it
  pending, it is handled again, and ``effects=`` makes the repeat a no-op;
* entries pending with *another* consumer longer than ``STREAMS_REDIS_CLAIM_IDLE`` seconds (its
  process died) are taken over with ``XAUTOCLAIM`` and handled here;
* bad input is parked in the stream ``<stream>.dlq`` (the entry's fields plus the ``dlq.*``
  headers as ``h:dlq.*`` fields) and acknowledged;
* a lost connection (Redis restarted) is retried with backoff; nothing acknowledged is lost, and
  what was not acknowledged is read again from the pending list.

Order: a stream is one sequence, and one consumer handles it in order. Several consumers of one
group share the entries without regard to keys, so per-key order holds with one consumer per
group (another one waits as a standby, taking over what the first left pending), not with
several. Redis has no delayed delivery: delayed retries are refused (:mod:`streams.broker_consume`).
Lag = pending entries + entries the group has not read yet (``XINFO GROUPS``: ``pending`` + ``lag``).
"""

from __future__ import annotations

import asyncio
import logging
import os
import socket
from typing import Any

from streams.broker_consume import BrokerRecord, BrokerWrites, Sleeps, runners
from streams.consume import waiting
from streams.consume.headers import headers_dict
from streams.redis_streams.entries import from_fields, to_fields
from streams.settings import redact_url

log = logging.getLogger(__name__)


def entry_offset(entry_id: bytes | str) -> int:
    """A stream entry id (``<ms>-<seq>``) as one increasing number: ``ms << 20 | seq``."""
    text = entry_id.decode() if isinstance(entry_id, bytes) else entry_id
    ms, _, seq = text.partition("-")
    return int(ms) << 20 | int(seq or 0)


class RedisWrites(BrokerWrites):
    """Every write (dead letters to ``<stream>.dlq``, outputs to their stream) is an ``XADD``."""

    def __init__(self, maxlen: int | None) -> None:
        self.client: Any = None
        self.maxlen = maxlen

    async def publish(self, topic: str, key: bytes | None, value: bytes | None, headers: Any,
                      partition: int | None = None) -> None:
        pairs = list(headers.items()) if isinstance(headers, dict) else list(headers or [])
        await self.client.xadd(topic, to_fields(key, value or b"", pairs), maxlen=self.maxlen,
                               approximate=self.maxlen is not None)


class RedisStreamConsumer:
    """Runs ``app``'s handlers (``handlers``: their names; None: all) on Redis Streams until :meth:`stop`."""

    def __init__(self, app: Any, handlers: list[str] | None = None, *, name: str | None = None) -> None:
        self.app = app
        self.settings = app.settings
        self.group = app.app_id
        #: this consumer's name in the group: the same name after a restart finishes its pending entries
        self.name = name or f"{socket.gethostname()}-{os.getpid()}"
        self.writes = RedisWrites(self.settings.redis_stream_maxlen)
        self.runners = runners(app, self.writes, handlers, broker="redis", offsets=True)
        self.by_stream: dict[str, list[Any]] = {}
        for runner in self.runners:
            self.by_stream.setdefault(runner.spec.topic.name, []).append(runner)
        self._stop = asyncio.Event()
        self.handled = 0
        self.claimed = 0
        self.connected = asyncio.Event()

    def stop(self) -> None:
        self._stop.set()

    async def run(self) -> None:
        """Consume until :meth:`stop`; reconnects (with backoff) whenever Redis does not answer."""
        import redis.asyncio as aioredis
        from redis.exceptions import ConnectionError as RedisConnectionError
        from redis.exceptions import TimeoutError as RedisTimeoutError

        waiting.waits_of(Sleeps())
        delay = 0.5
        while not self._stop.is_set():
            client = aioredis.Redis.from_url(self.settings.redis_connection_url, socket_connect_timeout=5,
                                             socket_timeout=30)
            self.writes.client = client
            try:
                await self._consume(client)
            except (RedisConnectionError, RedisTimeoutError, OSError) as exc:
                log.warning("Redis at %s not answering (%s: %s); retrying in %.1fs (unacknowledged entries stay "
                            "pending)", redact_url(self.settings.redis_connection_url), type(exc).__name__, exc,
                            delay)
                await self._sleep(delay)
                delay = min(delay * 2, 10.0)
            else:
                delay = 0.5
            finally:
                self.connected.clear()
                try:
                    await client.aclose()
                except Exception:  # noqa: BLE001 - the connection is dropped either way
                    pass

    async def _sleep(self, seconds: float) -> None:
        try:
            await asyncio.wait_for(self._stop.wait(), seconds)
        except TimeoutError:
            pass

    async def _consume(self, client: Any) -> None:
        from redis.exceptions import ResponseError

        for stream in self.by_stream:
            try:
                await client.xgroup_create(stream, self.group, id="0", mkstream=True)
            except ResponseError as exc:
                if "BUSYGROUP" not in str(exc):
                    raise
        self.connected.set()
        log.info("consuming %s from Redis (group %s, consumer %s)", ", ".join(self.by_stream), self.group, self.name)
        # this consumer's own pending entries first (given to it before a restart, never acknowledged),
        # paged from id 0; then new entries (">")
        positions = dict.fromkeys(self.by_stream, "0")
        loop = asyncio.get_running_loop()
        next_claim = loop.time()
        while not self._stop.is_set():
            if loop.time() >= next_claim:
                await self._claim(client)
                next_claim = loop.time() + max(self.settings.redis_claim_idle / 4, 0.5)
            backlog = any(p != ">" for p in positions.values())
            reply = await client.xreadgroup(self.group, self.name, positions, count=self.settings.redis_read_count,
                                            block=None if backlog else 1000)
            got = {(s.decode() if isinstance(s, bytes) else s): entries for s, entries in (reply or [])}
            for stream in list(positions):
                entries = got.get(stream, [])
                if positions[stream] != ">":
                    positions[stream] = entries[-1][0].decode() if entries else ">"
                for entry_id, fields in entries:
                    if not fields:  # deleted (trimmed) while pending: nothing to handle
                        await client.xack(stream, self.group, entry_id)
                        continue
                    await self._handle(client, stream, entry_id, fields)

    async def _claim(self, client: Any) -> None:
        """Take over entries pending too long with another consumer (which may have died)."""
        idle_ms = int(self.settings.redis_claim_idle * 1000)
        for stream in self.by_stream:
            start = "0-0"
            while True:
                reply = await client.xautoclaim(stream, self.group, self.name, idle_ms, start_id=start, count=100)
                start, entries = reply[0], reply[1]
                for entry_id, fields in entries:
                    self.claimed += 1
                    log.warning("%s: took over entry %s of %s (pending with another consumer for more than %.0fs)",
                                self.name, entry_id.decode(), stream, self.settings.redis_claim_idle)
                    if not fields:
                        await client.xack(stream, self.group, entry_id)
                        continue
                    await self._handle(client, stream, entry_id, fields)
                if start in (b"0-0", "0-0"):
                    break

    async def _handle(self, client: Any, stream: str, entry_id: bytes, fields: dict) -> None:
        key, value, headers = from_fields(fields)
        record = BrokerRecord(stream, 0, entry_offset(entry_id), key, value, headers)
        if value is None:  # an entry some other client wrote without a value field: nothing to decode (not_json);
            # its fields go with the dead letter as redis.field.<name> headers, byte for byte
            record.value = b""
            known = (b"key", b"message_id")
            headers.extend((f"redis.field.{name.decode('utf-8', 'replace')}", raw) for name, raw in fields.items()
                           if name not in known and not name.startswith(b"h:"))
        parsed = headers_dict(record)
        for runner in self.by_stream[stream]:
            await runner.process(record, parsed)
        await client.xack(stream, self.group, entry_id)
        self.handled += 1

    async def lag(self) -> dict[str, int]:
        """Per stream: entries pending in the group + entries it has not read yet (:mod:`streams.redis_streams.lag`)."""
        from streams.redis_streams.lag import stream_lag

        return {stream: (await stream_lag(self.settings.redis_connection_url, stream, self.group)).total
                for stream in self.by_stream}

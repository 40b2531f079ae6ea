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
several. Lag = pending entries + entries the group has not read yet (``XINFO GROUPS``:
``pending`` + ``lag``), per stream, its retry streams included.

**Delayed retries** (``RetryPolicy(delayed_retries=(5, 60))``): Redis has no delayed delivery, so
each level is a stream of its own, ``<stream>.retry.<n>``, read by the same group in a loop of its
own. A message that failed its in-place attempts is added there with its due time (the same
``retry.*`` headers as a Kafka retry topic); the level's loop waits for the due time of its head
(one delay per level: the head is always due first), then runs the handlers and acknowledges. The
source stream goes on meanwhile; a consumer stopped or killed during the wait leaves the entry
pending, and it is waited for and handled after the restart. The handlers of one stream share its
levels, so they must have the same delays (as on RabbitMQ).
"""

from __future__ import annotations

import asyncio
import logging
import os
import socket
import time
from typing import Any

from streams.broker_consume import BrokerRecord, BrokerWrites, Sleeps, delays_per_topic, runners
from streams.consume import waiting
from streams.consume.headers import headers_dict
from streams.kafka.names import H_RETRY_DUE, retry_topic
from streams.redis_streams.entries import from_fields, to_fields
from streams.settings import redact_url

log = logging.getLogger(__name__)


async def _first_set(*events: asyncio.Event) -> None:
    """Return once any of ``events`` is set."""
    waits = [asyncio.ensure_future(e.wait()) for e in events]
    try:
        await asyncio.wait(waits, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for w in waits:
            w.cancel()


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
        #: retry stream -> the source stream whose handlers it feeds (one per delayed-retry level)
        self.retry_streams: dict[str, str] = {}
        for stream, delays in delays_per_topic(self.by_stream, "Redis stream").items():
            for level in range(1, len(delays) + 1):
                self.retry_streams[retry_topic(stream, level)] = stream
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

        for stream in [*self.by_stream, *self.retry_streams]:
            try:
                await client.xgroup_create(stream, self.group, id="0", mkstream=True)
            except ResponseError as exc:
                if "BUSYGROUP" not in str(exc):
                    raise
        self.connected.set()
        log.info("consuming %s from Redis (group %s, consumer %s)", ", ".join(self.by_stream), self.group, self.name)
        # the source streams in one loop, each retry level in its own (its waits must not hold the others up);
        # a loop that fails (the connection lost) halts the others between entries, never inside a handler
        halt = asyncio.Event()
        loops = [asyncio.create_task(self._read(client, list(self.by_stream), halt), name="redis-sources")]
        loops += [asyncio.create_task(self._read(client, [stream], halt), name=f"redis-{stream}")
                  for stream in self.retry_streams]
        try:
            _, pending = await asyncio.wait(loops, return_when=asyncio.FIRST_EXCEPTION)
            if pending:
                halt.set()
                await asyncio.wait(pending)
            for task in loops:
                task.result()  # a loop's error ends this connection's work
        finally:
            for task in loops:
                task.cancel()  # only if this coroutine itself was cancelled: the loops are done otherwise
            await asyncio.gather(*loops, return_exceptions=True)

    async def _read(self, client: Any, streams: list[str], halt: asyncio.Event) -> None:
        """Read and handle ``streams`` until :meth:`stop` (or ``halt``: another loop failed): this
        consumer's own pending entries first (given to it before a restart, never acknowledged),
        paged from id 0; then new ones (``>``). A retry level is read one entry at a time: only its
        head waits for its due time, pending with this consumer."""
        retry = streams[0] in self.retry_streams
        count = 1 if retry else self.settings.redis_read_count
        positions = dict.fromkeys(streams, "0")
        loop = asyncio.get_running_loop()
        next_claim = loop.time()
        while not self._stop.is_set() and not halt.is_set():
            if loop.time() >= next_claim:
                await self._claim(client, streams, halt)
                next_claim = loop.time() + max(self.settings.redis_claim_idle / 4, 0.5)
            backlog = any(p != ">" for p in positions.values())
            reply = await client.xreadgroup(self.group, self.name, positions, count=count,
                                            block=None if backlog else 1000)
            got = {(s.decode() if isinstance(s, bytes) else s): entries for s, entries in (reply or [])}
            for stream in list(positions):
                entries = got.get(stream, [])
                if positions[stream] != ">":
                    positions[stream] = entries[-1][0].decode() if entries else ">"
                for entry_id, fields in entries:
                    if retry and (self._stop.is_set() or halt.is_set()):
                        return  # not handled, not acknowledged: pending for the next start
                    if not fields:  # deleted (trimmed) while pending: nothing to handle
                        await client.xack(stream, self.group, entry_id)
                        continue
                    await self._handle(client, stream, entry_id, fields, halt)

    async def _claim(self, client: Any, streams: list[str], halt: asyncio.Event) -> None:
        """Take over entries of ``streams`` pending too long with another consumer (which may have died)."""
        idle_ms = int(self.settings.redis_claim_idle * 1000)
        for stream in streams:
            start = "0-0"
            while not (self._stop.is_set() or halt.is_set()):
                # a retry level's entries one at a time: each waits for its due time, the rest must not idle meanwhile
                count = 1 if stream in self.retry_streams else 100
                reply = await client.xautoclaim(stream, self.group, self.name, idle_ms, start_id=start, count=count)
                start, entries = reply[0], reply[1]
                for entry_id, fields in entries:
                    self.claimed += 1
                    log.warning("%s: took over entry %s of %s (pending with another consumer for more than %.0fs)",
                                self.name, entry_id.decode(), stream, self.settings.redis_claim_idle)
                    if not fields:
                        await client.xack(stream, self.group, entry_id)
                        continue
                    await self._handle(client, stream, entry_id, fields, halt)
                if start in (b"0-0", "0-0"):
                    break

    async def _handle(self, client: Any, stream: str, entry_id: bytes, fields: dict, halt: asyncio.Event) -> None:
        key, value, headers = from_fields(fields)
        record = BrokerRecord(stream, 0, entry_offset(entry_id), key, value, headers)
        if value is None:  # an entry some other client wrote without a value field: nothing to decode (not_json);
            # its fields go with the dead letter as redis.field.<name> headers, byte for byte
            record.value = b""
            known = (b"key", b"message_id")
            headers.extend((f"redis.field.{name.decode('utf-8', 'replace')}", raw) for name, raw in fields.items()
                           if name not in known and not name.startswith(b"h:"))
        parsed = headers_dict(record)
        source = self.retry_streams.get(stream)
        handlers = self.by_stream[source or stream]
        if source is not None and not await self._until_due(client, stream, entry_id, parsed, halt):
            return  # stopped while waiting: the entry stays pending
        for runner in handlers:
            await runner.process(record, parsed)
        await client.xack(stream, self.group, entry_id)
        self.handled += 1

    async def _until_due(self, client: Any, stream: str, entry_id: bytes, headers: dict[str, bytes],
                         halt: asyncio.Event) -> bool:
        """Wait for a retry entry's due time (``retry.due_at``; unreadable: due now); False when
        :meth:`stop` or ``halt`` came first. While it waits, the entry's idle time is set back to 0
        every quarter of ``STREAMS_REDIS_CLAIM_IDLE`` (``XCLAIM … JUSTID``): another consumer's
        ``XAUTOCLAIM`` takes over entries of a consumer that died, not of one that waits."""
        try:
            due = float(headers.get(H_RETRY_DUE) or 0)
        except ValueError:
            due = 0.0
        step = max(self.settings.redis_claim_idle / 4, 0.5)
        stopped = asyncio.ensure_future(_first_set(self._stop, halt))
        try:
            while (remaining := due - time.time()) > 0:
                done, _ = await asyncio.wait([stopped], timeout=min(remaining, step))
                if done:
                    return False
                await client.xclaim(stream, self.group, self.name, 0, [entry_id], justid=True)
            return not stopped.done()
        finally:
            stopped.cancel()
            await asyncio.gather(stopped, return_exceptions=True)

    async def lag(self) -> dict[str, int]:
        """Per stream: entries pending in the group + entries it has not read yet (:mod:`streams.redis_streams.lag`)."""
        from streams.redis_streams.lag import stream_lag

        return {stream: (await stream_lag(self.settings.redis_connection_url, stream, self.group)).total
                for stream in [*self.by_stream, *self.retry_streams]}

"""The relay's Redis Streams publisher: one ``XADD`` per row to the stream named by its topic.

A batch goes out as one pipeline (the entries of a key land in row order); a row is *sent*
once Redis answered its ``XADD`` with an entry id. Redis keeps it in memory and in its
append-only file, flushed every second with ``appendfsync everysec``: **a crash of Redis
itself can lose up to the last second of entries the relay already marked done**
(``appendfsync always`` closes that gap at a price in throughput; Redis 7.0 has no way to
wait for the file's flush per write). ``STREAMS_REDIS_STREAM_MAXLEN`` trims each stream to
about that many entries (``MAXLEN ~``), which drops the oldest entries whether a consumer
group has read them or not.

Redis creates a stream on the first ``XADD``: there is no "missing topic" here. An answer
that is an error (wrong type of key, out of memory) is a failed attempt; a lost connection
or no answer within the publish timeout leaves the batch's unanswered rows as they were
(sent again later with the same ``message_id``; consumers drop the copy).
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any

from streams.outbox.rows import OutboxRow, PublishResult
from streams.redis_streams.entries import to_fields
from streams.settings import Settings, redact_url

log = logging.getLogger(__name__)


class RedisStreamPublisher:
    """Sends rows to Redis streams and reports, per row, whether Redis stored it."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.client: Any = None

    async def start(self, stopping: asyncio.Event) -> bool:
        """Connect (as long as it takes, unless ``stopping`` is set first: then False)."""
        import redis.asyncio as aioredis
        from redis.exceptions import RedisError

        timeout = self.settings.relay_publish_timeout
        self.client = aioredis.Redis.from_url(self.settings.redis_connection_url, socket_timeout=timeout,
                                              socket_connect_timeout=min(timeout, 5.0))
        delay = 1.0
        while not stopping.is_set():
            try:
                await self.client.ping()
                return True
            except (RedisError, OSError) as exc:
                log.warning("Redis at %s not reachable (%s); retrying in %.0fs",
                            redact_url(self.settings.redis_connection_url), exc, delay)
            try:
                await asyncio.wait_for(stopping.wait(), delay)
            except TimeoutError:
                pass
            delay = min(delay * 2, 10)
        return False

    async def stop(self, timeout: float | None = None) -> None:
        if self.client is not None:
            try:
                await asyncio.wait_for(self.client.aclose(), timeout or self.settings.relay_publish_timeout)
            except Exception as exc:  # noqa: BLE001 - closing is best effort
                log.warning("Redis connection did not close cleanly: %s", exc)
            self.client = None

    async def publish(self, rows: list[OutboxRow]) -> PublishResult:
        from redis.exceptions import ConnectionError as RedisConnectionError
        from redis.exceptions import TimeoutError as RedisTimeoutError

        assert self.client is not None
        result = PublishResult()
        maxlen = self.settings.redis_stream_maxlen
        pipe = self.client.pipeline(transaction=False)
        for row in rows:
            key, value, headers = row.record()
            pipe.xadd(row.topic, to_fields(key, value, headers), maxlen=maxlen, approximate=maxlen is not None)
        try:
            answers = await asyncio.wait_for(pipe.execute(raise_on_error=False), self.settings.relay_publish_timeout)
        except (TimeoutError, RedisConnectionError, RedisTimeoutError, OSError) as exc:
            log.warning("Redis did not answer the batch (%s: %s); its rows stay pending", type(exc).__name__, exc)
            result.unsent = list(rows)
            return result
        for row, answer in zip(rows, answers, strict=True):
            if isinstance(answer, BaseException):
                result.failed.append((row, answer))
            else:
                result.sent.append(row)
        return result

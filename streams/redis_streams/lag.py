"""A group's backlog on a Redis stream: entries pending with its consumers + entries it has not read.

``XINFO GROUPS`` gives both (``pending``, and ``lag`` since Redis 7.0). ``lag`` is unknown (None)
when Redis cannot tell (entries deleted from the middle of the stream); the stream's length
then bounds it.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass
class StreamLag:
    stream: str
    group: str
    exists: bool
    pending: int = 0
    unread: int | None = 0
    length: int = 0
    consumers: int = 0

    @property
    def total(self) -> int:
        return self.pending + (self.unread if self.unread is not None else self.length)


async def stream_lag(url: str, stream: str, group: str) -> StreamLag:
    import redis.asyncio as aioredis
    from redis.exceptions import ResponseError

    client = aioredis.Redis.from_url(url)
    try:
        try:
            groups = await client.xinfo_groups(stream)
        except ResponseError:  # no such stream
            return StreamLag(stream, group, exists=False)
        length = await client.xlen(stream)
        for info in groups:
            if info["name"].decode() == group:
                lag = info.get("lag")
                return StreamLag(stream, group, True, int(info["pending"]), None if lag is None else int(lag), length,
                                 int(info["consumers"]))
        return StreamLag(stream, group, exists=False, length=length)
    finally:
        await client.aclose()

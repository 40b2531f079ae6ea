"""Helpers of the RabbitMQ / Redis tests: declare a group's queues, read back what a broker holds
with the broker's own client (aio-pika, redis-py), not the framework's consumer."""

from __future__ import annotations

import asyncio
from collections import Counter, defaultdict
from dataclasses import dataclass

from streams.outbox.rows import HEADER_OUTBOX_ID
from streams.rabbitmq.topology import GroupTopology, declare_group


@dataclass
class Held:
    """One message as the broker holds it: where it sits, its message_id, key and outbox row id."""

    place: str  # the lane queue, or the stream
    message_id: str
    key: str | None
    outbox_id: int | None


async def rabbit_declare(url: str, topology: GroupTopology, retry_delays: tuple[float, ...] = ()) -> None:
    import aio_pika

    conn = await aio_pika.connect(url)
    async with conn:
        await declare_group(await conn.channel(), topology, retry_delays)


async def rabbit_drain(url: str, queues: list[str], timeout: float = 60.0) -> list[Held]:
    """Every message in ``queues`` (consumed and acknowledged: the queues are empty after), in
    queue order."""
    import aio_pika

    out: list[Held] = []
    conn = await aio_pika.connect(url)
    async with conn:
        channel = await conn.channel()
        await channel.set_qos(prefetch_count=1000)
        for name in queues:
            queue = await channel.declare_queue(name, passive=True)
            count = queue.declaration_result.message_count
            got = 0
            if count:
                async with asyncio.timeout(timeout), queue.iterator() as messages:
                    async for message in messages:
                        headers = message.headers or {}
                        out.append(Held(name, str(message.message_id), _text(headers.get("key")),
                                        int(str(headers[HEADER_OUTBOX_ID])) if HEADER_OUTBOX_ID in headers else None))
                        await message.ack()
                        got += 1
                        if got == count:
                            break
    return out


def _text(value) -> str | None:
    if value is None:
        return None
    return value.decode() if isinstance(value, bytes) else str(value)


async def redis_read(url: str, stream: str) -> list[Held]:
    """Every entry of ``stream`` in stream order (XRANGE; nothing consumed)."""
    import redis.asyncio as aioredis

    client = aioredis.Redis.from_url(url)
    try:
        out: list[Held] = []
        start = "-"
        while True:
            entries = await client.xrange(stream, min=start, count=5000)
            for _entry_id, fields in entries:
                outbox = fields.get(b"h:" + HEADER_OUTBOX_ID.encode())
                out.append(Held(stream, fields[b"message_id"].decode(), _text(fields.get(b"key")),
                                int(outbox) if outbox is not None else None))
            if len(entries) < 5000:
                return out
            start = "(" + entries[-1][0].decode()
    finally:
        await client.aclose()


def order_view(held: list[Held]) -> tuple[Counter, dict[str, list[int]], dict[str, set[str]]]:
    """(copies per message_id, outbox ids per key in the order a consumer dropping copies sees them
    first, the places each key was found in)."""
    copies: Counter = Counter()
    per_key: dict[str, list[int]] = defaultdict(list)
    places: dict[str, set[str]] = defaultdict(set)
    seen: set[str] = set()
    for h in held:
        copies[h.message_id] += 1
        places[str(h.key)].add(h.place)
        if h.message_id in seen:
            continue
        seen.add(h.message_id)
        assert h.outbox_id is not None
        per_key[str(h.key)].append(h.outbox_id)
    return copies, per_key, places


async def rabbit_publish(url: str, exchange: str, messages: list, *, confirm: bool = True) -> None:
    """Publish ``messages`` (aio_pika.Message, routing key) to ``exchange`` with aio-pika itself
    (persistent, publisher confirms): bytes the framework did not write."""
    import aio_pika

    conn = await aio_pika.connect(url)
    async with conn:
        channel = await conn.channel(publisher_confirms=confirm)
        target = await channel.get_exchange(exchange)
        for i in range(0, len(messages), 500):  # 500 in flight at a time, each confirmed
            await asyncio.gather(*(target.publish(message, routing_key=key) for message, key in messages[i:i + 500]))


async def redis_add(url: str, stream: str, entries: list[dict]) -> None:
    """XADD ``entries`` (field dicts) with redis-py itself."""
    import redis.asyncio as aioredis

    client = aioredis.Redis.from_url(url)
    try:
        pipe = client.pipeline(transaction=False)
        for fields in entries:
            pipe.xadd(stream, fields)
        await pipe.execute()
    finally:
        await client.aclose()


def consumer_process(iso, label: str, broker: str, *extra: str, handler: str = "apply_order", **env: str):
    """A ``streams consume`` process running the broker test app's handler (not started yet), its web
    views on a free port (``proc.web_port``: :func:`consumer_web`)."""
    import sys

    from streams.dev.process import free_port
    from tests.harness import ROOT

    proc = iso.worker(label, STREAMS_WORKER_APP="tests.apps.broker_app:app", **env)
    proc.web_port = free_port()
    proc.command = [sys.executable, "-m", "streams.cli", "consume", "--broker", broker, "--handler", handler,
                    "--web-port", str(proc.web_port), *extra]
    proc.ready_marker = "consumer ready"
    proc.cwd = ROOT
    return proc


def consumer_web(proc, path: str) -> tuple[int, str]:
    """(status, body) of ``GET path`` on a :func:`consumer_process`'s web views."""
    import urllib.error
    import urllib.request

    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{proc.web_port}{path}", timeout=15) as resp:
            return resp.status, resp.read().decode()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read().decode()


async def rabbit_headers(url: str, queue: str) -> list[dict]:
    """The headers of every message in ``queue`` (consumed)."""
    import aio_pika

    out = []
    conn = await aio_pika.connect(url)
    async with conn:
        channel = await conn.channel()
        target = await channel.declare_queue(queue, passive=True)
        while (message := await target.get(fail=False)) is not None:
            out.append({k: _text(v) for k, v in (message.headers or {}).items()})
            await message.ack()
    return out

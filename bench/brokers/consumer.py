"""The benchmark's consumer process: the same handler on Kafka, RabbitMQ, Redis Streams or Redis pub/sub.

``python -m bench.brokers.consumer`` with ``BENCH_*`` variables:

* ``BENCH_BROKER``: ``kafka`` (aiokafka consumer group, ``getmany`` of up to 100, offsets committed
  after each batch is handled), ``rabbitmq`` (aio-pika, one consumer per lane queue with
  ``basic.qos`` prefetch ``BENCH_PREFETCH`` — 0 = unlimited — each message acknowledged after it
  is handled), ``redis`` (``XREADGROUP`` of up to 100, its own pending entries first after a
  restart, ``XACK`` after each message) or ``pubsub`` (``SUBSCRIBE``; nothing to acknowledge);
* ``BENCH_URL``, ``BENCH_TOPIC``, ``BENCH_GROUP``, ``BENCH_LANES`` (RabbitMQ);
* the handler: decode the envelope (``bench.messages.registry``), sleep ``BENCH_SLEEP_MS``, and
  with ``BENCH_DSN`` apply an effect in PostgreSQL — one row in ``effects`` per application —
  in one transaction with the processed-ID check when ``BENCH_DEDUP=1`` (a message_id already
  in ``processed`` is skipped and counted in ``redelivered``).

Messages are handled one at a time in arrival order, whatever the broker. Prints ``READY`` once
subscribed and ``HANDLED <n>`` every 0.5 s; exits after ``BENCH_EXPECT`` messages (0: never) with
a JSON line ``RESULT {...}`` (seconds from the first message to the last, peak RSS).
"""

from __future__ import annotations

import asyncio
import json
import os
import time
from pathlib import Path
from typing import Any

from bench.messages import registry

ENV = os.environ
BROKER = ENV.get("BENCH_BROKER", "kafka")
URL = ENV.get("BENCH_URL", "")
TOPIC = ENV.get("BENCH_TOPIC", "bench.brokers")
GROUP = ENV.get("BENCH_GROUP", "bench")
LANES = int(ENV.get("BENCH_LANES", "4"))
PREFETCH = int(ENV.get("BENCH_PREFETCH", "100"))
SLEEP = float(ENV.get("BENCH_SLEEP_MS", "0")) / 1000
DSN = ENV.get("BENCH_DSN")
DEDUP = ENV.get("BENCH_DEDUP", "0") == "1"
EXPECT = int(ENV.get("BENCH_EXPECT", "0"))


def vm_hwm_mib(pid: int | str = "self") -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return 0.0


class Handler:
    """Decode, wait, apply the effect (with or without the processed-ID check)."""

    def __init__(self) -> None:
        self.handled = 0
        self.first: float | None = None
        self.last = 0.0
        self.conn: Any = None
        self.done = asyncio.Event()

    async def start(self) -> None:
        if DSN:
            import psycopg

            self.conn = await psycopg.AsyncConnection.connect(DSN)

    async def __call__(self, value: bytes) -> None:
        envelope = registry.decode(value)
        if SLEEP:
            await asyncio.sleep(SLEEP)
        if self.conn is not None:
            async with self.conn.transaction():
                if DEDUP:
                    cur = await self.conn.execute(
                        "INSERT INTO processed (message_id) VALUES (%s) ON CONFLICT DO NOTHING", (envelope.message_id,))
                    if cur.rowcount == 0:
                        await self.conn.execute("UPDATE counters SET redelivered = redelivered + 1")
                        self._count()
                        return
                await self.conn.execute("INSERT INTO effects (message_id, key, n) VALUES (%s, %s, %s)",
                                        (envelope.message_id, envelope.key, envelope.payload.n))
        self._count()

    def _count(self) -> None:
        now = time.monotonic()
        self.first = self.first or now
        self.last = now
        self.handled += 1
        if EXPECT and self.handled >= EXPECT:
            self.done.set()


async def kafka(handle: Handler, stop: asyncio.Event) -> None:
    from aiokafka import AIOKafkaConsumer

    consumer = AIOKafkaConsumer(TOPIC, bootstrap_servers=URL, group_id=GROUP, enable_auto_commit=False,
                                auto_offset_reset="earliest")
    await consumer.start()
    print("READY", flush=True)
    try:
        while not stop.is_set():
            batches = await consumer.getmany(timeout_ms=500, max_records=100)
            for records in batches.values():
                for record in records:
                    await handle(record.value)
            if batches:
                await consumer.commit()
    finally:
        await consumer.stop()


async def rabbitmq(handle: Handler, stop: asyncio.Event) -> None:
    import aio_pika

    conn = await aio_pika.connect_robust(URL)
    channel = await conn.channel()
    await channel.set_qos(prefetch_count=PREFETCH)
    inbox: asyncio.Queue = asyncio.Queue()  # every lane's deliveries, handled one at a time
    for n in range(LANES):
        queue = await channel.get_queue(f"{TOPIC}.{GROUP}.{n}", ensure=False)
        await queue.consume(inbox.put)
    print("READY", flush=True)
    try:
        while not stop.is_set():
            try:
                message = await asyncio.wait_for(inbox.get(), 0.5)
            except TimeoutError:
                continue
            await handle(message.body)
            await message.ack()
    finally:
        await conn.close()


async def redis_streams(handle: Handler, stop: asyncio.Event) -> None:
    import redis.asyncio as aioredis

    client = aioredis.Redis.from_url(URL)
    print("READY", flush=True)
    start = "0"  # this consumer's own pending entries first (delivered before a crash, never acknowledged)
    try:
        while not stop.is_set():
            reply = await client.xreadgroup(GROUP, "c1", {TOPIC: start}, count=100, block=500)
            entries = reply[0][1] if reply else []
            if start == "0" and not entries:
                start = ">"
                continue
            for entry_id, fields in entries:
                await handle(fields[b"value"])
                await client.xack(TOPIC, GROUP, entry_id)
    finally:
        await client.aclose()


async def pubsub(handle: Handler, stop: asyncio.Event) -> None:
    import redis.asyncio as aioredis

    client = aioredis.Redis.from_url(URL)
    channel = client.pubsub()
    await channel.subscribe(TOPIC)
    print("READY", flush=True)
    try:
        while not stop.is_set():
            message = await channel.get_message(ignore_subscribe_messages=True, timeout=0.5)
            if message is not None:
                await handle(message["data"])
    finally:
        await channel.aclose()
        await client.aclose()


async def main() -> None:
    import signal

    handle = Handler()
    await handle.start()
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    loop.add_signal_handler(signal.SIGTERM, stop.set)

    async def report() -> None:
        while not stop.is_set():
            print(f"HANDLED {handle.handled}", flush=True)
            await asyncio.sleep(0.5)

    async def finish() -> None:
        await handle.done.wait()
        stop.set()

    run = {"kafka": kafka, "rabbitmq": rabbitmq, "redis": redis_streams, "pubsub": pubsub}[BROKER]
    await asyncio.gather(run(handle, stop), report(), finish() if EXPECT else stop.wait())
    seconds = (handle.last - handle.first) if handle.first else 0.0
    print("RESULT " + json.dumps({"handled": handle.handled, "seconds": round(seconds, 3),
                                  "peak_rss_mib": round(vm_hwm_mib(), 1)}), flush=True)


if __name__ == "__main__":
    asyncio.run(main())

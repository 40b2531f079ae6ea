"""Raw aiokafka consumer loop: the Python limit for the benchmark.

``python -m bench.raw_consumer`` with ``STREAMS_*`` settings (bootstrap, app id =
group id, topic prefix) and ``BENCH_COMMIT_INTERVAL`` (seconds; default 5.0, the interval of
aiokafka's own auto-commit, ``auto_commit_interval_ms=5000``).
Joins the group, ``getmany`` in a loop, decodes every record with
``registry.decode(value)`` and commits the consumed positions periodically.
Prints ``BENCH-RAW READY`` once partitions are assigned. Stops on SIGTERM
(after a final commit).
"""

from __future__ import annotations

import asyncio
import os
import signal
import sys
import time

from aiokafka import AIOKafkaConsumer, ConsumerRebalanceListener

from bench.messages import TOPIC, registry
from streams import load_settings

READY_MARKER = "BENCH-RAW READY"
#: aiokafka's default auto-commit interval (``auto_commit_interval_ms=5000``), in seconds
DEFAULT_COMMIT_INTERVAL = 5.0


class _Ready(ConsumerRebalanceListener):
    def __init__(self) -> None:
        self.announced = False

    async def on_partitions_revoked(self, revoked) -> None:
        return None

    async def on_partitions_assigned(self, assigned) -> None:
        if assigned and not self.announced:
            self.announced = True
            print(f"{READY_MARKER} {sorted(tp.partition for tp in assigned)}", flush=True)


async def main() -> int:
    settings = load_settings()
    topic = f"{settings.topic_prefix}{TOPIC}"
    interval = float(os.environ.get("BENCH_COMMIT_INTERVAL") or DEFAULT_COMMIT_INTERVAL)
    consumer = AIOKafkaConsumer(
        **settings.kafka_client_kwargs(),
        group_id=settings.app_id,
        enable_auto_commit=False,
        auto_offset_reset="earliest",
    )
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    consumer.subscribe([topic], listener=_Ready())
    await consumer.start()
    decoded = 0
    last_commit = time.monotonic()
    dirty = False
    try:
        while not stop.is_set():
            batch = await consumer.getmany(timeout_ms=200, max_records=5000)
            for records in batch.values():
                for record in records:
                    registry.decode(record.value)
                    decoded += 1
                dirty = dirty or bool(records)
            now = time.monotonic()
            if dirty and now - last_commit >= interval:
                await consumer.commit()
                last_commit, dirty = now, False
        if dirty:
            await consumer.commit()
    finally:
        await consumer.stop()
    print(f"BENCH-RAW decoded {decoded}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(asyncio.run(main()))

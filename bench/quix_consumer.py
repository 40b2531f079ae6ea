"""Quix Streams consumer (benchmark peer): the same decode, optionally the same dedup.

``python -m bench.quix_consumer`` with ``STREAMS_*`` settings (bootstrap, app id =
consumer group, topic prefix, worker data dir = state dir) and ``BENCH_DEDUP``
(1/0). Each record value is decoded with ``registry.decode`` (the framework's
pydantic envelope decode); with dedup, a stateful step looks the ``message_id``
up in Quix's RocksDB state store (keyed by the record key, changelog-backed)
and stores it — what the framework's processed-ID table does. Commits at least
once, every ``BENCH_COMMIT_INTERVAL`` seconds if that is set, else at Quix's own
default interval (5 s). Prints ``BENCH-QUIX READY`` when the first record arrives
(the benchmark's clock does not use it: it starts when the broker reports the
group stable, for every variant alike).

Quix Streams is a benchmark-only extra (``pip install -e '.[bench]'``), not a
dependency of the framework.
"""

from __future__ import annotations

import os
import sys

from quixstreams import Application

from bench.messages import TOPIC, registry
from streams import load_settings

READY_MARKER = "BENCH-QUIX READY"


def main() -> int:
    settings = load_settings()
    dedup = os.environ.get("BENCH_DEDUP", "0") not in ("0", "false", "no", "")
    interval = os.environ.get("BENCH_COMMIT_INTERVAL")
    app = Application(
        broker_address=settings.bootstrap_servers,
        consumer_group=settings.app_id,
        auto_offset_reset="earliest",
        **({"commit_interval": float(interval)} if interval else {}),  # unset: Quix's default
        state_dir=str(settings.worker_data_dir or settings.home_path / "quix"),
        processing_guarantee="at-least-once",
        loglevel="INFO",
    )
    topic = app.topic(f"{settings.topic_prefix}{TOPIC}", value_deserializer="bytes", key_deserializer="bytes")
    announced = []

    def decode(value: bytes):
        if not announced:
            announced.append(True)
            print(READY_MARKER, flush=True)
        return registry.decode(value)

    def first_time(envelope, state) -> bool:
        if state.get(envelope.message_id) is not None:
            return False
        state.set(envelope.message_id, 1)
        return True

    sdf = app.dataframe(topic).apply(decode)
    if dedup:
        sdf = sdf.filter(first_time, stateful=True)
    app.run()
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""A raw producer for tests: writes exactly the bytes it is given, like kcat would.

Run as a separate process (``python -m tests.raw_producer BOOTSTRAP TOPIC``) with
one JSON record per line on stdin::

    {"key": hex|null, "value": hex|null, "headers": [[name_hex, value_hex|null], ...], "partition": int|null}

It prints one JSON line per record, ``{"partition": p, "offset": o}``, in the
order given. Header *names* are bytes too: names that are not UTF-8 cannot be
sent through aiokafka's C record builder, so this process uses aiokafka's
pure-Python builder (``AIOKAFKA_NO_EXTENSIONS``) and hands it names whose
encoding yields the raw bytes. Records go out one by one (``send_and_wait``), so
records with the same key keep their order.
"""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
from typing import Any


class RawName(str):
    """A header name whose UTF-8 encoding is replaced by the given raw bytes."""

    raw: bytes

    def __new__(cls, raw: bytes) -> "RawName":
        name = super().__new__(cls, raw.decode("latin-1"))
        name.raw = raw
        return name

    def encode(self, encoding: str = "utf-8", errors: str = "strict") -> bytes:  # type: ignore[override]
        return self.raw


def _bytes(text: str | None) -> bytes | None:
    return None if text is None else bytes.fromhex(text)


async def _produce(bootstrap: str, topic: str, lines: list[str]) -> None:
    from aiokafka import AIOKafkaProducer

    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, acks="all", enable_idempotence=True,
                                max_request_size=4 * 1024 * 1024)
    await producer.start()
    try:
        for line in lines:
            spec = json.loads(line)
            headers = [(RawName(bytes.fromhex(n)), _bytes(v)) for n, v in spec.get("headers", [])]
            md = await producer.send_and_wait(topic, value=_bytes(spec.get("value")), key=_bytes(spec.get("key")),
                                              headers=headers, partition=spec.get("partition"))
            print(json.dumps({"partition": md.partition, "offset": md.offset}), flush=True)
    finally:
        await producer.stop()


def produce(bootstrap: str, topic: str, records: list[dict[str, Any]]) -> list[tuple[int, int]]:
    """Write ``records`` (``key``/``value`` bytes or None, ``headers`` [(name bytes, value bytes or None)],
    optional ``partition``, else the producer's partitioner) with the raw producer process; returns
    (partition, offset) of each."""
    lines = [json.dumps({
        "key": None if r.get("key") is None else r["key"].hex(),
        "value": None if r.get("value") is None else r["value"].hex(),
        "headers": [[n.hex(), None if v is None else v.hex()] for n, v in r.get("headers", [])],
        "partition": r.get("partition"),
    }) for r in records]
    done = subprocess.run([sys.executable, "-m", "tests.raw_producer", bootstrap, topic], input="\n".join(lines),
                          capture_output=True, text=True, timeout=600,
                          env={**os.environ, "AIOKAFKA_NO_EXTENSIONS": "1"},  # read when aiokafka is imported
                          cwd=os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    if done.returncode:
        raise RuntimeError(f"raw producer failed ({done.returncode}): {done.stderr[-2000:]}")
    out = [json.loads(line) for line in done.stdout.splitlines() if line.startswith("{")]
    assert len(out) == len(records), done.stderr[-2000:]
    return [(o["partition"], o["offset"]) for o in out]


if __name__ == "__main__":
    asyncio.run(_produce(sys.argv[1], sys.argv[2], [line for line in sys.stdin.read().splitlines() if line]))

"""Helpers for outbox / relay tests: write rows, run relays in-process or as processes, read what Kafka got."""

from __future__ import annotations

import asyncio
import contextlib
import sys
from collections import Counter, defaultdict

import psycopg

from streams.kafka.admin import TopicSpec, ensure_topics
from streams.messages.envelope import event
from streams.outbox.rows import HEADER_OUTBOX_ID
from streams.outbox.schema import migrate
from streams.outbox.writer import write_message
from tests.harness import ROOT, Isolated
from tests.helpers import run
from tests.reference import read_topic

RELAY_READY = "relay "  # first log line of a started relay contains "relay <name> started"


def prepare_outbox(iso: Isolated) -> None:
    """Migrate the outbox in the test's database."""
    with psycopg.connect(iso.settings.dsn, autocommit=True) as conn:
        migrate(conn, iso.settings.outbox_table)


def prepare(iso: Isolated, topic: str = "outbox.events", partitions: int = 6) -> str:
    """Migrate the outbox in the test's database and create the target topic; returns its full name."""
    prepare_outbox(iso)
    full = iso.topic(topic)
    run(ensure_topics(iso.settings, [TopicSpec(full, partitions)]))
    return full


def write(iso: Isolated, topic: str, n: int, *, keys: int = 10, tag: str = "m", commit: bool = True) -> list[str]:
    """Write ``n`` events in one transaction (committed or rolled back); returns their message ids."""
    ids = []
    with psycopg.connect(iso.settings.dsn) as conn:
        for i in range(n):
            env = event("ThingHappened", {"n": i, "tag": tag}, key=f"k{i % keys}")
            write_message(conn, env, topic=topic, table=iso.settings.outbox_table)
            ids.append(env.message_id)
        if commit:
            conn.commit()
        else:
            conn.rollback()
    return ids


@contextlib.asynccontextmanager
async def relay_running(settings, cls=None, **kwargs):
    """An in-process relay for the duration of the block (stopped gracefully after)."""
    from streams.outbox.relay import Relay

    relay = (cls or Relay)(settings, **kwargs)
    task = asyncio.create_task(relay.run())
    try:
        yield relay
    finally:
        relay.stop()
        await asyncio.wait_for(task, 60)


def relay_process(iso: Isolated, label: str, *extra: str, **env: str):
    """A ``streams relay`` process (not started yet)."""
    proc = iso.worker(label, **env)
    proc.command = [sys.executable, "-m", "streams.cli", "relay", "--name", label, *extra]
    proc.ready_marker = f"relay {label} started"
    proc.cwd = ROOT
    return proc


def kafka_view(iso: Isolated, topic: str) -> tuple[Counter, dict[str, list[int]]]:
    """(copies per message_id, outbox ids per key in partition order of first appearance)."""
    records = read_topic(iso, topic)
    copies: Counter = Counter()
    per_key: dict[str, list[int]] = defaultdict(list)
    seen: set[str] = set()
    for r in sorted(records, key=lambda r: (r.partition, r.offset)):
        headers = dict(r.headers)
        mid = headers["message_id"].decode()
        copies[mid] += 1
        if mid in seen:
            continue  # a consumer drops the copy: order is judged on first appearances
        seen.add(mid)
        per_key[r.key.decode()].append(int(headers[HEADER_OUTBOX_ID].decode()))
    return copies, per_key


def outbox_status(iso: Isolated) -> dict[str, int]:
    return dict(iso.sql(f"SELECT status, count(*) FROM {iso.settings.outbox_table} GROUP BY 1"))

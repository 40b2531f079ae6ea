"""The project's own Kafka broker: real Apache Kafka from Maven Central jars, started and stopped by pid."""

from __future__ import annotations

import os
import subprocess
import sys
import uuid
from pathlib import Path

import pytest
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer
from aiokafka.admin import AIOKafkaAdminClient, NewTopic

from streams.dev.kafka import KAFKA_VERSION, LocalKafka
from streams.dev.process import ServiceError, free_port, pid_alive, port_open
from tests.harness import ROOT
from tests.helpers import run


async def _produce(bootstrap: str, topic: str, n: int) -> None:
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
    await admin.start()
    try:
        await admin.create_topics([NewTopic(topic, 3, 1)])
    finally:
        await admin.close()
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, acks="all", enable_idempotence=True)
    await producer.start()
    try:
        for i in range(n):
            await producer.send_and_wait(topic, f"value-{i}".encode(), key=f"k{i}".encode())
    finally:
        await producer.stop()


async def _consume_all(bootstrap: str, topic: str, expected: int, timeout_ms: int = 20000) -> list[bytes]:
    consumer = AIOKafkaConsumer(topic, bootstrap_servers=bootstrap, auto_offset_reset="earliest",
                                enable_auto_commit=False, group_id=None)
    await consumer.start()
    values: list[bytes] = []
    try:
        while len(values) < expected:
            batch = await consumer.getmany(timeout_ms=timeout_ms)
            if not batch:
                break
            for records in batch.values():
                values.extend(r.value for r in records)
    finally:
        await consumer.stop()
    return values


@pytest.fixture
def own_broker(tmp_path: Path):
    """A second, throwaway broker (own ports and data dir) so restarts do not disturb the session one."""
    broker = LocalKafka(data_dir=tmp_path / "kafka", cache_dir=ROOT / ".streams" / "cache",
                        port=free_port(), controller_port=free_port())
    try:
        yield broker
    finally:
        broker.down()


def test_round_trip_and_data_survive_a_broker_restart(own_broker: LocalKafka) -> None:
    took = own_broker.up()
    print(f"broker start: {took:.1f}s (Kafka {KAFKA_VERSION})")
    assert own_broker.is_running()
    pid = own_broker.pid()
    assert own_broker.up() == 0.0, "a second `up` must notice the broker already runs"
    assert own_broker.pid() == pid

    topic = f"harness-{uuid.uuid4().hex[:6]}"
    run(_produce(own_broker.bootstrap, topic, 60))
    assert sorted(run(_consume_all(own_broker.bootstrap, topic, 60))) == sorted(
        f"value-{i}".encode() for i in range(60))

    assert own_broker.down() is True
    assert not pid_alive(pid) and not port_open("127.0.0.1", own_broker.port)
    assert own_broker.status()["running"] is False
    assert own_broker.down() is False, "down on a stopped broker is harmless"

    own_broker.up()
    assert own_broker.pid() != pid
    values = run(_consume_all(own_broker.bootstrap, topic, 60))
    assert len(values) == 60, "records written before the restart must still be there"
    assert "Kafka version: " + KAFKA_VERSION in own_broker.log_file.read_text()


def test_status_and_cli(own_broker: LocalKafka, tmp_path: Path) -> None:
    env = {**os.environ, "STREAMS_HOME": str(tmp_path / "cli-home"),
           "STREAMS_LOCAL_KAFKA_PORT": str(free_port()), "STREAMS_LOCAL_KAFKA_CONTROLLER_PORT": str(free_port())}
    env.pop("STREAMS_KAFKA_BOOTSTRAP", None)
    cli = [sys.executable, "-m", "streams.cli", "dev", "kafka"]
    status = subprocess.run([*cli, "status"], env=env, capture_output=True, text=True)
    assert status.returncode == 1 and '"running": false' in status.stdout
    try:
        up = subprocess.run([*cli, "up"], env=env, capture_output=True, text=True, timeout=180)
        assert up.returncode == 0, f"exit {up.returncode}\n{up.stdout}\n{up.stderr[-3000:]}"
        assert "started in" in up.stdout
        again = subprocess.run([*cli, "up"], env=env, capture_output=True, text=True, timeout=60)
        assert "already running" in again.stdout
        status = subprocess.run([*cli, "status"], env=env, capture_output=True, text=True)
        assert status.returncode == 0 and '"answering": true' in status.stdout
    finally:
        down = subprocess.run([*cli, "down"], env=env, capture_output=True, text=True, timeout=90)
    assert "stopped" in down.stdout
    assert subprocess.run([*cli, "status"], env=env, capture_output=True, text=True).returncode == 1


def test_clear_error_without_java(own_broker: LocalKafka, monkeypatch) -> None:
    monkeypatch.setenv("PATH", "/nonexistent")
    with pytest.raises(ServiceError) as err:
        own_broker.up()
    assert "'java' was not found" in str(err.value) and "JDK 17" in str(err.value)


def test_clear_error_when_the_port_is_taken(own_broker: LocalKafka) -> None:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", own_broker.port))
        s.listen()
        with pytest.raises(ServiceError, match="already in use"):
            own_broker.up()


def test_external_cluster_setting_disables_the_local_broker(monkeypatch) -> None:
    env = {**os.environ, "STREAMS_KAFKA_BOOTSTRAP": "kafka.example:9092"}
    res = subprocess.run([sys.executable, "-m", "streams.cli", "dev", "kafka", "up"], env=env,
                         capture_output=True, text=True)
    assert res.returncode == 1 and "STREAMS_KAFKA_BOOTSTRAP is set" in res.stderr


def test_cluster_ids_never_look_like_an_option() -> None:
    """The storage tool takes an id starting with '-' for an option (a CI run lost its broker to one)."""
    from streams.dev.kafka import _random_cluster_id

    ids = [_random_cluster_id() for _ in range(5000)]
    assert not [i for i in ids if i.startswith("-")]
    assert {len(i) for i in ids} == {22} and len(set(ids)) == len(ids)

"""The project's own RabbitMQ and Redis: `streams dev rabbitmq|redis up|status|down`, data kept across a restart."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from streams.dev.process import free_port, port_open
from tests.harness import ROOT


def _streams(env: dict[str, str], *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "streams.cli", *args], cwd=ROOT, env=env, capture_output=True,
                          text=True, timeout=120)


@pytest.fixture
def dev_env(tmp_path: Path):
    env = {k: v for k, v in os.environ.items() if not k.startswith("STREAMS_")}
    env |= {"STREAMS_HOME": str(tmp_path / "home"), "STREAMS_LOCAL_REDIS_PORT": str(free_port()),
            "STREAMS_LOCAL_RABBITMQ_PORT": str(free_port()), "STREAMS_LOCAL_RABBITMQ_DIST_PORT": str(free_port()),
            "STREAMS_LOCAL_RABBITMQ_EPMD_PORT": str(free_port())}
    yield env
    from streams.dev.rabbitmq import LocalRabbitMQ
    from streams.dev.redis import LocalRedis
    from streams.settings import Settings

    settings = Settings(**{k.removeprefix("STREAMS_").lower(): v for k, v in env.items() if k.startswith("STREAMS_")})
    LocalRedis.from_settings(settings).down()
    LocalRabbitMQ.from_settings(settings).down()


def test_redis_up_status_down_keeps_stream_entries(dev_env: dict[str, str]) -> None:
    import redis

    up = _streams(dev_env, "dev", "redis", "up")
    assert up.returncode == 0, up.stderr
    status = json.loads(_streams(dev_env, "dev", "redis", "status").stdout)
    assert status["running"] and status["appendfsync"] == "everysec"
    client = redis.Redis.from_url(status["url"])
    entry = client.xadd("kept", {"message_id": "m-1"})
    client.close()
    assert "stopped" in _streams(dev_env, "dev", "redis", "down").stdout
    assert not port_open("127.0.0.1", int(dev_env["STREAMS_LOCAL_REDIS_PORT"]))
    assert _streams(dev_env, "dev", "redis", "up").returncode == 0
    client = redis.Redis.from_url(status["url"])
    assert client.xrange("kept") == [(entry, {b"message_id": b"m-1"})]  # from the append-only file
    client.close()


def test_rabbitmq_up_status_down_keeps_persistent_messages(dev_env: dict[str, str]) -> None:
    import aio_pika

    up = _streams(dev_env, "dev", "rabbitmq", "up")
    assert up.returncode == 0, up.stderr + up.stdout
    status = json.loads(_streams(dev_env, "dev", "rabbitmq", "status").stdout)
    assert status["running"] and status["node"].startswith("streams-")
    assert Path(dev_env["STREAMS_HOME"], "rabbitmq", "home", ".erlang.cookie").exists()  # the cookie is ours

    async def publish() -> None:
        conn = await aio_pika.connect(status["url"])
        async with conn:
            channel = await conn.channel(publisher_confirms=True)
            queue = await channel.declare_queue("kept", durable=True, arguments={"x-queue-type": "quorum"})
            await channel.default_exchange.publish(
                aio_pika.Message(b"payload", message_id="m-1", delivery_mode=aio_pika.DeliveryMode.PERSISTENT),
                routing_key=queue.name)

    async def fetch() -> tuple[bytes, str | None]:
        conn = await aio_pika.connect(status["url"])
        async with conn:
            channel = await conn.channel()
            queue = await channel.declare_queue("kept", durable=True, arguments={"x-queue-type": "quorum"})
            message = await queue.get(timeout=10)
            assert message is not None
            await message.ack()
            return message.body, message.message_id

    asyncio.run(publish())
    assert "stopped" in _streams(dev_env, "dev", "rabbitmq", "down").stdout
    assert _streams(dev_env, "dev", "rabbitmq", "status").returncode == 1  # status says so (exit 1)
    epmd = int(dev_env["STREAMS_LOCAL_RABBITMQ_EPMD_PORT"])
    assert not port_open("127.0.0.1", epmd), "the node's epmd was left running"
    assert _streams(dev_env, "dev", "rabbitmq", "up").returncode == 0
    assert asyncio.run(fetch()) == (b"payload", "m-1")

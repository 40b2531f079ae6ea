"""What cannot exist on a broker is refused with a sentence saying why (no server needed: the
refusal comes before any connection)."""

from __future__ import annotations

import pytest
from click.testing import CliRunner

from streams.cli import cli


@pytest.mark.parametrize("broker, says", [("rabbitmq", "no offset to move back to"), ("redis", "XGROUP SETID")])
def test_offsets_reset_of_a_topic_on_rabbitmq_or_redis_is_refused(monkeypatch, broker: str, says: str) -> None:
    monkeypatch.setenv("STREAMS_BROKER_ROUTES", f"orders.*={broker}")
    result = CliRunner().invoke(cli, ["offsets", "reset", "-g", "app", "-t", "orders.placed", "--to-earliest"])
    assert result.exit_code == 2
    assert says in result.output


def test_redis_handler_with_delayed_retries_is_refused() -> None:
    from pydantic import BaseModel

    from streams import Kind, MessageRegistry, RetryPolicy, StreamsApp
    from streams.errors import ConfigurationError
    from streams.redis_streams.consumer import RedisStreamConsumer
    from streams.settings import Settings

    registry = MessageRegistry()

    @registry.event("Ping")
    class Ping(BaseModel):
        n: int

    app = StreamsApp("refusals", registry=registry, settings=Settings(home="/tmp/streams-unit-refusals"))
    topic = app.topic("pings", kind=Kind.EVENT)

    @app.handler(topic, "Ping", retry=RetryPolicy(delayed_retries=(5.0,)))
    async def on_ping(message, delivery) -> None:
        return None

    with pytest.raises(ConfigurationError, match="no delayed delivery"):
        RedisStreamConsumer(app)

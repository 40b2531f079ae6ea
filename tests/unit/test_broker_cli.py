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


def test_redis_handlers_of_one_stream_with_different_delayed_retries_are_refused() -> None:
    """A retry level is one stream per source stream: its handlers must share the delays."""
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

    assert RedisStreamConsumer(app).retry_streams == {"pings.retry.1": "pings"}

    @app.handler(topic, "Ping", retry=RetryPolicy(delayed_retries=(5.0, 60.0)), name="on_ping_too")
    async def on_ping_too(message, delivery) -> None:
        return None

    with pytest.raises(ConfigurationError, match="different delayed retries"):
        RedisStreamConsumer(app)

"""``streams consume``: an app's handlers on RabbitMQ queues or Redis streams (no Faust worker)."""

from __future__ import annotations

import asyncio
import logging
import signal
from typing import Any

import click

from streams.cli.base import fail, load_app
from streams.errors import ConfigurationError
from streams.settings import load_settings

log = logging.getLogger("streams.consume")


@click.command("consume")
@click.option("--broker", type=click.Choice(["rabbitmq", "redis"]), required=True,
              help="Where the topics are (STREAMS_BROKER_ROUTES says the same to the relay).")
@click.option("--app", "app_path", default=None, help="module:attribute of the StreamsApp (STREAMS_WORKER_APP).")
@click.option("--handler", "handlers", multiple=True,
              help="Handler to run (repeatable; default: the handlers whose topics STREAMS_BROKER_ROUTES puts on "
                   "this broker).")
@click.option("--name", default=None, help="Redis: this consumer's name in the group (default host-pid; the same "
                                           "name after a restart finishes its pending entries).")
@click.option("--web-port", type=int, default=None,
              help="Port of /metrics, /health/ready and /api/lag (STREAMS_WEB_PORT; bound to STREAMS_WEB_HOST).")
@click.option("--without-web", is_flag=True, help="Do not start the web server.")
def consume_cmd(broker: str, app_path: str | None, handlers: tuple[str, ...], name: str | None,
                web_port: int | None, without_web: bool) -> None:
    """Run handlers on RabbitMQ (lane queues, prefetch, ack after the effect) or Redis Streams
    (consumer group, XACK after the effect, XAUTOCLAIM) until SIGTERM; health, counters and the
    group's backlog on the web port (/metrics, /health/ready, /api/lag)."""
    from streams.broker_routes import Routes

    settings = load_settings()
    app = load_app(app_path or settings.worker_app)
    routes = Routes(settings.broker_routes)
    chosen = list(handlers) or [n for n, spec in app.handlers.items() if routes.broker(spec.topic.name) == broker]
    if not chosen:
        fail(f"no handler of the app reads a topic STREAMS_BROKER_ROUTES puts on {broker} "
             f"(routes: {settings.broker_routes or 'none'}); name one with --handler", 2)
    consumer: Any
    try:
        if broker == "rabbitmq":
            from streams.rabbitmq.consumer import RabbitConsumer

            consumer = RabbitConsumer(app, chosen)
        else:
            from streams.redis_streams.consumer import RedisStreamConsumer

            consumer = RedisStreamConsumer(app, chosen, name=name)
    except ConfigurationError as exc:
        fail(str(exc), 2)

    async def run() -> None:
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, consumer.stop)
        views = None
        if not without_web:
            from streams.web.consumer_views import ConsumerViews

            views = ConsumerViews(consumer, broker)
            asked = web_port is not None or "web_port" in settings.model_fields_set
            port = web_port if web_port is not None else settings.web_port
            try:
                await views.start(settings.web_host, port)
            except OSError as exc:
                if asked:
                    fail(f"the web views cannot listen on {settings.web_host}:{port} ({exc.strerror or exc}): "
                         "give another --web-port, or --without-web", 1)
                # the default port, taken (a worker or another consumer on this host): go on without
                log.warning("web views not started: %s:%d is taken (%s); give --web-port or STREAMS_WEB_PORT",
                            settings.web_host, port, exc.strerror or exc)
                views = None
        task = asyncio.create_task(consumer.run())
        try:
            # the consumer may fail before it ever connects (a refused group, a bad setting): not a hang
            connected = asyncio.ensure_future(consumer.connected.wait())
            await asyncio.wait([task, connected], return_when=asyncio.FIRST_COMPLETED)
            connected.cancel()
            if not task.done():
                log.info("consumer ready: %s on %s", ", ".join(chosen), broker)
            await task
            log.info("consumer stopped: %d message(s) handled", consumer.handled)
        finally:
            if views is not None:
                await views.stop()

    asyncio.run(run())

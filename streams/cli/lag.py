"""``streams lag``: a consumer group's lag per partition, from the broker (Kafka), or its backlog on
RabbitMQ / Redis for topics ``STREAMS_BROKER_ROUTES`` puts there."""

from __future__ import annotations

import json
from typing import Any

import click
from rich.live import Live
from rich.table import Table

from streams.cli.base import Context, console, fail, pass_ctx
from streams.cli.broker_calls import run_on_broker
from streams.dev.process import ServiceError
from streams.kafka.lag import GroupLag, group_lag, watch_lag


def _fmt(value: float | int | None, digits: int = 1) -> str:
    if value is None:
        return "-"
    if isinstance(value, int):
        return f"{value:,}"
    return f"{value:,.{digits}f}"


def _eta(seconds: float | None) -> str:
    if seconds is None:
        return "-"
    seconds = round(seconds)
    if seconds < 60:
        return f"{seconds}s"
    minutes, seconds = divmod(seconds, 60)
    if minutes < 60:
        return f"{minutes}m{seconds:02d}s"
    hours, minutes = divmod(minutes, 60)
    return f"{hours}h{minutes:02d}m"


def lag_table(lag: GroupLag) -> Table:
    """A rich table of one lag sample, with a totals row."""
    table = Table(title=f"consumer group {lag.group} ({lag.state}, {lag.members} member(s))",
                  show_footer=False)
    for name in ("topic", "partition", "committed", "log-end", "lag", "rate/s", "eta", "member"):
        table.add_column(name, justify="left" if name in ("topic", "member") else "right")
    for p in lag.partitions:
        table.add_row(p.topic, str(p.partition), _fmt(p.committed), _fmt(p.end), _fmt(p.lag), _fmt(p.rate),
                      _eta(p.eta), p.member or "-")
    table.add_section()
    table.add_row("total", "", "", "", _fmt(lag.total_lag), _fmt(lag.rate), _eta(lag.eta), "")
    return table


@click.command("lag")
@click.option("--group", "-g", required=True, help="Consumer group id (a streams app's group is its app id).")
@click.option("--topic", "-t", "topics", multiple=True, help="Only this topic, every partition (repeatable).")
@click.option("--watch", "-w", is_flag=True, help="Refresh every --interval seconds, with rates and ETA.")
@click.option("--interval", type=click.FloatRange(min=0.2), default=2.0, show_default=True,
              help="Seconds between samples (--watch, or the rate sample without it).")
@click.option("--count", type=click.IntRange(min=1), default=None,
              help="With --watch: stop after this many samples.")
@click.option("--rate", "sample_rate", is_flag=True,
              help="Take two samples --interval apart to show the consumption rate and ETA.")
@click.option("--json", "as_json", is_flag=True, help="Print JSON (one object per sample with --watch).")
@pass_ctx
def lag_cmd(ctx: Context, group: str, topics: tuple[str, ...], watch: bool, interval: float,
            count: int | None, sample_rate: bool, as_json: bool) -> None:
    """Committed offset, log-end offset, lag, rate and ETA of a consumer group, per partition.

    Read from the broker, so it works for any group, running or stopped.
    """
    settings = ctx.settings
    wanted = list(topics) or None
    if wanted and _elsewhere(ctx, group, wanted, as_json):
        return

    async def one() -> GroupLag:
        if not sample_rate:
            return await group_lag(settings, group, wanted)
        last = None
        async for sample in watch_lag(settings, group, wanted, interval=interval, count=2):
            last = sample
        if last is None:
            raise ServiceError(f"no lag sample of group {group!r}")
        return last

    async def many() -> None:
        if as_json:
            async for sample in watch_lag(settings, group, wanted, interval=interval, count=count):
                click.echo(json.dumps(sample.to_dict()), nl=True)
            return
        with Live(console=console, auto_refresh=False) as live:
            async for sample in watch_lag(settings, group, wanted, interval=interval, count=count):
                live.update(lag_table(sample), refresh=True)

    try:
        if watch:
            run_on_broker(settings, many())
            return
    except KeyboardInterrupt:
        return
    lag = run_on_broker(settings, one())
    if not lag.partitions and lag.state == "Dead":
        fail(f"consumer group {group!r} does not exist (no members, no committed offsets)", 1)
    if as_json:
        click.echo(json.dumps(lag.to_dict(), indent=2))
        return
    console.print(lag_table(lag))


def _elsewhere(ctx: Context, group: str, topics: list[str], as_json: bool) -> bool:
    """Topics STREAMS_BROKER_ROUTES puts on RabbitMQ or Redis: their backlog (queue depth; pending +
    unread), printed here; True if every topic was one of those."""
    import asyncio

    from streams.broker_routes import Routes

    settings = ctx.settings
    routes = Routes(settings.broker_routes)
    placed = {t: routes.broker(t) for t in topics}
    if all(b == "kafka" for b in placed.values()):
        return False
    if any(b == "kafka" for b in placed.values()):
        fail("give the Kafka topics and the RabbitMQ/Redis ones in separate calls", 2)
    rows: list[dict[str, Any]] = []
    for topic, broker in placed.items():
        if broker == "rabbitmq":
            from streams.rabbitmq.lag import queue_lag

            q = asyncio.run(queue_lag(settings.amqp_url, topic, group, settings.rabbitmq_lanes))
            if q.missing and not q.queues:
                fail(f"group {group!r} has no queues for {topic!r} on RabbitMQ", 1)
            rows.append({"topic": topic, "broker": broker, "lag": q.total, "queues": q.queues, "missing": q.missing})
        else:
            from streams.redis_streams.lag import stream_lag

            r = asyncio.run(stream_lag(settings.redis_connection_url, topic, group))
            if not r.exists:
                fail(f"group {group!r} does not read stream {topic!r} on Redis", 1)
            rows.append({"topic": topic, "broker": broker, "lag": r.total, "pending": r.pending, "unread": r.unread,
                         "length": r.length, "consumers": r.consumers})
    if as_json:
        click.echo(json.dumps(rows, indent=2))
        return True
    table = Table(title=f"group {group} (RabbitMQ: ready messages of its queues; Redis: pending + unread entries)")
    for name in ("topic", "broker", "lag", "detail"):
        table.add_column(name, justify="right" if name == "lag" else "left")
    for row in rows:
        detail = (", ".join(f"{q}={n:,}" for q, n in row["queues"].items()) if row["broker"] == "rabbitmq" else
                  f"pending {row['pending']:,}, unread {_fmt(row['unread'])}, length {row['length']:,}, "
                  f"{row['consumers']} consumer(s)")
        table.add_row(row["topic"], row["broker"], f"{row['lag']:,}", detail)
    console.print(table)
    return True

"""``streams topics``: list, describe and create topics."""

from __future__ import annotations

import json

import click
from rich.table import Table

from streams.cli.base import Context, console, fail, pass_ctx
from streams.cli.broker_calls import run_on_broker


@click.group("topics")
def topics() -> None:
    """Topics on the broker: list, describe, create."""


@topics.command("list")
@click.option("--internal", is_flag=True, help="Include Kafka's internal topics (__consumer_offsets, ...).")
@click.option("--prefix", default=None, help="Only names starting with this (e.g. $STREAMS_TOPIC_PREFIX).")
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
@pass_ctx
def list_cmd(ctx: Context, internal: bool, prefix: str | None, as_json: bool) -> None:
    """Every topic with its partition count and replication factor."""
    from streams.kafka.topics import list_topics

    found = run_on_broker(ctx.settings, list_topics(ctx.settings, include_internal=internal))
    if prefix:
        found = [t for t in found if t.name.startswith(prefix)]
    if as_json:
        click.echo(json.dumps([t.__dict__ for t in found], indent=2))
        return
    table = Table("topic", "partitions", "replication", title=f"topics on {ctx.settings.bootstrap_servers}")
    for t in found:
        table.add_row(t.name + (" (internal)" if t.internal else ""), str(t.partitions), str(t.replication_factor))
    console.print(table)


@topics.command("describe")
@click.argument("name")
@click.option("--all-configs", is_flag=True, help="Show every config, not only those set on the topic.")
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
@pass_ctx
def describe_cmd(ctx: Context, name: str, all_configs: bool, as_json: bool) -> None:
    """Partitions (leader, replicas, in-sync replicas, log start/end offsets) and configs of NAME."""
    from streams.kafka.topics import describe_topic

    d = run_on_broker(ctx.settings, describe_topic(ctx.settings, name, all_configs=all_configs))
    if as_json:
        click.echo(json.dumps(d.to_dict(), indent=2))
        return
    table = Table(title=f"{d.name}: {len(d.partitions)} partition(s)")
    for col in ("partition", "leader", "replicas", "isr", "log start", "log end", "records"):
        table.add_column(col, justify="right")
    for p in d.partitions:
        table.add_row(str(p.partition), str(p.leader), ",".join(map(str, p.replicas)), ",".join(map(str, p.isr)),
                      f"{p.start:,}", f"{p.end:,}", f"{p.records:,}")
    console.print(table)
    if d.configs:
        configs = Table("config", "value", title="configs" + ("" if all_configs else " set on the topic"))
        for k, v in d.configs.items():
            configs.add_row(k, v)
        console.print(configs)


def _config_pairs(values: tuple[str, ...]) -> dict[str, str]:
    out = {}
    for item in values:
        key, sep, value = item.partition("=")
        if not sep or not key:
            fail(f"--config {item!r}: expected KEY=VALUE, e.g. retention.ms=86400000", 2)
        out[key.strip()] = value.strip()
    return out


@topics.command("create")
@click.argument("name")
@click.option("--partitions", "-p", type=click.IntRange(min=1), default=None,
              help="Partition count (default STREAMS_TOPIC_PARTITIONS).")
@click.option("--replication-factor", "-r", type=click.IntRange(min=1), default=None,
              help="Replication factor (default STREAMS_TOPIC_REPLICATION_FACTOR).")
@click.option("--config", "-c", "configs", multiple=True, help="KEY=VALUE topic config (repeatable).")
@pass_ctx
def create_cmd(ctx: Context, name: str, partitions: int | None, replication_factor: int | None,
               configs: tuple[str, ...]) -> None:
    """Create topic NAME (exit 1 if it exists)."""
    from streams.kafka.names import topic_name_problem
    from streams.kafka.topics import create_topic

    if problem := topic_name_problem(name):
        fail(problem, 2)
    s = ctx.settings
    pairs = _config_pairs(configs)
    parts, rf = partitions or s.topic_partitions, replication_factor or s.topic_replication_factor
    # an existing topic: exit 1 with the message
    rf, applied = run_on_broker(s, create_topic(s, name, parts, rf, pairs))
    console.print(f"created {name}: {parts} partition(s), replication factor {rf}, configs {applied}",
                  highlight=False)

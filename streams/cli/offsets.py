"""``streams offsets reset``: plan and apply a consumer group's offset reset."""

from __future__ import annotations

import json
from typing import Any

import click
from rich.table import Table

from streams.cli.base import Context, console, fail, pass_ctx
from streams.cli.broker_calls import run_on_broker


@click.group("offsets")
def offsets() -> None:
    """A consumer group's committed offsets: reset them to re-read or skip records."""


def _plan_table(plan) -> Table:
    table = Table(title=f"reset plan for group {plan.group}: {plan.target.describe()}")
    for col in ("topic", "partition", "current", "new", "to re-read", "to skip", "note"):
        table.add_column(col, justify="left" if col in ("topic", "note") else "right")
    for r in plan.rows:
        table.add_row(r.topic, str(r.partition), "-" if r.current is None else f"{r.current:,}", f"{r.new:,}",
                      f"{r.to_reread:,}", f"{r.to_skip:,}", f"clamped: {r.clamped}" if r.clamped else "")
    table.add_section()
    table.add_row("total", "", "", "", f"{plan.to_reread:,}", f"{plan.to_skip:,}", "")
    return table


@offsets.command("reset")
@click.option("--group", "-g", required=True, help="Consumer group (a streams app's group is its app id).")
@click.option("--topic", "-t", "topics", multiple=True, required=True,
              help="TOPIC or TOPIC:P1,P2 (repeatable).")
@click.option("--to-earliest", "earliest", is_flag=True, help="To the log-start offset.")
@click.option("--to-latest", "latest", is_flag=True, help="To the log-end offset (skip everything).")
@click.option("--to-offset", "to_offset", type=int, default=None, help="To absolute offset N.")
@click.option("--to-datetime", "to_datetime", default=None,
              help="To the first record at or after this ISO 8601 time (naive = UTC).")
@click.option("--by-duration", "by_duration", default=None,
              help="To the first record at or after now minus this ISO 8601 duration (P1D, PT6H, P1DT2H30M).")
@click.option("--shift-by", "shift_by", type=int, default=None, help="Move the current offset by ±N.")
@click.option("--dry-run", "dry_run", is_flag=True, help="Only print the plan (the default).")
@click.option("--execute", "execute", is_flag=True, help="Apply the plan (the group must be stopped).")
@click.option("--reprocess", is_flag=True,
              help="With --execute: handle the re-read records again, bypassing the processed-ID tables.")
@click.option("--json", "as_json", is_flag=True, help="Print the plan as JSON.")
@pass_ctx
def reset_cmd(ctx: Context, group: str, topics: tuple[str, ...], earliest: bool, latest: bool,
              to_offset: int | None, to_datetime: str | None, by_duration: str | None, shift_by: int | None,
              dry_run: bool, execute: bool, reprocess: bool, as_json: bool) -> None:
    """Plan (and with --execute apply) a reset of GROUP's offsets on the given topics.

    Exactly one of --to-earliest, --to-latest, --to-offset, --to-datetime,
    --by-duration, --shift-by. Offsets outside the log are clamped to it and
    reported. Refuses to apply while the group has active members.
    """
    from streams.kafka.offsets import (
        GroupActiveError,
        ResetError,
        ResetTarget,
        execute_reset,
        parse_datetime,
        parse_duration,
        parse_topic_partitions,
        plan_reset,
    )

    _refuse_elsewhere(ctx, topics)
    chosen = [(name, value) for name, value in (
        ("earliest", earliest or None), ("latest", latest or None), ("offset", to_offset),
        ("datetime", to_datetime), ("duration", by_duration), ("shift", shift_by)) if value is not None]
    if len(chosen) != 1:
        fail("give exactly one of --to-earliest, --to-latest, --to-offset, --to-datetime, --by-duration, "
             "--shift-by", 2)
    if dry_run and execute:
        fail("--dry-run and --execute exclude each other", 2)
    if reprocess and not execute:
        fail("--reprocess needs --execute", 2)
    mode, given = chosen[0]
    try:
        value: Any = given
        if mode == "datetime":
            value = parse_datetime(str(given))
        elif mode == "duration":
            value = parse_duration(str(given))
        elif mode in ("earliest", "latest"):
            value = None
        target = ResetTarget(mode, value)
        wanted = [parse_topic_partitions(t) for t in topics]
    except ResetError as exc:
        fail(str(exc), 2)
    settings = ctx.settings
    try:
        plan = run_on_broker(settings, plan_reset(settings, group, wanted, target))
    except ResetError as exc:
        fail(str(exc), 2)
    if as_json:
        click.echo(json.dumps(plan.to_dict(), indent=2))
    else:
        console.print(_plan_table(plan))
        for r in plan.clamped:
            console.print(f"  [yellow]clamped[/] {r.topic}[{r.partition}]: {r.clamped}", highlight=False)
    active = plan.group_state.active
    if not execute:
        note = (f"; the group has {len(plan.group_state.members)} active member(s): stop its workers before "
                "--execute" if active else "")
        err = click.get_text_stream("stderr") if as_json else None
        click.echo(f"dry run: nothing changed (add --execute to apply){note}", err=bool(err))
        return
    try:
        run_on_broker(settings, execute_reset(settings, plan, reprocess=reprocess))
    except GroupActiveError as exc:
        fail(str(exc), 1)
    what = (f"{plan.to_reread:,} record(s) will be re-read" + (" and handled again (reprocess)" if reprocess
            else " (already handled ones are skipped by the processed-ID tables)"))
    click.echo(f"applied: group {group} moved on {len(plan.rows)} partition(s); {what}; "
               f"{plan.to_skip:,} skipped", err=as_json)


def _refuse_elsewhere(ctx: Context, topics: tuple[str, ...]) -> None:
    """A reset of a topic STREAMS_BROKER_ROUTES puts on RabbitMQ or Redis is refused, saying why."""
    from streams.broker_routes import Routes

    routes = Routes(ctx.settings.broker_routes)
    for spec in topics:
        topic = spec.split(":", 1)[0]
        broker = routes.broker(topic)
        if broker == "rabbitmq":
            fail(f"{topic!r} is on RabbitMQ: a queue deletes each message once it is acknowledged, so there is no "
                 "offset to move back to and nothing to re-read; replay from the source instead (the outbox keeps "
                 "published rows for STREAMS_RELAY_RETENTION)", 2)
        if broker == "redis":
            fail(f"{topic!r} is a Redis stream: it has no partitions or offsets to reset; move the group with Redis "
                 f"itself: XGROUP SETID {topic} <group> <entry id, or <ms>-0 for a time> (the stream keeps entries "
                 "until MAXLEN trims them)", 2)

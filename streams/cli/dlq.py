"""``streams dlq``: the failure log (list, show, replay dead letters)."""

from __future__ import annotations

import json

import click
from rich.table import Table

from streams.cli.base import Context, console, fail, pass_ctx
from streams.dev.process import ServiceError
from streams.settings import Settings


# --- dead letters ----------------------------------------------------------------
@click.group("dlq")
def dlq() -> None:
    """The failure log: list, inspect and replay dead letters (<topic>.dlq)."""


def _filter_options(fn):
    for opt in reversed([
        click.option("--type", "types", multiple=True, help="Only this message_type (repeatable)."),
        click.option("--id", "ids", multiple=True, help="Only this message_id (repeatable)."),
        click.option("--reason", "reasons", multiple=True, help="Only this dlq.reason (repeatable)."),
        click.option("--since", type=click.DateTime(["%Y-%m-%dT%H:%M:%S%z", "%Y-%m-%dT%H:%M:%S", "%Y-%m-%d"]),
                     default=None, help="Parked at or after (ISO 8601; naive = UTC)."),
        click.option("--until", type=click.DateTime(["%Y-%m-%dT%H:%M:%S%z", "%Y-%m-%dT%H:%M:%S", "%Y-%m-%d"]),
                     default=None, help="Parked at or before (ISO 8601; naive = UTC)."),
    ]):
        fn = opt(fn)
    return fn


def _make_filter(types, ids, reasons, since, until):
    from datetime import UTC

    from streams.kafka.failure_log import Filter

    def aware(d):
        return d if d is None or d.tzinfo else d.replace(tzinfo=UTC)

    return Filter(set(types), set(ids), set(reasons), aware(since), aware(until))


def _read(settings: Settings, topic: str, flt, limit: int | None = None):
    import asyncio

    from streams.kafka.failure_log import read_dead_letters

    try:
        return asyncio.run(read_dead_letters(settings, topic, flt, limit))
    except LookupError as exc:
        raise ServiceError(str(exc)) from None


@dlq.command("list")
@click.argument("topic")
@_filter_options
@click.option("--limit", type=int, default=None, help="At most this many (oldest first).")
@click.option("--json", "as_json", is_flag=True, help="Print JSON lines.")
@pass_ctx
def dlq_list(ctx: Context, topic: str, types, ids, reasons, since, until, limit, as_json: bool) -> None:
    """List dead letters of TOPIC (the source topic or its .dlq)."""
    letters = _read(ctx.settings, topic, _make_filter(types, ids, reasons, since, until), limit)
    if as_json:
        for dl in letters:
            click.echo(json.dumps(dl.summary()))
        return
    table = Table("ref", "message_id", "type", "reason", "error", "attempts", "original", "failed_at",
                  title=f"dead letters of {topic} ({len(letters)})")
    for dl in letters:
        row = dl.summary()
        table.add_row(*(str(row[k] or "") for k in ("ref", "message_id", "message_type", "reason", "error",
                                                      "attempts", "original", "failed_at")))
    console.print(table)


@dlq.command("show")
@click.argument("topic")
@click.argument("which")
@pass_ctx
def dlq_show(ctx: Context, topic: str, which: str) -> None:
    """Show one dead letter in full: WHICH is PARTITION:OFFSET in the .dlq topic, or a message_id."""
    letters = _read(ctx.settings, topic, None)
    if ":" in which and which.replace(":", "").isdigit():
        p, o = (int(x) for x in which.split(":", 1))
        found = [d for d in letters if d.partition == p and d.offset == o]
    else:
        found = [d for d in letters if d.message_id == which]
    if not found:
        fail(f"no dead letter {which!r} in {topic}")
    for dl in found:
        click.echo(json.dumps(dl.details(), indent=2))


@dlq.command("replay")
@click.argument("topic")
@_filter_options
@click.option("--all", "replay_all", is_flag=True, help="Replay every dead letter (no filter needed).")
@click.option("--to-topic", default=None, help="Publish to this topic instead of the original one.")
@click.option("--dry-run", is_flag=True, help="Only list what would be replayed.")
@pass_ctx
def dlq_replay(ctx: Context, topic: str, types, ids, reasons, since, until, replay_all: bool,
               to_topic: str | None, dry_run: bool) -> None:
    """Publish dead letters back to their original topic, keeping their message_id."""
    import asyncio

    from streams.kafka.failure_log import replay

    flt = _make_filter(types, ids, reasons, since, until)
    if not (replay_all or types or ids or reasons or since or until):
        fail("say what to replay: --all, or a filter (--type, --id, --reason, --since, --until)", 2)
    letters = _read(ctx.settings, topic, flt)
    for dl in letters:
        s = dl.summary()
        console.print(f"{'would replay' if dry_run else 'replay'} {s['ref']} {s['message_type']} "
                      f"{s['message_id']} -> {to_topic or dl.original_topic}", highlight=False)
    if dry_run:
        console.print(f"{len(letters)} dead letter(s) selected (dry run, nothing sent)")
        return
    from streams import tracing

    tracing.configure(service_name="streams-dlq")
    sent = asyncio.run(replay(ctx.settings, letters, to_topic))
    tracing.shutdown()
    console.print(f"replayed {sent} dead letter(s)")

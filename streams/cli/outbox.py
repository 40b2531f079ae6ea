"""``streams outbox …`` and ``streams relay``: the transactional outbox from the command line."""

from __future__ import annotations

import asyncio
import gc
import json
import logging
import signal
from datetime import datetime

import click
import psycopg
from rich.table import Table

from streams.cli.base import Context, console, fail, pass_ctx

log = logging.getLogger("streams.relay")


def _connect(settings):
    if settings.database_dialect == "mysql":
        from streams import mysql
        from streams.settings import redact_url

        try:
            return mysql.connect(settings.dsn)
        except mysql.connection_errors() as exc:
            fail(f"MySQL at {redact_url(settings.dsn)} does not answer: {exc}")
    try:
        return psycopg.connect(settings.dsn, autocommit=True, connect_timeout=5)
    except psycopg.OperationalError as exc:
        from streams.settings import redact_url

        fail(f"PostgreSQL at {redact_url(settings.dsn)} does not answer: {str(exc).strip()}")


@click.group("outbox")
def outbox() -> None:
    """The transactional outbox table: migrate, status, list, retry, purge."""


@outbox.command("migrate")
@pass_ctx
def migrate_cmd(ctx: Context) -> None:
    """Create or update the outbox table, its indexes and triggers (idempotent)."""
    _migrate(ctx.settings)
    console.print(f"outbox table {ctx.settings.outbox_table!r} is ready")


def _migrate(settings) -> None:
    """The outbox table of ``settings``' database (PostgreSQL or MySQL / MariaDB)."""
    if settings.database_dialect == "mysql":
        from streams.outbox.mysql_schema import migrate as migrate_mysql

        conn = _connect(settings)
        try:
            migrate_mysql(conn, settings.outbox_table)
        finally:
            conn.close()
        return
    from streams.outbox.schema import migrate

    with _connect(settings) as conn:
        migrate(conn, settings.outbox_table)


@outbox.command("status")
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
@pass_ctx
def status_cmd(ctx: Context, as_json: bool) -> None:
    """Pending, oldest pending age, parked (failed) rows, publish rate, rows waiting for a topic."""
    from streams import mysql
    from streams.outbox.stats import outbox_stats

    try:
        stats = asyncio.run(outbox_stats(ctx.settings))
    except (psycopg.OperationalError, *mysql.connection_errors()) as exc:  # type: ignore[misc]
        fail(f"cannot read the outbox: {str(exc).strip()}")
    if as_json:
        click.echo(json.dumps(stats.to_dict(), indent=2, default=str))
        return
    if not stats.exists:
        fail(f"the outbox table {stats.table!r} does not exist (run `streams outbox migrate`)")
    table = Table(title=f"outbox {stats.table}")
    for col in ("pending", "retrying", "oldest pending (s)", "failed (parked)", "done", "published/60s", "rows/s"):
        table.add_column(col, justify="right")
    table.add_row(str(stats.pending), str(stats.retrying), f"{stats.oldest_pending_age_s:.1f}", str(stats.failed),
                  str(stats.done), str(stats.published_last_minute), f"{stats.publish_rate:.1f}")
    console.print(table)
    for topic, w in stats.waiting_topics.items():
        since = w["since"].isoformat(timespec="seconds") if w["since"] else "?"
        console.print(f"topic {topic} does not exist: {w['rows']} row(s) wait since {since} (parked after "
                      f"STREAMS_RELAY_MISSING_TOPIC_WAIT={ctx.settings.relay_missing_topic_wait:.0f}s)",
                      markup=False, highlight=False, soft_wrap=True)
    if stats.pointer:
        console.print(f"pointer mode, last sent id: {stats.pointer}")


def _filter_options(fn):
    for opt in reversed([
        click.option("--id", "ids", multiple=True, type=int, help="Outbox row id (repeatable)."),
        click.option("--message-id", "message_ids", multiple=True, help="message_id (repeatable)."),
        click.option("--type", "types", multiple=True, help="message_type (repeatable)."),
        click.option("--topic", "topics", multiple=True, help="Target topic (repeatable)."),
        click.option("--since", type=click.DateTime(), default=None, help="occurred_at at or after (ISO)."),
        click.option("--until", type=click.DateTime(), default=None, help="occurred_at before (ISO)."),
    ]):
        fn = opt(fn)
    return fn


def _filter(ids, message_ids, types, topics, since, until):
    from datetime import UTC

    from streams.outbox.admin import RowFilter

    def aware(d: datetime | None):
        return d.replace(tzinfo=UTC) if d is not None and d.tzinfo is None else d

    return RowFilter(tuple(ids), tuple(message_ids), tuple(types), tuple(topics), aware(since), aware(until))


@outbox.command("list")
@click.option("--status", type=click.Choice(["pending", "done", "failed"]), default=None)
@_filter_options
@click.option("--limit", type=int, default=50, show_default=True)
@click.option("--json", "as_json", is_flag=True, help="Print JSON lines.")
@pass_ctx
def list_cmd(ctx: Context, status, ids, message_ids, types, topics, since, until, limit: int, as_json: bool) -> None:
    """Outbox rows, newest first (parked ones with their last error)."""
    from streams.outbox.admin import list_rows

    rows = list_rows(ctx.settings, status, _filter(ids, message_ids, types, topics, since, until), limit)
    if as_json:
        for r in rows:
            click.echo(json.dumps(r, default=str))
        return
    table = Table()
    for col in ("id", "message_id", "type", "topic", "key", "status", "fails", "occurred_at", "last error"):
        table.add_column(col)
    for r in rows:
        error = r["last_error"] or ""
        if r["topic_missing_since"] and r["status"] == "pending":
            error = f"topic does not exist (waits since {r['topic_missing_since'].isoformat(timespec='seconds')})"
        table.add_row(str(r["id"]), r["message_id"], r["message_type"], r["topic"], r["key"] or "", r["status"],
                      str(r["fail_count"]), r["occurred_at"].isoformat(timespec="seconds"), error)
    console.print(table)
    console.print(f"{len(rows)} row(s)")


@outbox.command("retry")
@_filter_options
@click.option("--all", "retry_all", is_flag=True, help="Every parked row.")
@pass_ctx
def retry_cmd(ctx: Context, ids, message_ids, types, topics, since, until, retry_all: bool) -> None:
    """Re-queue parked (failed) rows: they become pending and are published again."""
    from streams.outbox.admin import retry_parked

    flt = _filter(ids, message_ids, types, topics, since, until)
    if flt.empty and not retry_all:
        fail("say which parked rows to retry: --all, or --id/--message-id/--type/--topic/--since/--until", 2)
    count = retry_parked(ctx.settings, flt)
    console.print(f"re-queued {count} parked row(s)")


@outbox.command("purge")
@pass_ctx
def purge_cmd(ctx: Context) -> None:
    """Delete published rows older than STREAMS_RELAY_RETENTION now (the relay also does this)."""
    from streams.outbox.pointer import purge_below_pointer
    from streams.outbox.relay import purge_done

    async def go() -> int:
        if ctx.settings.database_dialect == "mysql":
            from streams import mysql
            from streams.outbox import mysql_relay

            conn = await mysql.connect_async(ctx.settings.dsn)
            try:
                purge = (mysql_relay.purge_below_pointer if ctx.settings.relay_mode == "pointer"
                         else mysql_relay.purge_done)
                return await purge(conn, ctx.settings)
            finally:
                await mysql.close_async(conn)
        async with await psycopg.AsyncConnection.connect(ctx.settings.dsn, autocommit=True) as conn:
            purge = purge_below_pointer if ctx.settings.relay_mode == "pointer" else purge_done
            return await purge(conn, ctx.settings)

    console.print(f"purged {asyncio.run(go())} row(s)")


@click.command("relay")
@click.option("--mode", type=click.Choice(["status", "pointer"]), default=None,
              help="Completion mode (STREAMS_RELAY_MODE).")
@click.option("--name", default=None, help="Relay name in logs and pg_stat_activity (default host-pid).")
@click.option("--migrate/--no-migrate", default=True, show_default=True, help="Create the outbox table first.")
@click.option("--gate", "gates", multiple=True, metavar="GROUP:TOPIC:HIGH:LOW",
              help="Hold TOPIC while GROUP's lag on it is >= HIGH, until it is <= LOW (repeatable).")
@click.option("--gate-interval", type=float, default=1.0, show_default=True, help="Seconds between lag checks.")
@pass_ctx
def relay_cmd(ctx: Context, mode: str | None, name: str | None, migrate: bool, gates: tuple[str, ...],
              gate_interval: float) -> None:
    """Publish committed outbox rows to Kafka until SIGTERM/SIGINT.

    On a signal the batch in hand may finish within STREAMS_RELAY_STOP_TIMEOUT; after that it
    is abandoned (its rows stay pending) and the relay exits."""
    from streams.outbox.gates import HeldTopics, parse_gate
    from streams.outbox.pointer import PointerRelay
    from streams.outbox.relay import Relay, RelayError
    settings = ctx.settings
    if mode:
        settings = settings.model_copy(update={"relay_mode": mode})
    try:
        held = HeldTopics([parse_gate(settings, g, gate_interval) for g in gates]) if gates else None
    except ValueError as exc:
        fail(str(exc), 2)
    if migrate:
        _migrate(settings)
    cls: type[Relay]
    if settings.database_dialect == "mysql":
        from streams.outbox.mysql_relay import MySqlPointerRelay, MySqlRelay

        cls = MySqlPointerRelay if settings.relay_mode == "pointer" else MySqlRelay
    else:
        cls = PointerRelay if settings.relay_mode == "pointer" else Relay
    from streams import tracing

    tracing.configure(service_name="streams-relay")

    async def main() -> None:
        relay = cls(settings, name=name, held_topics=held)
        # what is loaded by now lives as long as the process: out of the collector's sight, the full
        # collections the relay's batches trigger no longer walk it (they took a third of its CPU)
        gc.freeze()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, relay.stop)
        counters = await relay.run()
        console.print(f"relay stopped: published {counters.published}, failed attempts {counters.failed_attempts}, "
                      f"parked {counters.parked}, purged {counters.purged}")

    try:
        asyncio.run(main())
    except RelayError as exc:
        fail(str(exc))

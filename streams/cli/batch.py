"""``streams batch``: file transfer over SFTP — export, import, status."""

from __future__ import annotations

import asyncio
import time

import click
import psycopg
from aiokafka.errors import KafkaError
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    ProgressColumn,
    TaskID,
    TextColumn,
    TimeElapsedColumn,
)
from rich.table import Table
from rich.text import Text

from streams.cli.base import Context, console, fail, load_object, pass_ctx


class RowsPerSecond(ProgressColumn):
    """Rows per second of a task."""

    def render(self, task) -> Text:
        return Text(f"{task.speed or 0:,.0f} rows/s", style="progress.data.speed")


def _progress() -> Progress:
    return Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), RowsPerSecond(),
                    TimeElapsedColumn(), console=console)


@click.group("batch")
def batch() -> None:
    """Batch file transfer over SFTP: export rows past a watermark, import files with manifests."""


def _every(interval: float, once):
    """Run ``once()`` now, and again every ``interval`` seconds if it is positive (until Ctrl-C)."""
    while True:
        failed = once()
        if interval <= 0:
            return failed
        try:
            time.sleep(interval)
        except KeyboardInterrupt:
            return failed


@batch.command("export")
@click.option("--name", required=True, help="Export name (its watermark and file names).")
@click.option("--table", default=None, help="Table to export (schema.table allowed).")
@click.option("--query", default=None, help="Or a SELECT to export (wrapped as a subquery).")
@click.option("--column", required=True, help="Increasing column: rows past its stored watermark are exported.")
@click.option("--format", "fmt", type=click.Choice(["csv", "kv", "jsonl"]), default="csv", show_default=True)
@click.option("--delimiter", default=",", show_default=True, help="csv only.")
@click.option("--quoting", type=click.Choice(["minimal", "all", "nonnumeric"]), default="minimal", show_default=True,
              help="csv only.")
@click.option("--interval", type=float, default=0, help="Seconds between runs (0: run once).")
@pass_ctx
def export_cmd(ctx: Context, name: str, table: str | None, query: str | None, column: str, fmt: str,
               delimiter: str, quoting: str, interval: float) -> None:
    """Write the rows past the watermark to a file on the SFTP server (with its manifest)."""
    from streams.batch.export import ExportSpec, run_export
    from streams.batch.formats import FormatOptions
    from streams.batch.remote import TransferError

    try:
        spec = ExportSpec(name, column, table=table, query=query,
                          options=FormatOptions(fmt, delimiter.encode().decode("unicode_escape"), quoting))
    except ValueError as exc:
        fail(str(exc), 2)

    def once() -> bool:
        with _progress() as progress:
            task = progress.add_task(f"export {name}", total=None)

            def report(done: int, total: int) -> None:
                progress.update(task, completed=done, total=total)

            try:
                result = asyncio.run(run_export(ctx.settings, spec, progress=report))
            except psycopg.OperationalError as exc:
                console.print(f"[red]export {name} failed:[/] cannot reach PostgreSQL: {exc} (nothing was "
                              "exported; the next run retries)")
                return True
            except (TransferError, ValueError, psycopg.errors.Error) as exc:
                console.print(f"[red]export {name} failed:[/] {exc} (the watermark did not move; the next run "
                              "retries)")
                return True
        if result.file is None:
            console.print(f"export {name}: nothing past watermark {result.watermark_from!r}")
        else:
            console.print(f"export {name}: {result.rows:,} rows → {result.file} (+ manifest), watermark "
                          f"{result.watermark_from!r} → {result.watermark_to!r}"
                          + (" [yellow](resumed a pending file)[/]" if result.resumed else ""))
        return False

    if _every(interval, once):
        raise SystemExit(1)


def _registry(path: str):
    from streams.messages.registry import MessageRegistry

    return load_object(path, MessageRegistry, "registry", "registry")


@batch.command("import")
@click.option("--source", required=True, help="Name of the partner/folder in the import ledger.")
@click.option("--topic", required=True, help="Topic to publish the rows to (full name).")
@click.option("--registry", "registry_path", required=True, help="module:attribute of the MessageRegistry.")
@click.option("--type", "message_type", required=True, help="Registered message type of each row.")
@click.option("--key-column", default=None, help="Column whose value is the record key (ordering key).")
@click.option("--id-columns", default="", help="Comma-separated columns that identify a row across the source's "
              "files (message ids from their values); default: ids from the file name and the row's content.")
@click.option("--interval", type=float, default=0, help="Poll every this many seconds (0: one pass).")
@pass_ctx
def import_cmd(ctx: Context, source: str, topic: str, registry_path: str, message_type: str,
               key_column: str | None, id_columns: str, interval: float) -> None:
    """Import every complete file (manifest present, checksum and rows matching) of the remote folder.

    Rows published before by an import of the same source (same id) are not published again."""
    from streams.batch.imports import ImportSpec, run_import
    from streams.batch.remote import TransferError
    from streams.errors import DecodeError

    registry = _registry(registry_path)
    try:
        registry.spec(message_type)
    except DecodeError:
        fail(f"message type {message_type!r} is not registered in {registry_path}", 2)
    spec = ImportSpec(source, topic, registry, message_type, key_column,
                      tuple(c.strip() for c in id_columns.split(",") if c.strip()))
    from streams import tracing

    tracing.configure(service_name="streams-batch")

    def once() -> bool:
        with _progress() as progress:
            tasks: dict[str, TaskID] = {}

            def report(file: str, done: int, total: int) -> None:
                if file not in tasks:
                    tasks[file] = progress.add_task(f"import {file}", total=total)
                progress.update(tasks[file], completed=done)

            try:
                results = asyncio.run(run_import(ctx.settings, spec, progress=report))
            except TransferError as exc:
                console.print(f"[red]import {source} failed:[/] {exc} (nothing was moved; the next run retries)")
                return True
            except psycopg.OperationalError as exc:
                console.print(f"[red]import {source} failed:[/] cannot reach PostgreSQL: {exc} (nothing was moved; "
                              "the next run retries)")
                return True
            except KafkaError as exc:
                console.print(f"[red]import {source} failed:[/] Kafka: {type(exc).__name__}: {exc} (the file stays; "
                              "the next run publishes it again with the same message ids)")
                return True
        for r in results:
            colour = {"done": "green", "failed": "yellow", "rejected": "red"}.get(r.status, "dim")
            console.print(f"  [{colour}]{r.status}[/] {r.file}: {r.rows:,} rows, {r.published:,} published, "
                          + (f"{r.already_published:,} already published, " if r.already_published else "")
                          + f"{r.bad_rows:,} bad "
                          f"{('— ' + r.detail) if r.detail else ''}")
            for e in r.errors[:10]:
                console.print(f"      {e}", highlight=False)
            if len(r.errors) > 10:
                console.print(f"      … {len(r.errors) - 10} more in the error report")
        if not results:
            console.print(f"import {source}: no files")
        return False

    if _every(interval, once):
        raise SystemExit(1)


@batch.command("status")
@click.option("--limit", type=int, default=20, show_default=True, help="Latest imports shown.")
@click.option("--source", default=None, help="Only the imports of this source.")
@pass_ctx
def status_cmd(ctx: Context, limit: int, source: str | None) -> None:
    """Export watermarks and the import ledger."""
    import psycopg

    from streams.batch import ledger

    try:
        with psycopg.connect(ctx.settings.dsn, autocommit=True) as conn:
            ledger.migrate(conn)
            marks = ledger.rows(conn, "SELECT * FROM streams_batch_watermarks ORDER BY name")
            imports = ledger.rows(conn, "SELECT * FROM streams_batch_imports WHERE %s::text IS NULL OR source = %s "
                                        "ORDER BY started_at DESC LIMIT %s", (source, source, limit))
    except psycopg.OperationalError as exc:
        fail(f"cannot reach PostgreSQL: {exc}")
    table = Table("export", "column", "watermark", "pending file", "files", "rows", "updated",
                  title="export watermarks")
    for m in marks:
        table.add_row(m["name"], m["column_name"], str(m["watermark"]), m["pending_file"] or "", str(m["files"]),
                      f"{m['rows']:,}", m["updated_at"].isoformat(timespec="seconds"))
    console.print(table)
    table = Table("source", "file", "status", "rows", "bad", "published", "already", "attempts", "started",
                  "finished", "detail", title=f"import ledger (latest {limit})")
    for i in imports:
        table.add_row(i["source"], i["file"], i["status"], str(i["rows"] or 0), str(i["bad_rows"] or 0),
                      str(i["published"] or 0), str(i["already_published"] or 0), str(i["attempts"]),
                      i["started_at"].isoformat(timespec="seconds"),
                      i["finished_at"].isoformat(timespec="seconds") if i["finished_at"] else "",
                      (i["detail"] or "")[:60])
    console.print(table)

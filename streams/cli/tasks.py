"""``streams tasks``: the background tasks' failure log (list, re-run)."""

from __future__ import annotations

import json

import click
from rich.table import Table

from streams.cli.base import Context, console, fail, load_object, pass_ctx


def _load_tasks(path: str):
    """Import ``module:attribute`` and return the BackgroundTasks it names."""
    from streams.background import BackgroundTasks

    return load_object(path, BackgroundTasks, "tasks", "tasks")


def _failure_log(ctx: Context, table: str):
    from streams.background import FailureLog

    return FailureLog(ctx.settings, table)


@click.group("tasks")
def tasks() -> None:
    """Background tasks that failed after their retries (the failure log)."""


@tasks.command("list")
@click.option("--status", type=click.Choice(["failed", "done", "all"]), default="failed", show_default=True)
@click.option("--task", default=None, help="Only this task name.")
@click.option("--table", default="streams_task_failures", show_default=True, help="Failure-log table.")
@click.option("--json", "as_json", is_flag=True, help="Print JSON lines.")
@pass_ctx
def tasks_list(ctx: Context, status: str, task: str | None, table: str, as_json: bool) -> None:
    """List failure-log rows, oldest first."""
    import psycopg

    try:
        rows = _failure_log(ctx, table).list(None if status == "all" else status, task)
    except psycopg.errors.UndefinedTable:
        fail(f"no failure-log table {table!r} in the database (nothing has failed yet, or another --table)")
    except psycopg.OperationalError as exc:
        fail(f"cannot reach PostgreSQL: {exc}")
    if as_json:
        for row in rows:
            click.echo(json.dumps(row.summary()))
        return
    out = Table("id", "task", "args", "status", "attempts", "error", "failed at", "reruns",
                title=f"background task failures ({len(rows)}, status {status})")
    for r in rows:
        out.add_row(str(r.id), r.task, json.dumps(r.args)[:60], r.status, str(r.attempts),
                    f"{r.error_type}: {r.error_message}"[:70], r.failed_at.isoformat(timespec="seconds"),
                    str(r.reruns))
    console.print(out)


@tasks.command("retry")
@click.argument("ids", nargs=-1, type=int)
@click.option("--all", "all_failed", is_flag=True, help="Every row with status failed.")
@click.option("--task", default=None, help="Only rows of this task name (with --all).")
@click.option("--tasks", "tasks_path", required=True,
              help="module:attribute of the BackgroundTasks registry that defines the tasks.")
@click.option("--table", default="streams_task_failures", show_default=True, help="Failure-log table.")
@pass_ctx
def tasks_retry(ctx: Context, ids: tuple[int, ...], all_failed: bool, task: str | None, tasks_path: str,
                table: str) -> None:
    """Run failed tasks again (IDS, or --all); exit 1 if any still fails."""
    if bool(ids) == all_failed:
        fail("give failure ids or --all (not both)", 2)
    registry = _load_tasks(tasks_path)
    registry.failure_log.table = table
    rows = registry.failure_log.list("failed", task, list(ids) or None)
    if ids and len(rows) != len(set(ids)):
        missing = sorted(set(ids) - {r.id for r in rows})
        fail(f"no failed task with id {', '.join(map(str, missing))} (see streams tasks list --status all)")
    from streams import tracing

    tracing.configure(service_name="streams-tasks")
    done = still_failing = 0
    for row in rows:
        if registry.rerun(row):
            done += 1
        else:
            still_failing += 1
            console.print(f"  task {row.id} ({row.task}) failed again")
    tracing.shutdown()
    console.print(f"re-ran {len(rows)} failed task(s): {done} done, {still_failing} still failing")
    if still_failing:
        raise SystemExit(1)

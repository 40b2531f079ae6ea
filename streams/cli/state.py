"""``streams state``: a worker's local table state."""

from __future__ import annotations

from pathlib import Path

import click

from streams.cli.base import Context, console, fail, pass_ctx


@click.group("state")
def state() -> None:
    """A worker's local table state (RocksDB); tables come back from their changelogs."""


def _data_dir(ctx: Context, data_dir: Path | None, app_path: str | None) -> Path:
    if data_dir is not None:
        return data_dir.expanduser().resolve()
    from streams.cli.base import load_app

    return load_app(app_path or ctx.settings.worker_app).data_dir


@state.command("reset")
@click.option("--data-dir", type=click.Path(file_okay=False, path_type=Path), default=None,
              help="The worker's data dir (default: the app's, from STREAMS_WORKER_DATA_DIR / app id).")
@click.option("--app", "app_path", default=None, help="module:attribute of the StreamsApp (STREAMS_WORKER_APP).")
@click.option("--yes", "-y", is_flag=True, help="Do not ask for confirmation.")
@pass_ctx
def reset_cmd(ctx: Context, data_dir: Path | None, app_path: str | None, yes: bool) -> None:
    """Wipe local table state; the next start restores the tables from their changelog topics.

    Refused while a running worker uses the data dir.
    """
    from streams.state import (
        StateInUseError,
        locked_by_running_worker,
        summarize,
        wipe_state,
    )

    path = _data_dir(ctx, data_dir, app_path)
    summary = summarize(path)
    if not summary.exists:
        console.print(f"nothing to do: {path} does not exist")
        return
    if locked_by_running_worker(path):
        fail(f"{path} is in use by a running worker: stop the worker first", 1)
    if not yes:
        click.confirm(f"delete {path} ({summary.databases} table database(s), {summary.bytes / 2**20:.1f} MiB)?",
                      abort=True)
    try:
        wipe_state(path)
    except StateInUseError as exc:
        fail(str(exc), 1)
    console.print(f"deleted {path}: {summary.databases} table database(s), {summary.bytes / 2**20:.1f} MiB; "
                  "tables will be restored from their changelogs on the next start", highlight=False)

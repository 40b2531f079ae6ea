"""``streams schema``: message versions, their committed JSON Schemas, the compatibility gate."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import click

from streams.cli.base import Context, pass_ctx


def load_registry(path: str) -> Any:
    """The MessageRegistry that ``module:attribute`` names (a StreamsApp's, or a registry itself)."""
    from streams.app import StreamsApp
    from streams.cli.base import load_object
    from streams.messages.registry import MessageRegistry

    obj = load_object(path, object, "app", "app")
    if isinstance(obj, StreamsApp):
        return obj.registry
    if isinstance(obj, MessageRegistry):
        return obj
    from streams.dev.process import ServiceError

    raise ServiceError(f"{path!r} is neither a StreamsApp nor a MessageRegistry (got {type(obj).__name__})")


@click.group("schema")
def schema() -> None:
    """Message schemas: versions, committed JSON Schemas (schemas/), compatibility."""


_app = click.option("--app", "app_path", default=None,
                    help="module:attribute of the StreamsApp or MessageRegistry (STREAMS_WORKER_APP).")
_dir = click.option("--dir", "directory", type=click.Path(file_okay=False, path_type=Path), default=Path("schemas"),
                    show_default=True, help="Folder of the committed schemas.")


@schema.command("check")
@_app
@_dir
@pass_ctx
def check_cmd(ctx: Context, app_path: str | None, directory: Path) -> None:
    """Fail, one sentence per problem, when a type's model breaks its committed schemas."""
    from streams.messages.schemas import check

    result = check(load_registry(app_path or ctx.settings.worker_app), directory)
    for note in result.notes:
        click.echo(f"note: {note}")
    if result.problems:
        for problem in result.problems:
            click.echo(problem, err=True)
        click.echo(f"schema check failed: {len(result.problems)} problem(s) against {directory}/", err=True)
        raise SystemExit(1)
    click.echo(f"schema check passed: {result.types} message type(s), each version committed in {directory}/ "
               "and compatible with the one before")


@schema.command("write")
@_app
@_dir
@pass_ctx
def write_cmd(ctx: Context, app_path: str | None, directory: Path) -> None:
    """Commit-ready schema files of the versions that are new and compatible (never rewrites one)."""
    from streams.messages.schemas import write

    written, result = write(load_registry(app_path or ctx.settings.worker_app), directory)
    for path in written:
        click.echo(f"wrote {path}")
    left = [p for p in result.problems if "streams schema write" not in p]
    for problem in left:
        click.echo(problem, err=True)
    if left:
        raise SystemExit(1)
    if not written:
        click.echo(f"nothing to write: every version is in {directory}/")

"""``streams asyncapi``: the AsyncAPI 3.0 document of one or more apps (see :mod:`streams.asyncapi`)."""

from __future__ import annotations

from pathlib import Path

import click

from streams.cli.base import Context, load_app, pass_ctx


@click.command("asyncapi")
@click.option("--app", "app_paths", multiple=True,
              help="module:attribute of a StreamsApp (repeat for a system of services; default STREAMS_WORKER_APP).")
@click.option("--title", default=None, help="The document's title (default: the first app's id).")
@click.option("--output", "-o", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="Write the document here instead of printing it.")
@pass_ctx
def asyncapi_cmd(ctx: Context, app_paths: tuple[str, ...], title: str | None, output: Path | None) -> None:
    """Print the AsyncAPI 3.0 document of the app(s): topics, messages, consumer groups."""
    from streams.asyncapi import document, render

    apps = [load_app(path) for path in (app_paths or (ctx.settings.worker_app,))]
    text = render(document(apps, title=title))
    if output is None:
        click.echo(text, nl=False)
    else:
        output.parent.mkdir(parents=True, exist_ok=True)
        output.write_text(text)
        click.echo(f"wrote {output}", err=True)

"""``streams settings`` and ``streams worker``."""

from __future__ import annotations

import json
import os
from typing import Any

import click
from rich.table import Table

from streams.cli.base import Context, console, load_app, pass_ctx
from streams.settings import load_settings
from streams.web import WebApi


@click.command("settings")
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
@pass_ctx
def settings_cmd(ctx: Context, as_json: bool) -> None:
    """Show the effective settings (secrets masked)."""
    data = ctx.settings.safe_dict()
    data["bootstrap_servers"] = ctx.settings.bootstrap_servers
    if as_json:
        click.echo(json.dumps(data, indent=2, default=str))
        return
    table = Table("setting", "value", title="streams settings")
    for key, value in data.items():
        table.add_row(key, str(value))
    console.print(table)


# --- worker ---------------------------------------------------------------------
@click.command("worker", context_settings={"ignore_unknown_options": True})
@click.option("--app", "app_path", default=None, help="module:attribute of the StreamsApp (STREAMS_WORKER_APP).")
@click.option("--web-port", type=int, default=None, help="Web server port (STREAMS_WEB_PORT).")
@click.option("--without-web", is_flag=True, help="Do not start the web server.")
@click.option("--data-dir", default=None, help="Local table state folder (STREAMS_WORKER_DATA_DIR).")
@click.option("--app-id", default=None, help="App id / consumer group (STREAMS_APP_ID).")
@click.option("--log-level", "-l", "level", default=None, help="Worker log level.")
@click.argument("faust_args", nargs=-1, type=click.UNPROCESSED)
def worker_cmd(app_path: str | None, web_port: int | None, without_web: bool, data_dir: str | None,
               app_id: str | None, level: str | None, faust_args: tuple[str, ...]) -> None:
    """Run a Faust worker for the project's app (extra args go to Faust's worker)."""
    for env, value in (("STREAMS_WEB_PORT", web_port), ("STREAMS_WORKER_DATA_DIR", data_dir),
                       ("STREAMS_APP_ID", app_id), ("STREAMS_LOG_LEVEL", level)):
        if value is not None:
            os.environ[env] = str(value)
    if without_web:
        os.environ["STREAMS_WEB_ENABLED"] = "false"
    settings = load_settings()
    app = load_app(app_path or settings.worker_app)
    faust_level = level or app.settings.log_level.value
    faust_level = {"warning": "warn", "critical": "crit"}.get(faust_level, faust_level)  # Faust's spelling
    argv = ["worker", "-l", faust_level]
    if not app.settings.web_enabled:
        argv.append("--without-web")
    else:
        # table views, health, metrics and the dashboard on the worker's web server
        app.web = WebApi(app)
        argv += ["--web-port", str(app.settings.web_port), "--web-bind", app.settings.web_host]
    if app.settings.warmup_before_join:
        _warm_up(app)
    app.main([*argv, *faust_args])


def _warm_up(app: Any) -> None:
    """Catch the local tables up with their changelogs before joining the group
    (:mod:`streams.faust_compat.warmup`); a failure only costs the warm-up."""
    import asyncio
    import logging

    from streams.faust_compat.warmup import warm_up

    log = logging.getLogger("streams.warmup")
    if not logging.getLogger().handlers:
        logging.basicConfig(level=logging.INFO, format="[%(asctime)s] [%(process)d] [%(levelname)s] %(message)s")
    # a loop of its own, closed after: the warm-up touches no Faust service (they bind the loop
    # Faust's worker runs on afterwards)
    loop = asyncio.new_event_loop()
    try:
        done = loop.run_until_complete(warm_up(app.faust, app.settings))
    except Exception as exc:  # noqa: BLE001 - Faust's recovery restores what is missing
        log.warning("warm-up before joining failed (%r); the restore after joining does it", exc)
        return
    finally:
        loop.close()
    if done.records or done.skipped:
        log.info("warmed up before joining: %d changelog records in %.1fs (%s)%s", done.records, done.seconds,
                 ", ".join(f"{k} {a}->{b}" for k, (a, b) in sorted(done.partitions.items())) or "nothing to read",
                 f"; skipped: {done.skipped}" if done.skipped else "")

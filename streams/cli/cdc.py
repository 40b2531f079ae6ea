"""``streams cdc``: Debezium connectors on Kafka Connect, with their replication slots."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import click
from pydantic import ValidationError
from rich.table import Table

from streams.cli.base import Context, console, fail, pass_ctx
from streams.errors import StreamsError


class CdcGroup(click.Group):
    """Every CDC failure (Connect, PostgreSQL, a refused operation) is one line and exit 1."""

    def invoke(self, ctx: click.Context) -> Any:
        import psycopg

        try:
            return super().invoke(ctx)
        except StreamsError as exc:
            fail(str(exc))
        except psycopg.Error as exc:
            fail(f"PostgreSQL: {str(exc).strip()}")


@click.group("cdc", cls=CdcGroup)
def cdc() -> None:
    """Change data capture: Debezium's PostgreSQL, MariaDB and MySQL connectors on Kafka Connect (STREAMS_CONNECT_URL)."""


def _connectors(ctx: Context):
    from streams.cdc.connectors import CdcConnectors

    return CdcConnectors(ctx.settings)


def _load_spec(path: Path) -> dict[str, Any]:
    text = path.read_text()
    try:
        if path.suffix in (".yaml", ".yml"):
            import yaml

            data = yaml.safe_load(text)
        else:
            data = json.loads(text)
    except Exception as exc:  # noqa: BLE001 - yaml.YAMLError, json.JSONDecodeError: one line either way
        raise click.BadParameter(f"{path} is not valid {'YAML' if path.suffix in ('.yaml', '.yml') else 'JSON'}: "
                                 f"{str(exc).splitlines()[0]}", param_hint="--file") from None
    if not isinstance(data, dict):
        raise click.BadParameter(f"{path}: expected a mapping of spec fields", param_hint="--file")
    return data


@cdc.command("create")
@click.argument("name", required=False)
@click.option("--file", "-f", "spec_file", type=click.Path(exists=True, dir_okay=False, path_type=Path),
              help="A spec in JSON or YAML (name, tables or outbox, publication, slot, topic_prefix, snapshot, "
                   "partitions, before_rows, key_columns); options given here override it.")
@click.option("--table", "-t", "tables", multiple=True, help="schema.table to capture (repeatable).")
@click.option("--outbox", is_flag=True, default=None, help="Publish the outbox table through the log.")
@click.option("--publication", default=None, help="Publication name (default <slot>_pub).")
@click.option("--slot", default=None, help="Replication slot name (default: the name with '-' as '_').")
@click.option("--topic-prefix", default=None, help="Debezium topic prefix (default <STREAMS_TOPIC_PREFIX>cdc.<name>).")
@click.option("--snapshot", type=click.Choice(["initial", "incremental", "no_data", "always", "when_needed"]),
              default=None, help="Snapshot mode (default: initial for tables, no_data for the outbox); incremental: "
                                 "read the tables in chunks while streaming, resumable after a crash.")
@click.option("--partitions", type=click.IntRange(1, 1000), default=None, help="Partitions of the topics it creates.")
@click.option("--key-columns", "key_columns", multiple=True, metavar="TABLE:COLUMN[,COLUMN...]",
              help="Key the change events of TABLE by these columns (required for a table without a primary key; "
                   "repeatable).")
@click.option("--database-url", default=None,
              help="The captured database as Connect reaches it (default STREAMS_DATABASE_URL).")
@click.option("--reuse-slot", is_flag=True,
              help="Resume from an existing (inactive) slot of that name, e.g. after `delete --keep-slot`.")
@click.option("--wait-position", type=click.FloatRange(0), default=120.0, show_default=True, metavar="SECONDS",
              help="Wait this long for Connect to store the connector's first position after its snapshot "
                   "(until then a Connect crash makes it start over); 0: do not wait.")
@click.option("--dry-run", is_flag=True, help="Print the generated connector config; create nothing.")
@pass_ctx
def create_cmd(ctx: Context, name: str | None, spec_file: Path | None, tables: tuple[str, ...], outbox: bool | None,
               publication: str | None, slot: str | None, topic_prefix: str | None, snapshot: str | None,
               partitions: int | None, key_columns: tuple[str, ...], database_url: str | None, reuse_slot: bool,
               wait_position: float, dry_run: bool) -> None:
    """Create connector NAME, wait until it streams and Connect has stored its first position
    (its config is generated from the spec)."""
    from streams.cdc.config import CdcSpec
    from streams.cdc.connectors import redact

    fields = _load_spec(spec_file) if spec_file else {}
    given = {"name": name, "tables": list(tables) or None, "outbox": outbox, "publication": publication,
             "slot": slot, "topic_prefix": topic_prefix, "snapshot": snapshot, "partitions": partitions}
    fields.update({k: v for k, v in given.items() if v is not None})
    if key_columns:
        fields["key_columns"] = {**(fields.get("key_columns") or {}), **_key_columns(key_columns)}
    try:
        spec = CdcSpec(**fields)
    except ValidationError as exc:
        fail("the CDC spec is not valid:\n" + "\n".join(
            f"  {'.'.join(map(str, e['loc'])) or 'spec'}: {e['msg']}" for e in exc.errors()))
    connectors = _connectors(ctx)
    config = connectors.config(spec, database_url)
    if dry_run:
        click.echo(json.dumps({"name": spec.name, "config": redact(config)}, indent=2))
        return
    from streams.cdc.connectors import starts_over_without_position
    from streams.cdc.slots import int_to_lsn

    created = connectors.create(spec, database=database_url, reuse_slot=reuse_slot, position_timeout=wait_position)
    resolved = connectors.resolve(spec)
    if created.config.get("database.server.id"):  # a binlog connector (MySQL / MariaDB)
        _print_binlog_created(spec.name, resolved.prefix, created, wait_position)
        return
    console.print(f"connector {spec.name} is RUNNING — slot {resolved.slot_name}, publication "
                  f"{resolved.publication_name}, topics {resolved.prefix}.<schema>.<table>"
                  + (" (the outbox's rows now go through the log)" if spec.outbox else ""), highlight=False)
    for warning in created.warnings:
        console.print(f"[yellow]warning:[/] {warning}", highlight=False)
    if resolved.signal_table:
        console.print(f"incremental snapshot requested (signal table {resolved.signal_table}): the tables are read "
                      "in chunks while the log streams; a restart resumes it", highlight=False)
    if created.resume_lsn is not None:
        console.print(f"position stored after {created.waited:.1f}s: a restart resumes from LSN "
                      f"{int_to_lsn(created.resume_lsn)}", highlight=False)
    elif not starts_over_without_position(created.config):
        console.print(f"snapshot mode {created.config.get('snapshot.mode')}: until a position is stored, a restart "
                      "reads the log from the slot", highlight=False)
    elif wait_position > 0:
        console.print(f"[yellow]warning:[/] Connect has stored no position after the snapshot within "
                      f"{wait_position:.0f}s (its offset.flush.interval.ms?); until it does, a Connect crash makes "
                      f"the connector start over with a new snapshot. Check: streams cdc status {spec.name}",
                      highlight=False)


def _print_binlog_created(name: str, prefix: str, created, wait_position: float) -> None:
    config = created.config
    console.print(f"connector {name} is RUNNING — {config['connector.class'].rsplit('.', 1)[1]} reading the binlog as "
                  f"replica {config['database.server.id']}, topics {prefix}.<database>.<table>, schema history "
                  f"{config['schema.history.internal.kafka.topic']}", highlight=False)
    if created.resume_binlog is not None:
        where = created.resume_binlog
        console.print(f"position stored after {created.waited:.1f}s: a restart resumes from binlog "
                      f"{where['file']}:{where['pos']}" + (f" (GTID set {where['gtids']})" if where.get("gtids") else ""),
                      highlight=False)
    elif wait_position > 0 and config.get("snapshot.mode") in ("initial", "when_needed"):
        console.print(f"[yellow]warning:[/] Connect has stored no position after the snapshot within "
                      f"{wait_position:.0f}s; until it does, a Connect crash makes the connector start over with a "
                      f"new snapshot. Check: streams cdc status {name}", highlight=False)


def _key_columns(given: tuple[str, ...]) -> dict[str, list[str]]:
    """``("public.events:kind,n",)`` → ``{"public.events": ["kind", "n"]}``."""
    out: dict[str, list[str]] = {}
    for item in given:
        table, sep, columns = item.partition(":")
        if not sep or not table or not columns:
            raise click.BadParameter(f"{item!r}: expected TABLE:COLUMN[,COLUMN...]", param_hint="--key-columns")
        out[table.strip()] = [c.strip() for c in columns.split(",")]
    return out


@cdc.command("list")
@click.option("--json", "as_json", is_flag=True, help="Print JSON lines.")
@pass_ctx
def list_cmd(ctx: Context, as_json: bool) -> None:
    """Connectors on the Connect cluster: state, tasks, slot and how far behind it is."""
    connectors = _connectors(ctx)
    table = Table("connector", "state", "tasks", "slot", "slot lag", "WAL kept", title="CDC connectors")
    for name in connectors.names():
        st = connectors.status(name)
        if as_json:
            click.echo(json.dumps(st.as_dict(), default=str))
            continue
        slot = st.slot
        if st.binlog is not None:
            stored = st.binlog.get("stored") or {}
            table.add_row(name, st.state, ", ".join(t["state"] for t in st.tasks) or "-",
                          f"binlog {stored.get('file', '-')}:{stored.get('pos', '-')}",
                          _bytes(st.binlog.get("bytes_behind")) if "bytes_behind" in st.binlog else "-", "-")
            continue
        table.add_row(name, st.state, ", ".join(t["state"] for t in st.tasks) or "-",
                      f"{st.slot_name} ({'active' if slot and slot.active else 'inactive' if slot else 'missing'})",
                      _bytes(slot.lag_bytes) if slot else "-", _bytes(slot.retained_bytes) if slot else "-")
    if not as_json:
        console.print(table)


@cdc.command("status")
@click.argument("name")
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
@pass_ctx
def status_cmd(ctx: Context, name: str, as_json: bool) -> None:
    """Connector and task state, replication slot lag, stored position."""
    st = _connectors(ctx).status(name)
    if as_json:
        click.echo(json.dumps(st.as_dict(), indent=2, default=str))
        return
    table = Table(title=f"connector {name}", show_header=False)
    table.add_column("", style="bold")
    table.add_column("")
    table.add_row("state", st.state)
    for t in st.tasks:
        table.add_row(f"task {t['id']}", t["state"] + (f" — {t['error']}" if t.get("error") else ""))
    table.add_row("captures", "the outbox (rows handed to the log)" if st.outbox else str(st.tables))
    if st.binlog is not None:
        _binlog_rows(table, st)
        console.print(table)
        return
    table.add_row("topics", f"{st.topic_prefix}.<schema>.<table>")
    table.add_row("publication", str(st.publication))
    if st.slot is None:
        table.add_row("slot", f"{st.slot_name}: not found")
    else:
        s = st.slot
        table.add_row("slot", f"{s.name} ({'active, pid ' + str(s.active_pid) if s.active else 'inactive'}), "
                              f"WAL status {s.wal_status}")
        table.add_row("slot lag", f"{_bytes(s.lag_bytes)} not confirmed; {_bytes(s.retained_bytes)} of WAL kept")
    for item in st.offsets:
        offset = item["offset"]
        table.add_row("stored position", f"lsn {offset.get('lsn_text', '?')}, commit {offset.get('lsn_commit_text', '?')}, "
                                         f"tx {offset.get('txId', '?')}")
    if not st.offsets:
        table.add_row("stored position", "none yet")
    if st.incremental_snapshot:
        table.add_row("incremental snapshot", "reading " + ", ".join(st.incremental_snapshot)
                      + " (a restart resumes it from the stored position)")
    table.add_row("a restart", {
        "resume": "resumes from the stored position",
        "snapshot": f"takes the snapshot again (snapshot mode {st.snapshot_mode}"
                    + ("" if st.snapshot_mode == "always" else ", no position after the snapshot stored yet") + ")",
        "slot": f"reads the log from the slot's confirmed position (snapshot mode {st.snapshot_mode})",
    }[st.on_restart])
    console.print(table)


def _binlog_rows(table: Table, st) -> None:
    """A binlog connector's positions, in MySQL's terms, beside the server's."""
    info = st.binlog
    table.add_row("topics", f"{st.topic_prefix}.<database>.<table>")
    stored, server = info.get("stored"), info.get("server")
    if stored:
        kept = {True: "", False: " — THIS FILE IS NO LONGER ON THE SERVER (purged): the connector cannot resume",
                None: ""}[info.get("stored_file_kept")]
        table.add_row("stored position", f"binlog {stored['file']}:{stored['pos']} (event {stored.get('event') or 0}, "
                                         f"row {stored.get('row') or 0}){kept}")
        table.add_row("stored GTID set", str(stored.get("gtids") or "none (a server without GTIDs)"))
    else:
        table.add_row("stored position", "none yet")
    if server:
        table.add_row("server now", f"binlog {server['file']}:{server['pos']}, GTID set {server['gtids']}")
        if "bytes_behind" in info:
            table.add_row("behind", f"{_bytes(info['bytes_behind'])} of binlog not yet stored as sent")
    else:
        table.add_row("server now", "the database does not answer")
    table.add_row("a restart", {
        "resume": "resumes from the stored position" + (" (by its GTID set)" if stored and stored.get("gtids") else ""),
        "snapshot": f"takes the snapshot again (snapshot mode {st.snapshot_mode})",
        "slot": f"reads the binlog from the server's current position (snapshot mode {st.snapshot_mode})",
    }[st.on_restart])


def _bytes(n: int | None) -> str:
    if n is None:
        return "?"
    for unit in ("B", "KiB", "MiB", "GiB"):
        if abs(n) < 1024 or unit == "GiB":
            return f"{n:,.0f} {unit}" if unit == "B" else f"{n:,.1f} {unit}"
        n /= 1024  # type: ignore[assignment]
    return str(n)


def _lifecycle(command: str, doc: str) -> None:
    @cdc.command(command, help=doc)
    @click.argument("name")
    @pass_ctx
    def run(ctx: Context, name: str) -> None:
        connectors = _connectors(ctx)
        getattr(connectors, command)(name)
        console.print(f"connector {name}: {command} done — now {connectors.client.state(name)[0]}")


_lifecycle("pause", "Pause the connector's tasks (the slot keeps WAL meanwhile).")
_lifecycle("resume", "Resume a paused or stopped connector.")
_lifecycle("stop", "Stop the connector and its tasks, keeping its config (needed to change offsets).")
_lifecycle("restart", "Restart the connector and its tasks; they resume from the stored position.")


@cdc.command("delete")
@click.argument("name")
@click.option("--keep-slot", is_flag=True, help="Keep the replication slot and publication (WAL stays held!).")
@click.option("--requeue-seconds", type=float, default=300.0, show_default=True,
              help="Outbox connectors: if the slot does not confirm the log in time, rows handed to the log in "
                   "this many seconds become pending again for the relay.")
@click.option("--drain-timeout", type=float, default=60.0, show_default=True,
              help="Outbox connectors: seconds to wait for the connector to send every row handed to the log.")
@click.option("--dry-run", is_flag=True, help="Say what would be deleted.")
@pass_ctx
def delete_cmd(ctx: Context, name: str, keep_slot: bool, requeue_seconds: float, drain_timeout: float,
               dry_run: bool) -> None:
    """Delete connector NAME, then drop its replication slot and publication."""
    connectors = _connectors(ctx)
    if dry_run:
        config = connectors.client.config(name)
        click.echo(json.dumps({"connector": name, "slot": None if keep_slot else config.get("slot.name"),
                               "publication": None if keep_slot else config.get("publication.name")}))
        return
    report = connectors.delete(name, keep_slot=keep_slot, requeue_seconds=requeue_seconds, drain_timeout=drain_timeout)
    click.echo(json.dumps(report))


@cdc.group("offsets")
def offsets_group() -> None:
    """The connector's stored source position (Connect's offsets API)."""


@offsets_group.command("show")
@click.argument("name")
@pass_ctx
def offsets_show(ctx: Context, name: str) -> None:
    """Print the stored positions as JSON (a binlog connector's also in MySQL's terms, beside the
    server's current position: ``{"offsets": [...], "binlog": {"stored": ..., "server": ...}}``)."""
    st = _connectors(ctx).status(name)
    if st.binlog is not None:
        click.echo(json.dumps({"offsets": st.offsets, "binlog": st.binlog}, indent=2, default=str))
        return
    click.echo(json.dumps(st.offsets, indent=2))


@offsets_group.command("reset")
@click.argument("name")
@click.option("--to-lsn", default=None, help="Move to this LSN (0/1A2B3C or an integer) instead of forgetting.")
@click.option("--to-position", default=None, metavar="FILE:POS",
              help="MySQL / MariaDB: move to this binlog file and position, where a transaction begins (MariaDB: "
                   "the server's GTID set there is stored with it; MySQL: the GTID set is dropped).")
@click.option("--to-gtid", default=None, metavar="GTID_SET",
              help="MySQL / MariaDB: resume after the transactions of this GTID set (MariaDB 0-1-42, MySQL uuid:1-42; "
                   "MariaDB: the file and position move to where the next transaction begins).")
@click.option("--execute", is_flag=True, help="Apply (the connector must be stopped: streams cdc stop NAME).")
@pass_ctx
def offsets_reset(ctx: Context, name: str, to_lsn: str | None, to_position: str | None, to_gtid: str | None,
                  execute: bool) -> None:
    """Plan (and with --execute apply) a reset of NAME's stored position.

    Without --to-lsn the position is forgotten: on resume the connector starts as a new
    one (a snapshot if its snapshot mode takes one, then the log from the slot). The slot
    never goes back: a position before its confirmed LSN is read from there.
    A binlog connector (MySQL / MariaDB) moves with --to-position FILE:POS or --to-gtid SET."""
    from streams.cdc.slots import lsn_to_int

    connectors = _connectors(ctx)
    if to_position or to_gtid:
        _reset_binlog(connectors, name, to_position, to_gtid, execute)
        return
    try:
        target = None if to_lsn is None else (lsn_to_int(to_lsn) if "/" in to_lsn else int(to_lsn))
    except ValueError:
        raise click.BadParameter(f"{to_lsn!r} is not an LSN (0/1A2B3C, or an integer)", param_hint="--to-lsn") from None
    current = connectors.status(name)
    plan = {"connector": name, "state": current.state, "current": current.offsets,
            "new": "forgotten (starts as a new connector)" if target is None else {"lsn": target}}
    if not execute:
        click.echo(json.dumps({**plan, "applied": False}, indent=2))
        return
    connectors.reset_offsets(name, to_lsn=target)
    click.echo(json.dumps({**plan, "applied": True}, indent=2))


def _reset_binlog(connectors, name: str, to_position: str | None, to_gtid: str | None, execute: bool) -> None:
    position = None
    if to_position:
        file, sep, pos = to_position.rpartition(":")
        if not sep or not file or not pos.isdigit():
            raise click.BadParameter(f"{to_position!r}: expected FILE:POS (mysql-bin.000003:1472)",
                                     param_hint="--to-position")
        position = (file, int(pos))
    current = connectors.status(name)
    if current.binlog is None:
        fail(f"connector {name} does not read a binlog: use --to-lsn")
    before, after = connectors.reset_binlog_offsets(name, to_position=position, to_gtid=to_gtid, apply=execute)
    click.echo(json.dumps({"connector": name, "state": current.state, "current": before, "new": after,
                           "applied": execute}, indent=2))

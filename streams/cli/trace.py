"""``streams trace``: read traces back from Jaeger's query API (one order's path, as a tree)."""

from __future__ import annotations

import json

import click

from streams.cli.base import Context, console, fail, pass_ctx


def _api(ctx: Context, url: str | None):
    from streams.dev.jaeger import JaegerApi, LocalJaeger

    return JaegerApi(url) if url else LocalJaeger.from_settings(ctx.settings).api


@click.group("trace")
def trace() -> None:
    """Traces in Jaeger: find one by a message or order id, print its spans as a tree."""


_API = click.option("--api", "url", default=None, metavar="URL",
                    help="Jaeger's query API (default: the local one of `streams dev jaeger up`).")


@trace.command("find")
@click.option("--service", required=True, help="A service of the trace (OTEL_SERVICE_NAME; a worker: its app id).")
@click.option("--tag", "tags", multiple=True, metavar="KEY=VALUE",
              help="A span attribute, e.g. messaging.message.id=<id> or order.id=<id> (repeatable).")
@click.option("--limit", type=int, default=20, show_default=True)
@_API
@pass_ctx
def find_cmd(ctx: Context, service: str, tags: tuple[str, ...], limit: int, url: str | None) -> None:
    """List the traces with a span of SERVICE carrying the tags: trace id, spans, services, first span."""
    wanted = {}
    for tag in tags:
        key, sep, value = tag.partition("=")
        if not sep:
            fail(f"--tag {tag!r}: KEY=VALUE", 2)
        wanted[key] = value
    try:
        found = _api(ctx, url).find_traces(service, wanted, limit=limit)
    except OSError as exc:
        fail(f"Jaeger's API does not answer: {exc}")
    for t in found:
        services = sorted({p["serviceName"] for p in (t.get("processes") or {}).values()})
        first = min(t["spans"], key=lambda s: s["startTime"])
        console.print(f"{t['traceID']}  {len(t['spans'])} spans  {', '.join(services)}  ({first['operationName']})",
                      highlight=False)
    if not found:
        fail("no trace found", 1)


@trace.command("show")
@click.argument("trace_id")
@click.option("--json", "as_json", is_flag=True, help="Jaeger's JSON of the trace.")
@_API
@pass_ctx
def show_cmd(ctx: Context, trace_id: str, as_json: bool, url: str | None) -> None:
    """Print one trace's spans as a tree: service, operation, when, how long, the message it handled."""
    from streams.dev.jaeger import span_rows

    try:
        found = _api(ctx, url).trace(trace_id)
    except OSError as exc:
        fail(f"Jaeger's API does not answer: {exc}")
    if found is None:
        fail(f"no trace {trace_id}")
    if as_json:
        click.echo(json.dumps(found, indent=2))
        return
    for row in span_rows(found):
        detail = row.tags.get("messaging.message.id") or row.tags.get("order.id") or ""
        outcome = row.tags.get("streams.outcome")
        console.print(f"{'  ' * row.depth}{'✗ ' if row.error else ''}[bold]{row.service}[/] {row.name}  "
                      f"+{row.start_ms:.1f} ms, {row.duration_ms:.1f} ms"
                      + (f"  {detail}" if detail else "") + (f"  → {outcome}" if outcome else ""), highlight=False)

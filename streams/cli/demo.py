"""``streams demo ...``: demonstrations that run against a real broker and print their figures."""

from __future__ import annotations

import asyncio
from pathlib import Path

import click

from streams.cli.base import Context, console, fail, pass_ctx


@click.group("demo")
def demo() -> None:
    """Demonstrations on a real broker (the local one is started if needed)."""


@demo.command("backpressure")
@click.option("--messages", type=click.IntRange(min=1), default=200_000, show_default=True,
              help="Size of the burst.")
@click.option("--slow-ms", type=click.FloatRange(min=0), default=2.0, show_default=True,
              help="Milliseconds per call while the sink is slow.")
@click.option("--slow-seconds", type=click.FloatRange(min=0), default=30.0, show_default=True,
              help="Length of the burst + slow sink phase (at least until the burst is published).")
@click.option("--outage-seconds", type=click.FloatRange(min=0), default=15.0, show_default=True,
              help="How long the sink fails.")
@click.option("--interval", type=click.FloatRange(min=0.2), default=1.0, show_default=True,
              help="Seconds between samples.")
@click.option("--out", "out_dir", type=click.Path(file_okay=False, path_type=Path), default=None,
              help="Where to write the chart and data (default <home>/demo/backpressure).")
@click.option("--keep-services", is_flag=True, help="Leave a local broker started by the demo running.")
@pass_ctx
def backpressure_cmd(ctx: Context, messages: int, slow_ms: float, slow_seconds: float, outage_seconds: float,
                     interval: float, out_dir: Path | None, keep_services: bool) -> None:
    """A burst into a slow, then failing, then recovered sink: lag rises and drains, memory stays flat.

    Writes a self-contained HTML chart of lag, processing rate and worker RSS.
    """
    from streams.demos.backpressure import MEMORY_BOUND_MIB, run_demo, summary_table

    settings = ctx.settings
    out_dir = (out_dir or settings.home_path / "demo" / "backpressure").resolve()
    broker = None
    if settings.uses_local_kafka:
        from streams.dev.kafka import LocalKafka

        broker = LocalKafka.from_settings(settings)
        took = broker.up()
        console.print(f"  kafka: {'already running' if took == 0 else f'started in {took:.1f}s'} "
                      f"({settings.bootstrap_servers})")
        if took == 0:
            broker = None  # not ours to stop
    try:
        result = asyncio.run(run_demo(settings, messages=messages, slow_ms=slow_ms, slow_s=slow_seconds,
                                      outage_s=outage_seconds, out_dir=out_dir, interval=interval,
                                      console=console))
    except RuntimeError as exc:
        fail(str(exc))
    finally:
        if broker is not None and not keep_services:
            broker.down()
    console.print(summary_table(result))
    console.print(f"  published {messages:,} in {result.publish_seconds:.1f}s; lag drained in "
                  f"{result.drain_seconds:.1f}s after recovery; peak lag {result.peak_lag:,}")
    console.print(f"  worker RSS: peak sample {result.peak_rss_mib:.0f} MiB, VmHWM {result.vm_hwm_mib:.0f} MiB "
                  f"(documented bound {MEMORY_BOUND_MIB} MiB); dead letters: {result.dead_letters}")
    console.print(f"  chart: {result.chart}\n  data:  {result.data}")
    if result.vm_hwm_mib > MEMORY_BOUND_MIB:
        fail(f"worker peak RSS {result.vm_hwm_mib:.0f} MiB is above the documented bound {MEMORY_BOUND_MIB} MiB")

"""The ``streams`` command line: one module per command group.

Exit codes: 0 ok; 1 a command failed (message on stderr); 2 bad usage or
invalid settings.
"""

from __future__ import annotations

import logging
import os

import click

from streams.cli import help_tree
from streams.cli.asyncapi import asyncapi_cmd
from streams.cli.base import StreamsGroup
from streams.cli.batch import batch
from streams.cli.cdc import cdc
from streams.cli.consume import consume_cmd
from streams.cli.demo import demo
from streams.cli.dev import dev
from streams.cli.dlq import dlq
from streams.cli.lag import lag_cmd
from streams.cli.offsets import offsets
from streams.cli.outbox import outbox, relay_cmd
from streams.cli.schema import schema
from streams.cli.state import state
from streams.cli.tasks import tasks
from streams.cli.topics import topics
from streams.cli.trace import trace
from streams.cli.worker import settings_cmd, worker_cmd


@click.group(cls=StreamsGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.option("-l", "--log-level", default=None, help="Log level (overrides STREAMS_LOG_LEVEL).")
def cli(log_level: str | None) -> None:
    """streams: Kafka consumer framework for reliable asynchronous integration."""
    if log_level:
        os.environ["STREAMS_LOG_LEVEL"] = log_level
    level = (log_level or os.environ.get("STREAMS_LOG_LEVEL") or "info").upper()
    logging.basicConfig(level=getattr(logging, level, logging.INFO),
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    # a one-shot command prints its own lines, not the Kafka client's routine notes ("Updating subscribed
    # topics ..."); a worker keeps them (its partition assignments are among them)
    if level == "INFO" and click.get_current_context().invoked_subcommand != "worker":
        logging.getLogger("aiokafka").setLevel(logging.WARNING)


# --- settings --------------------------------------------------------------------


for command in (settings_cmd, worker_cmd, asyncapi_cmd, consume_cmd, batch, cdc, dev, dlq, lag_cmd, offsets, schema, state,
                tasks, topics, trace):
    cli.add_command(command)
help_tree.install(cli)
cli.add_command(demo)
cli.add_command(outbox)
cli.add_command(relay_cmd)


def main() -> None:
    """Console-script entry point."""
    cli(prog_name="streams")

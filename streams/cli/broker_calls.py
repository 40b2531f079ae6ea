"""Run a broker coroutine from a command, turning Kafka errors into a clear message and exit code 1."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Coroutine
from typing import Any, TypeVar

from aiokafka.errors import KafkaConnectionError, KafkaError

from streams.cli.base import fail
from streams.settings import Settings

T = TypeVar("T")


def run_on_broker(settings: Settings, coro: Coroutine[Any, Any, T]) -> T:
    """``asyncio.run(coro)``; an unreachable broker or a Kafka error exits 1 with one line on stderr."""
    logging.getLogger("aiokafka").setLevel(logging.CRITICAL)  # its connect errors repeat ours
    try:
        return asyncio.run(coro)
    except KafkaConnectionError:
        fail(f"cannot reach Kafka at {settings.bootstrap_servers} (is it running? `streams dev kafka up`)", 1)
    except LookupError as exc:
        fail(str(exc).strip("'\""), 1)
    except KafkaError as exc:
        fail(f"Kafka refused the request: {exc}", 1)
    raise AssertionError("unreachable")

"""A worker's state written out for a stall diagnosis: ``kill -USR1 <worker pid>`` logs where
every asyncio task waits and the consumer's private bookkeeping."""

from __future__ import annotations

import asyncio
import gc
import logging
import signal
import types
from typing import Any

from streams.faust_compat.private import require


def _span(offsets: list[int]) -> str:
    """``n: lo..hi`` for a list of offsets (empty: ``-``)."""
    return f"{len(offsets)}: {min(offsets)}..{max(offsets)}" if offsets else "-"


def log_consumer_state(faust_app: Any, barrier: Any, log: logging.Logger) -> None:
    """Log the consumer's assignment, pauses, fetch positions and per-partition commit state."""
    consumer = faust_app.consumer
    inner = require(require(consumer, "_thread"), "_consumer")
    unacked_messages = list(require(consumer, "_unacked_messages"))
    log.warning("consumer state: assignment=%s paused=%s active=%s flow_control_active=%s "
                "aiokafka_paused=%s positions=%s highwaters=%s unacked=%d barrier=%s",
                sorted(consumer.assignment()), sorted(require(consumer, "_paused_partitions")),
                sorted(require(consumer, "_active_partitions") or ()),
                faust_app.flow_control.is_active(),
                sorted(inner.paused()),
                {str(tp): require(inner, "_fetcher")._subscriptions.subscription.assignment.state_value(tp).position
                 for tp in inner.assignment()},
                {str(tp): inner.highwater(tp) for tp in inner.assignment()},
                len(unacked_messages), vars(barrier))
    unacked: dict[str, list[int]] = {}
    for m in unacked_messages:
        unacked.setdefault(str(m.tp), []).append(m.offset)
    committed, read, acked, gaps = (require(consumer, name) for name in
                                    ("_committed_offset", "_read_offset", "_acked", "_gap"))
    log.warning("commit state per partition: %s", {
        str(tp): {
            "committed": committed.get(tp),
            "read": read.get(tp),
            "acked": _span(acked.get(tp) or []),
            "gaps": sorted((iv.begin, iv.end) for iv in gaps.get(tp) or ()),
            "unacked": _span(unacked.get(str(tp), [])),
        } for tp in sorted(consumer.assignment())})


log = logging.getLogger(__name__)


def install_stack_dump(faust_app: Any, barrier: Any) -> None:
    """On SIGUSR1, log every asyncio task's await chain and :func:`log_consumer_state` (on the
    running loop; a loop without signal support keeps no handler)."""
    try:
        asyncio.get_running_loop().add_signal_handler(signal.SIGUSR1, log_task_stacks, faust_app, barrier)
    except (NotImplementedError, RuntimeError):
        pass


def log_task_stacks(faust_app: Any = None, barrier: Any = None) -> None:
    """Log where every asyncio task waits (its await chain, innermost last), the framework's
    suspended coroutines and, given the app, its consumer's state."""
    lines: list[str] = []
    for task in asyncio.all_tasks():
        chain: list[str] = []
        coro: Any = task.get_coro()
        while coro is not None:
            frame = getattr(coro, "cr_frame", None) or getattr(coro, "gi_frame", None)
            if frame is not None:
                chain.append(f"{frame.f_code.co_filename.rsplit('site-packages/', 1)[-1]}:{frame.f_lineno}"
                             f" {frame.f_code.co_name}")
            coro = getattr(coro, "cr_await", None) or getattr(coro, "gi_yieldfrom", None)
        lines.append(f"{task.get_name()[:60]}: " + " -> ".join(chain))
    ours = []
    for obj in gc.get_objects():  # suspended coroutines of this framework (chains above stop at wrappers)
        if isinstance(obj, types.CoroutineType) and obj.cr_frame is not None:
            code = obj.cr_frame.f_code
            if "/streams/" in code.co_filename or "/agents/" in code.co_filename:
                ours.append(f"{code.co_filename.rsplit('/', 2)[-2:]}:{obj.cr_frame.f_lineno} {code.co_name}"
                            f" awaiting {type(obj.cr_await).__name__}")
    log.warning("asyncio task stacks (SIGUSR1):\n%s\nsuspended framework coroutines:\n%s",
                "\n".join(sorted(lines)), "\n".join(sorted(ours)))
    if faust_app is not None:
        try:
            log_consumer_state(faust_app, barrier, log)
        except Exception as exc:  # noqa: BLE001 - a diagnosis never stops the worker
            log.warning("consumer state unavailable: %r", exc)

"""The consumer's private bookkeeping, written out for a stall diagnosis (``kill -USR1``)."""

from __future__ import annotations

import logging
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

"""Liveness and readiness of a worker.

*Live*: the process and its event loop answer. *Ready*: the worker got its
partitions from the group (at least one assignment happened), no rebalance is
in progress, and its tables finished recovering their active partitions from
the changelogs — only then do its tables answer for the partitions it owns and
its agents consume. Readiness turns false again during a later rebalance and
its recovery.
"""

from __future__ import annotations

import time
from typing import TYPE_CHECKING, Any

from streams.faust_compat.private import table_manager

if TYPE_CHECKING:
    from streams.app import StreamsApp


class Health:
    """Tracks assignment (through Faust's ``on_partitions_assigned`` signal) and reads
    Faust's rebalance and recovery state."""

    def __init__(self, app: "StreamsApp") -> None:
        self.app = app
        self.started_at = time.time()
        self.assignments = 0
        self.last_assigned_at: float | None = None
        app.faust.on_partitions_assigned.connect(self._on_assigned)  # type: ignore[arg-type]  # async receivers are awaited

    async def _on_assigned(self, sender: Any = None, assigned: Any = None, **kwargs: Any) -> None:
        self.assignments += 1
        self.last_assigned_at = time.time()

    def live(self) -> dict[str, Any]:
        return {"live": True, "app_id": self.app.app_id, "uptime_seconds": round(time.time() - self.started_at, 1)}

    def readiness(self) -> dict[str, Any]:
        """``{"ready": bool, "reasons": [...], ...}``; ``reasons`` says what is still missing."""
        faust_app = self.app.faust
        tables = table_manager(faust_app)
        recovery = tables.recovery
        reasons = []
        if not self.assignments:
            reasons.append("waiting for partition assignment")
        if faust_app.rebalancing:
            reasons.append("rebalancing")
        missing = self.app.subscriptions.missing
        if missing:
            reasons.append("waiting for topics: " + ", ".join(missing))
        if recovery.in_recovery or not tables.actives_ready:
            remaining = recovery.active_remaining_total()
            reasons.append(f"recovering tables ({remaining} changelog records to go)" if remaining
                           else "recovering tables")
        return {
            "ready": not reasons,
            "reasons": reasons,
            "assignments": self.assignments,
            "recovery": self.recovery_state(),
        }

    def recovery_state(self) -> dict[str, Any]:
        """Table recovery: in progress or not, and changelog records still to apply."""
        recovery = table_manager(self.app.faust).recovery
        return {
            "in_recovery": bool(recovery.in_recovery),
            "actives_ready": bool(self.app.faust.tables.actives_ready),
            "standbys_ready": bool(self.app.faust.tables.standbys_ready),
            "active_remaining": int(recovery.active_remaining_total()),
            "standby_remaining": int(recovery.standby_remaining_total()),
        }

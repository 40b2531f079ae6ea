"""Steps a worker finishes before it says it is ready."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any


def before_ready(faust_app: Any, step: Callable[[], Awaitable[None]], name: str) -> None:
    """Run ``step`` once per start of ``faust_app``, after its tables are recovered and before
    the worker logs ``Ready`` (and calls ``on_startup_finished``).

    Faust's tasks (``app.task``) are only scheduled at that point: their work may still be
    under way when the worker says it is ready. Its services are started one by one and
    each start is awaited before ``Ready``, so the step runs as a service's start."""
    from mode import Service

    async def on_start(self: Any) -> None:
        await step()

    # made with its name (the worker logs it), which mode registers when the class is made
    faust_app.service(type(name, (Service,), {"on_start": on_start, "__module__": __name__}))

"""Background tasks for tests/test_background_tasks.py: effects are rows in ``task_effects``."""

from __future__ import annotations

import os

import psycopg

from streams import PermanentError, RetryPolicy, TransientError, load_settings
from streams.background import BackgroundTasks

settings = load_settings()
tasks = BackgroundTasks(settings, max_workers=2, max_pending=4,
                        policy=RetryPolicy(max_attempts=3, initial_backoff=0.01, max_backoff=0.05))

#: names the "flaky" task fails for while TASKS_BROKEN lists them (set by the test)
def broken() -> set[str]:
    return set(filter(None, os.environ.get("TASKS_BROKEN", "").split(",")))


class Unavailable(TransientError):
    pass


@tasks.task("record")
def record(name: str) -> None:
    if name in broken():
        raise Unavailable(f"downstream unavailable for {name}")
    with psycopg.connect(settings.dsn, autocommit=True) as conn:
        conn.execute("INSERT INTO task_effects (name) VALUES (%s)", (name,))


@tasks.task("refuse")
def refuse(name: str) -> None:
    raise PermanentError(f"{name} can never work")

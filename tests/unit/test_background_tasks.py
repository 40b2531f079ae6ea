"""BackgroundTasks' pool and retries (no database: these tasks never reach the failure log)."""

from __future__ import annotations

import threading

import pytest

from streams import ConfigurationError, RetryPolicy, TransientError
from streams.background import BackgroundTasks
from streams.settings import Settings


def _tasks(**kw) -> BackgroundTasks:
    return BackgroundTasks(Settings(), **kw)


def test_submit_blocks_while_max_pending_tasks_are_in_flight() -> None:
    tasks = _tasks(max_workers=1, max_pending=2)
    release = threading.Event()

    @tasks.task("wait")
    def wait() -> None:
        assert release.wait(10)

    first, second = tasks.submit("wait"), tasks.submit("wait")
    third: list = []
    submitter = threading.Thread(target=lambda: third.append(tasks.submit("wait")))
    submitter.start()
    submitter.join(0.3)
    assert submitter.is_alive() and not third, "the third submit waits for a free slot"
    release.set()
    submitter.join(10)
    assert [f.result(10) for f in (first, second, third[0])] == [True, True, True]
    tasks.close()
    assert tasks.stats["submitted"] == 3 and tasks.stats["succeeded"] == 3


def test_transient_failures_are_retried_with_the_policy_backoff() -> None:
    slept: list[float] = []
    tasks = _tasks(policy=RetryPolicy(max_attempts=4, initial_backoff=0.5, max_backoff=10, jitter=0),
                   sleep=slept.append)
    calls = []

    @tasks.task("flaky")
    def flaky(n: int) -> None:
        calls.append(n)
        if len(calls) < 3:
            raise TransientError("not yet")

    assert tasks.submit("flaky", n=7).result(10) is True
    tasks.close()
    assert calls == [7, 7, 7] and slept == [0.5, 1.0] and tasks.stats["retried"] == 2


def test_unknown_tasks_duplicate_names_and_unserialisable_arguments_are_refused() -> None:
    tasks = _tasks()

    @tasks.task("one")
    def one(x: object) -> None:
        pass

    with pytest.raises(ConfigurationError, match="no background task named 'two'"):
        tasks.submit("two")
    with pytest.raises(ConfigurationError, match="registered twice"):
        tasks.task("one")(one)
    with pytest.raises(TypeError):
        tasks.submit("one", x=object())
    assert tasks.stats["submitted"] == 0
    with pytest.raises(ValueError):
        _tasks(max_workers=4, max_pending=2)

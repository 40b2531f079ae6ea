"""Background tasks after a commit, on a real PostgreSQL: retries, the failure log, its CLI, and what a crash loses."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time

import pytest

from tests.harness import ROOT, Isolated
from tests.helpers import wait_for


def _cli(iso: Isolated, *args: str, **env: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "streams.cli", *args], capture_output=True, text=True,
                          env={**os.environ, **iso.env, **env}, cwd=ROOT, timeout=120)


def _tasks_module(iso: Isolated, monkeypatch):
    """tests.apps.background_tasks bound to this test's database."""
    import importlib

    for k, v in iso.env.items():
        monkeypatch.setenv(k, v)
    import tests.apps.background_tasks as module

    module = importlib.reload(module)
    iso.sql("CREATE TABLE task_effects (id bigserial PRIMARY KEY, name text NOT NULL)")
    with module.tasks.failure_log.connect() as conn:
        module.tasks.failure_log.migrate(conn)
    return module


def test_failed_tasks_go_to_the_failure_log_and_the_cli_reruns_them(isolated: Isolated, monkeypatch) -> None:
    module = _tasks_module(isolated, monkeypatch)
    monkeypatch.setenv("TASKS_BROKEN", "b,d")
    with module.tasks as tasks:
        futures = [tasks.submit("record", name=n) for n in "abcde"]
        futures.append(tasks.submit("refuse", name="x"))
        results = [f.result(30) for f in futures]
    assert results == [True, False, True, False, True, False]
    assert sorted(r[0] for r in isolated.sql("SELECT name FROM task_effects")) == ["a", "c", "e"]
    rows = isolated.sql("SELECT task, args, attempts, error_type, status FROM streams_task_failures ORDER BY task, id")
    assert sorted((t, a["name"], n, e, s) for t, a, n, e, s in rows) == [
        ("record", "b", 3, "Unavailable", "failed"), ("record", "d", 3, "Unavailable", "failed"),
        ("refuse", "x", 1, "PermanentError", "failed"),  # a permanent error is not retried
    ]
    assert tasks.stats["retried"] == 4 and tasks.stats["failed"] == 3 and tasks.stats["succeeded"] == 3

    listed = _cli(isolated, "tasks", "list", "--json")
    assert listed.returncode == 0, listed.stderr
    assert sorted(json.loads(line)["args"]["name"] for line in listed.stdout.splitlines()) == ["b", "d", "x"]

    # still broken: the re-run fails again, the row stays failed with more attempts
    again = _cli(isolated, "tasks", "retry", "--all", "--task", "record", "--tasks", "tests.apps.background_tasks:tasks",
                 TASKS_BROKEN="d")
    assert again.returncode == 1, again.stdout + again.stderr
    assert "re-ran 2 failed task(s): 1 done, 1 still failing" in " ".join(again.stdout.split())
    status = {a["name"]: (s, n, r) for a, s, n, r in isolated.sql(
        "SELECT args, status, attempts, reruns FROM streams_task_failures WHERE task = 'record'")}
    assert status == {"b": ("done", 3, 1), "d": ("failed", 6, 1)}

    fixed = _cli(isolated, "tasks", "retry", "--all", "--task", "record", "--tasks", "tests.apps.background_tasks:tasks",
                 TASKS_BROKEN="")
    assert fixed.returncode == 0, fixed.stdout + fixed.stderr
    assert sorted(r[0] for r in isolated.sql("SELECT name FROM task_effects")) == ["a", "b", "c", "d", "e"]
    assert _cli(isolated, "tasks", "retry", "999", "--tasks", "tests.apps.background_tasks:tasks").returncode == 1
    remaining = _cli(isolated, "tasks", "list", "--json")
    assert [json.loads(line)["task"] for line in remaining.stdout.splitlines()] == ["refuse"]


def test_a_task_whose_failure_cannot_be_logged_is_logged_with_its_arguments(isolated: Isolated, monkeypatch,
                                                                              caplog) -> None:
    module = _tasks_module(isolated, monkeypatch)
    monkeypatch.setenv("TASKS_BROKEN", "z")
    module.tasks.failure_log.table = "no_such_table"
    with module.tasks as tasks:
        assert tasks.submit("record", name="z").result(30) is False
    assert tasks.stats["unlogged"] == 1
    assert any('"name": "z"' in r.getMessage() and "failure log could not be written" in r.getMessage()
               for r in caplog.records)


CRASH_SCRIPT = """
import sys, time
import psycopg
from decimal import Decimal
from agents import order_service, receipts
from agents.messages import OrderPlaced
from streams import load_settings
s = load_settings()
with psycopg.connect(s.dsn) as conn:
    for i in range(3):
        order = OrderPlaced(order_id=f"crash-{i}", seller_id="s", buyer_id="b", total_amount=Decimal(5000))
        order_service.place_order(conn, order, tasks=receipts.tasks)
        print(f"committed crash-{i}", flush=True)
time.sleep(60)
"""


@pytest.mark.timeout(120)
def test_a_crash_between_commit_and_task_loses_the_task(isolated: Isolated) -> None:
    """The documented loss of this pattern: committed orders, no receipt, no trace in the failure log."""
    import psycopg

    from agents import order_service, receipts
    from streams.outbox.schema import migrate as migrate_outbox

    with psycopg.connect(isolated.settings.dsn, autocommit=True) as conn:
        migrate_outbox(conn, isolated.settings.outbox_table)
        order_service.migrate(conn)
        receipts.migrate(conn)
    # the mail API takes 30 s per call: the process is killed while the receipts wait in memory
    proc = subprocess.Popen([sys.executable, "-c", CRASH_SCRIPT], cwd=ROOT, stdout=subprocess.PIPE, text=True,
                            env={**os.environ, **isolated.env, "AGENTS_MAIL_LATENCY_MS": "30000"})
    try:
        lines = []
        while len(lines) < 3:
            line = proc.stdout.readline()
            assert line, "the order script ended early"
            lines.append(line.strip())
        time.sleep(0.5)
        proc.kill()
        proc.wait(10)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert lines == [f"committed crash-{i}" for i in range(3)]
    assert isolated.sql("SELECT count(*) FROM orders")[0][0] == 3
    # the outbox kept what must not be lost: the event and the command of every order
    assert isolated.sql("SELECT count(*) FROM streams_outbox")[0][0] == 6
    # the background task is gone: no receipt, and nothing says it was ever due
    wait_for(lambda: proc.poll() is not None, 10, what="the process to be gone")
    assert isolated.sql("SELECT count(*) FROM order_receipts")[0][0] == 0
    assert isolated.sql("SELECT count(*) FROM streams_task_failures")[0][0] == 0

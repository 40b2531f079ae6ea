"""``streams outbox …`` / ``streams relay``: output and exit codes against the real database."""

from __future__ import annotations

import json
import os
import subprocess
import sys

from tests.harness import ROOT
from tests.outbox_helpers import prepare, write


def streams(iso, *args: str, extra_env: dict | None = None) -> subprocess.CompletedProcess:
    env = {**os.environ, **iso.env, **(extra_env or {})}
    return subprocess.run([sys.executable, "-m", "streams.cli", *args], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=120)


def test_outbox_commands(isolated):
    missing = streams(isolated, "outbox", "status")
    assert missing.returncode == 1 and "does not exist (run `streams outbox migrate`)" in missing.stderr

    assert streams(isolated, "outbox", "migrate").returncode == 0
    again = streams(isolated, "outbox", "migrate")  # idempotent
    assert again.returncode == 0 and "is ready" in again.stdout

    topic = prepare(isolated)
    ids = write(isolated, topic, 5)
    status = streams(isolated, "outbox", "status", "--json")
    assert status.returncode == 0
    data = json.loads(status.stdout)
    assert data["exists"] and data["pending"] == 5 and data["failed"] == 0

    listed = streams(isolated, "outbox", "list", "--status", "pending", "--json", "--limit", "3")
    rows = [json.loads(line) for line in listed.stdout.splitlines()]
    assert [r["message_id"] for r in rows] == ids[::-1][:3]

    no_filter = streams(isolated, "outbox", "retry")
    assert no_filter.returncode == 2 and "--all" in no_filter.stderr
    nothing = streams(isolated, "outbox", "retry", "--all")
    assert nothing.returncode == 0 and "re-queued 0 parked row(s)" in nothing.stdout


def test_relay_reports_bad_options_and_a_missing_database(isolated):
    bad_gate = streams(isolated, "relay", "--gate", "group-only")
    assert bad_gate.returncode == 2 and "GROUP:TOPIC:HIGH:LOW" in bad_gate.stderr
    bad_marks = streams(isolated, "relay", "--gate", "g:t:10:20")
    assert bad_marks.returncode == 2 and "low < high" in bad_marks.stderr
    no_db = streams(isolated, "relay", extra_env={"STREAMS_DATABASE_URL": "postgresql://nobody@127.0.0.1:1/x"})
    assert no_db.returncode == 1 and "does not answer" in no_db.stderr and "Traceback" not in no_db.stderr

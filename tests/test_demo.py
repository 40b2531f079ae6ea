"""The README's first command, the reference app end to end, against the suite's servers."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from tests.harness import ROOT


@pytest.mark.timeout(300)
@pytest.mark.parametrize("database", ["postgresql", "mariadb"])
def test_demo_runs_every_integration_and_each_effect_happens_once(database, request):
    """The same run on PostgreSQL and, by setting one URL (``STREAMS_DATABASE_URL=mysql://…``),
    on MariaDB: the orders, the outbox, the effects and the failure log all on that server."""
    isolated = request.getfixturevalue("isolated" if database == "postgresql" else "isolated_mysql")
    env = {**os.environ, **isolated.env}
    out = subprocess.run([sys.executable, "-m", "agents.demo", "--events", "150", "--timeout", "120"],
                         cwd=ROOT, env=env, capture_output=True, text=True, timeout=280)
    (isolated.artifacts / "demo.out").write_text(out.stdout + out.stderr)
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    text = " ".join(out.stdout.split())
    assert "OK: every integration made each effect once" in text
    assert "FAILED" not in text and "MISMATCH" not in text
    placed, declined = map(int, re.search(r"placed (\d+) orders \((\d+) declined", text).groups())
    assert placed + declined == 150 and placed > 100
    summary = json.loads((Path(isolated.env["STREAMS_HOME"]) / "demo" / "summary.json").read_text())
    assert summary["orders_placed"] == placed
    rows = {r["integration"]: r for r in summary["integrations"]}
    assert list(rows) == ["seller push", "points", "search index", "sms", "receipt e-mail"]
    assert all(r["ok"] for r in rows.values()), rows
    assert rows["seller push"]["effects"] == rows["points"]["effects"] == rows["sms"]["effects"] == placed
    assert rows["receipt e-mail"]["effects"] == placed
    assert rows["search index"]["effects"] == 2 * placed  # written by v1, then rebuilt by v2
    assert rows["points"]["duplicates_suppressed"] >= 25
    # the servers agree with the summary
    assert isolated.sql("SELECT count(*) FROM orders")[0][0] == placed
    assert isolated.sql("SELECT count(*), count(DISTINCT message_id) FROM points_ledger")[0] == (placed, placed)
    assert isolated.sql("SELECT count(*) FROM order_search WHERE indexer_version = 2")[0][0] == placed
    assert isolated.sql("SELECT count(DISTINCT order_id) FROM order_receipts")[0][0] == placed

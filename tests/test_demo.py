"""The README's first command, the reference app end to end, against the suite's servers."""

from __future__ import annotations

import os
import re
import subprocess
import sys

import pytest

from tests.harness import ROOT


@pytest.mark.timeout(300)
def test_demo_places_orders_through_the_outbox_and_every_one_is_pushed_once(isolated):
    env = {**os.environ, **isolated.env}
    out = subprocess.run([sys.executable, "-m", "agents.demo", "--events", "150", "--timeout", "120"],
                         cwd=ROOT, env=env, capture_output=True, text=True, timeout=280)
    (isolated.artifacts / "demo.out").write_text(out.stdout + out.stderr)
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    text = " ".join(out.stdout.split())
    assert "OK: every committed order pushed exactly once, no declined order announced" in text
    assert "dead-lettered: 3 of 3 bad records" in text
    placed, declined = map(int, re.search(r"placed (\d+) orders through the outbox \((\d+) declined", text).groups())
    assert placed + declined == 150 and placed > 100
    assert isolated.sql("SELECT count(*) FROM orders")[0][0] == placed

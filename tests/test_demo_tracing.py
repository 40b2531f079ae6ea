"""``make demo DEMO_ARGS=--tracing``: the reference app end to end with every process sending its spans to
a real Jaeger (``streams dev jaeger up``, built from its Go module), and one order's trace in the summary."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from streams.dev.jaeger import JaegerApi, span_rows
from streams.dev.process import free_port
from tests.harness import ROOT


@pytest.mark.timeout(1500)  # the first run on a machine builds Jaeger (several minutes)
def test_the_demo_prints_one_orders_trace_from_jaeger(isolated):
    ui_port = free_port()
    env = {**os.environ, **isolated.env, "STREAMS_LOCAL_JAEGER_OTLP_PORT": str(free_port()),
           "STREAMS_LOCAL_JAEGER_UI_PORT": str(ui_port)}
    out = subprocess.run([sys.executable, "-m", "agents.demo", "--events", "40", "--timeout", "120", "--tracing",
                          "--keep-services"], cwd=ROOT, env=env, capture_output=True, text=True, timeout=1400)
    (isolated.artifacts / "demo.out").write_text(out.stdout + out.stderr)
    try:
        assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
        text = " ".join(out.stdout.split())
        assert "OK trace: the order's five integrations are in one trace" in text
        summary = json.loads((Path(isolated.env["STREAMS_HOME"]) / "demo" / "summary.json").read_text())
        trace = summary["trace"]
        assert trace["trace_id"] and trace["missing"] == []
        # Jaeger itself holds the trace the summary printed: read it back through its API
        rows = span_rows(JaegerApi(f"http://127.0.0.1:{ui_port}").trace(trace["trace_id"]) or {})
        services = {r.service for r in rows}
        assert {"order-service", "streams-relay"} <= services
        assert sum(r.name.startswith("process ") for r in rows) >= 4
        [root] = [r for r in rows if r.depth == 0]
        assert root.name == "place_order" and root.tags["order.id"] == trace["order_id"]
        shown = subprocess.run([sys.executable, "-m", "streams.cli", "trace", "show", trace["trace_id"], "--api",
                                f"http://127.0.0.1:{ui_port}"], cwd=ROOT, env=env, capture_output=True, text=True,
                               timeout=60)
        assert shown.returncode == 0 and "place_order" in shown.stdout, shown.stdout + shown.stderr
    finally:
        subprocess.run([sys.executable, "-m", "streams.cli", "dev", "jaeger", "down"], cwd=ROOT, env=env,
                       capture_output=True, timeout=60)

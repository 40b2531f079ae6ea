"""The operations commands on a real broker: ``streams topics`` and the ``--help`` tree, with exit codes."""

from __future__ import annotations

import json
import subprocess
import sys

from tests.harness import ROOT, Isolated


def _cli(iso: Isolated, *args: str) -> subprocess.CompletedProcess:
    import os

    return subprocess.run([sys.executable, "-m", "streams.cli", *args], capture_output=True, text=True,
                          env={**os.environ, **iso.env}, cwd=ROOT, timeout=120)


def test_topics_create_describe_list_and_exit_codes(isolated: Isolated) -> None:
    name = isolated.topic("ops.created")
    out = _cli(isolated, "topics", "create", name, "--partitions", "3", "--config", "retention.ms=3600000")
    assert out.returncode == 0, out.stderr
    out = _cli(isolated, "topics", "describe", name, "--json")
    assert out.returncode == 0, out.stderr
    d = json.loads(out.stdout)
    assert [p["partition"] for p in d["partitions"]] == [0, 1, 2]
    assert all(p["leader"] >= 0 and p["isr"] == p["replicas"] and p["records"] == 0 for p in d["partitions"])
    assert d["configs"] == {"retention.ms": "3600000"}
    out = _cli(isolated, "topics", "list", "--prefix", isolated.settings.topic_prefix, "--json")
    assert json.loads(out.stdout) == [{"name": name, "partitions": 3, "replication_factor": 1, "internal": False}]
    # failures: exists (1), unknown topic (1), bad usage (2)
    out = _cli(isolated, "topics", "create", name)
    assert out.returncode == 1 and "already exists" in out.stderr
    out = _cli(isolated, "topics", "describe", isolated.topic("nope"))
    assert out.returncode == 1 and "does not exist" in out.stderr
    assert _cli(isolated, "topics", "create", "bad name").returncode == 2
    assert _cli(isolated, "topics", "create", isolated.topic("x"), "--config", "novalue").returncode == 2
    out = _cli(isolated, "lag", "--group", "no-such-group-" + isolated.settings.app_id)
    assert out.returncode == 1 and "does not exist" in out.stderr


def test_help_is_one_tree_with_exit_codes(isolated: Isolated) -> None:
    out = _cli(isolated, "--help")
    assert out.returncode == 0
    tree = out.stdout.split("Command tree:")[1]
    for path in ("lag", "offsets reset", "state reset", "topics create", "topics describe", "topics list",
                 "demo backpressure", "worker", "dlq replay"):
        assert f"\n  {path} " in tree, path
    assert "Exit codes:" in out.stdout

"""Offset reset on a real broker with the reference app's worker as a separate process:
every mode's plan, clamping, refusal while the group is active, a re-read that the
processed-ID table deduplicates, a forced reprocess of exactly the chosen range, and
``streams state reset`` refusing while the worker runs."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from collections import defaultdict
from datetime import UTC, datetime, timedelta

from streams.kafka.admin import committed_offsets, end_offsets, produce_envelopes
from streams.kafka.offsets import ResetTarget, plan_reset
from tests.harness import ROOT, Isolated
from tests.helpers import run, wait_for
from tests.reference import (
    TOPIC,
    create_topics,
    orders,
    push_counts,
    read_topic,
    rows_per_message,
)


def _cli(worker, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "streams.cli", *args], capture_output=True, text=True,
                          env=worker.env, cwd=ROOT, timeout=120)


def _committed(iso: Isolated, topic: str) -> dict[int, int]:
    return {p: o for (_, p), o in run(committed_offsets(iso.settings, iso.settings.app_id, topic)).items()}


def _caught_up(iso: Isolated, topic: str) -> bool:
    ends = run(end_offsets(iso.settings, topic))
    committed = _committed(iso, topic)
    return all(committed.get(p) == e for p, e in ends.items())


def test_offset_reset_plans_refuses_active_group_dedups_reread_and_forces_reprocess(isolated: Isolated) -> None:
    iso = isolated
    group, topic = iso.settings.app_id, iso.topic(TOPIC)
    create_topics(iso)
    run(produce_envelopes(iso.settings, topic, orders(36, "a")))
    time.sleep(1.5)
    middle = datetime.now(UTC)
    time.sleep(1.5)
    run(produce_envelopes(iso.settings, topic, orders(36, "b")))
    worker = iso.worker("w1").start()
    worker.wait_ready()
    wait_for(lambda: push_counts(iso) == (72, 72), 90, what="72 pushes")
    wait_for(lambda: _caught_up(iso, topic), 60, what="offsets committed to the end")
    before = _committed(iso, topic)

    # --- refused while the group has an active member; nothing changes -------------------
    out = _cli(worker, "offsets", "reset", "--group", group, "--topic", topic, "--to-earliest", "--execute")
    print("\nrefusal:", out.stderr.strip())
    assert out.returncode == 1 and "active member" in out.stderr and "stop its workers" in out.stderr
    assert _committed(iso, topic) == before
    # state reset refuses too while the worker holds its RocksDB databases
    data_dir = str(iso.settings.home_path / "w1")
    out = _cli(worker, "state", "reset", "--data-dir", data_dir, "--yes")
    assert out.returncode == 1 and "in use by a running worker" in out.stderr, out.stderr + out.stdout
    worker.stop()

    # --- every mode's plan, against the records really in the topic -----------------------
    ends = run(end_offsets(iso.settings, topic))
    records = read_topic(iso, topic)
    before_middle = defaultdict(int)
    for r in records:
        if r.timestamp < middle.timestamp() * 1000:
            before_middle[r.partition] += 1

    def plan(mode, value=None, topics=None):
        p = run(plan_reset(iso.settings, group, topics or [(topic, None)], ResetTarget(mode, value)))
        return {r.partition: r for r in p.rows}

    assert {p: (r.current, r.new, r.to_reread) for p, r in plan("earliest").items()} == \
        {p: (e, 0, e) for p, e in ends.items()}
    assert {p: (r.new, r.to_reread, r.to_skip) for p, r in plan("latest").items()} == {p: (e, 0, 0) for p, e in ends.items()}
    two = plan("offset", 3, [(topic, [0, 1])])
    assert set(two) == {0, 1} and all(r.new == min(3, ends[p]) for p, r in two.items())
    far = plan("offset", 10**6)
    assert all(r.new == ends[p] and r.clamped == f"wanted 1000000, after log end {ends[p]}" for p, r in far.items())
    back = plan("shift", -4)
    assert all(r.new == max(0, ends[p] - 4) and (r.clamped is not None) == (ends[p] < 4) for p, r in back.items())
    assert all(r.new == ends[p] and r.clamped for p, r in plan("shift", 5).items())
    at = plan("datetime", middle)
    assert {p: r.new for p, r in at.items()} == {p: before_middle[p] for p in ends}
    assert sum(r.to_reread for r in at.values()) == 36  # exactly batch "b"
    assert all(r.new == 0 for r in plan("duration", timedelta(hours=1)).values())
    assert all(r.new == ends[p] for p, r in plan("duration", timedelta(0)).items())

    # the CLI: a dry run prints the same plan and changes nothing; bad input exits 2
    out = _cli(worker, "offsets", "reset", "--group", group, "--topic", topic, "--to-datetime",
               middle.isoformat(), "--json")
    assert out.returncode == 0, out.stderr
    assert {r["partition"]: r["new"] for r in json.loads(out.stdout)["rows"]} == {p: r.new for p, r in at.items()}
    assert "dry run" in out.stderr and _committed(iso, topic) == before
    assert _cli(worker, "offsets", "reset", "--group", group, "--topic", topic + ":99", "--to-earliest").returncode == 2
    assert _cli(worker, "offsets", "reset", "--group", group, "--topic", topic, "--by-duration", "1h").returncode == 2

    # --- re-read after a reset: the processed-ID table makes it a no-op --------------------
    out = _cli(worker, "offsets", "reset", "--group", group, "--topic", topic, "--to-earliest", "--execute")
    assert out.returncode == 0, out.stderr
    assert _committed(iso, topic) == dict.fromkeys(ends, 0)
    worker = iso.worker("w1").start()
    worker.wait_ready()
    wait_for(lambda: _caught_up(iso, topic), 90, what="the re-read to reach the end")
    worker.stop()
    assert push_counts(iso) == (72, 72), "a re-read must not repeat side effects"

    # --- forced reprocess of partitions 0 and 1 from offset 2: exactly that range again ----
    by_offset = {(r.partition, r.offset): r for r in records}
    chosen = {json.loads(r.value)["message_id"] for (p, o), r in by_offset.items() if p in (0, 1) and o >= 2}
    out = _cli(worker, "offsets", "reset", "--group", group, "--topic", f"{topic}:0,1", "--to-offset", "2",
               "--execute", "--reprocess")
    assert out.returncode == 0, out.stderr
    print(out.stdout.strip())
    worker = iso.worker("w1").start()
    worker.wait_ready()
    wait_for(lambda: _caught_up(iso, topic), 90, what="the reprocess to reach the end")
    wait_for(lambda: push_counts(iso)[0] >= 72 + len(chosen), 30, what="the reprocessed pushes")
    worker.stop()
    counts = rows_per_message(iso)
    assert {m for m, n in counts.items() if n == 2} == chosen
    assert {m for m, n in counts.items() if n == 1} == {json.loads(r.value)["message_id"] for r in records} - chosen
    print(f"forced reprocess: {len(chosen)} message(s) handled again, {72 - len(chosen)} untouched")

    # --- a stopped worker's state can be wiped ---------------------------------------------
    out = _cli(worker, "state", "reset", "--data-dir", data_dir, "--yes")
    assert out.returncode == 0, out.stderr
    assert not (iso.settings.home_path / "w1").exists()

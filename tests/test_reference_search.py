"""The reference search index: a buggy indexer's documents rebuilt by a forced reprocess.

The search group indexes orders with indexer version 1 (documents without the
seller); the group is stopped, its offsets are reset to the earliest with
``--reprocess``, and version 2 restarts on the **same** local state, so every
re-read order has a processed-ID entry and would be skipped without the
reprocess window. Checked in PostgreSQL: every document rewritten exactly once
by version 2, and a later run re-handles nothing.
"""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from streams.kafka.admin import TopicSpec, ensure_topics, produce_envelopes
from tests.harness import ROOT, Isolated
from tests.helpers import run, wait_for
from tests.reference import PARTITIONS, TOPIC, committed_to_end, orders


def _docs(iso: Isolated, where: str = "TRUE") -> int:
    if not iso.sql("SELECT to_regclass('order_search') IS NOT NULL")[0][0]:
        return 0
    return iso.sql(f"SELECT count(*) FROM order_search WHERE {where}")[0][0]


def _worker(iso: Isolated, version: int):
    # one label: every run of the search group uses the same local state (RocksDB processed-ID tables)
    return iso.worker("search", STREAMS_WORKER_APP="agents.search_index:app",
                      AGENTS_SEARCH_INDEXER_VERSION=str(version)).start()


@pytest.mark.timeout(300)
def test_a_fixed_indexer_rebuilds_every_document_once_by_reprocessing(isolated: Isolated) -> None:
    n = 300
    topic = isolated.topic(TOPIC)
    group = f"{isolated.settings.app_id}.search"
    run(ensure_topics(isolated.settings, [TopicSpec(topic, PARTITIONS), TopicSpec(topic + ".dlq", PARTITIONS)]))
    run(produce_envelopes(isolated.settings, topic, orders(n, tag="idx")))

    v1 = _worker(isolated, 1)
    v1.wait_ready()
    wait_for(lambda: _docs(isolated) >= n, 120, what=f"{n} documents")
    wait_for(lambda: committed_to_end(isolated.settings, group, topic), 90, what="committed offsets at the log end")
    v1.stop()
    seller_hits = "document @@ plainto_tsquery('simple', seller_id)"
    assert _docs(isolated, "indexer_version = 1") == n and _docs(isolated, seller_hits) == 0, "the bug: no seller"

    reset = subprocess.run([sys.executable, "-m", "streams.cli", "offsets", "reset", "--group", group,
                            "--topic", topic, "--to-earliest", "--execute", "--reprocess"],
                           capture_output=True, text=True, cwd=ROOT, env={**os.environ, **isolated.env}, timeout=120)
    assert reset.returncode == 0, reset.stdout + reset.stderr
    assert f"{n} record(s) will be re-read and handled again (reprocess)" in " ".join(reset.stdout.split())

    v2 = _worker(isolated, 2)
    v2.wait_ready()
    wait_for(lambda: _docs(isolated, "indexer_version = 2") >= n, 120, what="every document rebuilt by v2")
    wait_for(lambda: committed_to_end(isolated.settings, group, topic), 90, what="committed offsets at the log end")
    assert _docs(isolated, seller_hits) == n, "the fix: every order found by its seller"
    assert _docs(isolated, "writes = 2") == n, "each document written once by v1 and once by the rebuild"

    # past the window, processed ids count again: a new order is indexed, the old ones are not touched
    run(produce_envelopes(isolated.settings, topic, orders(1, tag="after")))
    wait_for(lambda: _docs(isolated) == n + 1, 60, what="the new order's document")
    v2.stop()
    v3 = _worker(isolated, 2)
    v3.wait_ready()
    run(produce_envelopes(isolated.settings, topic, orders(1, tag="later")))
    wait_for(lambda: _docs(isolated) == n + 2, 60, what="a later order's document after a plain restart")
    assert _docs(isolated, "writes = 2") == n and _docs(isolated, "writes = 1") == 2, "nothing re-handled twice"

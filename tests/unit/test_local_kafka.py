"""The local Kafka harness's own logic that needs no broker."""

from __future__ import annotations

import threading
from pathlib import Path

from streams.dev.kafka import shared_cluster_id


def test_nodes_formatting_side_by_side_all_get_one_cluster_id(tmp_path: Path) -> None:
    """Three nodes of a cluster format their storage at once, one thread each; they must agree
    on the cluster id (a check-then-write gave two ids in 104 of 200 such trials, and in CI a
    three-node cluster whose nodes refused each other's votes)."""
    for trial in range(200):
        path = tmp_path / f"trial-{trial}" / "cluster.id"
        start = threading.Barrier(3)
        ids: list[str] = []

        def format_node() -> None:
            start.wait()
            ids.append(shared_cluster_id(path))

        threads = [threading.Thread(target=format_node) for _ in range(3)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        assert len(ids) == 3 and ids[0], ids
        assert set(ids) == {path.read_text().strip()}, (trial, ids)
        assert sorted(p.name for p in path.parent.iterdir()) == ["cluster.id"]


def test_a_kept_cluster_id_is_never_replaced(tmp_path: Path) -> None:
    path = tmp_path / "cluster.id"
    path.write_text("MkU3OEVBNTcwNTJENDM2Qk\n")
    assert shared_cluster_id(path) == "MkU3OEVBNTcwNTJENDM2Qk"
    assert path.read_text() == "MkU3OEVBNTcwNTJENDM2Qk\n"

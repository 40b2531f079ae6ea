"""`streams dev connect up --workers N`: which workers, ports and settings the cluster gets, and that
later commands find its size (no server started here)."""

from __future__ import annotations

from pathlib import Path

from streams.cli.dev import _connect
from streams.dev.connect import LocalConnect, LocalConnectCluster
from streams.settings import Settings


def settings(home: Path) -> Settings:
    return Settings(home=home, local_connect_port=18083)


def test_workers_of_one_group_on_consecutive_ports_and_the_size_recorded(tmp_path: Path) -> None:
    cluster = _connect(settings(tmp_path), 2)
    assert isinstance(cluster, LocalConnectCluster)
    assert [(n.port, n.group, n.data_dir.name) for n in cluster.nodes] == [
        (18083, "streams-connect", "worker-0"), (18084, "streams-connect", "worker-1")]
    assert not cluster.running() and cluster.status()["running"] is False
    (tmp_path / "connect").mkdir()
    (tmp_path / "connect" / "cluster.json").write_text('{"workers": 2}\n')  # what `up --workers 2` writes
    assert isinstance(_connect(settings(tmp_path)), LocalConnectCluster)  # `down` / `status` find both
    assert isinstance(_connect(settings(tmp_path / "other")), LocalConnect)
    assert cluster.worker_index("127.0.0.1:18084") == 1


def test_a_lost_workers_tasks_move_without_connects_five_minute_wait(tmp_path: Path) -> None:
    node = LocalConnectCluster(tmp_path, tmp_path / "cache", "127.0.0.1:9092").nodes[1]
    node.data_dir.mkdir(parents=True)
    config = node._write_config(tmp_path / "plugins").read_text().splitlines()
    assert "scheduled.rebalance.max.delay.ms=0" in config and "group.id=streams-connect" in config
    assert "listeners=http://127.0.0.1:8084" in config
    single = LocalConnect(tmp_path / "single", tmp_path / "cache", "127.0.0.1:9092")
    single.data_dir.mkdir()
    assert not any(line.startswith("scheduled.rebalance") for line in
                   single._write_config(tmp_path / "plugins").read_text().splitlines())

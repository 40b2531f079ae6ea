"""A worker's local table state (RocksDB folders under its data dir): find it, tell whether a
running worker uses it, wipe it.

Wiping is safe for a stopped worker: every table is backed by its changelog
topic, so the next start rebuilds the tables from Kafka (a full restore; slower
than reading local RocksDB). A running worker holds RocksDB's ``LOCK`` file of
each open database (an fcntl lock); :func:`locked_by_running_worker` tries
those locks and :func:`wipe_state` refuses while any is held.
"""

from __future__ import annotations

import fcntl
import os
import shutil
from dataclasses import dataclass
from pathlib import Path


class StateInUseError(RuntimeError):
    """A running worker has the state open."""


@dataclass(frozen=True)
class StateSummary:
    """What a data dir holds."""

    path: Path
    exists: bool
    databases: int
    bytes: int


def summarize(data_dir: Path) -> StateSummary:
    """Count RocksDB databases and bytes under ``data_dir``."""
    if not data_dir.exists():
        return StateSummary(data_dir, False, 0, 0)
    dbs = sum(1 for _ in data_dir.rglob("LOCK"))
    size = sum(f.stat().st_size for f in data_dir.rglob("*") if f.is_file())
    return StateSummary(data_dir, True, dbs, size)


def locked_by_running_worker(data_dir: Path) -> list[Path]:
    """RocksDB ``LOCK`` files under ``data_dir`` that another process holds now."""
    held = []
    for lock in data_dir.rglob("LOCK") if data_dir.exists() else ():
        try:
            fd = os.open(lock, os.O_RDWR)
        except OSError:
            continue
        try:
            fcntl.lockf(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            held.append(lock)
        else:
            fcntl.lockf(fd, fcntl.LOCK_UN)
        finally:
            os.close(fd)
    return held


def wipe_state(data_dir: Path) -> StateSummary:
    """Delete ``data_dir`` (refused while a worker holds it); returns what was there."""
    summary = summarize(data_dir)
    held = locked_by_running_worker(data_dir)
    if held:
        raise StateInUseError(f"{data_dir} is in use by a running worker ({len(held)} open table database(s), "
                              f"e.g. {held[0].parent.name}): stop the worker first")
    if summary.exists:
        shutil.rmtree(data_dir)
    return summary

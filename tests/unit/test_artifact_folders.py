"""The end-to-end tests' own folders (``test-artifacts/<name>``: worker logs, responses) are
named from the test's name alone; two tests with one folder name in the two test processes at
once would delete or share each other's files (a worker's ``Ready`` read from the other's log)."""

from __future__ import annotations

import subprocess
import sys
from collections import defaultdict

from tests.harness import ROOT, artifact_name


def test_every_end_to_end_test_has_a_folder_name_of_its_own() -> None:
    listed = subprocess.run(
        [sys.executable, "-m", "pytest", "--collect-only", "-q", "-p", "no:cacheprovider", "--ignore=tests/unit"],
        cwd=ROOT, capture_output=True, text=True, check=False)
    node_ids = [line.strip() for line in listed.stdout.splitlines() if "::" in line]
    assert len(node_ids) > 100, listed.stdout[-2000:] + listed.stderr[-2000:]
    folders: dict[str, list[str]] = defaultdict(list)
    for node_id in node_ids:
        folders[artifact_name(node_id.rsplit("::", 1)[1])].append(node_id)
    shared = {name: ids for name, ids in folders.items() if len(ids) > 1}
    assert not shared, shared

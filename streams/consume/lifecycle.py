"""A worker's run, and how it tells a clean stop from an unclean one.

Under ``exactly_once`` a worker that did not stop cleanly (crash, SIGKILL) leaves
processed-ID entries of aborted transactions in its local RocksDB. A marker file in
the data dir, written at start and removed on a clean exit, tells the next worker on
that data dir; it then drops those entries before the first lookup (see
:meth:`streams.consume.transactions.Transactions.purge_aborted_once`).
"""

from __future__ import annotations

import logging
import os
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from streams.consume.transactions import Transactions

log = logging.getLogger(__name__)

MARKER = ".worker-running"


def run_worker(faust_app: Any, data_dir: Path, transactions: "Transactions", argv: list[str] | None = None) -> None:
    """Run Faust's command line (``argv``: its arguments) with the clean-stop marker in ``data_dir``."""
    if argv is not None:
        sys.argv = ["streams", *argv]
    marker = data_dir / MARKER
    if marker.exists():
        transactions.unclean_start = True
        if transactions.enabled:
            log.warning("exactly_once: the last worker on %s did not stop cleanly; entries of its aborted "
                        "transactions will be dropped from the local processed-ID tables", data_dir)
    marker.write_text(str(os.getpid()))
    try:
        faust_app.main()
    except SystemExit as exc:
        if exc.code in (0, None):
            marker.unlink(missing_ok=True)
        raise

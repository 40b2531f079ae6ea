"""A worker that has handled everything fetched commits then, not only on its commit timer.

With ``STREAMS_BROKER_COMMIT_INTERVAL=3600`` the timer's first commit is an hour away: the
committed offsets can only reach the log end during this test if the worker commits when its
partitions have caught up. (Before, what a worker handled just before the traffic stopped stayed
uncommitted for up to a commit interval: a crash then repeated it, lag showed it as pending, and
a benchmark clock stopping at "committed at the log end" counted the wait as processing time.)
"""

from __future__ import annotations

import pytest

from streams.kafka.admin import produce_envelopes
from tests.harness import Isolated
from tests.helpers import run, wait_for
from tests.reference import TOPIC, create_topics, orders, push_counts, wait_committed_to_end


@pytest.mark.parametrize("guarantee", ["at_least_once", "exactly_once"])
def test_a_caught_up_worker_commits_without_waiting_for_its_commit_interval(isolated: Isolated,
                                                                            guarantee: str) -> None:
    create_topics(isolated)
    worker = isolated.worker(STREAMS_BROKER_COMMIT_INTERVAL="3600", STREAMS_PROCESSING_GUARANTEE=guarantee).start()
    worker.wait_ready()
    for round_ in range(2):  # the second time after a first caught-up commit
        envelopes = orders(300)
        run(produce_envelopes(isolated.settings, isolated.topic(TOPIC), envelopes))
        wait_for(lambda n=300 * (round_ + 1): push_counts(isolated)[1] >= n, 120, what="all orders handled")
        wait_committed_to_end(isolated, timeout=60)
    assert push_counts(isolated) == (600, 600)
    worker.stop()

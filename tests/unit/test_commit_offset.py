"""The commit offset computed from acknowledged offsets and gaps (the corrected
``Consumer._new_offset``)."""

from __future__ import annotations

from intervaltree import IntervalTree

from streams.faust_compat.consumer_fixes import next_commit_offset


def test_consecutive_acks_commit_past_the_last() -> None:
    acked, index = [3, 1, 2, 0], {0, 1, 2, 3}
    assert next_commit_offset(acked, index, IntervalTree(), None) == 4
    assert acked == [] and index == set()


def test_a_hole_stops_the_run() -> None:
    acked = [0, 1, 3]
    assert next_commit_offset(acked, set(acked), IntervalTree(), None) == 2
    assert acked == [3]  # waits for offset 2


def test_an_offset_both_acked_and_in_a_gap_does_not_break_the_run() -> None:
    # Faust's own computation stopped at the repeated offset (a few offsets per commit)
    gaps = IntervalTree()
    gaps.addi(5, 8)  # offsets 5, 6, 7 were jumped over ...
    acked = [0, 1, 2, 3, 4, 5, 6, 7, 8, 9]  # ... and also handled by the gap guard
    assert next_commit_offset(acked, set(acked), gaps, None) == 10


def test_nothing_acked_nothing_to_commit() -> None:
    assert next_commit_offset([], set(), IntervalTree(), 7) is None


def test_acks_far_ahead_of_the_committed_offset_wait() -> None:
    acked = [10, 11]
    assert next_commit_offset(acked, set(acked), IntervalTree(), 5) is None

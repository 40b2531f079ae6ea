"""The commit offset computed from acknowledged offsets and gaps (the corrected
``Consumer._new_offset``)."""

from __future__ import annotations

from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st
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


# --- the off-by-one and the committed offset 0 (issue: guarantees under every schedule) --------------


def test_one_unacknowledged_offset_after_the_committed_one_is_never_passed() -> None:
    # committed 100 (= the next offset to read): 100 is not acknowledged, so nothing may be committed
    acked = [101, 102]
    assert next_commit_offset(acked, set(acked), IntervalTree(), 100) is None
    assert acked == [101, 102]


def test_committed_offset_zero_is_checked_like_any_other() -> None:
    acked = [5, 6]
    assert next_commit_offset(acked, {5, 6}, IntervalTree(), 0) is None


def test_without_a_committed_offset_the_start_of_delivery_is_the_floor() -> None:
    acked = [5, 6]
    assert next_commit_offset(acked, {5, 6}, IntervalTree(), None, start=3) is None
    acked = [3, 4, 6]
    assert next_commit_offset(acked, {3, 4, 6}, IntervalTree(), None, start=3) == 5


def test_offsets_below_the_committed_one_are_dropped_not_counted() -> None:
    acked = [7, 8, 10, 11]
    index = set(acked)
    assert next_commit_offset(acked, index, IntervalTree(), 10) == 12
    assert acked == [] and index == set()


@given(st.data())
@settings(max_examples=400, deadline=None)
def test_the_committed_offset_never_passes_an_offset_neither_acknowledged_nor_a_gap(data: st.DataObject) -> None:
    """A reference model: offsets ``start .. start+n`` of one partition; some are gaps (transaction
    markers, aborted records: treated as done), the rest are acknowledged in any order, with
    commits at random moments. Every commit must stay within the done prefix, and once
    everything is done the commit reaches the end."""
    start = data.draw(st.sampled_from([0, 0, 1, 100]), label="start")
    n = data.draw(st.integers(1, 40), label="n")
    offsets = list(range(start, start + n))
    gap_set = set(data.draw(st.lists(st.sampled_from(offsets), unique=True, max_size=n // 2), label="gaps"))
    to_ack = [o for o in offsets if o not in gap_set]
    order = data.draw(st.permutations(to_ack), label="order")
    # Faust's consumer: committed offset None after a seek to 0 or to nothing; the start is known separately
    committed: int | None = None if start == 0 or data.draw(st.booleans(), label="no commit") else start
    acked: list[int] = []
    index: set[int] = set()
    gaps = IntervalTree()
    done: set[int] = set()
    pending_gaps = sorted(gap_set)
    position = start  # the highest offset committed so far (the next to read)

    def commit() -> None:
        nonlocal committed, position
        result = next_commit_offset(acked, index, gaps, committed, start=start)
        if result is None:
            return
        assert result > position or result == position
        missing = [o for o in range(start, result) if o not in done]
        assert not missing, f"committed {result} past {missing} (neither acknowledged nor a gap)"
        committed = position = result

    for offset in order:
        # gaps become known when a later offset is read, as Faust's fetch loop adds them
        while pending_gaps and pending_gaps[0] < offset:
            g = pending_gaps.pop(0)
            gaps.addi(g, g + 1)
            done.add(g)
        if offset not in index and (committed is None or offset >= committed):
            index.add(offset)
            acked.append(offset)
        done.add(offset)
        if data.draw(st.booleans(), label="commit now"):
            commit()
    for g in pending_gaps:
        gaps.addi(g, g + 1)
        done.add(g)
    if to_ack:  # nothing to acknowledge: nothing to commit from (Faust commits only from acks)
        commit()
        commit()
        last_acked = max(to_ack)
        assert position >= last_acked + 1, f"everything up to {last_acked} is done, committed only {position}"


async def test_the_record_that_reveals_a_gap_is_not_part_of_the_gap() -> None:
    # Faust's fetch loop, reading offset 13 after 11 (12 is a transaction marker), calls
    # _add_gap(tp, 12, 13): only 12 may count as done, not the record at 13 it has not handled
    from collections import defaultdict
    from types import MethodType

    from faust.transport.consumer import Consumer

    from streams.faust_compat.consumer_fixes import install

    class Stub:  # the attributes of Faust's consumer these two methods use
        def __init__(self) -> None:
            self._committed_offset: dict = defaultdict(lambda: None)
            self._gap: dict = defaultdict(IntervalTree)
            self._acked: dict = defaultdict(list)
            self._acked_index: dict = defaultdict(set)

        async def commit(self) -> bool:  # install() wraps it; not used here
            return True

    consumer: Any = Stub()
    consumer._add_gap = MethodType(Consumer._add_gap, consumer)
    install(consumer)
    tp = ("orders", 0)
    await consumer._add_gap(tp, 12, 13)
    assert sorted(o for iv in consumer._gap[tp] for o in range(iv.begin, iv.end)) == [12]
    consumer._committed_offset[tp] = 10
    consumer._acked[tp].extend([10, 11])
    assert consumer._new_offset(tp) == 12  # 10, 11 acknowledged; 13 not handled yet
    consumer._committed_offset[tp] = 12
    consumer._acked[tp].append(13)
    assert consumer._new_offset(tp) == 14  # 12 a gap, 13 acknowledged


async def test_a_commit_asked_for_while_another_runs_commits_after_it() -> None:
    """Faust's ``Consumer.commit`` itself (its other steps stubbed): a commit asked for while the
    timer's commit runs must commit once that one is done — its offsets were taken before the
    acknowledgements that came since (a graceful stop's last commit is such a call)."""
    import asyncio
    from types import MethodType

    from faust.transport.consumer import Consumer

    from streams.faust_compat.consumer_fixes import install

    class Stub:
        def __init__(self) -> None:
            self.app = type("App", (), {"client_only": False})()
            self.loop = asyncio.get_running_loop()
            self._commit_fut = None
            self.commits: list[str] = []
            self.release = asyncio.Event()

        async def force_commit(self, topics: Any = None, start_new_transaction: bool = True) -> bool:
            self.commits.append("started")
            await self.release.wait()
            self.commits.append("done")
            return True

    consumer: Any = Stub()
    consumer.commit = MethodType(Consumer.commit, consumer)
    consumer.maybe_wait_for_commit_to_finish = MethodType(Consumer.maybe_wait_for_commit_to_finish, consumer)
    consumer._add_gap = None  # install() wraps it; not used here
    install(consumer)
    timer = asyncio.ensure_future(consumer.commit())
    await asyncio.sleep(0)
    final = asyncio.ensure_future(consumer.commit())  # e.g. the last commit of a graceful stop
    await asyncio.sleep(0)
    consumer.release.set()
    assert await timer is True
    assert await final is True, "the second commit returned without committing"
    assert consumer.commits == ["started", "done", "started", "done"]

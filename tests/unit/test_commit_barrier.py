"""The exactly_once commit barrier: a commit waits for records mid-write; no record starts
writing while a commit runs."""

from __future__ import annotations

import asyncio

from streams.consume.transactions import CommitBarrier


async def test_a_commit_waits_for_a_record_mid_write() -> None:
    barrier = CommitBarrier()
    order: list[str] = []
    await barrier.enter()

    async def commit() -> str:
        order.append("commit")
        return "done"

    pending = asyncio.ensure_future(barrier.commit(commit))
    await asyncio.sleep(0.01)
    assert order == [] and barrier.commits_waited == 1
    order.append("leave")
    await barrier.leave()
    assert await pending == "done"
    assert order == ["leave", "commit"]


async def test_no_record_enters_while_a_commit_runs() -> None:
    barrier = CommitBarrier()
    release = asyncio.Event()
    order: list[str] = []

    async def commit() -> None:
        order.append("commit started")
        await release.wait()
        order.append("commit finished")

    committing = asyncio.ensure_future(barrier.commit(commit))
    await asyncio.sleep(0.01)

    async def record() -> None:
        await barrier.enter()
        order.append("record entered")
        await barrier.leave()

    entering = asyncio.ensure_future(record())
    await asyncio.sleep(0.01)
    assert order == ["commit started"]
    release.set()
    await asyncio.gather(committing, entering)
    assert order == ["commit started", "commit finished", "record entered"]


async def test_a_cancelled_commit_lets_records_in_again() -> None:
    barrier = CommitBarrier()
    await barrier.enter()
    pending = asyncio.ensure_future(barrier.commit(asyncio.sleep, 0))
    await asyncio.sleep(0.01)
    pending.cancel()
    await asyncio.gather(pending, return_exceptions=True)
    await barrier.leave()
    await asyncio.wait_for(barrier.enter(), 1)  # not blocked by the abandoned commit

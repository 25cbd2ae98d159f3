"""Group commit (storage.group_commit): callers that arrive together share one write, each learns
its own result, a failed batch fails only its own callers, and a caller giving up cancels nobody
else's write. A caller that finds nothing in flight writes its own item itself, at once."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager

import pytest

from storage.group_commit import GroupCommit


class Writer:
    def __init__(self) -> None:
        self.batches: list[list[int]] = []
        self.gate = asyncio.Event()
        self.gate.set()
        self.fail_next = False
        self.fail_at: set[int] = set()  # the batches (counted from 0) that fail
        self.holds = 0

    @asynccontextmanager
    async def hold(self) -> AsyncIterator[str]:
        self.holds += 1
        await self.gate.wait()
        yield "session"

    async def write(self, session: str, items: Sequence[int]) -> list[int]:
        assert session == "session"
        self.batches.append(list(items))
        await asyncio.sleep(0)
        if self.fail_next or len(self.batches) - 1 in self.fail_at:
            self.fail_next = False
            raise RuntimeError("the database went away")
        return [item * 10 for item in items]


async def test_a_lone_caller_writes_its_own_item_in_its_own_task_without_a_writer_task() -> None:
    w = Writer()
    tasks_before = len(asyncio.all_tasks())
    seen: list[int] = []

    async def write(session: str, items: Sequence[int]) -> list[int]:
        seen.append(len(asyncio.all_tasks()))
        return [item * 10 for item in items]  # completes without suspending, as SQLite does

    group: GroupCommit[str, int, int] = GroupCommit(w.hold, write)
    assert await group.submit(4) == 40
    assert await group.submit(5) == 50
    assert seen == [tasks_before, tasks_before]  # no task was created to write either


async def test_callers_arriving_together_share_one_write_and_each_gets_its_own_result() -> None:
    w = Writer()
    group: GroupCommit[str, int, int] = GroupCommit(w.hold, w.write)
    results = await asyncio.gather(*(group.submit(n) for n in range(50)))
    assert results == [n * 10 for n in range(50)]
    # the first writes its own at once; the 49 that arrived during that write share the next one
    assert w.batches == [[0], list(range(1, 50))]


async def test_arrivals_during_a_write_go_in_the_next_batch_and_a_batch_is_never_larger_than_its_bound() -> None:
    w = Writer()
    w.gate.clear()
    group: GroupCommit[str, int, int] = GroupCommit(w.hold, w.write, max_batch=8)
    first = [asyncio.ensure_future(group.submit(n)) for n in range(20)]
    await asyncio.sleep(0.01)
    w.gate.set()
    assert await asyncio.gather(*first) == [n * 10 for n in range(20)]
    assert [len(b) for b in w.batches] == [1, 8, 8, 3]
    assert [n for b in w.batches for n in b] == list(range(20))  # arrival order kept
    assert w.holds == 4  # one connection (or transaction) per batch


async def test_a_failed_batch_fails_its_own_callers_and_the_next_batch_is_still_written() -> None:
    w = Writer()
    w.gate.clear()
    group: GroupCommit[str, int, int] = GroupCommit(w.hold, w.write)
    w.fail_next = True
    first = asyncio.ensure_future(group.submit(0))  # leads, and its write fails
    await asyncio.sleep(0.01)
    rest = [asyncio.ensure_future(group.submit(n)) for n in (1, 2)]
    w.gate.set()
    with pytest.raises(RuntimeError, match="went away"):
        await first
    assert await asyncio.gather(*rest) == [10, 20]
    w.gate.clear()
    w.fail_at = {len(w.batches) + 1}  # the batch after the next leader's
    leader = asyncio.ensure_future(group.submit(3))
    await asyncio.sleep(0.01)
    batch = [asyncio.ensure_future(group.submit(n)) for n in (4, 5)]
    w.gate.set()
    assert await leader == 30
    failed = await asyncio.gather(*batch, return_exceptions=True)
    assert all(isinstance(r, RuntimeError) for r in failed)  # the whole batch of 4 and 5 failed together
    assert await group.submit(7) == 70


async def test_a_caller_that_gives_up_does_not_cancel_the_batch_of_the_others() -> None:
    w = Writer()
    w.gate.clear()
    group: GroupCommit[str, int, int] = GroupCommit(w.hold, w.write)
    leader = asyncio.ensure_future(group.submit(0))
    await asyncio.sleep(0.01)
    quitter = asyncio.ensure_future(group.submit(1))
    stayer = asyncio.ensure_future(group.submit(2))
    await asyncio.sleep(0.01)
    quitter.cancel()
    w.gate.set()
    assert await leader == 0
    assert await stayer == 20
    with pytest.raises(asyncio.CancelledError):
        await quitter
    assert w.batches == [[0], [1, 2]]  # the quitter's write was still made: it may already be committed


async def test_a_leader_that_gives_up_cancels_only_its_own_write_and_the_waiters_are_still_written() -> None:
    w = Writer()
    w.gate.clear()
    group: GroupCommit[str, int, int] = GroupCommit(w.hold, w.write)
    leader = asyncio.ensure_future(group.submit(0))
    await asyncio.sleep(0.01)
    waiters = [asyncio.ensure_future(group.submit(n)) for n in (1, 2)]
    await asyncio.sleep(0.01)
    leader.cancel()
    with pytest.raises(asyncio.CancelledError):
        await leader
    w.gate.set()
    assert await asyncio.gather(*waiters) == [10, 20]
    assert w.batches == [[1, 2]]


async def test_a_connection_that_cannot_be_had_fails_the_waiters_and_later_callers_try_again() -> None:
    w = Writer()
    calls = 0

    @asynccontextmanager
    async def flaky() -> AsyncIterator[str]:
        nonlocal calls
        calls += 1
        if calls == 1:
            raise ConnectionError("no database")
        yield "session"

    group: GroupCommit[str, int, int] = GroupCommit(flaky, w.write)
    with pytest.raises(ConnectionError):
        await group.submit(1)
    assert await group.submit(2) == 20

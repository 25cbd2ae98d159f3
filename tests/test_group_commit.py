"""Group commit (storage.group_commit): callers that arrive together share one write, each learns
its own result, a failed batch fails only its own callers, and a caller giving up cancels nothing."""

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
        if self.fail_next:
            self.fail_next = False
            raise RuntimeError("the database went away")
        return [item * 10 for item in items]


async def test_callers_arriving_together_share_one_write_and_each_gets_its_own_result() -> None:
    w = Writer()
    group: GroupCommit[str, int, int] = GroupCommit(w.hold, w.write)
    results = await asyncio.gather(*(group.submit(n) for n in range(50)))
    assert results == [n * 10 for n in range(50)]
    assert len(w.batches) == 1  # all 50 joined the first batch: it is taken once the connection is held


async def test_arrivals_during_a_write_go_in_the_next_batch_and_a_batch_is_never_larger_than_its_bound() -> None:
    w = Writer()
    w.gate.clear()
    group: GroupCommit[str, int, int] = GroupCommit(w.hold, w.write, max_batch=8)
    first = [asyncio.ensure_future(group.submit(n)) for n in range(20)]
    await asyncio.sleep(0.01)
    w.gate.set()
    assert await asyncio.gather(*first) == [n * 10 for n in range(20)]
    assert [len(b) for b in w.batches] == [8, 8, 4]
    assert [n for b in w.batches for n in b] == list(range(20))  # arrival order kept


async def test_a_failed_batch_fails_its_own_callers_and_the_next_batch_is_still_written() -> None:
    w = Writer()
    group: GroupCommit[str, int, int] = GroupCommit(w.hold, w.write)
    w.fail_next = True
    failed = await asyncio.gather(*(group.submit(n) for n in range(3)), return_exceptions=True)
    assert all(isinstance(r, RuntimeError) for r in failed)
    assert await group.submit(7) == 70


async def test_a_caller_that_gives_up_does_not_cancel_the_batch_of_the_others() -> None:
    w = Writer()
    w.gate.clear()
    group: GroupCommit[str, int, int] = GroupCommit(w.hold, w.write)
    quitter = asyncio.ensure_future(group.submit(1))
    stayer = asyncio.ensure_future(group.submit(2))
    await asyncio.sleep(0.01)
    quitter.cancel()
    w.gate.set()
    assert await stayer == 20
    with pytest.raises(asyncio.CancelledError):
        await quitter
    assert w.batches == [[1, 2]]  # the quitter's write was still made: it may already be committed


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

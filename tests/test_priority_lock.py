"""The SQLite connection's lock: urgent holders (a chat command's record, which Slack's ack waits
for) go before every waiting background statement, first come first served within each class;
while a listener's backlog is waiting (overload), background holders get in a few per loop iteration."""

from __future__ import annotations

import asyncio
import weakref

import pytest

from bot.core import pressure
from handlers.slack.app import Background
from storage.priority_lock import PriorityLock


async def test_an_urgent_waiter_goes_before_earlier_normal_ones_and_each_class_is_fifo() -> None:
    lock = PriorityLock()
    order: list[str] = []

    async def hold(name: str, *, urgent: bool = False) -> None:
        async with lock.held(urgent=urgent):
            order.append(name)
            await asyncio.sleep(0)

    await lock.acquire()  # the background transaction under way
    tasks = [asyncio.create_task(hold(f"normal{i}")) for i in range(3)]
    await asyncio.sleep(0)
    tasks += [asyncio.create_task(hold("urgent1", urgent=True)), asyncio.create_task(hold("urgent2", urgent=True))]
    await asyncio.sleep(0)
    lock.release()
    await asyncio.gather(*tasks)

    assert order == ["urgent1", "urgent2", "normal0", "normal1", "normal2"]
    assert not lock.locked()


async def test_a_waiter_cancelled_while_waiting_or_just_after_being_handed_the_lock_passes_it_on() -> None:
    lock = PriorityLock()
    await lock.acquire()
    gave_up = asyncio.create_task(lock.acquire())
    handed = asyncio.create_task(lock.acquire())
    last = asyncio.create_task(lock.acquire())
    await asyncio.sleep(0)
    gave_up.cancel()
    await asyncio.sleep(0)
    lock.release()  # skips the cancelled waiter and hands the lock to the next
    handed.cancel()  # ... which is cancelled before it runs: it must hand it on, not keep it
    await asyncio.gather(gave_up, handed, return_exceptions=True)
    await asyncio.wait_for(last, timeout=1)
    assert lock.locked()
    lock.release()
    assert not lock.locked()


async def _iterations_taken(lock: PriorityLock, holders: int, *, urgent: bool = False) -> list[int]:
    """Acquire and release ``lock`` ``holders`` times at once; for each, the loop iteration it got in."""
    iteration = 0
    stop = asyncio.Event()

    async def count() -> None:
        nonlocal iteration
        while not stop.is_set():
            await asyncio.sleep(0)
            iteration += 1

    counter = asyncio.ensure_future(count())
    got: list[int] = []

    async def hold() -> None:
        async with lock.held(urgent=urgent):
            got.append(iteration)

    await asyncio.gather(*(hold() for _ in range(holders)))
    stop.set()
    await counter
    return got


async def test_while_crowded_a_few_normal_holders_get_in_per_loop_iteration_and_every_one_gets_in() -> None:
    lock = PriorityLock(normal_per_iteration=2, crowded=lambda: True)
    got = await _iterations_taken(lock, 9)
    assert len(got) == 9  # none was lost
    per_iteration = {i: got.count(i) for i in got}
    assert max(per_iteration.values()) <= 2
    assert len(per_iteration) >= 5  # 9 holders at 2 an iteration: spread over at least 5 iterations


async def test_not_crowded_every_holder_gets_in_at_once() -> None:
    lock = PriorityLock(normal_per_iteration=2, crowded=lambda: False)
    got = await _iterations_taken(lock, 9)
    assert len(set(got)) == 1


async def test_urgent_holders_are_never_held_back_by_the_crowd() -> None:
    lock = PriorityLock(normal_per_iteration=1, crowded=lambda: True)
    got = await _iterations_taken(lock, 9, urgent=True)
    assert len(set(got)) == 1
    # and an urgent holder arriving while normal ones are held back goes first
    order: list[str] = []

    async def hold(name: str, urgent: bool) -> None:
        async with lock.held(urgent=urgent):
            order.append(name)

    normal = [asyncio.ensure_future(hold(f"n{i}", False)) for i in range(4)]
    await asyncio.sleep(0)
    await hold("u", True)
    await asyncio.gather(*normal)
    assert order.index("u") < 3
    assert sorted(order) == ["n0", "n1", "n2", "n3", "u"]


async def test_a_listeners_backlog_is_what_crowds_storage(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(pressure, "_backlogs", weakref.WeakSet())  # only this test's backlog counts
    background = Background(turns=1, wait=60.0)
    started = asyncio.Event()
    release = asyncio.Event()

    async def job(*_: object) -> None:
        started.set()
        await release.wait()

    async def busy(*_: object) -> None:
        return None

    assert not pressure.overloaded()
    background.submit(job, busy)
    await started.wait()
    assert not pressure.overloaded()  # one running, none waiting
    background.submit(job, busy)
    assert pressure.overloaded()  # one waiting for a turn
    release.set()
    for _ in range(100):
        if not pressure.overloaded():
            break
        await asyncio.sleep(0.01)
    assert not pressure.overloaded()


def test_a_crowded_lock_must_let_at_least_one_normal_holder_in_per_iteration() -> None:
    with pytest.raises(ValueError, match="at least 1"):
        PriorityLock(normal_per_iteration=0, crowded=lambda: True)

"""The SQLite connection's lock: urgent holders (a chat command's record, which Slack's ack waits
for) go before every waiting background statement, first come first served within each class."""

from __future__ import annotations

import asyncio

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

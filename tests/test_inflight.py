"""Work started while answering a request is tracked, so a stop waits for it within its deadline."""

from __future__ import annotations

import asyncio

from bot.runtime.inflight import InFlight


async def test_tasks_started_in_scope_and_their_own_tasks_are_waited_for_others_are_not() -> None:
    inflight = InFlight()
    inflight.install()
    finished: list[str] = []

    async def child() -> None:
        await asyncio.sleep(0.05)
        finished.append("child")

    async def listener() -> None:
        asyncio.ensure_future(child())  # noqa: RUF006 - as slack-bolt does: no reference kept
        await asyncio.sleep(0.02)
        finished.append("listener")

    outside = asyncio.ensure_future(asyncio.sleep(10))
    with inflight.scope():
        asyncio.ensure_future(listener())  # noqa: RUF006
    await asyncio.sleep(0)  # the listener starts and creates its child
    assert len(inflight) == 2

    inflight.begin_stop(5)
    assert await inflight.drain() == (2, 0)
    assert sorted(finished) == ["child", "listener"]
    assert not outside.done()
    outside.cancel()
    inflight.uninstall()


async def test_work_still_running_at_the_deadline_is_cancelled_and_counted() -> None:
    inflight = InFlight()
    inflight.install()
    cancelled = asyncio.Event()

    async def stuck() -> None:
        try:
            await asyncio.sleep(60)
        except asyncio.CancelledError:
            cancelled.set()
            raise

    with inflight.scope():
        asyncio.ensure_future(stuck())  # noqa: RUF006
        asyncio.ensure_future(asyncio.sleep(0))  # noqa: RUF006
    inflight.begin_stop(0.2)
    loop = asyncio.get_running_loop()
    started = loop.time()
    assert await inflight.drain() == (1, 1)
    assert loop.time() - started < 2
    assert cancelled.is_set()
    inflight.uninstall()


async def test_two_apps_on_one_loop_share_the_factory_and_the_last_restores_the_previous() -> None:
    loop = asyncio.get_running_loop()
    before = loop.get_task_factory()
    first, second = InFlight(), InFlight()
    first.install()
    second.install()
    factory = loop.get_task_factory()
    first.uninstall()
    assert loop.get_task_factory() is factory  # the second still tracks
    with second.scope():
        task = asyncio.ensure_future(asyncio.sleep(0))
    assert len(second) == 1
    await task
    second.uninstall()
    assert loop.get_task_factory() is before


async def test_the_first_stop_sets_the_deadline() -> None:
    inflight = InFlight()
    inflight.begin_stop(10)
    inflight.begin_stop(0)
    assert 9 < inflight.remaining() <= 10

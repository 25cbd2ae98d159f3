"""The background lane (bot.core.lanes): a wave of background steps never holds up what a request
waits for, the background still gets every step, in order, and a background holder handed the
SQLite lock gets on with it ahead of the lane."""

from __future__ import annotations

import asyncio
import contextvars
import time
from collections.abc import Callable

import pytest

from bot.core import lanes
from bot.runtime.loops import lane_loop_factory
from storage.priority_lock import PriorityLock

STEP = 0.001  # CPU seconds each background step burns
WAVE = 100  # background tasks woken at once, as by one PagerDuty answer


def _burn(seconds: float) -> None:
    end = time.perf_counter() + seconds
    while time.perf_counter() < end:
        pass


async def _wave_against_the_foreground(spawn: Callable[..., asyncio.Task[None]]) -> tuple[float, float]:
    """WAVE tasks woken by one future, each 5 steps of STEP; returns (the foreground's longest wait
    for one loop iteration while they ran, how long they took in all)."""
    go: asyncio.Future[None] = asyncio.get_running_loop().create_future()

    async def flow() -> None:
        await go
        for _ in range(5):
            _burn(STEP)
            await asyncio.sleep(0)

    tasks = [spawn(flow()) for _ in range(WAVE)]
    await asyncio.sleep(0.01)
    started = time.perf_counter()
    go.set_result(None)
    worst = 0.0
    while not all(task.done() for task in tasks):
        before = time.perf_counter()
        await asyncio.sleep(0)
        worst = max(worst, time.perf_counter() - before)
    return worst, time.perf_counter() - started


def _plain_task(coro: object) -> asyncio.Task[None]:
    return asyncio.get_running_loop().create_task(coro)  # type: ignore[arg-type]


@pytest.mark.parametrize("factory", [lanes.LaneLoop, lane_loop_factory()], ids=["asyncio", "serve's loop"])
def test_a_wave_of_background_steps_never_holds_the_foreground_for_more_than_a_slice_and_a_step(
    factory: Callable[[], asyncio.AbstractEventLoop],
) -> None:
    with asyncio.Runner(loop_factory=factory) as runner:
        worst, took = runner.run(_wave_against_the_foreground(lanes.spawn))
        plain_worst, plain_took = runner.run(_wave_against_the_foreground(_plain_task))
    # The same wave as ordinary tasks holds one iteration for ~WAVE steps (~100 ms): the control.
    assert plain_worst > 0.05
    # In the lane: a slice (0.5 ms) plus the one step that overran it, plus the foreground's own.
    assert worst < 0.01, f"the foreground waited {worst * 1000:.1f} ms for one iteration"
    # ... and the background loses next to nothing for it.
    assert took < plain_took * 1.5 + 0.05


async def test_the_suite_runs_on_the_loop_with_the_lane() -> None:
    assert isinstance(asyncio.get_running_loop(), lanes.Lanes)


async def test_background_steps_run_in_the_order_they_became_ready_and_every_one_runs() -> None:
    order: list[tuple[int, int]] = []

    async def worker(n: int) -> None:
        for step in range(3):
            order.append((n, step))
            _burn(0.0003)
            await asyncio.sleep(0)

    await asyncio.gather(*(lanes.spawn(worker(n)) for n in range(20)))
    assert sorted(order) == [(n, s) for n in range(20) for s in range(3)]
    for step in range(3):  # each round of steps in the order the tasks were started
        assert [n for n, s in order if s == step] == list(range(20))


_REQUEST = contextvars.ContextVar("request", default="")


async def test_what_the_background_starts_is_background_too_and_keeps_the_callers_context() -> None:
    seen: list[tuple[str, bool, str]] = []

    async def child() -> None:
        seen.append(("child", lanes.in_background(), _REQUEST.get()))

    async def job() -> None:
        seen.append(("job", lanes.in_background(), _REQUEST.get()))
        await asyncio.get_running_loop().create_task(child())

    _REQUEST.set("T123")
    await lanes.spawn(job())
    assert seen == [("job", True, "T123"), ("child", True, "T123")]
    assert not lanes.in_background()  # the caller is not marked
    started: list[bool] = []
    lanes.start_in_background(lambda: started.append(lanes.in_background()))
    assert started == [True]


async def _lock_wait_behind_a_long_lane(hand: Callable[[asyncio.Future[None]], None]) -> float:
    """A background task waits for a future while the lane holds ~100 ms of steps; returns how long
    after ``hand(future)`` it resumed."""
    go: asyncio.Future[None] = asyncio.get_running_loop().create_future()
    handed: asyncio.Future[None] = asyncio.get_running_loop().create_future()
    resumed: list[float] = []

    async def busy() -> None:
        await go
        for _ in range(5):
            _burn(0.002)
            await asyncio.sleep(0)

    async def holder() -> None:
        await handed
        resumed.append(time.perf_counter())

    waiting = lanes.spawn(holder())
    crowd = [lanes.spawn(busy()) for _ in range(10)]
    await asyncio.sleep(0.01)
    go.set_result(None)
    await asyncio.sleep(0)  # the crowd's steps are queued in the lane
    at = time.perf_counter()
    hand(handed)
    await asyncio.gather(waiting, *crowd)
    return resumed[0] - at


async def test_a_background_task_handed_something_resumes_ahead_of_the_lane() -> None:
    behind = await _lock_wait_behind_a_long_lane(lambda f: f.set_result(None))
    ahead = await _lock_wait_behind_a_long_lane(lanes.hand_over)
    assert behind > 0.02  # the control: woken the ordinary way, it waits for the lane's turn
    assert ahead < 0.01


async def test_an_urgent_writer_waits_for_a_background_holder_only_for_its_statement() -> None:
    lock = PriorityLock()
    go: asyncio.Future[None] = asyncio.get_running_loop().create_future()
    got: list[float] = []

    async def background_statement() -> None:
        async with lock:
            _burn(0.0005)  # a statement: it does not suspend while holding the connection

    async def busy() -> None:
        await go
        for _ in range(5):
            _burn(0.002)
            await asyncio.sleep(0)

    await lock.acquire()  # someone's transaction under way
    statement = lanes.spawn(background_statement())
    crowd = [lanes.spawn(busy()) for _ in range(10)]
    await asyncio.sleep(0.01)
    go.set_result(None)
    await asyncio.sleep(0)
    lock.release()  # handed to the background statement, queued behind ~100 ms of lane
    at = time.perf_counter()
    async with lock.held(urgent=True):  # the record an ack waits for
        got.append(time.perf_counter() - at)
    await asyncio.gather(statement, *crowd)
    assert got[0] < 0.01


async def test_a_cancelled_background_step_is_skipped_and_a_failing_one_goes_to_the_handler() -> None:
    loop = asyncio.get_running_loop()
    errors: list[object] = []
    loop.set_exception_handler(lambda _, context: errors.append(context.get("exception")))
    ran: list[str] = []
    try:
        context = lanes.background_context()
        skipped = loop.call_soon(ran.append, "skipped", context=context)
        skipped.cancel()

        def fail() -> None:
            raise ValueError("boom")

        loop.call_soon(fail, context=context)
        loop.call_soon(ran.append, "after", context=context)
        await lanes.spawn(asyncio.sleep(0.01))
    finally:
        loop.set_exception_handler(None)
    assert ran == ["after"]
    assert len(errors) == 1 and isinstance(errors[0], ValueError)


def test_a_step_that_stops_the_loop_leaves_the_rest_of_the_lane_to_run_when_it_runs_again() -> None:
    loop = lanes.LaneLoop()
    ran: list[str] = []
    try:
        context = lanes.background_context()

        def stop() -> None:
            raise SystemExit(3)  # escapes the loop, as SystemExit and KeyboardInterrupt do

        loop.call_soon(stop, context=context)
        loop.call_soon(ran.append, "after", context=context)
        with pytest.raises(SystemExit):
            loop.run_until_complete(asyncio.sleep(0.01))
        loop.run_until_complete(asyncio.sleep(0.01))
    finally:
        loop.close()
    assert ran == ["after"]


def test_a_closed_loop_refuses_background_callbacks() -> None:
    loop = lanes.LaneLoop()
    loop.close()
    with pytest.raises(RuntimeError, match="closed"):
        loop.call_soon(print, context=lanes.background_context())


async def test_on_a_plain_loop_the_background_is_ordinary_steps() -> None:
    def run() -> list[bool]:
        async def job() -> list[bool]:
            future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
            lanes.hand_over(future)
            await future
            return [lanes.in_background(), future.done()]

        async def main() -> list[bool]:
            return await lanes.spawn(job())

        with asyncio.Runner(loop_factory=asyncio.SelectorEventLoop) as runner:
            return runner.run(main())

    assert await asyncio.to_thread(run) == [True, True]

"""bot.core.eager.start_eagerly: the first step runs at once in the caller's task; the rest, if
any, continues in a task that behaves as one would (results, exceptions, cancellation, context)."""

from __future__ import annotations

import asyncio
import contextvars

import pytest

from bot.core.eager import start_eagerly

seen: contextvars.ContextVar[str] = contextvars.ContextVar("seen", default="caller's")


async def test_a_coroutine_that_does_not_wait_is_done_before_start_returns_and_makes_no_task() -> None:
    steps: list[str] = []

    async def quick() -> int:
        steps.append("ran")
        return 7

    tasks = len(asyncio.all_tasks())
    future = start_eagerly(quick())
    assert steps == ["ran"]
    assert future.done() and future.result() == 7
    assert len(asyncio.all_tasks()) == tasks


async def test_the_first_step_runs_now_and_the_rest_after_what_it_waits_for() -> None:
    steps: list[str] = []
    gate: asyncio.Future[str] = asyncio.get_running_loop().create_future()

    async def waits() -> str:
        steps.append("first")
        got = await gate
        steps.append(f"then {got}")
        await asyncio.sleep(0)  # a bare yield
        steps.append("last")
        return got.upper()

    future = start_eagerly(waits())
    assert steps == ["first"]
    await asyncio.sleep(0.01)
    assert steps == ["first"]  # not resumed before the gate opens
    gate.set_result("go")
    assert await future == "GO"
    assert steps == ["first", "then go", "last"]


async def test_exceptions_reach_the_future_in_the_first_step_or_after_a_wait() -> None:
    async def fails_at_once() -> None:
        raise ValueError("at once")

    async def fails_later() -> None:
        await asyncio.sleep(0.001)
        raise KeyError("later")

    with pytest.raises(ValueError, match="at once"):
        await start_eagerly(fails_at_once())
    with pytest.raises(KeyError, match="later"):
        await start_eagerly(fails_later())


async def test_cancelling_the_rest_cancels_what_it_waits_for_and_the_coroutine_sees_it() -> None:
    gate: asyncio.Future[None] = asyncio.get_running_loop().create_future()
    cleaned: list[str] = []

    async def waits() -> None:
        try:
            await gate
        finally:
            cleaned.append("finally")

    future = start_eagerly(waits())
    await asyncio.sleep(0)
    future.cancel()
    with pytest.raises(asyncio.CancelledError):
        await future
    assert gate.cancelled()
    assert cleaned == ["finally"]


async def test_what_it_sets_in_its_context_stays_out_of_the_callers() -> None:
    async def sets() -> str:
        seen.set("eager's")
        await asyncio.sleep(0)
        return seen.get()  # its own context, kept across the wait

    assert await start_eagerly(sets()) == "eager's"
    assert seen.get() == "caller's"

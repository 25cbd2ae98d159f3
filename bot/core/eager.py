"""Start a coroutine at once, in the caller's task, as Python 3.12's eager tasks do.

``loop.create_task(coro)`` runs nothing until the next loop iteration. A Slack request waits for
its listener's acknowledgement, and the listener acks before its first real wait (on SQLite the
command's record does not suspend at all): as a task, that costs two extra iterations (the
listener's first step, then the request resuming), and under load one iteration can hold tens of
milliseconds of background steps. :func:`start_eagerly` runs the first step now, in the caller's
context; only if the coroutine then waits does the rest continue in a task, which resumes it
when what it waits for is done (a cancellation of that task is passed in, as a task would).
The first step runs in a copy of the caller's context, and the task in the same copy.
Python 3.12's ``asyncio.eager_task_factory`` does this for every task; this project runs on 3.11.
"""

from __future__ import annotations

import asyncio
import contextvars
from collections.abc import Coroutine, Generator
from typing import Any, TypeVar

T = TypeVar("T")


def start_eagerly(coro: Coroutine[Any, Any, T]) -> asyncio.Future[T]:
    """Run ``coro`` up to its first suspension now; a future of its result (done already when it
    finished in that first step)."""
    loop = asyncio.get_running_loop()
    context = contextvars.copy_context()  # its own, as a task's: what it sets stays out of the caller's
    try:
        waited = context.run(coro.send, None)
    except StopIteration as done:
        finished: asyncio.Future[T] = loop.create_future()
        finished.set_result(done.value)
        return finished
    except asyncio.CancelledError:
        cancelled: asyncio.Future[T] = loop.create_future()
        cancelled.cancel()
        return cancelled
    except Exception as exc:
        failed: asyncio.Future[T] = loop.create_future()
        failed.set_exception(exc)
        return failed
    return loop.create_task(_resume(coro, waited), context=context)


class _Step:
    """Awaiting this yields ``waited`` once, so the task running :func:`_resume` waits on it as the
    coroutine itself would have (a future: until it is done; ``None``: one loop iteration)."""

    def __init__(self, waited: Any) -> None:
        self._waited = waited

    def __await__(self) -> Generator[Any, None, None]:
        yield self._waited


async def _resume(coro: Coroutine[Any, Any, T], waited: Any) -> T:
    while True:
        try:
            await _Step(waited)
        except BaseException as exc:  # cancelled while waiting: the coroutine gets it, as in a task
            try:
                waited = coro.throw(exc)
            except StopIteration as done:
                return done.value  # type: ignore[no-any-return]
            continue
        try:
            waited = coro.send(None)
        except StopIteration as done:
            return done.value  # type: ignore[no-any-return]

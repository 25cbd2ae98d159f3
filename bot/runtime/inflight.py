"""Work started while answering a request, kept track of so a graceful stop can finish it.

Slack's listeners run after the acknowledgement: slack-bolt's ``AsyncioListenerRunner`` starts each
one with ``asyncio.ensure_future`` and keeps no reference, and the PagerDuty webhook endpoint
processes deliveries in tasks of its own. aiohttp's shutdown waits only for request handlers, so
without this a stop would close the store under that work. :class:`InFlight` installs a task factory
on the event loop: every task created while a request is being answered (inside :meth:`scope`),
and every task those tasks create, is recorded until it finishes. :meth:`drain` waits for them
within a deadline, then cancels what is left.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from typing import Any

log = logging.getLogger(__name__)

_current: ContextVar[InFlight | None] = ContextVar("ackgate_inflight", default=None)

_TaskFactory = Any  # asyncio's own type for it is private


class _Tracking:
    """The loop's task factory: records each new task in the :class:`InFlight` whose scope created it.

    One per loop, shared by every application on it (tests run several), removed by the last."""

    def __init__(self, previous: _TaskFactory) -> None:
        self.previous = previous
        self.users = 0

    def __call__(self, loop: asyncio.AbstractEventLoop, coro: Any, **kwargs: Any) -> asyncio.Future[Any]:
        task: asyncio.Future[Any] = (
            self.previous(loop, coro, **kwargs)
            if self.previous is not None
            else asyncio.Task(coro, loop=loop, **kwargs)
        )
        tracker = _current.get()
        if tracker is not None:
            tracker._tasks.add(task)
            task.add_done_callback(tracker._tasks.discard)
        return task


class InFlight:
    """The set of background tasks started on behalf of requests, and the stop's deadline."""

    def __init__(self) -> None:
        self._tasks: set[asyncio.Future[Any]] = set()
        self._loop: asyncio.AbstractEventLoop | None = None
        self.deadline: float | None = None  # time.monotonic() by which the stop must be done

    def __len__(self) -> int:
        return len(self._tasks)

    def install(self) -> None:
        """Track tasks on the running loop (keeping any task factory already set)."""
        loop = asyncio.get_running_loop()
        factory = loop.get_task_factory()
        if not isinstance(factory, _Tracking):
            factory = _Tracking(factory)
            loop.set_task_factory(factory)
        factory.users += 1
        self._loop = loop

    def uninstall(self) -> None:
        if self._loop is None:
            return
        factory = self._loop.get_task_factory()
        if isinstance(factory, _Tracking):
            factory.users -= 1
            if factory.users <= 0:
                self._loop.set_task_factory(factory.previous)
        self._loop = None

    @contextmanager
    def scope(self) -> Iterator[None]:
        """Tasks created inside this block (and their own tasks) are tracked."""
        token = _current.set(self)
        try:
            yield
        finally:
            _current.reset(token)

    def begin_stop(self, seconds: float) -> None:
        """The stop starts now and must be done within ``seconds`` (the first call counts)."""
        if self.deadline is None:
            self.deadline = time.monotonic() + seconds

    def remaining(self) -> float:
        return max(0.0, self.deadline - time.monotonic()) if self.deadline is not None else 0.0

    async def drain(self) -> tuple[int, int]:
        """Wait until every tracked task is done or the deadline passes, then cancel the rest.

        Returns (finished, cancelled). Tasks started while waiting are waited for too."""
        finished = cancelled = 0
        while self._tasks:
            waiting = set(self._tasks)
            done, pending = await asyncio.wait(waiting, timeout=self.remaining())
            finished += len(done)
            if pending:
                for task in pending:
                    task.cancel()
                await asyncio.wait(pending, timeout=1.0)  # let them unwind; one ignoring cancellation is left
                cancelled += len(pending)
                self._tasks.difference_update(pending)
        return finished, cancelled

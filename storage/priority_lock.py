"""A lock for one shared database connection that serves urgent holders first.

The SQLite backend holds one connection; every statement waits its turn for it. Most turns are
background work (grants, audit rows, outbox), but recording a chat command is what Slack's
acknowledgement waits for, and Slack gives up after 3 seconds: behind a queue of background
transactions that record would wait for all of them. :class:`PriorityLock` hands the connection
to the oldest urgent waiter first, then to the oldest of the others (first come, first served
within each class). The lock is handed over directly on release, so no newcomer can take it
between; a waiter cancelled after it was handed the lock passes it on. A background holder is
woken ahead of the background lane (:func:`bot.core.lanes.hand_over`): an urgent writer may be
waiting for it to finish.
"""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from types import TracebackType

from bot.core.lanes import hand_over


class PriorityLock:
    """``async with lock:`` (normal) or ``async with lock.held(urgent=True):``."""

    def __init__(self) -> None:
        self._locked = False
        self._urgent: deque[asyncio.Future[None]] = deque()
        self._normal: deque[asyncio.Future[None]] = deque()

    def locked(self) -> bool:
        return self._locked

    async def acquire(self, *, urgent: bool = False) -> None:
        if not self._locked and not self._urgent and not self._normal:
            self._locked = True
            return
        waiter: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        (self._urgent if urgent else self._normal).append(waiter)
        try:
            await waiter
        except asyncio.CancelledError:
            if waiter.done() and not waiter.cancelled():
                self.release()  # it was handed to us as we were cancelled: pass it on
            raise

    def release(self) -> None:
        for queue in (self._urgent, self._normal):
            while queue:
                waiter = queue.popleft()
                if not waiter.done():
                    hand_over(waiter)  # stays locked; the holder resumes ahead of the background lane
                    return
        self._locked = False

    @asynccontextmanager
    async def held(self, *, urgent: bool = False) -> AsyncIterator[None]:
        await self.acquire(urgent=urgent)
        try:
            yield
        finally:
            self.release()

    async def __aenter__(self) -> None:
        await self.acquire()

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.release()

"""A lock for one shared database connection that serves urgent holders first.

The SQLite backend holds one connection; every statement waits its turn for it. Most turns are
background work (grants, audit rows, outbox), but recording a chat command is what Slack's
acknowledgement waits for, and Slack gives up after 3 seconds: behind a queue of background
transactions that record would wait for all of them. :class:`PriorityLock` hands the connection
to the oldest urgent waiter first, then to the oldest of the others (first come, first served
within each class). The lock is handed over directly on release, so no newcomer can take it
between; a waiter cancelled after it was handed the lock passes it on.
"""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from types import TracebackType


class PriorityLock:
    """``async with lock:`` (normal) or ``async with lock.held(urgent=True):``."""

    def __init__(self, *, normal_per_iteration: int = 1, crowded: Callable[[], bool] | None = None) -> None:
        if normal_per_iteration < 1:  # none at all would leave normal waiters waiting for good
            raise ValueError("normal_per_iteration must be at least 1")
        self._locked = False
        self._urgent: deque[asyncio.Future[None]] = deque()
        self._normal: deque[asyncio.Future[None]] = deque()
        self._per_iteration = normal_per_iteration
        self._crowded = crowded
        self._granted = 0  # normal holders let in during this loop iteration, while crowded
        self._next: asyncio.Handle | None = None

    def _admit_normal(self) -> bool:
        """Whether a normal holder may have the lock in this loop iteration (counted if so): always,
        unless ``crowded()``, when only ``normal_per_iteration`` are let in per iteration."""
        if self._crowded is None or not self._crowded():
            return True
        if self._granted >= self._per_iteration:
            return False
        self._granted += 1
        if self._next is None:
            self._next = asyncio.get_running_loop().call_soon(self._next_iteration)
        return True

    def _next_iteration(self) -> None:
        self._next = None
        self._granted = 0
        if not self._locked and (self._urgent or self._normal):
            self._locked = True
            self.release()  # hands it to the next waiter, within the new iteration's budget

    def locked(self) -> bool:
        return self._locked

    async def acquire(self, *, urgent: bool = False) -> None:
        if not self._locked and not self._urgent and (urgent or (not self._normal and self._admit_normal())):
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
        while self._urgent:
            waiter = self._urgent.popleft()
            if not waiter.done():
                waiter.set_result(None)  # handed over: stays locked
                return
        while self._normal and self._normal[0].done():
            self._normal.popleft()  # gave up waiting
        if self._normal and self._admit_normal():
            self._normal.popleft().set_result(None)
            return
        # Unlocked; a normal waiter held back this iteration is handed the lock by _next_iteration.
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

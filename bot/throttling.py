"""Two small guards for calls to a rate-limited HTTP API, free of any HTTP library.

:class:`SlidingWindowLimiter` keeps requests under a per-window budget without blocking the loop;
:class:`Coalescer` lets identical concurrent lookups share one call and caches results for a while.
Both take an injected monotonic clock (and sleep), so tests move time by hand.
"""

from __future__ import annotations

import asyncio
import time
from collections import deque
from collections.abc import Awaitable, Callable, Hashable
from typing import TypeVar, cast

from bot.errors import ConfigError

Monotonic = Callable[[], float]
Sleep = Callable[[float], Awaitable[None]]
T = TypeVar("T")


class RateBudgetExceeded(Exception):
    """Waiting for the limiter would overrun the caller's deadline."""

    def __init__(self, wait: float) -> None:
        super().__init__(f"rate budget frees up in {wait:.1f}s")
        self.wait = wait


class SlidingWindowLimiter:
    """At most ``limit`` requests start in any ``window`` seconds.

    Each caller reserves the earliest free slot, then sleeps until it (never blocking the loop).
    The deque holds the last ``limit`` slots, so the oldest one tells when a slot frees up.
    """

    def __init__(
        self, limit: int, *, window: float = 60.0, monotonic: Monotonic = time.monotonic, sleep: Sleep = asyncio.sleep
    ) -> None:
        if limit < 1:
            raise ConfigError("The PagerDuty request budget must allow at least one request per minute.")
        self._window = window
        self._monotonic = monotonic
        self._sleep = sleep
        self._slots: deque[float] = deque(maxlen=limit)

    async def acquire(self, *, deadline: float) -> None:
        """Wait for a slot; raise :class:`RateBudgetExceeded` (reserving nothing) if it comes after ``deadline``."""
        now = self._monotonic()
        slot = now
        if len(self._slots) == self._slots.maxlen:
            slot = max(now, self._slots[0] + self._window)
        if slot > deadline:
            raise RateBudgetExceeded(slot - now)
        self._slots.append(slot)  # no await since reading the deque: reservations cannot interleave
        if slot > now:
            await self._sleep(slot - now)


class Coalescer:
    """Shares one in-flight load per key among concurrent callers, and optionally caches its result."""

    def __init__(self, *, ttl: float, monotonic: Monotonic, max_entries: int = 4096) -> None:
        self._ttl = ttl
        self._monotonic = monotonic
        self._max_entries = max_entries
        self._cache: dict[Hashable, tuple[float, object]] = {}
        self._inflight: dict[Hashable, asyncio.Task[object]] = {}

    async def run(self, key: Hashable, load: Callable[[], Awaitable[T]], *, cache: bool) -> T:
        if cache:
            hit = self._cache.get(key)
            if hit is not None and hit[0] > self._monotonic():
                return cast(T, hit[1])
        task = self._inflight.get(key)
        if task is None:
            task = asyncio.create_task(self._load(key, load, cache=cache))
            task.add_done_callback(_consume_exception)
            self._inflight[key] = task
        # shield: one impatient caller being cancelled must not cancel the call the others share
        return cast(T, await asyncio.shield(task))

    async def _load(self, key: Hashable, load: Callable[[], Awaitable[T]], *, cache: bool) -> object:
        try:
            value = await load()
            if cache and self._ttl > 0:
                self._store(key, value)
            return value
        finally:
            self._inflight.pop(key, None)

    def _store(self, key: Hashable, value: object) -> None:
        now = self._monotonic()
        if len(self._cache) >= self._max_entries:
            self._cache = {k: v for k, v in self._cache.items() if v[0] > now}
            while len(self._cache) >= self._max_entries:
                self._cache.pop(next(iter(self._cache)))
        self._cache[key] = (now + self._ttl, value)

    async def aclose(self) -> None:
        tasks = list(self._inflight.values())
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        self._cache.clear()


def _consume_exception(task: asyncio.Task[object]) -> None:
    # Every waiter may have gone; reading the exception stops asyncio logging it as "never retrieved".
    if not task.cancelled():
        task.exception()

"""One coalescing cache for lookups: identical concurrent lookups share one call, results live ``ttl``.

Failures are never cached and reach every caller waiting on that lookup. A caller that is cancelled
does not cancel the lookup the others share. ``ttl`` is per call, so one cache can keep slow-changing
facts (a user by email) far longer than fast-changing ones; ``ttl=0`` coalesces without caching.
``ttl`` may also be a function of the loaded value (say, a short life for "not found").
Free of any platform or HTTP library; the clock is injected so tests move time by hand.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable, Hashable
from typing import TypeVar, cast

Monotonic = Callable[[], float]
T = TypeVar("T")


class CoalescingCache:
    def __init__(self, *, monotonic: Monotonic = time.monotonic, max_entries: int = 4096) -> None:
        self._monotonic = monotonic
        self._max_entries = max_entries
        self._cache: dict[Hashable, tuple[float, object]] = {}
        self._inflight: dict[Hashable, asyncio.Task[object]] = {}
        self._generation = 0  # moved by clear(): a lookup begun before it is not kept, nor joined
        self._orphans: set[asyncio.Task[object]] = set()

    async def get(self, key: Hashable, load: Callable[[], Awaitable[T]], *, ttl: float | Callable[[T], float]) -> T:
        hit = self._cache.get(key)
        if hit is not None:
            if hit[0] > self._monotonic():
                return cast(T, hit[1])
            del self._cache[key]
        task = self._inflight.get(key)
        if task is None:
            task = asyncio.create_task(self._load(key, load, ttl, self._generation))
            task.add_done_callback(_consume_exception)
            self._inflight[key] = task
        # shield: one impatient caller being cancelled must not cancel the call the others share
        return cast(T, await asyncio.shield(task))

    def forget(self, key: Hashable) -> None:
        self._cache.pop(key, None)

    def clear(self) -> None:
        """Forget every kept result. Lookups in flight still answer the callers already waiting,
        but are not kept, and a caller from now on starts a lookup of its own."""
        self._cache.clear()
        for task in self._inflight.values():  # still closed by aclose()
            self._orphans.add(task)
            task.add_done_callback(self._orphans.discard)
        self._inflight.clear()
        self._generation += 1

    def put(self, key: Hashable, value: object, *, ttl: float) -> None:
        """Keep ``value`` under ``key`` for ``ttl`` seconds, as if a lookup had loaded it."""
        if ttl > 0:
            self._store(key, value, ttl)

    async def _load(
        self, key: Hashable, load: Callable[[], Awaitable[T]], ttl: float | Callable[[T], float], generation: int
    ) -> object:
        try:
            value = await load()
            seconds = ttl(value) if callable(ttl) else ttl
            if seconds > 0 and generation == self._generation:
                self._store(key, value, seconds)
            return value
        finally:
            if generation == self._generation:
                self._inflight.pop(key, None)

    def _store(self, key: Hashable, value: object, ttl: float) -> None:
        now = self._monotonic()
        if len(self._cache) >= self._max_entries:
            self._cache = {k: v for k, v in self._cache.items() if v[0] > now}
            while len(self._cache) >= self._max_entries:
                self._cache.pop(next(iter(self._cache)))
        self._cache[key] = (now + ttl, value)

    async def aclose(self) -> None:
        tasks = [*self._inflight.values(), *self._orphans]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        self._cache.clear()


def _consume_exception(task: asyncio.Task[object]) -> None:
    # Every waiter may have gone; reading the exception stops asyncio logging it as "never retrieved".
    if not task.cancelled():
        task.exception()

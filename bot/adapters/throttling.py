"""The one client-side rate limiter for calls to a rate-limited API, free of any HTTP library.

:class:`SlidingWindowLimiter` keeps requests under a per-window budget without blocking the loop:
:meth:`~SlidingWindowLimiter.acquire` waits for a slot (within a deadline),
:meth:`~SlidingWindowLimiter.try_acquire` takes one only if free now. It takes an injected
monotonic clock (and sleep), so tests move time by hand. Coalescing lives in :mod:`bot.adapters.cache`.
"""

from __future__ import annotations

import asyncio
import time
from collections import deque
from collections.abc import Awaitable, Callable
from contextvars import ContextVar

from bot.core.errors import ConfigError

Monotonic = Callable[[], float]
Sleep = Callable[[float], Awaitable[None]]


class QueuedNotice:
    """A caller's "you are queued" callback, called at most once however many calls wait."""

    def __init__(self, notice: Callable[[], None]) -> None:
        self._notice: Callable[[], None] | None = notice

    def __call__(self) -> None:
        notice, self._notice = self._notice, None
        if notice is not None:
            notice()


_queued_notice: ContextVar[QueuedNotice | None] = ContextVar("ackgate_queued_notice", default=None)


def notify_when_queued(notice: Callable[[], None]) -> None:
    """In the current task (and the tasks it starts): call ``notice`` once if a call waits long in
    a client's queue for its request budget, so the user can be told why the answer is slow."""
    _queued_notice.set(QueuedNotice(notice))


def queued_notice() -> QueuedNotice | None:
    """The notice set by :func:`notify_when_queued` for this task, if any."""
    return _queued_notice.get()


class RateBudgetExceeded(Exception):
    """Waiting for the limiter would overrun the caller's deadline."""

    def __init__(self, wait: float) -> None:
        super().__init__(f"rate budget frees up in {wait:.1f}s")
        self.wait = wait


class SlidingWindowLimiter:
    """At most ``limit`` requests start in any ``window`` seconds; with ``burst``, also spread out.

    Each caller reserves the earliest free slot, then sleeps until it (never blocking the loop).
    The deque holds the last ``limit`` slots, so the oldest one tells when a slot frees up.

    ``burst`` (paced): at most ``burst`` requests start at once, then one every ``window / limit``
    seconds (a generic cell rate: a bucket of ``burst`` slots refilled at the budget's average
    rate). Without it, a busy minute spends the whole budget in its first seconds and everything
    after waits for the window to slide; paced, the budget lasts the window, and callers that
    can share a request (see :meth:`next_free`) gather while they wait.
    """

    def __init__(
        self,
        limit: int,
        *,
        window: float = 60.0,
        burst: int | None = None,
        monotonic: Monotonic = time.monotonic,
        sleep: Sleep = asyncio.sleep,
    ) -> None:
        if limit < 1:
            raise ConfigError("The PagerDuty request budget must allow at least one request per minute.")
        self._window = window
        self._monotonic = monotonic
        self._sleep = sleep
        self._slots: deque[float] = deque(maxlen=limit)
        self._interval = window / limit if burst is not None else 0.0
        self._tolerance = (max(1, min(burst, limit)) - 1) * self._interval if burst is not None else 0.0
        self._paced_until = float("-inf")  # the pacing's theoretical next start

    def _earliest(self, now: float) -> float:
        slot = now
        if len(self._slots) == self._slots.maxlen:
            slot = max(slot, self._slots[0] + self._window)
        if self._interval:
            slot = max(slot, self._paced_until - self._tolerance)
        return slot

    def _take(self, slot: float) -> None:
        self._slots.append(slot)
        if self._interval:
            self._paced_until = max(self._paced_until, slot) + self._interval

    async def acquire(self, *, deadline: float) -> None:
        """Wait for a slot; raise :class:`RateBudgetExceeded` (reserving nothing) if it comes after ``deadline``."""
        now = self._monotonic()
        slot = self._earliest(now)
        if slot > deadline:
            raise RateBudgetExceeded(slot - now)
        self._take(slot)  # no await since reading the deque: reservations cannot interleave
        if slot > now:
            await self._sleep(slot - now)

    def try_acquire(self) -> float:
        """Take a slot now and return 0, or take nothing and return the seconds until one frees up."""
        now = self._monotonic()
        slot = self._earliest(now)
        if slot > now:
            return slot - now
        self._take(now)
        return 0.0

    def next_free(self) -> float:
        """Seconds until a request could start without waiting (0: now), reserving nothing."""
        now = self._monotonic()
        return max(0.0, self._earliest(now) - now)

    def backlog(self) -> float:
        """Seconds until the last slot reserved so far starts (0: nobody is waiting for one)."""
        return max(0.0, self._slots[-1] - self._monotonic()) if self._slots else 0.0

    def idle(self) -> bool:
        """No slot taken in the last window: the limiter can be dropped without losing anything."""
        return not self._slots or self._slots[-1] <= self._monotonic() - self._window

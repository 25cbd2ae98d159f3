"""One retry policy for every outbound call, on tenacity, and one reader of a server's wait hint.

An attempt raises :class:`Retryable` for a failure worth another try (with the server's hint, if it
gave one); anything else propagates at once. :func:`retry` runs attempts under a :class:`Backoff`:
``first``, twice that, … capped at ``cap``; a hint is waited instead (``hint_replaces``) or when
longer, never beyond ``hint_cap``. It gives up after ``max_attempts``, or earlier when the next
wait would reach the caller's ``deadline``, re-raising the last :class:`Retryable`. ``sleep`` and
``monotonic`` are injected so tests move time by hand. Free of any HTTP library: the callers read
responses; :func:`wait_hint` reads ``ratelimit-reset`` / ``Retry-After`` from any header mapping.
"""

from __future__ import annotations

import asyncio
import math
import time
from collections.abc import Awaitable, Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import TypeVar

from tenacity import AsyncRetrying, RetryCallState, retry_if_exception_type

Sleep = Callable[[float], Awaitable[None]]
Monotonic = Callable[[], float]
T = TypeVar("T")

WAIT_HEADERS = ("ratelimit-reset", "retry-after")


class Retryable(Exception):
    """One attempt failed in a way worth retrying; ``wait`` is the server's hint in seconds, if any."""

    def __init__(self, reason: str, *, wait: float | None = None) -> None:
        super().__init__(reason)
        self.reason = reason
        self.wait = wait


@dataclass(frozen=True)
class Backoff:
    max_attempts: int
    first: float
    cap: float = math.inf
    hint_cap: float = math.inf
    hint_replaces: bool = False
    jitter: Callable[[], float] | None = None  # a factor applied to the computed backoff, not to a hint

    def delay(self, attempt: int, hint: float | None = None) -> float:
        """Seconds to wait after failed attempt number ``attempt`` (1-based)."""
        backoff = min(self.first * 2.0 ** (attempt - 1), self.cap)
        if self.jitter is not None:
            backoff *= self.jitter()
        if hint is None:
            return backoff
        return min(hint if self.hint_replaces else max(backoff, hint), self.hint_cap)


def wait_hint(
    headers: Mapping[str, str] | Mapping[str, Sequence[str]], names: Iterable[str] = WAIT_HEADERS
) -> float | None:
    """Seconds a server asked us to wait, from the first of ``names`` present as a number.

    Takes any mapping of header names (any case) to a value or a list of values (httpx, aiohttp,
    slack_sdk). An HTTP-date, garbage, or a non-finite number is no hint: plain backoff applies.
    """
    lowered: dict[str, str] = {}
    for name, value in headers.items():
        text = value if isinstance(value, str) else (value[0] if value else "")
        lowered.setdefault(name.lower(), text)
    for name in names:
        raw = lowered.get(name)
        if raw is None:
            continue
        try:
            seconds = float(raw)
        except ValueError:
            continue
        if math.isfinite(seconds):
            return max(0.0, seconds)
    return None


OnRetry = Callable[[int, Retryable, float], None]
"""``on_retry(attempt, failure, delay)``, before each wait."""


async def retry(
    attempt: Callable[[], Awaitable[T]],
    *,
    policy: Backoff,
    sleep: Sleep = asyncio.sleep,
    monotonic: Monotonic = time.monotonic,
    deadline: float | None = None,
    on_retry: OnRetry | None = None,
) -> T:
    """Run ``attempt`` until it returns, raises something other than :class:`Retryable`, or we give up."""
    try:
        return await attempt()  # most calls succeed at once: they need none of tenacity's machinery
    except Retryable as exc:
        first_failure = exc
    replayed = False

    async def again() -> T:
        # tenacity's first attempt is the one already made: its failure, replayed, gets the same wait and stop
        nonlocal replayed
        if not replayed:
            replayed = True
            raise first_failure
        return await attempt()

    def failure(state: RetryCallState) -> Retryable:
        assert state.outcome is not None
        exc = state.outcome.exception()
        assert isinstance(exc, Retryable)
        return exc

    def wait(state: RetryCallState) -> float:
        return policy.delay(state.attempt_number, failure(state).wait)

    def stop(state: RetryCallState) -> bool:
        if state.attempt_number >= policy.max_attempts:
            return True
        # never sleep past the deadline: give up now instead
        return deadline is not None and monotonic() + state.upcoming_sleep >= deadline

    def before_sleep(state: RetryCallState) -> None:
        if on_retry is not None:
            on_retry(state.attempt_number, failure(state), state.upcoming_sleep)

    retrying = AsyncRetrying(
        sleep=sleep,
        stop=stop,
        wait=wait,
        retry=retry_if_exception_type(Retryable),
        before_sleep=before_sleep,
        reraise=True,
    )
    # the iterator form, so ``attempt`` may be any callable returning an awaitable (a lambda too)
    async for trial in retrying:
        with trial:
            return await again()
    raise AssertionError("unreachable: tenacity returns the result or re-raises the last failure")  # pragma: no cover

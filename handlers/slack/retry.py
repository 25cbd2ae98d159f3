"""Bounded retries for every call Ackgate makes to Slack: the Web API client and ``response_url`` posts.

slack_sdk's async retry handlers, with bounds: at most :data:`MAX_RETRIES` retries per call, shared
by all handlers (slack_sdk counts attempts once per call), so one call costs at most three attempts:

- 429: waits what ``Retry-After`` says, when that is at most :data:`MAX_RETRY_AFTER` seconds
  (a longer wait would outlast the user's patience; the caller gets the error instead);
- 500, 502, 503, 504: waits 0.5 s, then 1 s;
- a connection refused or reset before an answer: the same waits. A *timeout* is not retried:
  the request may have landed, and a second ``chat.postMessage`` would post the card twice.

With the 10 s per-attempt timeout, a call takes at most about 10 s whatever Slack does.
"""

from __future__ import annotations

import asyncio

from aiohttp import ClientConnectionError
from slack_sdk.http_retry.async_handler import AsyncRetryHandler
from slack_sdk.http_retry.interval_calculator import RetryIntervalCalculator
from slack_sdk.http_retry.request import HttpRequest
from slack_sdk.http_retry.response import HttpResponse
from slack_sdk.http_retry.state import RetryState

from bot.adapters.retrying import Backoff, wait_hint

MAX_RETRIES = 2
MAX_RETRY_AFTER = 3.0
RETRIED_STATUSES = frozenset({500, 502, 503, 504})
ATTEMPT_TIMEOUT_SECONDS = 10


_POLICY = Backoff(max_attempts=MAX_RETRIES + 1, first=0.5, cap=2.0)


class _Backoff(RetryIntervalCalculator):
    """0.5 s, 1 s, … without jitter (the retries are few and bounded anyway), from :mod:`bot.adapters.retrying`."""

    def calculate_sleep_duration(self, current_attempt: int) -> float:
        return _POLICY.delay(current_attempt + 1)


def retry_after(response: HttpResponse | None) -> float | None:
    """The response's ``Retry-After`` in seconds, or None when absent or not a number."""
    return None if response is None else wait_hint(response.headers, ("retry-after",))


class RateLimited(AsyncRetryHandler):
    """429 with a short enough ``Retry-After``: wait exactly that long, then try again."""

    def __init__(self, *, max_retry_count: int = MAX_RETRIES, max_wait: float = MAX_RETRY_AFTER) -> None:
        super().__init__(max_retry_count=max_retry_count)
        self.max_wait = max_wait

    async def _can_retry_async(
        self,
        *,
        state: RetryState,
        request: HttpRequest,
        response: HttpResponse | None = None,
        error: Exception | None = None,
    ) -> bool:
        if response is None or response.status_code != 429:
            return False
        wait = retry_after(response)
        return wait is None or wait <= self.max_wait

    async def prepare_for_next_attempt_async(
        self,
        *,
        state: RetryState,
        request: HttpRequest,
        response: HttpResponse | None = None,
        error: Exception | None = None,
    ) -> None:
        state.next_attempt_requested = True
        wait = retry_after(response)
        await asyncio.sleep(1.0 if wait is None else wait)
        state.increment_current_attempt()


class _BackedOff(AsyncRetryHandler):
    """A handler that waits the shared backoff between attempts; subclasses say what is retried."""

    def __init__(self, *, max_retry_count: int = MAX_RETRIES) -> None:
        super().__init__(max_retry_count=max_retry_count, interval_calculator=_Backoff())


class ServerFailed(_BackedOff):
    """Slack answered with a server error."""

    async def _can_retry_async(
        self,
        *,
        state: RetryState,
        request: HttpRequest,
        response: HttpResponse | None = None,
        error: Exception | None = None,
    ) -> bool:
        return response is not None and response.status_code in RETRIED_STATUSES


class ConnectionFailed(_BackedOff):
    """The connection failed before any answer (refused, reset); never a timeout."""

    async def _can_retry_async(
        self,
        *,
        state: RetryState,
        request: HttpRequest,
        response: HttpResponse | None = None,
        error: Exception | None = None,
    ) -> bool:
        return isinstance(error, ClientConnectionError) and not isinstance(error, asyncio.TimeoutError)


def retry_handlers() -> list[AsyncRetryHandler]:
    """Fresh handlers for one client (``AsyncWebClient`` or ``AsyncWebhookClient``)."""
    return [RateLimited(), ServerFailed(), ConnectionFailed()]

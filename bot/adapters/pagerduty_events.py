"""The PagerDuty Events API v2 client: authentication requests sent as PagerDuty incidents.

PagerDuty takes the integration key (``routing_key``) in the JSON body and no Authorization header.
202 means accepted (ingestion is asynchronous); 400 means the event or the key is wrong and repeating
it cannot help; 429, 5xx and network errors are retried a bounded number of times with exponential
backoff, then :class:`EventsUnavailable`. Retrying is safe because every event carries its dedup key:
a repeated trigger for an open alert only adds a log entry to it.

A per-key sliding window keeps us under PagerDuty's ~120 events per minute per integration key; past
it we refuse at once rather than send an event PagerDuty would drop. The key never appears in a
message or a log line, only :func:`bot.core.secrets.mask`-ed.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import logging
import time
from collections.abc import Awaitable, Callable, Mapping
from datetime import datetime
from types import TracebackType
from typing import Any

import httpx

from bot.adapters.retrying import Backoff, Retryable, retry, wait_hint
from bot.adapters.throttling import SlidingWindowLimiter
from bot.core.errors import ConfigError, PagerDutyError
from bot.core.integration_status import IntegrationStatus, StatusState  # noqa: F401 - re-exported
from bot.core.pagerduty_event_bodies import (  # noqa: F401 - re-exported: the pure half of this API
    DEDUP_PREFIX,
    MAX_DEDUP_KEY,
    MAX_SUMMARY,
    SEVERITIES,
    AuthIncident,
    EventResult,
    EventsRejected,
    EventsUnavailable,
    Json,
    RoutingKey,
    Severity,
    dedup_key,
    resolve_body,
    status_after,
    trigger_body,
)
from bot.core.secrets import mask

log = logging.getLogger(__name__)

DEFAULT_BASE_URL = "https://events.pagerduty.com"
ENQUEUE_PATH = "/v2/enqueue"
MAX_REQUEST_BYTES = 512 * 1024
WINDOW_SECONDS = 60.0

Sleep = Callable[[float], Awaitable[None]]
Monotonic = Callable[[], float]


class KeyRateLimiter:
    """At most ``limit`` sends per routing key in any ``window`` seconds; refuses instead of waiting.

    One :class:`~bot.adapters.throttling.SlidingWindowLimiter` per key, by digest so the keys are not kept."""

    def __init__(self, limit: int, *, monotonic: Monotonic, window: float = WINDOW_SECONDS) -> None:
        self._limit = limit
        self._window = window
        self._monotonic = monotonic
        self._by_key: dict[str, SlidingWindowLimiter] = {}

    def take(self, routing_key: str) -> float:
        """Record a send and return 0, or return how many seconds until one is allowed."""
        for digest in [d for d, limiter in self._by_key.items() if limiter.idle()]:
            del self._by_key[digest]  # keeps memory bounded by the keys used in the last minute
        digest = hashlib.sha256(routing_key.encode()).hexdigest()
        limiter = self._by_key.get(digest)
        if limiter is None:
            limiter = self._by_key[digest] = SlidingWindowLimiter(
                self._limit, window=self._window, monotonic=self._monotonic
            )
        return limiter.try_acquire()


class EventsClient:
    """Sends Events API v2 events. ``sleep`` and ``monotonic`` are injected so tests move time by hand.

    An injected ``client`` is used as is and left open; otherwise the client owns its own.
    """

    def __init__(
        self,
        *,
        base_url: str = DEFAULT_BASE_URL,
        client: httpx.AsyncClient | None = None,
        sleep: Sleep = asyncio.sleep,
        monotonic: Monotonic = time.monotonic,
        max_attempts: int = 3,
        per_key_per_minute: int = 120,
        backoff: float = 2.0,
        max_delay: float = 30.0,
        timeout: float = 10.0,
        deadline: float = 30.0,
    ) -> None:
        if max_attempts < 1 or per_key_per_minute < 1:
            raise ConfigError("The PagerDuty Events client needs at least one attempt and one event per minute.")
        self._url = base_url.rstrip("/") + ENQUEUE_PATH
        self._owns_client = client is None
        self._http = client or httpx.AsyncClient(follow_redirects=False)
        self._sleep = sleep
        self._limiter = KeyRateLimiter(per_key_per_minute, monotonic=monotonic)
        self._policy = Backoff(max_attempts=max_attempts, first=backoff, cap=max_delay, hint_cap=max_delay)
        self._timeout = timeout
        self._deadline = deadline  # the whole send, retries and their waits included

    async def aclose(self) -> None:
        if self._owns_client:
            await self._http.aclose()

    async def __aenter__(self) -> EventsClient:
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.aclose()

    async def trigger(
        self, incident: AuthIncident, *, routing_key: RoutingKey, at: datetime | None = None
    ) -> EventResult:
        return await self.send(trigger_body(incident, routing_key=routing_key, at=at))

    async def resolve(self, transaction_id: str, *, routing_key: RoutingKey) -> EventResult:
        return await self.send(resolve_body(transaction_id, routing_key=routing_key))

    async def send(self, body: Mapping[str, Any]) -> EventResult:
        """POST one event. Raises :class:`EventsRejected` (no retry) or :class:`EventsUnavailable`,
        the latter also when the whole send (retries included) outlasts ``deadline`` seconds."""
        try:
            async with asyncio.timeout(self._deadline):
                return await self._send(body)
        except TimeoutError as exc:
            raise _unavailable(f"it did not answer within {self._deadline:g} s") from exc

    async def _send(self, body: Mapping[str, Any]) -> EventResult:
        key = str(body.get("routing_key", ""))
        masked = mask(key)
        content = json.dumps(body, ensure_ascii=False, separators=(",", ":")).encode()
        if len(content) > MAX_REQUEST_BYTES:
            raise EventsRejected(
                "The PagerDuty event is larger than PagerDuty's 512 KB limit; shorten the message or context.",
                status=413,
            )

        async def attempt() -> EventResult:
            wait = self._limiter.take(key)
            if wait > 0:
                raise EventsUnavailable(
                    f"Ackgate reached PagerDuty's rate limit of events for integration key {masked}; "
                    f"try again in {max(1, round(wait))} s.",
                    retry_after=wait,
                )
            try:
                response = await self._post(content)
            except (httpx.TransportError, TimeoutError) as exc:
                timed_out = isinstance(exc, httpx.TimeoutException | TimeoutError)
                raise Retryable("it timed out" if timed_out else "it could not be reached") from exc
            status = response.status_code
            if 200 <= status < 300:
                return _accepted(response, body)
            if status != 429 and status < 500:
                raise _rejected(response, key)
            raise Retryable(f"it answered HTTP {status}", wait=wait_hint(response.headers))

        def on_retry(attempt: int, failure: Retryable, delay: float) -> None:
            log.warning(
                "PagerDuty Events API failed for integration key %s (%s); retry %d in %.1f s",
                masked,
                failure.reason,
                attempt,
                delay,
            )

        try:
            return await retry(attempt, policy=self._policy, sleep=self._sleep, on_retry=on_retry)
        except Retryable as exc:
            raise _unavailable(exc.reason, retry_after=exc.wait) from exc.__cause__

    async def _post(self, content: bytes) -> httpx.Response:
        request = self._http.build_request(
            "POST",
            self._url,
            content=content,
            headers={"Content-Type": "application/json", "Accept": "application/json"},
            timeout=self._timeout,
        )
        # the key travels in the body only: never pass on an Authorization default of a shared client
        request.headers.pop("Authorization", None)
        async with asyncio.timeout(self._timeout):
            return await self._http.send(request)


def _accepted(response: httpx.Response, body: Mapping[str, Any]) -> EventResult:
    answer = _json(response)
    key = answer.get("dedup_key") or body.get("dedup_key")
    if not isinstance(key, str) or not key:
        raise PagerDutyError(
            "PagerDuty accepted the event but returned no dedup key, so Ackgate cannot resolve it later."
        )
    return EventResult(ok=True, dedup_key=key, message=str(answer.get("message") or "Event processed"))


def _rejected(response: httpx.Response, key: str) -> EventsRejected:
    answer = _json(response)
    said = str(answer.get("message") or response.reason_phrase or "no reason given")
    raw = answer.get("errors")
    errors = tuple(str(e) for e in raw) if isinstance(raw, list) else ()
    detail = said + (f" ({'; '.join(errors)})" if errors else "")
    text = f"PagerDuty refused the event (HTTP {response.status_code}): {_scrub(detail, key)[:600]}."
    if any("routing_key" in e for e in errors) or response.status_code in (401, 403, 404):
        text += (
            " Check the integration key: it must be the 32-character Integration Key of an Events API V2 "
            "integration (service → Integrations → Events API V2)."
        )
    return EventsRejected(text, status=response.status_code, errors=tuple(_scrub(e, key) for e in errors))


def _unavailable(reason: str, *, retry_after: float | None = None) -> EventsUnavailable:
    return EventsUnavailable(
        f"PagerDuty did not take the incident event ({reason}) after the retries, so no incident was opened.",
        retry_after=retry_after,
    )


def _scrub(text: str, key: str) -> str:
    # PagerDuty's error texts are not ours: make sure none echoes the key back into a message
    return text.replace(key, mask(key)) if key else text


def _json(response: httpx.Response) -> Json:
    try:
        answer = response.json()
    except ValueError:
        return {}
    return answer if isinstance(answer, dict) else {}

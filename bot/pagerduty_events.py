"""The PagerDuty Events API v2 client: authentication requests sent as PagerDuty incidents.

PagerDuty takes the integration key (``routing_key``) in the JSON body and no Authorization header.
202 means accepted (ingestion is asynchronous); 400 means the event or the key is wrong and repeating
it cannot help; 429, 5xx and network errors are retried a bounded number of times with exponential
backoff, then :class:`EventsUnavailable`. Retrying is safe because every event carries its dedup key:
a repeated trigger for an open alert only adds a log entry to it.

A per-key sliding window keeps us under PagerDuty's ~120 events per minute per integration key; past
it we refuse at once rather than send an event PagerDuty would drop. The key never appears in a
message or a log line, only :func:`bot.secrets.mask`-ed.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import logging
import re
import time
from collections import deque
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from types import TracebackType
from typing import Any, Literal, get_args
from urllib.parse import urlsplit

import httpx
from pydantic import SecretStr

from bot.errors import AckgateError, ConfigError, PagerDutyError, PagerDutyUnavailable, UsageError
from bot.secrets import mask

log = logging.getLogger(__name__)

Severity = Literal["critical", "error", "warning", "info"]
SEVERITIES: tuple[str, ...] = get_args(Severity)
DEFAULT_BASE_URL = "https://events.pagerduty.com"
ENQUEUE_PATH = "/v2/enqueue"
DEDUP_PREFIX = "ackgate-auth-"
MAX_DEDUP_KEY = 255
MAX_SUMMARY = 1024
MAX_REQUEST_BYTES = 512 * 1024
WINDOW_SECONDS = 60.0

Json = dict[str, Any]
Sleep = Callable[[float], Awaitable[None]]
Monotonic = Callable[[], float]
RoutingKey = str | SecretStr


class EventsRejected(PagerDutyError):
    """PagerDuty refused the event (400, or another 4xx): sending it again would fail the same way."""

    def __init__(self, message: str, *, status: int, errors: tuple[str, ...] = ()) -> None:
        super().__init__(message)
        self.status = status
        self.errors = errors


class EventsUnavailable(PagerDutyUnavailable):
    """PagerDuty could not take the event now (429, 5xx, network, or our own rate limit); try later."""

    def __init__(self, message: str, *, retry_after: float | None = None) -> None:
        super().__init__(message)
        self.retry_after = retry_after


# --- the event bodies ---------------------------------------------------------------------------


@dataclass(frozen=True)
class AuthIncident:
    """One authentication request, as PagerDuty will show it."""

    transaction_id: str
    requester: str  # display name or email of who asks
    user: str  # email of who must authenticate
    message: str
    context: str
    link: str  # where the responder authenticates
    source: str  # this deployment, e.g. the public host
    severity: Severity = "critical"

    def __post_init__(self) -> None:
        if not self.transaction_id.strip():
            raise UsageError("An authentication request needs a transaction id.")
        if self.severity not in SEVERITIES:
            raise UsageError(f"PagerDuty severity must be one of {', '.join(SEVERITIES)}, not {self.severity!r}.")
        if not self.link.startswith(("https://", "http://")):
            raise UsageError("The authentication link must be an http(s) URL.")
        if not self.source.strip():
            raise UsageError("The event source (this deployment's host) must not be empty.")


def dedup_key(transaction_id: str) -> str:
    """The dedup key of a transaction's incident: stable, so a later resolve finds the same alert."""
    key = DEDUP_PREFIX + transaction_id
    if len(key) <= MAX_DEDUP_KEY:
        return key
    # PagerDuty refuses longer keys; a digest stays unique and is still the same for the resolve
    return DEDUP_PREFIX + "sha256-" + hashlib.sha256(transaction_id.encode()).hexdigest()


def trigger_body(
    incident: AuthIncident, *, routing_key: RoutingKey, at: datetime | None = None, client_url: str | None = None
) -> Json:
    """The trigger event for ``incident``. ``at`` defaults to now; ``client_url`` to the link's origin."""
    when = (at or datetime.now(UTC)).astimezone(UTC)
    return {
        "routing_key": _reveal(routing_key),
        "event_action": "trigger",
        "dedup_key": dedup_key(incident.transaction_id),
        "payload": {
            "summary": _summary(f"Authentication request from {incident.requester}"),
            "severity": incident.severity,
            "source": incident.source,
            # RFC 3339 with Z: ISO 8601 as PagerDuty asks, and a valid OpenAPI date-time
            "timestamp": when.isoformat(timespec="milliseconds").replace("+00:00", "Z"),
            "component": "ackgate",
            "class": "authentication_request",
            "custom_details": {
                "requester": incident.requester,
                "user": incident.user,
                "transaction_id": incident.transaction_id,
                "message": incident.message,
                "context": incident.context,
            },
        },
        "links": [{"href": incident.link, "text": "Authenticate"}],
        "client": "Ackgate",
        "client_url": client_url or _origin(incident.link),
    }


def resolve_body(transaction_id: str, *, routing_key: RoutingKey) -> Json:
    """The resolve event closing the transaction's alert (it must use the trigger's routing key)."""
    return {"routing_key": _reveal(routing_key), "event_action": "resolve", "dedup_key": dedup_key(transaction_id)}


def _summary(text: str) -> str:
    # one line: the summary becomes the incident title; control characters would garble it
    flat = re.sub(r"[\s\x00-\x1f\x7f]+", " ", text).strip()
    return flat if len(flat) <= MAX_SUMMARY else flat[: MAX_SUMMARY - 1] + "…"


def _origin(link: str) -> str:
    parts = urlsplit(link)
    return f"{parts.scheme}://{parts.netloc}/"


def _reveal(key: RoutingKey) -> str:
    return key.get_secret_value() if isinstance(key, SecretStr) else key


# --- the client ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class EventResult:
    ok: bool
    dedup_key: str
    message: str


class KeyRateLimiter:
    """At most ``limit`` sends per routing key in any ``window`` seconds; refuses instead of waiting."""

    def __init__(self, limit: int, *, monotonic: Monotonic, window: float = WINDOW_SECONDS) -> None:
        self._limit = limit
        self._window = window
        self._monotonic = monotonic
        self._sent: dict[str, deque[float]] = {}  # by digest, so the keys themselves are not kept

    def take(self, routing_key: str) -> float:
        """Record a send and return 0, or return how many seconds until one is allowed."""
        now = self._monotonic()
        for digest in [d for d, times in self._sent.items() if times[-1] <= now - self._window]:
            del self._sent[digest]  # keeps memory bounded by the keys used in the last minute
        times = self._sent.setdefault(hashlib.sha256(routing_key.encode()).hexdigest(), deque())
        while times and times[0] <= now - self._window:
            times.popleft()
        if len(times) >= self._limit:
            return times[0] + self._window - now
        times.append(now)
        return 0.0


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
    ) -> None:
        if max_attempts < 1 or per_key_per_minute < 1:
            raise ConfigError("The PagerDuty Events client needs at least one attempt and one event per minute.")
        self._url = base_url.rstrip("/") + ENQUEUE_PATH
        self._owns_client = client is None
        self._http = client or httpx.AsyncClient(follow_redirects=False)
        self._sleep = sleep
        self._max_attempts = max_attempts
        self._limiter = KeyRateLimiter(per_key_per_minute, monotonic=monotonic)
        self._backoff = backoff
        self._max_delay = max_delay
        self._timeout = timeout

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
        """POST one event. Raises :class:`EventsRejected` (no retry) or :class:`EventsUnavailable`."""
        key = str(body.get("routing_key", ""))
        masked = mask(key)
        content = json.dumps(body, ensure_ascii=False, separators=(",", ":")).encode()
        if len(content) > MAX_REQUEST_BYTES:
            raise EventsRejected(
                "The PagerDuty event is larger than PagerDuty's 512 KB limit; shorten the message or context.",
                status=413,
            )
        reason = ""
        for attempt in range(1, self._max_attempts + 1):
            wait = self._limiter.take(key)
            if wait > 0:
                raise EventsUnavailable(
                    f"Ackgate reached PagerDuty's rate limit of events for integration key {masked}; "
                    f"try again in {max(1, round(wait))} s.",
                    retry_after=wait,
                )
            hint: float | None = None
            try:
                response = await self._post(content)
            except (httpx.TransportError, TimeoutError) as exc:
                timed_out = isinstance(exc, httpx.TimeoutException | TimeoutError)
                reason = "it timed out" if timed_out else "it could not be reached"
                if attempt == self._max_attempts:
                    raise _unavailable(reason) from exc
            else:
                status = response.status_code
                if 200 <= status < 300:
                    return _accepted(response, body)
                if status != 429 and status < 500:
                    raise _rejected(response, key)
                reason, hint = f"it answered HTTP {status}", _retry_after(response)
                if attempt == self._max_attempts:
                    raise _unavailable(reason, retry_after=hint)
            delay = min(self._max_delay, max(self._backoff * 2 ** (attempt - 1), hint or 0.0))
            log.warning(
                "PagerDuty Events API failed for integration key %s (%s); retry %d in %.1f s",
                masked,
                reason,
                attempt,
                delay,
            )
            await self._sleep(delay)
        raise AssertionError("unreachable: the last attempt returns or raises")  # pragma: no cover

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
        f"PagerDuty did not take the event ({reason}); the authentication request was not paged. Try again shortly.",
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


def _retry_after(response: httpx.Response) -> float | None:
    try:
        return max(0.0, float(response.headers.get("Retry-After", "")))
    except ValueError:
        return None


# --- the integration status shown to admins -----------------------------------------------------

StatusState = Literal["not_invoked", "success", "error"]


@dataclass(frozen=True)
class IntegrationStatus:
    """What the last attempt to page gave; kept as JSON in the settings store."""

    state: StatusState = "not_invoked"
    at: datetime | None = None
    detail: str = ""

    def to_json(self) -> str:
        at = self.at.astimezone(UTC).isoformat() if self.at else None
        return json.dumps({"state": self.state, "at": at, "detail": self.detail})

    @classmethod
    def from_json(cls, text: str | None) -> IntegrationStatus:
        """Parse :meth:`to_json` output. Nothing stored, or something unreadable, reads as not invoked:
        this is a status indicator, never a gate."""
        if not text:
            return cls()
        try:
            raw = json.loads(text)
            state = raw["state"]
            at = datetime.fromisoformat(raw["at"]) if raw.get("at") else None
        except (ValueError, TypeError, KeyError):
            return cls()
        if state not in get_args(StatusState):
            return cls()
        return cls(state=state, at=at, detail=str(raw.get("detail") or ""))


def status_after(outcome: EventResult | BaseException, at: datetime) -> IntegrationStatus:
    """The status to store after a send returned ``outcome`` or raised it."""
    if isinstance(outcome, EventResult):
        return IntegrationStatus("success", at, f"Incident event accepted (dedup key {outcome.dedup_key}).")
    if isinstance(outcome, AckgateError):
        return IntegrationStatus("error", at, outcome.message)
    # an unexpected exception's text may hold anything, the key included: name its type only
    return IntegrationStatus("error", at, f"Unexpected error ({type(outcome).__name__}); see Ackgate's logs.")

"""What Ackgate sends to PagerDuty's Events API v2 and what it makes of the answers, without any HTTP.

The client in :mod:`bot.adapters.pagerduty_events` does the sending; this module holds the pure parts (event
bodies, dedup keys, results, the errors and the integration status) so the core use cases can build
and interpret events without importing an HTTP library.
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Literal, get_args
from urllib.parse import urlsplit

from pydantic import SecretStr

from bot.core.errors import AckgateError, PagerDutyError, PagerDutyUnavailable, UsageError
from bot.core.integration_status import IntegrationStatus

Severity = Literal["critical", "error", "warning", "info"]
SEVERITIES: tuple[str, ...] = get_args(Severity)
DEDUP_PREFIX = "ackgate-auth-"
MAX_DEDUP_KEY = 255
MAX_SUMMARY = 1024

Json = dict[str, Any]
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


@dataclass(frozen=True)
class EventResult:
    ok: bool
    dedup_key: str
    message: str


# --- the integration status shown to admins -----------------------------------------------------


def status_after(outcome: EventResult | BaseException, at: datetime) -> IntegrationStatus:
    """The status to store after a send returned ``outcome`` or raised it."""
    if isinstance(outcome, EventResult):
        return IntegrationStatus("success", at, f"Incident event accepted (dedup key {outcome.dedup_key}).")
    if isinstance(outcome, AckgateError):
        return IntegrationStatus("error", at, outcome.message)
    # an unexpected exception's text may hold anything, the key included: name its type only
    return IntegrationStatus("error", at, f"Unexpected error ({type(outcome).__name__}); see Ackgate's logs.")

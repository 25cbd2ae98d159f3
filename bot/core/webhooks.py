"""PagerDuty V3 webhooks, without any web framework: signature checks, bounded and lenient
parsing, and ordering (de-duplication is the inbox's, :mod:`bot.core.webhook_inbox`).
``handlers/pagerduty_webhooks.py`` puts these behind an HTTP endpoint.

References: FACTS.md §7 (payload and delivery), §8 (``X-PagerDuty-Signature``), §9.9-§9.10
(several signatures in one header, payloads that vary between accounts and years).
"""

from __future__ import annotations

import hashlib
import hmac
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, Final

from bot.core.errors import UsageError
from bot.core.json_limits import MalformedJson, loads_bounded

SIGNATURE_HEADER: Final = "X-PagerDuty-Signature"
WEBHOOK_ID_HEADER: Final = "X-Webhook-Id"
SUBSCRIPTION_HEADER: Final = "X-Webhook-Subscription"

PING_EVENT_TYPE: Final = "pagey.ping"

# The incident lifecycle events Ackgate mirrors into chat. Everything else PagerDuty sends (and it
# adds types without notice) is acknowledged and dropped.
HANDLED_EVENT_TYPES: Final = frozenset(
    {
        "incident.triggered",
        "incident.acknowledged",
        "incident.unacknowledged",
        "incident.resolved",
        "incident.reopened",
        "incident.reassigned",
        "incident.escalated",
        "incident.annotated",
        "incident.priority_updated",
    }
)

STATUS_ORDER: Final[Mapping[str, int]] = {"triggered": 0, "acknowledged": 1, "resolved": 2}

# The only events allowed to move an incident to an earlier status (resolved -> triggered,
# acknowledged -> triggered); anything else reporting an earlier status is a late delivery.
BACKWARD_EVENT_TYPES: Final = frozenset({"incident.reopened", "incident.unacknowledged"})

_V1: Final = "v1="

# Bounds on what a signed body may carry. PagerDuty's ids are 7 to 26 characters and its event
# types a few words; anything far longer is not PagerDuty, and would only bloat logs and rows.
MAX_ID_LENGTH: Final = 128
MAX_EVENT_TYPE_LENGTH: Final = 100
MAX_TIMESTAMP_LENGTH: Final = 64
MAX_TEXT_LENGTH: Final = 2048  # titles, summaries, URLs: longer values are cut, not refused
_MAX_INCIDENT_NUMBER: Final = 2**31 - 1


class MalformedWebhook(UsageError):
    """The body is not a PagerDuty V3 webhook: not JSON, or no ``event`` with an ``id`` and ``event_type``."""


def verify_signature(body: bytes, header: str | None, secrets: Sequence[str]) -> bool:
    """True when any ``v1=`` signature in ``header`` is HMAC-SHA256 of the raw ``body`` under any secret.

    Several secrets are accepted so a subscription's secret can be rotated without dropping
    webhooks. Entries with another version prefix or non-hex digits are ignored, as are empty
    secrets: an HMAC under an empty key is one anybody can compute.
    """
    if not header:
        return False
    offered: list[bytes] = []
    for entry in header.split(","):
        entry = entry.strip()
        if not entry.startswith(_V1):
            continue
        try:
            offered.append(bytes.fromhex(entry[len(_V1) :]))
        except ValueError:
            continue
    if not offered:
        return False
    matched = False
    for secret in secrets:
        if not secret:
            continue
        expected = hmac.new(secret.encode("utf-8"), body, hashlib.sha256).digest()
        for candidate in offered:
            # No early return: the time taken should not tell which secret or entry matched.
            matched |= hmac.compare_digest(expected, candidate)
    return matched


@dataclass(frozen=True)
class WebhookIncident:
    """The incident an event is about. Events whose data is only a reference to the incident
    (``incident.annotated``, responders) fill ``id``, ``title`` and ``html_url``; the rest is None."""

    id: str
    number: int | None = None
    title: str | None = None
    status: str | None = None
    html_url: str | None = None
    incident_key: str | None = None
    service_id: str | None = None
    service_summary: str | None = None
    urgency: str | None = None


@dataclass(frozen=True)
class WebhookEvent:
    id: str
    event_type: str
    resource_type: str
    occurred_at: datetime
    agent_id: str | None = None
    agent_summary: str | None = None
    agent_email: str | None = None
    incident: WebhookIncident | None = None
    data: Mapping[str, Any] = field(default_factory=dict, hash=False, compare=False, repr=False)


def parse_event(body: bytes | str) -> WebhookEvent:
    """Parse a V3 body leniently (FACTS §9.10: fields come and go, ids are 7 or 14 characters).

    Raises :class:`MalformedWebhook` for non-JSON (or JSON nested absurdly deep, or with absurd
    numbers: :func:`bot.core.json_limits.loads_bounded`), a missing ``event`` object, or a missing or
    over-long ``id``, ``event_type`` or ISO 8601 ``occurred_at`` (ordering depends on it).
    """
    try:
        payload = loads_bounded(body)
    except MalformedJson as exc:
        raise MalformedWebhook(
            f"The webhook body is not acceptable JSON ({exc}); send the PagerDuty V3 payload unchanged."
        ) from exc
    event = payload.get("event") if isinstance(payload, dict) else None
    if not isinstance(event, dict):
        raise MalformedWebhook("The webhook body has no `event` object; is this a PagerDuty V3 webhook?")
    event_id = _text(event.get("id"))
    event_type = _text(event.get("event_type"))
    if event_id is None or event_type is None:
        raise MalformedWebhook("The webhook event has no `id` or `event_type`; is this a PagerDuty V3 webhook?")
    if len(event_id) > MAX_ID_LENGTH or len(event_type) > MAX_EVENT_TYPE_LENGTH:
        raise MalformedWebhook("The webhook event's `id` or `event_type` is too long to be PagerDuty's.")
    data = event.get("data")
    data = data if isinstance(data, dict) else {}
    agent = event.get("agent")
    agent = agent if isinstance(agent, dict) else {}
    return WebhookEvent(
        id=event_id,
        event_type=event_type,
        resource_type=_text(event.get("resource_type"), limit=MAX_EVENT_TYPE_LENGTH) or event_type.split(".", 1)[0],
        occurred_at=_timestamp(event.get("occurred_at")),
        agent_id=_id(agent.get("id")),
        agent_summary=_text(agent.get("summary")),
        agent_email=_text(agent.get("email")),
        incident=_incident(data),
        data=data,
    )


def _text(value: object, *, limit: int = MAX_TEXT_LENGTH) -> str | None:
    """A non-empty string cut to ``limit``; None for anything else, or for text with a lone
    surrogate (JSON can escape one, but no database or chat platform can store it)."""
    if not isinstance(value, str) or not value:
        return None
    cut = value[:limit]
    try:
        cut.encode("utf-8")
    except UnicodeEncodeError:
        return None
    return cut


def _id(value: object) -> str | None:
    """An id of PagerDuty's size; a longer one is treated as absent (it names nothing we know)."""
    text = _text(value)
    return text if text is not None and len(text) <= MAX_ID_LENGTH else None


def _timestamp(value: object) -> datetime:
    try:
        ok = isinstance(value, str) and len(value) <= MAX_TIMESTAMP_LENGTH
        parsed = datetime.fromisoformat(value) if ok and isinstance(value, str) else None
        # PagerDuty sends Z; a naive stamp would be ambiguous, and UTC is its documented default.
        # Converted here so a stamp that cannot be expressed in UTC (year 1, -23:59) is refused now.
        if parsed is not None:
            parsed = parsed.astimezone(UTC) if parsed.tzinfo is not None else parsed.replace(tzinfo=UTC)
    except (ValueError, OverflowError):
        parsed = None
    if parsed is None:
        raise MalformedWebhook("The webhook event has no ISO 8601 `occurred_at`; is this a PagerDuty V3 webhook?")
    return parsed


def _number(value: object) -> int | None:
    ok = isinstance(value, int) and not isinstance(value, bool) and 0 <= value <= _MAX_INCIDENT_NUMBER
    return value if ok and isinstance(value, int) else None


def _incident(data: Mapping[str, Any]) -> WebhookIncident | None:
    if data.get("type") == "incident":
        incident_id = _id(data.get("id"))
        if incident_id is None:
            return None
        service = data.get("service")
        service = service if isinstance(service, dict) else {}
        return WebhookIncident(
            id=incident_id,
            number=_number(data.get("number")),
            title=_text(data.get("title")),
            status=_text(data.get("status"), limit=MAX_EVENT_TYPE_LENGTH),
            html_url=_text(data.get("html_url")),
            incident_key=_text(data.get("incident_key"), limit=255),
            service_id=_id(service.get("id")),
            service_summary=_text(service.get("summary")),
            urgency=_text(data.get("urgency"), limit=MAX_EVENT_TYPE_LENGTH),
        )
    ref = data.get("incident")
    if isinstance(ref, dict) and (ref_id := _id(ref.get("id"))) is not None:
        return WebhookIncident(id=ref_id, title=_text(ref.get("summary")), html_url=_text(ref.get("html_url")))
    return None


def advances(current_status: str | None, current_at: datetime | None, event: WebhookEvent) -> bool:
    """Whether ``event`` should replace what we hold about its incident (status as of ``current_at``).

    Delivery is at-least-once and a retried webhook can arrive after newer ones, so an event older
    than what we hold never applies, and a status earlier in :data:`STATUS_ORDER` applies only
    through ``incident.reopened`` or ``incident.unacknowledged`` strictly newer than ours.
    Events that carry no incident status (notes, responders, pings) never advance.
    """
    new_rank = STATUS_ORDER.get(event.incident.status or "") if event.incident is not None else None
    if new_rank is None:
        return False
    current_rank = STATUS_ORDER.get(current_status or "")
    if current_rank is None:
        return True
    if current_at is not None and event.occurred_at < current_at:
        return False
    if new_rank >= current_rank:
        return True
    return event.event_type in BACKWARD_EVENT_TYPES and (current_at is None or event.occurred_at > current_at)

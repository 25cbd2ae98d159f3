"""Parsing V3 webhook bodies leniently, and ordering incident updates (de-duplication is the inbox's: tests/test_webhook_inbox.py)."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta

import jsonschema
import pytest

from bot.core.errors import UsageError
from bot.core.webhooks import (
    STATUS_ORDER,
    MalformedWebhook,
    WebhookEvent,
    WebhookIncident,
    advances,
    parse_event,
)
from tests.pagerduty_webhook_reference import (
    DATA_TYPE_EXAMPLES,
    EVENT_TYPES,
    PAYLOAD_SCHEMA,
    envelope,
    example_bodies,
)

EXAMPLES = example_bodies()
VALIDATOR = jsonschema.Draft202012Validator(PAYLOAD_SCHEMA, format_checker=jsonschema.FormatChecker())


def test_every_example_folder_contributes_bodies() -> None:
    """docs (2), captured-signed (5) and captured-zulip (10) are all exercised below."""
    folders = [name.split("/", 1)[0] for name in EXAMPLES]
    assert {f: folders.count(f) for f in set(folders)} == {"docs": 2, "captured-signed": 5, "captured-zulip": 10}


@pytest.mark.parametrize("name", sorted(EXAMPLES))
def test_example_body_validates_and_parses(name: str) -> None:
    """Every documented or captured body is schema-valid and parses to its own id, type and time."""
    body = EXAMPLES[name]
    raw = json.loads(body)
    VALIDATOR.validate(raw)
    event = parse_event(body)
    assert event.id == raw["event"]["id"]
    assert event.event_type == raw["event"]["event_type"]
    assert event.resource_type == raw["event"]["resource_type"]
    assert event.occurred_at.tzinfo is not None
    assert event.occurred_at == datetime.fromisoformat(raw["event"]["occurred_at"])
    assert event.data == raw["event"]["data"]


@pytest.mark.parametrize("data_type", sorted(DATA_TYPE_EXAMPLES))
def test_documented_data_example_parses_inside_an_envelope(data_type: str) -> None:
    """Each documented ``data`` shape, wrapped in an envelope of a matching event type, validates and parses."""
    event_type = next(e["event_type"] for e in EVENT_TYPES["event_types"] if e["data_type"] == data_type)
    body = envelope(event_type, DATA_TYPE_EXAMPLES[data_type])
    VALIDATOR.validate(json.loads(body))
    assert parse_event(body).event_type == event_type


def test_triggered_incident_fields_are_extracted() -> None:
    event = parse_event(EXAMPLES["captured-signed/incident.triggered.raw.json"])
    assert event.event_type == "incident.triggered"
    assert event.occurred_at == datetime(2025, 4, 7, 3, 47, 13, 414000, tzinfo=UTC)
    assert (event.agent_id, event.agent_summary, event.agent_email) == ("PVE0ZR9", "Ben", None)
    assert event.incident == WebhookIncident(
        id="Q2CKYRLH85UNN4",
        number=37,
        title="Test",
        status="triggered",
        html_url="https://aldaviva.pagerduty.com/incidents/Q2CKYRLH85UNN4",
        incident_key="dfead9d88e0649e8b7dee514b1875756",
        service_id="PNE3JZM",
        service_summary="Webhook Tester",
        urgency="low",
    )


def test_2021_capture_without_incident_key_and_with_7_char_id_parses() -> None:
    """FACTS §9.10: old payloads lack incident_key and use 7-character ids."""
    event = parse_event(EXAMPLES["captured-zulip/incident.acknowledged.json"])
    assert event.incident is not None
    assert (event.incident.id, event.incident.status, event.incident.incident_key) == ("PQ1K5C8", "acknowledged", None)
    assert event.agent_id == "PJ0LVEB"


def test_annotated_event_names_its_incident_without_a_status() -> None:
    """A note carries only a reference to the incident: id, title and link, no status."""
    event = parse_event(EXAMPLES["captured-signed/incident.annotated.raw.json"])
    assert event.incident == WebhookIncident(
        id="Q2CKYRLH85UNN4", title="Test", html_url="https://aldaviva.pagerduty.com/incidents/Q2CKYRLH85UNN4"
    )
    assert event.data["content"] == "Resolution Note: I'm resolving it"


def test_ping_has_no_incident_and_a_bare_agent() -> None:
    event = parse_event(EXAMPLES["captured-signed/pagey.ping.raw.json"])
    assert (event.event_type, event.resource_type, event.incident) == ("pagey.ping", "pagey", None)
    assert (event.agent_id, event.agent_summary) == ("PVE0ZR9", None)


def test_service_event_has_no_incident_and_null_agent() -> None:
    event = parse_event(EXAMPLES["docs/service.updated.json"])
    assert (event.resource_type, event.incident, event.agent_id) == ("service", None, None)


def test_missing_optional_fields_are_none_not_errors() -> None:
    """An incident with only an id still parses; every other field is None."""
    event = parse_event(envelope("incident.triggered", {"type": "incident", "id": "PABCDEF"}))
    assert event.incident == WebhookIncident(id="PABCDEF")


def test_agent_email_is_kept_when_present() -> None:
    raw = json.loads(envelope("incident.acknowledged", {"type": "incident", "id": "PABCDEF"}))
    raw["event"]["agent"] = {"id": "PUSER01", "type": "user", "summary": "Alice", "email": "alice@example.com"}
    assert parse_event(json.dumps(raw).encode()).agent_email == "alice@example.com"


def test_naive_occurred_at_is_read_as_utc() -> None:
    raw = json.loads(envelope("incident.triggered", {"type": "incident", "id": "PABCDEF"}))
    raw["event"]["occurred_at"] = "2026-11-23T12:00:00"
    assert parse_event(json.dumps(raw).encode()).occurred_at == datetime(2026, 11, 23, 12, 0, tzinfo=UTC)


@pytest.mark.parametrize(
    "body",
    [
        b"",
        b"not json",
        b"\xff\xfe{}",
        b"[]",
        b'{"events": {}}',
        b'{"event": "incident.triggered"}',
        b'{"event": {"event_type": "incident.triggered", "occurred_at": "2026-11-23T12:00:00Z"}}',
        b'{"event": {"id": "01X", "occurred_at": "2026-11-23T12:00:00Z"}}',
        b'{"event": {"id": "", "event_type": "incident.triggered", "occurred_at": "2026-11-23T12:00:00Z"}}',
        b'{"event": {"id": "01X", "event_type": "incident.triggered"}}',
        b'{"event": {"id": "01X", "event_type": "incident.triggered", "occurred_at": "yesterday"}}',
    ],
)
def test_malformed_bodies_raise_malformed_webhook(body: bytes) -> None:
    """Non-JSON, or no event object with id, event_type and a parseable occurred_at, is refused."""
    with pytest.raises(MalformedWebhook):
        parse_event(body)


def test_malformed_webhook_is_a_usage_error() -> None:
    assert issubclass(MalformedWebhook, UsageError)


# --- ordering --------------------------------------------------------------------------------

T0 = datetime(2026, 11, 23, 12, 0, tzinfo=UTC)


def incident_event(event_type: str, status: str | None, at: datetime) -> WebhookEvent:
    incident = WebhookIncident(id="PABCDEF", status=status)
    return WebhookEvent(
        id=f"{event_type}@{at}", event_type=event_type, resource_type="incident", occurred_at=at, incident=incident
    )


def test_status_order_is_triggered_acknowledged_resolved() -> None:
    assert STATUS_ORDER["triggered"] < STATUS_ORDER["acknowledged"] < STATUS_ORDER["resolved"]


def test_late_acknowledged_does_not_undo_a_newer_resolve() -> None:
    """An acknowledged event older than the resolved one we hold arrives late and is ignored."""
    assert not advances(
        "resolved", T0 + timedelta(minutes=5), incident_event("incident.acknowledged", "acknowledged", T0)
    )


def test_newer_forward_status_advances() -> None:
    assert advances("acknowledged", T0, incident_event("incident.resolved", "resolved", T0 + timedelta(minutes=1)))


def test_older_event_never_advances_even_if_its_status_is_later() -> None:
    """Resolved at t1, reopened at t2, acknowledged at t3: a late resolved from t1 must not win over t3."""
    assert not advances("acknowledged", T0 + timedelta(minutes=3), incident_event("incident.resolved", "resolved", T0))


def test_newer_reopen_moves_back_to_triggered() -> None:
    assert advances("resolved", T0, incident_event("incident.reopened", "triggered", T0 + timedelta(seconds=1)))


def test_newer_unacknowledge_moves_back_to_triggered() -> None:
    assert advances(
        "acknowledged", T0, incident_event("incident.unacknowledged", "triggered", T0 + timedelta(seconds=1))
    )


def test_reopen_at_the_same_instant_does_not_move_back() -> None:
    """Moving backwards needs a strictly newer event."""
    assert not advances("resolved", T0, incident_event("incident.reopened", "triggered", T0))


def test_other_event_types_cannot_move_backwards() -> None:
    """Only reopened/unacknowledged may lower the status; a reassign saying triggered is stale."""
    assert not advances("resolved", T0, incident_event("incident.reassigned", "triggered", T0 + timedelta(minutes=1)))


def test_newer_event_with_the_same_status_refreshes() -> None:
    """A reassign or priority change while acknowledged updates the snapshot."""
    assert advances(
        "acknowledged", T0, incident_event("incident.reassigned", "acknowledged", T0 + timedelta(minutes=1))
    )


def test_first_event_for_an_unknown_incident_advances() -> None:
    assert advances(None, None, incident_event("incident.acknowledged", "acknowledged", T0))


def test_event_without_a_status_never_advances() -> None:
    assert not advances("triggered", T0, incident_event("incident.annotated", None, T0 + timedelta(minutes=1)))
    assert not advances(None, None, incident_event("incident.annotated", None, T0))

"""Incidents mirrored into a channel: one message per incident, updated in place, never moved backwards."""

from __future__ import annotations

import json
from collections.abc import Coroutine
from datetime import timedelta
from typing import Any

from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer
from pydantic import SecretStr

from bot.core.domain import AuthStatus
from bot.core.mirror import MirrorService, subject
from bot.core.views import Card
from bot.core.webhook_inbox import Inbox
from bot.core.webhooks import parse_event
from handlers.pagerduty_webhooks import mount_pagerduty_webhooks
from tests.fakes import incident_world
from tests.fakes.chat import RecordingNotifier
from tests.fakes.incident_world import CHANNEL, WATCHED_SERVICE, IncidentWorld, webhook_body
from tests.fakes.storage_fixtures import make_grant, make_incident
from tests.fakes.world import person
from tests.pagerduty_webhook_reference import example_bodies, sign

iw = incident_world.iw

KEY = "ackgate-auth-0123456789abcdef"
bob = person("bob")


def status_of(card: Card) -> str:
    return next(f.value for f in card.facts if f.label == "Status")


def fact(card: Card, label: str) -> str | None:
    return next((f.value for f in card.facts if f.label == label), None)


async def test_an_auth_incident_is_mirrored_triggered_then_acknowledged_by_whom_then_resolved_in_one_message(
    iw: IncidentWorld,
) -> None:
    await iw.add_transaction(KEY, target=bob)
    t0 = iw.clock.now()
    await iw.webhook(webhook_body("incident.triggered", incident_id="PAUTH01", at=t0, incident_key=KEY))
    await iw.webhook(
        webhook_body("incident.acknowledged", incident_id="PAUTH01", at=t0 + timedelta(minutes=1), agent="Bob Jones")
    )
    await iw.webhook(webhook_body("incident.resolved", incident_id="PAUTH01", at=t0 + timedelta(minutes=5)))

    [message] = iw.chat.sent
    assert message.to == CHANNEL
    assert [status_of(c) for c in [*message.history, message.card]] == [
        "Triggered",
        "Acknowledged by Bob Jones",
        "Resolved",
    ]
    card = message.card
    assert card.title == "PagerDuty incident #7: Authentication request from alice@example.com"
    incident = next(f for f in card.facts if f.label == "Incident")
    assert incident.url == "https://acme.pagerduty.com/incidents/PAUTH01"
    assert [link.url for link in card.links] == ["https://acme.pagerduty.com/incidents/PAUTH01"]
    assert fact(card, "Authentication request") == "bob@example.com: waiting for an answer"
    assert await iw.store.messages.refs(subject("PAUTH01")) == [message.ref]


async def test_an_acknowledged_event_older_than_the_resolved_one_does_not_move_the_incident_back(
    iw: IncidentWorld,
) -> None:
    await iw.add_transaction(KEY, target=bob)
    t0 = iw.clock.now()
    await iw.webhook(webhook_body("incident.triggered", incident_id="PAUTH01", at=t0, incident_key=KEY))
    await iw.webhook(webhook_body("incident.resolved", incident_id="PAUTH01", at=t0 + timedelta(minutes=5)))
    await iw.webhook(
        webhook_body("incident.acknowledged", incident_id="PAUTH01", at=t0 + timedelta(minutes=1), agent="Bob")
    )

    [message] = iw.chat.sent
    assert status_of(message.card) == "Resolved"
    assert len(message.history) == 1  # posted triggered, updated once to resolved, never to acknowledged
    stored = await iw.store.mirrors.get("PAUTH01")
    assert stored is not None and stored.status == "resolved"


async def test_a_duplicate_delivery_changes_nothing(iw: IncidentWorld) -> None:
    await iw.add_transaction(KEY, target=bob)
    t0 = iw.clock.now()
    acknowledged = webhook_body(
        "incident.acknowledged", incident_id="PAUTH01", at=t0, incident_key=KEY, agent="Bob Jones"
    )
    await iw.webhook(acknowledged)
    before = await iw.store.mirrors.get("PAUTH01")
    await iw.webhook(acknowledged)

    [message] = iw.chat.sent
    assert message.history == []  # not even redrawn with the same content
    assert await iw.store.mirrors.get("PAUTH01") == before


async def test_an_incident_that_is_neither_ours_nor_of_a_configured_service_is_not_mirrored(iw: IncidentWorld) -> None:
    await iw.add_transaction(KEY, target=bob)
    await iw.webhook(
        webhook_body("incident.triggered", incident_id="POTHER1", at=iw.clock.now(), incident_key="someone-elses-key")
    )
    assert iw.chat.sent == []
    assert await iw.store.mirrors.get("POTHER1") is None


async def test_every_incident_of_a_configured_service_is_mirrored(iw: IncidentWorld) -> None:
    await iw.webhook(
        webhook_body("incident.triggered", incident_id="PSVCINC", at=iw.clock.now(), service_id=WATCHED_SERVICE)
    )
    [message] = iw.chat.sent
    assert message.to == CHANNEL and status_of(message.card) == "Triggered"
    assert fact(message.card, "Authentication request") is None


async def test_later_events_without_the_incident_key_still_update_a_mirrored_incident(iw: IncidentWorld) -> None:
    """Some accounts' payloads omit incident_key (webhooks-v3/examples/captured-zulip)."""
    await iw.add_transaction(KEY, target=bob)
    t0 = iw.clock.now()
    await iw.webhook(webhook_body("incident.triggered", incident_id="PAUTH01", at=t0, incident_key=KEY))
    await iw.webhook(
        webhook_body("incident.acknowledged", incident_id="PAUTH01", at=t0 + timedelta(seconds=30), agent="Bob")
    )
    [message] = iw.chat.sent
    assert status_of(message.card) == "Acknowledged by Bob"
    assert fact(message.card, "Authentication request") == "bob@example.com: waiting for an answer"


async def test_a_newer_reopen_moves_a_resolved_incident_back_to_triggered(iw: IncidentWorld) -> None:
    t0 = iw.clock.now()
    await iw.webhook(webhook_body("incident.resolved", incident_id="PSVCINC", at=t0, service_id=WATCHED_SERVICE))
    await iw.webhook(
        webhook_body(
            "incident.reopened",
            incident_id="PSVCINC",
            at=t0 + timedelta(minutes=1),
            status="triggered",
            service_id=WATCHED_SERVICE,
        )
    )
    [message] = iw.chat.sent
    assert status_of(message.card) == "Triggered"


async def test_the_mirrored_message_shows_the_transaction_state_when_it_changes(iw: IncidentWorld) -> None:
    transaction = await iw.add_transaction(KEY, target=bob)
    await iw.webhook(webhook_body("incident.triggered", incident_id="PAUTH01", at=iw.clock.now(), incident_key=KEY))
    await iw.store.transactions.decide(
        transaction.id, expected=AuthStatus.PENDING, new=AuthStatus.VERIFIED, at=iw.clock.now()
    )
    await iw.mirror.transaction_changed(transaction.id)

    [message] = iw.chat.sent
    assert fact(message.card, "Authentication request") == "bob@example.com: verified at 12:00 UTC, 23 Nov"
    assert status_of(message.card) == "Triggered"


async def test_a_transaction_without_a_mirrored_incident_redraws_nothing(iw: IncidentWorld) -> None:
    transaction = await iw.add_transaction(KEY, target=bob)
    await iw.mirror.transaction_changed(transaction.id)
    assert iw.chat.sent == []


async def test_when_chat_is_down_the_state_is_kept_and_the_next_event_posts_the_message(iw: IncidentWorld) -> None:
    await iw.add_transaction(KEY, target=bob)
    t0 = iw.clock.now()
    iw.chat.down = True
    await iw.webhook(webhook_body("incident.triggered", incident_id="PAUTH01", at=t0, incident_key=KEY))
    assert (await iw.store.mirrors.get("PAUTH01")) is not None
    iw.chat.down = False
    await iw.webhook(webhook_body("incident.acknowledged", incident_id="PAUTH01", at=t0 + timedelta(minutes=1)))
    [message] = iw.chat.sent
    assert status_of(message.card) == "Acknowledged"


async def test_without_a_channel_nothing_is_posted_but_the_incident_is_tracked(iw: IncidentWorld) -> None:
    quiet = MirrorService(
        store=iw.store,
        notifiers={"slack": iw.chat},
        access=iw.service.grants,
        pagerduty=iw.client,
        bus=iw.service.bus,
        clock=iw.clock,
        channel=None,
        services=[WATCHED_SERVICE],
    )
    await quiet.on_event(
        parse_event(
            webhook_body("incident.triggered", incident_id="PSVCINC", at=iw.clock.now(), service_id=WATCHED_SERVICE)
        )
    )
    assert iw.chat.sent == []
    assert (await iw.store.mirrors.get("PSVCINC")) is not None


async def test_every_reference_example_body_is_handled_without_error(iw: IncidentWorld) -> None:
    bodies = example_bodies()
    services = set()
    for body in bodies.values():
        event = parse_event(body)
        if event.incident is not None and event.incident.service_id:
            services.add(event.incident.service_id)
    await iw.add_transaction("dfead9d88e0649e8b7dee514b1875756", target=bob)
    grant = make_grant(flow="incident-bound", incident=make_incident(id="PCPZE64"), expires_at=iw.clock.now())
    await iw.store.grants.add(grant)
    mirror = MirrorService(
        store=iw.store,
        notifiers={"slack": iw.chat},
        access=iw.service.grants,
        pagerduty=iw.client,
        bus=iw.service.bus,
        clock=iw.clock,
        channel=CHANNEL,
        services=sorted(services),
    )
    for body in bodies.values():
        await mirror.on_event(parse_event(body))

    # Alphabetical order delivers captured-signed's triggered event last: it is older, so ignored.
    ours = await iw.store.mirrors.get("Q2CKYRLH85UNN4")
    assert ours is not None and ours.status == "resolved" and ours.transaction_id is not None
    assert len(await iw.store.messages.refs(subject("Q2CKYRLH85UNN4"))) == 1
    ended = await iw.store.grants.get(grant.id)
    assert ended is not None and str(ended.end_reason) == "incident_resolved"
    # Every incident whose events carry a status got exactly one channel message; the rest none.
    with_status = {e.incident.id for e in map(parse_event, bodies.values()) if e.incident and e.incident.status}
    for incident_id in with_status:
        assert len(await iw.store.messages.refs(subject(incident_id))) == 1, incident_id
    assert len(iw.chat.inbox(CHANNEL)) == len(with_status)
    assert [c.title for c in iw.chat.inbox("alice@example.com")] == [
        "Your access to prod-db was revoked because its PagerDuty incident was resolved"
    ]


async def test_signed_webhooks_through_the_real_endpoint_update_one_message(iw: IncidentWorld) -> None:
    """The issue's transcript: PagerDuty posts triggered, acknowledged and resolved to /webhooks/pagerduty."""
    secret = "whsec-mirror-tests-0123456789"
    spawned: list[Coroutine[Any, Any, None]] = []
    app = web.Application()
    inbox = Inbox(iw.store.inbox, on_event=iw.mirror.on_event, clock=iw.clock)
    mount_pagerduty_webhooks(app, secrets=[SecretStr(secret)], inbox=inbox, spawn=spawned.append)
    await iw.add_transaction(KEY, target=bob)
    t0 = iw.clock.now()
    bodies = [
        webhook_body("incident.triggered", incident_id="PAUTH01", at=t0, incident_key=KEY),
        webhook_body("incident.acknowledged", incident_id="PAUTH01", at=t0 + timedelta(minutes=1), agent="Bob"),
        webhook_body("incident.resolved", incident_id="PAUTH01", at=t0 + timedelta(minutes=2), incident_key=KEY),
    ]
    async with TestClient(TestServer(app)) as client:
        for body in [*bodies, bodies[1]]:  # the acknowledgement is redelivered at the end
            response = await client.post(
                "/webhooks/pagerduty",
                data=body,
                headers={"X-PagerDuty-Signature": sign(body, secret), "Content-Type": "application/json"},
            )
            assert response.status == 202
            assert (await response.json())["status"] in ("accepted", "duplicate")
            while spawned:
                await spawned.pop(0)

    [message] = iw.chat.sent
    assert [status_of(c) for c in [*message.history, message.card]] == ["Triggered", "Acknowledged by Bob", "Resolved"]
    assert json.loads(bodies[0])["event"]["data"]["incident_key"] == KEY


async def test_a_mirror_channel_names_its_platform_and_posts_and_updates_there(iw: IncidentWorld) -> None:
    """``ACKGATE_MIRROR_CHANNEL=teams:19:…`` mirrors on that platform, not on Slack."""
    teams = RecordingNotifier(platform="teams")
    mirror = MirrorService(
        store=iw.store,
        notifiers={"slack": iw.chat, "teams": teams},
        access=iw.service.grants,
        pagerduty=iw.client,
        bus=iw.service.bus,
        clock=iw.clock,
        channel="teams:19:incidents@thread.tacv2",
        services=[WATCHED_SERVICE],
    )
    t0 = iw.clock.now()
    for kind, at in (("incident.triggered", t0), ("incident.acknowledged", t0 + timedelta(minutes=1))):
        await mirror.on_event(parse_event(webhook_body(kind, incident_id="PTEAMS1", at=at, service_id=WATCHED_SERVICE)))

    [message] = teams.sent
    assert (message.to, message.ref.platform) == ("19:incidents@thread.tacv2", "teams")
    assert status_of(message.card) == "Acknowledged" and message.history
    assert iw.chat.sent == []

"""Transcripts through the real entry points: authentication requests verified through the page,
incidents mirrored from signed PagerDuty webhooks, a grant revoked when its incident resolves, and
administration by command."""

from __future__ import annotations

import re
from datetime import timedelta

import pytest

from bot.adapters.pagerduty_events import dedup_key
from bot.core.domain import GrantStatus
from bot.runtime.simulators.stage import MIRROR_CHANNEL, Stage
from tests.fakes.issue3_stage import ask_bob, incident_data, webhook
from tests.fakes.stage_fixtures import DATABASE_SERVICE, acknowledged_incident, audit_kinds, grants_of

_CSRF = re.compile(r'name="csrf" value="([^"]+)"')


@pytest.fixture
def stage(issue3_stage: Stage) -> Stage:
    """The real app with carol as admin (``tests.fakes.issue3_stage``)."""
    return issue3_stage


async def test_an_authentication_request_pages_bob_and_is_verified_through_the_page(stage: Stage) -> None:
    alice, bob = stage.person("alice"), stage.person("bob")
    link = await ask_bob(stage, alice, bob)

    # PagerDuty got one trigger, as the admins set it up.
    [event] = stage.events.events
    assert event["payload"]["summary"] == "Authentication request from alice@example.com"
    assert event["payload"]["severity"] == "critical"
    assert event["links"] == [{"href": link, "text": "Authenticate"}]
    transaction_id = event["payload"]["custom_details"]["transaction_id"]
    assert event["dedup_key"] == dedup_key(transaction_id)

    status, page = await stage.browse(link)
    assert status == 200
    assert "alice@example.com" in page
    assert "resetting your password" in page
    csrf = _CSRF.search(page)
    assert csrf is not None

    status, _ = await stage.browse(link, form={"decision": "verify"})  # no CSRF token
    assert status == 403
    status, done = await stage.browse(link, form={"decision": "verify", "csrf": csrf.group(1)})
    assert status == 200
    assert "verified" in done.lower()

    update = await stage.wait_for_dm(alice, "Identity verified by bob@example.com")
    assert "Identity verified by bob@example.com at" in update
    status, _ = await stage.browse(link, form={"decision": "deny", "csrf": csrf.group(1)})  # replayed
    assert status == 410
    assert "auth.verified" in await audit_kinds(stage)


async def test_the_incident_is_mirrored_through_triggered_acknowledged_and_resolved(stage: Stage) -> None:
    alice, bob = stage.person("alice"), stage.person("bob")
    await ask_bob(stage, alice, bob)
    key = stage.events.events[0]["dedup_key"]
    incident = {"incident_id": "Q1AUTHINC00001", "number": 77, "key": key}

    assert (
        await stage.webhook(
            webhook(
                "incident.triggered",
                incident_data(status="triggered", **incident),
                at="2026-11-23T12:00:01Z",
                event_id="E1",
            )
        )
        == 202
    )
    await stage.slack.wait_for(lambda: bool(stage.channel_messages(MIRROR_CHANNEL)))
    assert "Status: Triggered" in stage.channel_messages(MIRROR_CHANNEL)[0]

    ack = webhook(
        "incident.acknowledged",
        incident_data(status="acknowledged", **incident),
        at="2026-11-23T12:00:05Z",
        agent="Bob",
        event_id="E2",
    )
    assert await stage.webhook(ack) == 202
    await stage.slack.wait_for(lambda: "Acknowledged by Bob" in stage.channel_messages(MIRROR_CHANNEL)[0])

    resolved = webhook(
        "incident.resolved", incident_data(status="resolved", **incident), at="2026-11-23T12:00:09Z", event_id="E3"
    )
    assert await stage.webhook(resolved) == 202
    await stage.slack.wait_for(lambda: "Status: Resolved" in stage.channel_messages(MIRROR_CHANNEL)[0])

    # A late, older acknowledgement never moves it back; a redelivery is processed once.
    late = webhook(
        "incident.acknowledged",
        incident_data(status="acknowledged", **incident),
        at="2026-11-23T12:00:04Z",
        agent="Bob",
        event_id="E4",
    )
    assert await stage.webhook(late) == 202
    assert await stage.webhook(resolved) == 202
    assert len(stage.channel_messages(MIRROR_CHANNEL)) == 1
    mirror = await stage.parts.store.mirrors.get("Q1AUTHINC00001")
    assert mirror is not None
    assert mirror.status == "resolved"


async def test_a_forged_webhook_is_refused_and_changes_nothing(stage: Stage) -> None:
    body = webhook(
        "incident.triggered",
        incident_data(incident_id="Q1FORGED000001", number=1, status="triggered", service=DATABASE_SERVICE),
        at="2026-11-23T12:00:01Z",
        event_id="EF",
    )
    assert await stage.webhook(body, secret="not-the-secret") == 401
    assert (
        await stage.webhook(
            b"not json",
        )
        == 400
    )
    assert await stage.parts.store.mirrors.get("Q1FORGED000001") is None
    status = await stage.parts.org.webhook_status()
    assert status.failures == 1


async def test_a_grant_is_revoked_when_its_incident_resolves_and_the_incident_gets_notes(stage: Stage) -> None:
    alice = stage.person("alice")
    acknowledged_incident(stage, alice)
    reply = await stage.command(alice, "prod-db 1h replication lag")
    assert "Access granted: prod-db" in reply.text
    [grant] = await grants_of(stage, alice.email)
    assert grant.incident is not None
    notes = stage.pd.requests_to(f"/incidents/{grant.incident.id}/notes", method="POST")
    assert len(notes) == 1
    assert "access to prod-db granted to alice@example.com" in notes[0].json()["note"]["content"]

    stage.pd.resolve(grant.incident.id)
    body = webhook(
        "incident.resolved",
        incident_data(
            incident_id=grant.incident.id, number=grant.incident.number, status="resolved", service=DATABASE_SERVICE
        ),
        at="2026-11-23T12:30:00Z",
        event_id="ER",
    )
    assert await stage.webhook(body) == 202
    told = await stage.wait_for_dm(alice, "revoked because its PagerDuty incident was resolved")
    assert "prod-db" in told
    ended = await stage.parts.store.grants.get(grant.id)
    assert ended is not None
    assert ended.status is GrantStatus.ENDED
    assert str(ended.end_reason) == "incident_resolved"


async def test_a_grant_made_after_its_incident_resolved_ends_at_the_second_sweep(stage: Stage) -> None:
    alice = stage.person("alice")
    acknowledged_incident(stage, alice)
    [incident] = stage.pd.incidents.values()
    body = webhook(
        "incident.resolved",
        incident_data(incident_id=incident.id, number=incident.number, status="resolved", service=DATABASE_SERVICE),
        at="2026-11-23T12:00:00Z",
        event_id="ER-EARLY",
    )
    assert await stage.webhook(body) == 202
    delivered_at = (await stage.parts.org.webhook_status()).last_event_at
    # PagerDuty's REST API still shows it acknowledged (another replica's cached lookup, or one
    # made before the webhook): the grant goes through under the resolved incident.
    reply = await stage.command(alice, "prod-db 1h replication lag")
    assert "Access granted: prod-db" in reply.text
    [grant] = await grants_of(stage, alice.email)

    await stage.pass_time(31)

    told = await stage.wait_for_dm(alice, "revoked because its PagerDuty incident was resolved")
    assert "prod-db" in told
    ended = await stage.parts.store.grants.get(grant.id)
    assert ended is not None and ended.status is GrantStatus.ENDED
    assert str(ended.end_reason) == "incident_resolved"
    # the second sweep is no delivery: the admin status's last webhook is still the real one
    assert delivered_at is not None
    assert (await stage.parts.org.webhook_status()).last_event_at == delivered_at


async def test_an_admin_sets_the_severity_and_a_non_admin_is_refused(stage: Stage) -> None:
    alice, bob, carol = stage.person("alice"), stage.person("bob"), stage.person("carol")
    changed = await stage.command(carol, "admin severity warning")
    assert "warning" in changed.text
    refused = await stage.command(alice, "admin severity info")
    assert "admin" in refused.text.lower()
    assert await stage.parts.org.severity() == "warning"
    kinds = await audit_kinds(stage)
    assert "setting.changed" in kinds
    assert "action.refused" in kinds

    await ask_bob(stage, alice, bob)
    assert stage.events.events[-1]["payload"]["severity"] == "warning"

    status = await stage.command(carol, "admin status")
    assert "Success" in status.text  # the Events API took the incident
    assert "R0UTINGKEY" not in status.text  # the key is only ever shown masked


async def test_pagerduty_events_rejecting_the_key_falls_back_to_chat_and_shows_the_error(stage: Stage) -> None:
    alice, bob, carol = stage.person("alice"), stage.person("bob"), stage.person("carol")
    stage.events.fail_next(1, status=400)
    reply = await stage.command(alice, f"auth <@{bob.user_id}|bob>")
    assert "Sent by chat" in reply.text
    await stage.wait_for_dm(bob, "asks you to confirm your identity")
    status = await stage.command(carol, "admin status")
    assert "Error" in status.text


async def test_an_unanswered_link_expires(stage: Stage) -> None:
    alice, bob = stage.person("alice"), stage.person("bob")
    link = await ask_bob(stage, alice, bob)
    await stage.pass_time(timedelta(minutes=11).total_seconds())
    await stage.wait_for_dm(alice, "expired unanswered")
    status, page = await stage.browse(link)
    assert status == 410
    assert "expired" in page.lower()


async def test_webhook_delivery_keys_are_forgotten_after_three_days(stage: Stage) -> None:
    """PagerDuty redelivers for up to 48 h; keys older than 72 h are pruned by the scheduler."""
    seen = stage.parts.store.seen
    assert await seen.first_time("webhook:old", at=stage.clock.now())
    assert not await seen.first_time("webhook:old", at=stage.clock.now())
    stage.clock.advance(timedelta(hours=73))
    await stage.parts.scheduler.run_once()
    assert await seen.first_time("webhook:old", at=stage.clock.now())

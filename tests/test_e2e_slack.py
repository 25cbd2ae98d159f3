"""End to end through Slack's real entry point: signed HTTP requests into Ackgate's aiohttp app,
the real core and SQLite store behind it, the Slack and PagerDuty simulators around it.

Each test reads like a chat transcript and checks what the user saw, what was stored and what
was audited. Refusals and failures are in ``test_e2e_slack_refusals.py``.
"""

from __future__ import annotations

import json

import aiohttp

from bot.adapters.provisioners import NoopProvisioner
from bot.core.domain import GrantStatus, RequestStatus
from bot.runtime.simulators.stage import Stage
from tests.fakes.stage_fixtures import (
    acknowledged_incident,
    audit_kinds,
    grant_id_in,
    grants_of,
    request_id_in,
    requests_of,
)


async def get(stage: Stage, path: str) -> tuple[int, str]:
    async with aiohttp.ClientSession() as session, session.get(f"{stage.url}{path}") as response:
        return response.status, await response.text()


# --- requesting -------------------------------------------------------------------------------


async def test_alice_with_an_acknowledged_incident_gets_prod_db_at_once(
    stage: Stage, noop_provisioner: NoopProvisioner
) -> None:
    alice = stage.person("alice")
    acknowledged_incident(stage, alice)

    reply = await stage.command(alice, "prod-db 2h checking replication lag")

    assert reply.status == 200
    assert reply.ack["text"] == "Checking PagerDuty…"
    assert "Access granted: prod-db" in reply.text
    assert "Justification: checking replication lag" in reply.text
    [grant] = await grants_of(stage, alice.email)
    assert grant.status is GrantStatus.ACTIVE
    assert grant.resource == "prod-db"
    assert (grant.expires_at - stage.clock.now()).total_seconds() == 2 * 3600
    assert grant.id in reply.text
    [request] = await requests_of(stage, alice.email)
    assert request.status is RequestStatus.APPROVED
    assert [call.action for call in noop_provisioner.calls] == ["grant"]
    assert {"access.requested", "gate.evaluated", "access.approved", "grant.provisioned"} <= set(
        await audit_kinds(stage)
    )


async def test_a_warm_access_request_costs_at_most_one_pagerduty_call(stage: Stage) -> None:
    """The PagerDuty user is cached across requests, and so, for a few seconds, are the
    acknowledgements found: a second request at once asks PagerDuty nothing. (The note Ackgate
    then adds to the incident is a write after the grant, not part of the check.)"""
    alice = stage.person("alice")
    acknowledged_incident(stage, alice)
    first = await stage.command(alice, "prod-db 1h replication lag")
    assert "Access granted: prod-db" in first.text
    before = len(stage.pd.requests)

    second = await stage.command(alice, "prod-db 30m still on replication lag")

    assert "Access granted: prod-db" in second.text
    lookups = [r for r in stage.pd.requests[before:] if r.method == "GET"]
    assert [r.path for r in lookups] == []
    writes = [r for r in stage.pd.requests[before:] if r.method != "GET"]
    assert len(writes) == 1
    assert writes[0].method == "POST"
    assert writes[0].path.endswith("/notes")
    assert len(await grants_of(stage, alice.email)) == 2


async def test_approval_through_the_real_button_grants_and_updates_the_approver_card_in_place(
    stage: Stage,
) -> None:
    alice, bob, _carol = stage.person("alice"), stage.person("bob"), stage.person("carol")

    reply = await stage.command(alice, "prod-k8s 1h debugging a stuck pod")

    assert "Waiting for approval: prod-k8s" in reply.text
    card = await stage.wait_for_dm(bob, "alice@example.com requests prod-k8s")
    assert "[Approve]" in card and "[Deny]" in card
    assert "Justification: debugging a stuck pod" in card
    request_id = request_id_in(card)
    [pending] = await requests_of(stage, alice.email)
    assert pending.id == request_id and pending.status is RequestStatus.PENDING

    click = await stage.click(bob, "approve", request_id)

    assert click.status == 200
    assert "You approved alice@example.com's access to prod-k8s" in click.text
    granted = await stage.wait_for_dm(alice, "Access granted: prod-k8s")
    assert "Approved by: bob@example.com" in granted
    [bobs_card] = stage.slack.messages[stage.slack.dm_channel(bob.user_id)]
    assert bobs_card.edits >= 1
    assert "Approved by bob@example.com" in stage.dms(bob)[0]
    assert "[Approve]" not in stage.dms(bob)[0]
    [approved] = await requests_of(stage, alice.email)
    assert approved.status is RequestStatus.APPROVED and approved.decided_by == "bob@example.com"
    [grant] = await grants_of(stage, alice.email)
    assert grant.status is GrantStatus.ACTIVE and grant.approved_by == ("bob@example.com",)
    kinds = await audit_kinds(stage)
    assert {"access.requested", "approval.requested", "access.approved", "grant.provisioned"} <= set(kinds)


# --- the other commands -------------------------------------------------------------------


async def test_alice_extends_then_revokes_her_grant_with_the_slash_command(
    stage: Stage, noop_provisioner: NoopProvisioner
) -> None:
    alice = stage.person("alice")
    acknowledged_incident(stage, alice)
    grant_id = grant_id_in((await stage.command(alice, "prod-db 1h replication lag")).text)
    [before] = await grants_of(stage, alice.email)

    extended = await stage.command(alice, f"extend {grant_id} 30m")

    assert "Access granted: prod-db" in extended.text
    [after] = await grants_of(stage, alice.email)
    assert (after.expires_at - before.expires_at).total_seconds() == 30 * 60
    assert "grant.extended" in await audit_kinds(stage)

    revoked = await stage.command(alice, f"revoke {grant_id}")

    assert f"Access to prod-db revoked\nGrant: {grant_id}" in revoked.text
    [ended] = await grants_of(stage, alice.email)
    assert ended.status is GrantStatus.ENDED and ended.ended_by == "alice@example.com"
    assert [call.action for call in noop_provisioner.calls] == ["grant", "revoke"]
    assert {"grant.revoked", "grant.ended"} <= set(await audit_kinds(stage))


async def test_access_list_shows_alices_grants_and_requests(stage: Stage) -> None:
    alice = stage.person("alice")
    stage.person("bob")
    acknowledged_incident(stage, alice)
    grant_id = grant_id_in((await stage.command(alice, "prod-db 1h replication lag")).text)
    request_id = request_id_in((await stage.command(alice, "prod-k8s 1h stuck pod")).text)

    listed = await stage.command(alice, "list")

    assert grant_id in listed.text
    assert request_id in listed.text
    assert "prod-db" in listed.text and "prod-k8s" in listed.text


async def test_access_help_lists_the_commands_and_the_resources(stage: Stage) -> None:
    alice = stage.person("alice")

    helped = await stage.command(alice, "help")

    assert "/access <resource> [duration] [reason]" in helped.text
    assert "/access revoke <grant-id>" in helped.text
    assert "Resources: prod-db, prod-k8s, billing-console" in helped.text
    assert stage.pd.requests == []


# --- time passes ------------------------------------------------------------------------------


async def test_when_the_grant_expires_the_holder_is_told_and_the_grant_is_ended(
    stage: Stage, noop_provisioner: NoopProvisioner
) -> None:
    alice = stage.person("alice")
    acknowledged_incident(stage, alice)
    await stage.command(alice, "prod-db 1h replication lag")

    await stage.pass_time(3600)

    told = await stage.wait_for_dm(alice, "expired")
    assert "Your access to prod-db expired" in told
    [grant] = await grants_of(stage, alice.email)
    assert grant.status is GrantStatus.ENDED
    assert str(grant.end_reason) == "expired"
    assert [call.action for call in noop_provisioner.calls] == ["grant", "revoke"]
    assert {"grant.expired", "grant.ended"} <= set(await audit_kinds(stage))


# --- operations -------------------------------------------------------------------------------


async def test_readiness_and_its_healthz_alias_are_200_when_storage_answers(stage: Stage) -> None:
    for path in ("/readyz", "/healthz"):
        status, body = await get(stage, path)
        assert status == 200
        assert json.loads(body) == {"status": "ok", "storage": "ok"}


async def test_liveness_and_readiness_stay_200_while_pagerduty_rejects_the_token_and_metrics_say_so(
    stage: Stage,
) -> None:
    """A PagerDuty outage must not get every replica restarted or taken out of the load balancer."""
    stage.pd.reject_auth_next(None)

    assert (await get(stage, "/livez"))[0] == 200
    assert (await get(stage, "/readyz"))[0] == 200
    status, body = await get(stage, "/metrics")
    assert status == 200
    assert 'ackgate_dependency_up{dependency="pagerduty"} 0.0' in body
    assert 'ackgate_dependency_up{dependency="storage"} 1.0' in body
    assert 'ackgate_dependency_up{dependency="slack"} 1.0' in body


async def test_readiness_is_503_naming_storage_when_the_database_fails_but_liveness_stays_200(stage: Stage) -> None:
    await stage.parts.store.close()

    status, body = await get(stage, "/readyz")
    assert status == 503
    assert json.loads(body)["status"] == "unavailable"
    assert (await get(stage, "/livez"))[0] == 200
    status, body = await get(stage, "/metrics")
    assert status == 200
    assert 'ackgate_dependency_up{dependency="storage"} 0.0' in body
    await stage.parts.store.open()


async def test_metrics_count_request_outcomes_and_active_grants(stage: Stage) -> None:
    alice = stage.person("alice")
    acknowledged_incident(stage, alice)
    await stage.command(alice, "prod-db 1h replication lag")

    status, body = await get(stage, "/metrics")

    assert status == 200
    assert 'ackgate_requests_total{outcome="granted"} 1.0' in body
    assert "ackgate_active_grants 1.0" in body

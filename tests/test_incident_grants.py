"""Grants bound to their incident: revoked when it resolves (webhook or polling), and noted on its timeline."""

from __future__ import annotations

import logging
from datetime import timedelta

import pytest

from bot.core.domain import Grant, GrantStatus
from bot.core.errors import GateRefused
from bot.core.mirror import REVOKED_BY
from bot.core.webhook_inbox import Inbox
from bot.core.webhooks import parse_event
from tests.fakes import incident_world
from tests.fakes.incident_world import FROM_EMAIL, WATCHED_SERVICE, IncidentWorld, webhook_body
from tests.fakes.pagerduty_openapi import check_request
from tests.fakes.world import person

iw = incident_world.iw

alice, bob, carol = (person(n) for n in ("alice", "bob", "carol"))

REVOKED_NOTICE = "Your access to prod-db was revoked because its PagerDuty incident was resolved"


async def stored(iw: IncidentWorld, grant_id: str) -> Grant:
    grant = await iw.store.grants.get(grant_id)
    assert grant is not None
    return grant


def resolved(iw: IncidentWorld, incident_id: str, *, minutes: int = 5, service_id: str = "PSVC001") -> bytes:
    at = iw.clock.now() + timedelta(minutes=minutes)
    return webhook_body("incident.resolved", incident_id=incident_id, at=at, service_id=service_id)


# --- revoke on resolve ---------------------------------------------------------------------------


async def test_a_grant_is_revoked_when_its_incident_resolves_by_webhook_and_the_holder_is_told_why(
    iw: IncidentWorld,
) -> None:
    incident = iw.acknowledged_incident("alice")
    await iw.type(alice, "prod-db 1h")
    grant = await iw.only_grant("alice@example.com")
    assert grant.incident is not None and grant.incident.id == incident.id

    await iw.webhook(resolved(iw, incident.id))

    ended = await stored(iw, grant.id)
    assert ended.status is GrantStatus.ENDED
    assert str(ended.end_reason) == "incident_resolved" and ended.ended_by == REVOKED_BY
    assert ("revoke", grant.id) in [(c.action, c.grant.id) for c in iw.noop.calls]
    assert REVOKED_NOTICE in [c.title for c in iw.chat.inbox("alice@example.com")]
    revoked = [e for e in await iw.store.audit.since(iw.clock.now() - timedelta(days=1)) if e.kind == "grant.revoked"]
    assert [(e.actor, e.subject) for e in revoked] == [(REVOKED_BY, grant.id)]


async def test_a_grant_is_revoked_by_the_periodic_check_once_pagerduty_shows_its_incident_resolved(
    iw: IncidentWorld,
) -> None:
    incident = iw.acknowledged_incident("alice")
    await iw.type(alice, "prod-db 1h")
    grant = await iw.only_grant("alice@example.com")

    assert await iw.mirror.check_incidents() == 0  # still acknowledged: nothing ends
    assert (await stored(iw, grant.id)).status is GrantStatus.ACTIVE

    iw.pd.resolve(incident.id)
    assert await iw.mirror.check_incidents() == 1

    ended = await stored(iw, grant.id)
    assert ended.status is GrantStatus.ENDED and str(ended.end_reason) == "incident_resolved"
    assert REVOKED_NOTICE in [c.title for c in iw.chat.inbox("alice@example.com")]
    assert await iw.mirror.check_incidents() == 0  # nothing left to end


async def test_the_periodic_check_asks_pagerduty_once_per_incident(iw: IncidentWorld) -> None:
    incident = iw.acknowledged_incident("alice")
    iw.pd.acknowledge(incident.id, iw.pd.add_user("carol@example.com", "Carol"))
    await iw.type(alice, "prod-db 1h")
    await iw.type(carol, "prod-db 2h")
    iw.pd.resolve(incident.id)

    assert await iw.mirror.check_incidents() == 2
    assert len(iw.pd.requests_to(f"/incidents/{incident.id}")) == 1


async def test_a_flow_without_revoke_on_resolve_keeps_the_grant(iw: IncidentWorld) -> None:
    incident = iw.acknowledged_incident("alice")
    await iw.type(alice, "prod-k8s 1h")
    grant = await iw.only_grant("alice@example.com")

    await iw.webhook(resolved(iw, incident.id))
    iw.pd.resolve(incident.id)
    assert await iw.mirror.check_incidents() == 0

    kept = await stored(iw, grant.id)
    assert kept.status is GrantStatus.ACTIVE
    assert iw.pd.requests_to(f"/incidents/{incident.id}") == []  # no flow needed the check


async def test_a_resolved_event_older_than_a_reopen_does_not_revoke(iw: IncidentWorld) -> None:
    user_id = iw.pd.add_user("alice@example.com", "Alice")
    incident = iw.pd.add_incident("Watched", service=WATCHED_SERVICE, acknowledged_by=[user_id])
    await iw.type(alice, "prod-db 1h")
    grant = await iw.only_grant("alice@example.com")
    reopened = webhook_body(
        "incident.reopened",
        incident_id=incident.id,
        at=iw.clock.now() + timedelta(minutes=10),
        status="triggered",
        service_id=WATCHED_SERVICE,
    )
    await iw.webhook(reopened)
    await iw.webhook(resolved(iw, incident.id, minutes=5, service_id=WATCHED_SERVICE))  # delivered late

    assert (await stored(iw, grant.id)).status is GrantStatus.ACTIVE


async def test_a_grant_already_revoked_by_its_holder_is_left_alone_when_the_incident_resolves(
    iw: IncidentWorld,
) -> None:
    incident = iw.acknowledged_incident("alice")
    await iw.type(alice, "prod-db 1h")
    grant = await iw.only_grant("alice@example.com")
    await iw.type(alice, f"revoke {grant.id}")

    await iw.webhook(resolved(iw, incident.id))

    ended = await stored(iw, grant.id)
    assert str(ended.end_reason) == "revoked" and ended.ended_by == "alice@example.com"
    assert REVOKED_NOTICE not in [c.title for c in iw.chat.inbox("alice@example.com")]


# --- notes on the incident -----------------------------------------------------------------------


async def test_notes_are_added_when_a_grant_is_made_extended_and_revoked(iw: IncidentWorld) -> None:
    incident = iw.acknowledged_incident("alice")
    await iw.type(alice, "prod-db 1h")
    grant = await iw.only_grant("alice@example.com")
    await iw.type(alice, f"extend {grant.id} 30m")
    await iw.type(alice, f"revoke {grant.id}")

    assert iw.notes(incident.id) == [
        f"Ackgate: access to prod-db granted to alice@example.com until 13:00 UTC, 23 Nov, "
        f"approved automatically by policy (grant {grant.id}).",
        f"Ackgate: access to prod-db for alice@example.com extended until 13:30 UTC, 23 Nov "
        f"by alice@example.com (grant {grant.id}).",
        f"Ackgate: access to prod-db for alice@example.com was revoked by alice@example.com (grant {grant.id}).",
    ]


async def test_the_note_request_carries_from_and_validates_against_the_rest_openapi_subset(
    iw: IncidentWorld,
) -> None:
    incident = iw.acknowledged_incident("alice")
    await iw.type(alice, "prod-db 1h")

    [request] = iw.pd.requests_to(f"/incidents/{incident.id}/notes", "POST")
    assert request.headers["From"] == FROM_EMAIL
    assert request.json() == {"note": {"content": iw.notes(incident.id)[0]}}
    check_request(request)  # raises ConformanceError if it does not match the document
    assert iw.pd.validation_errors == []


async def test_an_approved_grant_note_names_its_approver(iw: IncidentWorld) -> None:
    incident = iw.acknowledged_incident("alice")
    await iw.type(alice, "billing-db 1h")
    [request] = await iw.store.requests.list_for("alice@example.com")
    await iw.service.decide(request.id, actor=bob, approve=True)
    grant = await iw.only_grant("alice@example.com")

    assert iw.notes(incident.id) == [
        f"Ackgate: access to billing-db granted to alice@example.com until 13:00 UTC, 23 Nov, "
        f"approved by bob@example.com (grant {grant.id})."
    ]


async def test_resolving_the_incident_notes_why_the_grant_ended(iw: IncidentWorld) -> None:
    incident = iw.acknowledged_incident("alice")
    await iw.type(alice, "prod-db 1h")
    grant = await iw.only_grant("alice@example.com")
    await iw.webhook(resolved(iw, incident.id))

    assert iw.notes(incident.id)[-1] == (
        f"Ackgate: access to prod-db for alice@example.com was revoked because this incident was resolved "
        f"(grant {grant.id})."
    )


async def test_no_notes_are_added_when_the_flow_turns_them_off(iw: IncidentWorld) -> None:
    incident = iw.acknowledged_incident("alice")
    await iw.type(alice, "prod-k8s 1h")
    grant = await iw.only_grant("alice@example.com")
    await iw.type(alice, f"extend {grant.id} 30m")
    await iw.type(alice, f"revoke {grant.id}")

    assert iw.pd.requests_to(f"/incidents/{incident.id}/notes", "POST") == []
    assert iw.notes(incident.id) == []


async def test_a_note_pagerduty_refuses_is_logged_and_the_grant_stands(
    iw: IncidentWorld, caplog: pytest.LogCaptureFixture
) -> None:
    """PAGERDUTY_FROM_EMAIL that is no PagerDuty user: PagerDuty answers 400, access is still granted."""
    incident = iw.acknowledged_incident("alice")
    bot_user = next(u.id for u in iw.pd.users.values() if u.email == FROM_EMAIL)
    del iw.pd.users[bot_user]

    with caplog.at_level(logging.WARNING, logger="ackgate.incident_notes"):
        card = await iw.type(alice, "prod-db 1h")

    assert card.title.startswith("Access granted: prod-db")
    assert (await iw.only_grant("alice@example.com")).status is GrantStatus.ACTIVE
    assert len(iw.pd.requests_to(f"/incidents/{incident.id}/notes", "POST")) == 1
    assert iw.notes(incident.id) == []
    [record] = [r for r in caplog.records if r.name == "ackgate.incident_notes"]
    assert f"could not add a note to PagerDuty incident {incident.id}" in record.getMessage()
    assert "Requester User Not Found" in record.getMessage()


# --- one grant's failure never stops the others -------------------------------------------------


async def _three_grants_on_one_incident(iw: IncidentWorld) -> tuple[str, list[Grant]]:
    incident = iw.acknowledged_incident("alice")
    for name in ("carol", "dave"):
        iw.pd.acknowledge(incident.id, iw.pd.add_user(f"{name}@example.com", name.title()))
    grants = []
    for who in (alice, carol, person("dave")):
        await iw.type(who, "prod-db 1h")
        grants.append(await iw.only_grant(who.email))
    return incident.id, grants


async def test_revoke_on_resolve_ends_the_other_grants_when_one_provisioner_raises(iw: IncidentWorld) -> None:
    incident_id, grants = await _three_grants_on_one_incident(iw)
    failing = grants[1].id
    revoke = iw.noop.revoke

    async def flaky(grant: Grant) -> None:
        if grant.id == failing:
            raise RuntimeError("provisioner bug")
        await revoke(grant)

    iw.noop.revoke = flaky  # type: ignore[method-assign]

    await iw.webhook(resolved(iw, incident_id))

    statuses = {g.id: (await stored(iw, g.id)).status for g in grants}
    assert statuses == {grants[0].id: GrantStatus.ENDED, failing: GrantStatus.REVOKING, grants[2].id: GrantStatus.ENDED}
    kinds = [(e.kind, e.subject) for e in await iw.store.audit.since(iw.clock.now() - timedelta(days=1))]
    assert sorted(s for k, s in kinds if k == "grant.revoked") == sorted(g.id for g in grants)
    assert [s for k, s in kinds if k == "grant.revoke_failed"] == [failing]  # retried by the next pass
    assert sorted(s for k, s in kinds if k == "grant.ended") == sorted([grants[0].id, grants[2].id])


async def test_revoke_on_resolve_isolates_a_grant_whose_revoke_cannot_be_stored(
    iw: IncidentWorld, caplog: pytest.LogCaptureFixture
) -> None:
    from bot.core.errors import StorageError

    incident_id, grants = await _three_grants_on_one_incident(iw)
    broken = grants[0].id
    transition = iw.store.grants.transition

    async def refusing(grant_id: str, **kwargs: object) -> Grant:
        if grant_id == broken:
            raise StorageError("Could not move the grant: the disk is full.")
        return await transition(grant_id, **kwargs)  # type: ignore[arg-type]

    iw.store.grants.transition = refusing  # type: ignore[method-assign]

    with caplog.at_level(logging.DEBUG, logger="ackgate"):
        assert await iw.mirror.revoke_for_incident(incident_id) == 2

    assert (await stored(iw, broken)).status is GrantStatus.ACTIVE  # the next resolve or check retries it
    assert [(await stored(iw, g.id)).status for g in grants[1:]] == [GrantStatus.ENDED, GrantStatus.ENDED]
    failed = [r for r in caplog.records if broken in r.getMessage() and r.levelno >= logging.WARNING]
    assert [(r.levelname, r.exc_info) for r in failed] == [("WARNING", None)]
    assert "disk is full" in failed[0].getMessage()


async def test_revoke_on_resolve_of_a_grant_ended_meanwhile_is_a_debug_line(
    iw: IncidentWorld, caplog: pytest.LogCaptureFixture
) -> None:
    incident_id, grants = await _three_grants_on_one_incident(iw)
    stale = list(grants)  # read before the holder revoked: the race a replica can lose
    await iw.type(alice, f"revoke {grants[0].id}")

    async def as_read_before(_: str) -> list[Grant]:
        return stale

    iw.store.grants.active_for_incident = as_read_before  # type: ignore[method-assign]

    with caplog.at_level(logging.DEBUG, logger="ackgate"):
        assert await iw.mirror.revoke_for_incident(incident_id) == 2

    assert (await stored(iw, grants[0].id)).ended_by == "alice@example.com"
    about = [r for r in caplog.records if grants[0].id in r.getMessage() and "got there first" in r.getMessage()]
    assert [r.levelname for r in about] == ["DEBUG"]
    assert not [r for r in caplog.records if r.levelno >= logging.WARNING]


# --- a grant made just after its incident resolved ------------------------------------------------

RECHECK = timedelta(seconds=30)


def inbox(iw: IncidentWorld) -> Inbox:
    """The webhook inbox of one process on the world's store; a new one is that process restarted."""
    return Inbox(iw.store.inbox, on_event=iw.mirror.on_event, clock=iw.clock, recheck_after=RECHECK)


async def delivered(iw: IncidentWorld, body: bytes) -> None:
    first = inbox(iw)
    event = parse_event(body)
    assert await first.accept(event, body)
    assert await first.process(event.id)


@pytest.mark.parametrize("service_id", ["PSVC001", WATCHED_SERVICE])  # not mirrored, and mirrored
async def test_a_grant_made_just_after_its_incident_resolved_ends_at_the_second_sweep_after_a_restart(
    iw: IncidentWorld, service_id: str, caplog: pytest.LogCaptureFixture
) -> None:
    incident = iw.acknowledged_incident("alice")
    await delivered(iw, resolved(iw, incident.id, minutes=0, service_id=service_id))
    # PagerDuty's REST API still shows it acknowledged: a lookup older than the webhook, or
    # another replica's few-second cache, lets one more grant through under the resolved incident.
    await iw.type(alice, "prod-db 1h")
    grant = await iw.only_grant("alice@example.com")
    assert grant.status is GrantStatus.ACTIVE

    restarted = inbox(iw)  # the process that handled the resolve is gone; the second sweep is a row
    iw.clock.advance(RECHECK - timedelta(seconds=1))
    assert await restarted.recover() == 0  # not due yet
    assert (await stored(iw, grant.id)).status is GrantStatus.ACTIVE
    iw.clock.advance(timedelta(seconds=2))
    caplog.set_level(logging.INFO, logger="ackgate.webhooks")
    assert await restarted.recover() == 1
    assert not [r for r in caplog.records if r.levelno >= logging.INFO]  # routine: not "recovered" at INFO

    ended = await stored(iw, grant.id)
    assert ended.status is GrantStatus.ENDED
    assert str(ended.end_reason) == "incident_resolved" and ended.ended_by == REVOKED_BY
    assert REVOKED_NOTICE in [c.title for c in iw.chat.inbox("alice@example.com")]
    iw.clock.advance(RECHECK * 3)
    assert await restarted.recover() == 0  # swept once more, not again and again


async def test_the_second_sweep_keeps_grants_of_flows_that_outlive_their_incident(iw: IncidentWorld) -> None:
    incident = iw.acknowledged_incident("alice")
    await delivered(iw, resolved(iw, incident.id, minutes=0))
    await iw.type(alice, "prod-k8s 1h")
    iw.clock.advance(RECHECK + timedelta(seconds=1))

    assert await inbox(iw).recover() == 1
    assert (await iw.only_grant("alice@example.com")).status is GrantStatus.ACTIVE


async def test_only_a_resolve_is_handed_in_again(iw: IncidentWorld) -> None:
    incident = iw.acknowledged_incident("alice")
    at = iw.clock.now()
    await delivered(iw, webhook_body("incident.acknowledged", incident_id=incident.id, at=at, service_id="PSVC001"))
    iw.clock.advance(RECHECK + timedelta(seconds=1))
    assert await inbox(iw).recover() == 0


async def test_an_incident_webhook_makes_the_next_gate_check_ask_pagerduty_again(iw: IncidentWorld) -> None:
    incident = iw.acknowledged_incident("alice")
    await iw.type(alice, "prod-k8s 1h")
    await iw.type(alice, "prod-db 1h")
    assert len(iw.pd.requests_to("/incidents")) == 1  # the second check used the kept list

    iw.pd.unacknowledge(incident.id)
    at = iw.clock.now()
    await iw.webhook(webhook_body("incident.unacknowledged", incident_id=incident.id, at=at, service_id="PSVC001"))
    with pytest.raises(GateRefused, match="no acknowledged PagerDuty incident"):
        await iw.type(alice, "billing-db 1h")

    assert len(iw.pd.requests_to("/incidents")) == 2


async def test_a_reason_naming_an_incident_the_kept_list_lacks_asks_pagerduty_again(iw: IncidentWorld) -> None:
    first = iw.acknowledged_incident("alice")
    await iw.type(alice, "prod-k8s 1h")  # alice's acknowledgements are now kept a few seconds
    second = iw.pd.add_incident(
        "Disk full", assigned_to=[first.acknowledged_by[0]], acknowledged_by=first.acknowledged_by
    )

    await iw.type(alice, f"prod-db 1h on #{second.number}")

    [granted] = [g for g in await iw.store.grants.list_for("alice@example.com") if g.resource == "prod-db"]
    assert granted.incident is not None and granted.incident.id == second.id
    assert len(iw.pd.requests_to("/incidents")) == 2
    await iw.type(alice, f"billing-db 1h on #{first.number}")  # named and kept: no call
    assert len(iw.pd.requests_to("/incidents")) == 2

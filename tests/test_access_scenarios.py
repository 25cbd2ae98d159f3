"""Transcripts of the access core: who types what, who clicks, how the clock moves, what they see."""

from __future__ import annotations

import asyncio
from datetime import timedelta

import pytest

from bot.core.domain import GrantStatus, RequestStatus
from bot.core.errors import AlreadyDecided, GateRefused, IdentityError, NotAuthorized, NotFound, UsageError
from bot.runtime.simulators.pagerduty_state import SimIncident
from tests.fakes.world import World, person

alice, bob, carol, dana, erin = (person(n) for n in ("alice", "bob", "carol", "dana", "erin"))


def _ack_incident(w: World, who: str, *, service: str = "PCHKOUT", title: str = "Checkout latency") -> SimIncident:
    user_id = w.pd.add_user(f"{who}@example.com", who.title())
    return w.pd.add_incident(title, service=service, assigned_to=[user_id], acknowledged_by=[user_id])


async def _only_grant(w: World, email: str):
    grants = await w.store.grants.list_for(email, include_ended=True)
    assert len(grants) == 1
    return grants[0]


async def test_acknowledged_incident_grants_at_once_and_the_incident_is_the_justification(world: World) -> None:
    incident = _ack_incident(world, "alice")
    card = await world.type(alice, "prod-db 2h")
    assert card.title.startswith("Access granted: prod-db until")
    grant = await _only_grant(world, "alice@example.com")
    assert grant.status is GrantStatus.ACTIVE
    assert grant.expires_at == world.clock.now() + timedelta(hours=2)
    assert grant.incident is not None and grant.incident.number == incident.number
    assert grant.justification == f"PagerDuty incident #{incident.number} Checkout latency"
    assert [(c.action, c.grant.id) for c in world.noop.calls] == [("grant", grant.id)]
    assert await world.audit_kinds() == ["gate.evaluated", "access.requested", "access.approved", "grant.provisioned"]


async def test_the_requesters_own_reason_wins_over_the_incident_title(world: World) -> None:
    _ack_incident(world, "alice")
    await world.type(alice, "prod-db 30m checking replication lag")
    grant = await _only_grant(world, "alice@example.com")
    assert grant.justification == "checking replication lag"
    assert grant.incident is not None


async def test_grant_expires_on_its_own_and_the_holder_is_told(world: World) -> None:
    _ack_incident(world, "alice")
    await world.type(alice, "prod-db 1h")
    grant = await _only_grant(world, "alice@example.com")
    await world.tick(timedelta(minutes=59))
    assert (await world.store.grants.get(grant.id)).status is GrantStatus.ACTIVE
    await world.tick(timedelta(minutes=1))
    ended = await world.store.grants.get(grant.id)
    assert ended.status is GrantStatus.ENDED and str(ended.end_reason) == "expired"
    assert ("revoke", grant.id) in [(c.action, c.grant.id) for c in world.noop.calls]
    assert [c.title for c in world.chat.inbox("alice@example.com")] == ["Your access to prod-db expired"]


async def test_assigned_but_not_acknowledged_does_not_pass_the_gate(world: World) -> None:
    user_id = world.pd.add_user("alice@example.com", "Alice")
    world.pd.add_incident("Unacked", service="PCHKOUT", assigned_to=[user_id], acknowledged_by=[])
    with pytest.raises(GateRefused) as refused:
        await world.type(alice, "prod-db 3h")
    # The refusal says which gate failed, and why each candidate flow said no.
    assert "no acknowledged PagerDuty incident assigned to you on service Checkout API" in refused.value.message
    assert refused.value.reasons == {
        "incident-auto": "no acknowledged PagerDuty incident assigned to you on service Checkout API",
        "dba-approval": "allows at most 2h",
    }
    assert (await world.store.requests.list_for("alice@example.com"))[0].status is RequestStatus.REFUSED


async def test_without_an_incident_the_request_falls_through_to_dba_approval(world: World) -> None:
    world.pd.add_user("alice@example.com", "Alice")
    card = await world.type(alice, "prod-db 1h need to inspect a table")
    assert card.title == "Waiting for approval: prod-db"
    request = (await world.store.requests.list_for("alice@example.com"))[0]
    assert request.status is RequestStatus.PENDING
    assert request.approvers == ("dana@example.com", "erin@example.com")
    assert len(world.chat.inbox("dana@example.com")) == 1
    assert [a.kind for a in world.chat.inbox("dana@example.com")[0].actions] == ["approve", "deny"]


async def test_approval_by_an_eligible_approver_grants_and_updates_every_approver_message(world: World) -> None:
    world.pd.add_user("alice@example.com", "Alice")
    await world.type(alice, "prod-db 1h need to inspect a table")
    request = (await world.store.requests.list_for("alice@example.com"))[0]
    answer = await world.click(dana, request.id)
    assert answer.title == "You approved alice@example.com's access to prod-db"
    for approver in ("dana@example.com", "erin@example.com"):
        card = world.chat.inbox(approver)[0]
        assert card.actions == () and "Approved by dana@example.com" in card.title
    assert world.chat.inbox("alice@example.com")[-1].title.startswith("Access granted: prod-db")
    grant = await _only_grant(world, "alice@example.com")
    assert grant.approved_by == ("dana@example.com",)


async def test_requester_can_never_approve_and_the_attempt_is_audited(world: World) -> None:
    dana_pd = world.pd.add_user("dana@example.com", "Dana")
    assert dana_pd
    await world.type(dana, "billing-db 1h rotate keys")  # dba flow; dana is in dba but is the requester
    request = (await world.store.requests.list_for("dana@example.com"))[0]
    assert request.approvers == ("erin@example.com",)
    with pytest.raises(NotAuthorized, match="your own request"):
        await world.click(dana, request.id)
    assert "action.refused" in await world.audit_kinds()
    assert (await world.store.requests.get(request.id)).status is RequestStatus.PENDING


async def test_a_click_by_someone_who_is_not_an_approver_does_not_count(world: World) -> None:
    world.pd.add_user("alice@example.com", "Alice")
    await world.type(alice, "prod-db 1h")
    request = (await world.store.requests.list_for("alice@example.com"))[0]
    with pytest.raises(NotAuthorized, match="not an eligible approver"):
        await world.click(bob, request.id)
    assert (await world.store.requests.get(request.id)).approvals == ()


async def test_two_approvers_clicking_together_grant_exactly_once(world: World) -> None:
    world.pd.add_user("alice@example.com", "Alice")
    await world.type(alice, "prod-db 1h")
    request = (await world.store.requests.list_for("alice@example.com"))[0]
    results = await asyncio.gather(world.click(dana, request.id), world.click(erin, request.id), return_exceptions=True)
    losers = [r for r in results if isinstance(r, AlreadyDecided)]
    assert len(losers) == 1 and "already approved by" in losers[0].message
    assert len(await world.store.grants.list_for("alice@example.com")) == 1


async def test_a_double_click_counts_once(world: World) -> None:
    world.pd.add_user("alice@example.com", "Alice")
    await world.type(alice, "prod-db 1h")
    request = (await world.store.requests.list_for("alice@example.com"))[0]
    await world.click(dana, request.id)
    with pytest.raises(AlreadyDecided, match="already approved by dana@example.com"):
        await world.click(dana, request.id)
    assert len(world.noop.calls) == 1


async def test_two_of_three_approvals_are_needed_and_the_same_person_twice_is_one(world: World) -> None:
    world.pd.add_user("alice@example.com", "Alice")
    await world.type(alice, "prod-k8s 1h deploy hotfix")
    request = (await world.store.requests.list_for("alice@example.com"))[0]
    first = await world.click(bob, request.id)
    assert first.title == "Approval recorded; 1 more needed"
    again = await world.click(bob, request.id)
    assert again.title == "Approval recorded; 1 more needed"
    assert "1 of 2" in [f.value for f in world.chat.inbox("dana@example.com")[0].facts]
    await world.click(erin, request.id)
    grant = await _only_grant(world, "alice@example.com")
    assert set(grant.approved_by) == {"bob@example.com", "erin@example.com"}


async def test_deny_tells_the_requester_and_closes_the_buttons(world: World) -> None:
    world.pd.add_user("alice@example.com", "Alice")
    await world.type(alice, "prod-db 1h")
    request = (await world.store.requests.list_for("alice@example.com"))[0]
    await world.click(erin, request.id, approve=False)
    assert world.chat.inbox("alice@example.com")[-1].title == "Your request for prod-db was denied by erin@example.com"
    assert world.chat.inbox("dana@example.com")[0].actions == ()
    with pytest.raises(AlreadyDecided, match="already denied by erin@example.com"):
        await world.click(dana, request.id)


async def test_delegated_approval_goes_to_whoever_is_on_call_for_the_policy(world: World) -> None:
    world.pd.add_user("alice@example.com", "Alice")
    bob_id = world.pd.add_user("bob@example.com", "Bob")
    world.pd.add_oncall(user_id=bob_id, escalation_policy_id="PESCAL1", level=1)
    # billing-db: dba-approval comes first; make it refuse by asking longer than it allows.
    await world.type(alice, "billing-db 3h")
    request = (await world.store.requests.list_for("alice@example.com"))[0]
    assert request.flow == "on-call-delegated" and request.approvers == ("bob@example.com",)
    await world.click(bob, request.id)
    assert (await _only_grant(world, "alice@example.com")).status is GrantStatus.ACTIVE


async def test_nobody_deciding_times_the_request_out(world: World) -> None:
    world.pd.add_user("alice@example.com", "Alice")
    await world.type(alice, "prod-db 1h")
    await world.tick(timedelta(minutes=61))
    request = (await world.store.requests.list_for("alice@example.com"))[0]
    assert request.status is RequestStatus.TIMED_OUT
    assert world.chat.inbox("alice@example.com")[-1].title == "Your request for prod-db timed out"


async def test_revoke_ends_the_grant_early(world: World) -> None:
    _ack_incident(world, "alice")
    await world.type(alice, "prod-db 2h")
    grant = await _only_grant(world, "alice@example.com")
    card = await world.type(alice, f"revoke {grant.id}")
    assert card.title == "Access to prod-db revoked"
    assert (await world.store.grants.get(grant.id)).status is GrantStatus.ENDED
    with pytest.raises(AlreadyDecided, match="has already ended"):
        await world.type(alice, f"revoke {grant.id}")


async def test_only_the_holder_or_an_admin_may_revoke(world: World) -> None:
    _ack_incident(world, "alice")
    await world.type(alice, "prod-db 2h")
    grant = await _only_grant(world, "alice@example.com")
    with pytest.raises(NotAuthorized, match="not yours"):
        await world.type(bob, f"revoke {grant.id}")
    card = await world.type(carol, f"revoke {grant.id}")  # carol is an admin
    assert card.title == "Access to prod-db revoked"
    assert world.chat.inbox("alice@example.com")[-1].title == "Your access to prod-db was revoked by carol@example.com"


async def test_extend_rechecks_the_gate_and_respects_the_maximum(world: World) -> None:
    incident = _ack_incident(world, "alice")
    await world.type(alice, "prod-db 2h")
    grant = await _only_grant(world, "alice@example.com")
    card = await world.type(alice, f"extend {grant.id} 1h")
    assert card.title.startswith("Access granted: prod-db until")
    assert (await world.store.grants.get(grant.id)).expires_at == grant.expires_at + timedelta(hours=1)
    with pytest.raises(UsageError, match="extend by up to 1h"):
        await world.type(alice, f"extend {grant.id} 2h")
    world.pd.resolve(incident.id)
    with pytest.raises(GateRefused, match="can't be extended: no acknowledged PagerDuty incident"):
        await world.type(alice, f"extend {grant.id} 30m")


async def test_a_failing_revoke_is_retried_until_the_provisioner_confirms(world: World) -> None:
    _ack_incident(world, "alice")
    await world.type(alice, "payments-api 1h")
    grant = await _only_grant(world, "alice@example.com")
    world.flaky.revoke_failures = 2
    await world.tick(timedelta(hours=1))
    assert (await world.store.grants.get(grant.id)).status is GrantStatus.REVOKING
    await world.tick(timedelta(seconds=10))
    assert (await world.store.grants.get(grant.id)).status is GrantStatus.REVOKING
    await world.tick(timedelta(seconds=20))
    assert (await world.store.grants.get(grant.id)).status is GrantStatus.ENDED
    assert world.flaky.calls.count(("revoke", grant.id)) == 3
    assert (await world.audit_kinds()).count("grant.revoke_failed") == 2


async def test_provisioning_that_keeps_failing_marks_the_grant_failed_and_says_so(world: World) -> None:
    _ack_incident(world, "alice")
    world.flaky.grant_failures = 1
    card = await world.type(alice, "payments-api 1h")
    assert card.title == "Access to payments-api could not be provisioned"
    assert (await _only_grant(world, "alice@example.com")).status is GrantStatus.FAILED
    assert "grant.failed" in await world.audit_kinds()


async def test_unknown_resource_suggests_close_names(world: World) -> None:
    with pytest.raises(UsageError, match="Did you mean prod-db"):
        await world.type(alice, "prod-bd 1h")
    assert world.pd.requests == []  # no PagerDuty call for a typo


async def test_durations_outside_the_allowed_range_say_the_range(world: World) -> None:
    with pytest.raises(UsageError, match="between 1m and 4h"):
        await world.type(alice, "prod-db 9h")
    with pytest.raises(UsageError, match="not a duration"):
        await world.type(alice, "extend g-1 2x")


async def test_an_over_long_reason_is_refused_before_anything_is_stored(world: World) -> None:
    with pytest.raises(UsageError, match="keep it under 500"):
        await world.type(alice, "prod-db 1h " + "x" * 501)
    assert await world.store.requests.list_for("alice@example.com") == []


async def test_no_pagerduty_user_for_the_email_is_a_clear_identity_error(world: World) -> None:
    with pytest.raises(IdentityError, match="No PagerDuty user has the email alice@example.com"):
        await world.type(alice, "prod-db 1h")


async def test_unknown_request_and_grant_ids_are_not_found(world: World) -> None:
    with pytest.raises(NotFound):
        await world.click(dana, "r-nothere1")
    with pytest.raises(NotFound):
        await world.type(alice, "revoke g-nothere1")


async def test_list_shows_requests_and_active_grants(world: World) -> None:
    _ack_incident(world, "alice")
    await world.type(alice, "prod-db 1h")
    card = await world.type(alice, "list")
    labels = [f.label for f in card.facts]
    assert any(label.startswith("Grant g-") for label in labels)
    assert any(label.startswith("Request r-") for label in labels)

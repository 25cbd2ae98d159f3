"""The crash-safe grant lifecycle through the core, on real storage: what a crash leaves behind is
finished by the reconciler, a revoke reaches the provisioner once even with two replicas racing,
one failing grant never stops a pass, and a state change never commits without its audit row."""

from __future__ import annotations

import asyncio
import logging
from collections import Counter
from datetime import timedelta
from typing import Any

import pytest

from bot.adapters.provisioners import MAX_BACKOFF_SECONDS
from bot.core import events
from bot.core.clock import FakeClock
from bot.core.domain import AccessRequest, Approval, AuditEvent, EndReason, Grant, GrantStatus, RequestStatus
from bot.core.errors import StorageError
from bot.core.grants import PROVISIONER_BACKOFF_CAP_SECONDS, provisioner_lease
from bot.core.policy import ProvisionerSpec
from bot.core.ports import Store
from tests.fakes import storage_fixtures
from tests.fakes.storage_fixtures import make_grant, make_request, opened
from tests.fakes.world import AuditRequiredStore, World, open_world, person

backend = storage_fixtures.backend
database_url = storage_fixtures.database_url
store = storage_fixtures.store

alice, bob, dana, erin = (person(n) for n in ("alice", "bob", "dana", "erin"))
LEASE = timedelta(minutes=3)


def approved_request(w: World, request_id: str = "r-crashed1", **changes: Any) -> AccessRequest:
    """Alice's prod-db request for 1h, approved by dana ten minutes ago."""
    at = w.clock.now() - timedelta(minutes=10)
    fields: dict[str, Any] = {
        "requester": alice,
        "flow": "dba-approval",
        "status": RequestStatus.APPROVED,
        "created_at": at,
        "approvers": (dana.email, erin.email),
        "approvals": (Approval(dana.email, at),),
        "decided_by": dana.email,
        "decided_at": at,
        **changes,
    }
    return make_request(request_id, **fields)


def left_provisioning(w: World, request: AccessRequest, grant_id: str = "g-crashed1", **changes: Any) -> Grant:
    """The grant a crash left PROVISIONING: its claim ran out a second ago."""
    fields: dict[str, Any] = {
        "request_id": request.id,
        "resource": request.resource,
        "holder": alice,
        "flow": request.flow,
        "status": GrantStatus.PROVISIONING,
        "created_at": request.decided_at,
        "expires_at": request.created_at + timedelta(hours=1),
        "approved_by": (dana.email,),
        "next_attempt_at": w.clock.now() - timedelta(seconds=1),
        **changes,
    }
    return make_grant(grant_id, **fields)


async def crashed_while_provisioning(w: World, **grant_changes: Any) -> Grant:
    request = approved_request(w)
    grant = left_provisioning(w, request, **grant_changes)
    await w.store.requests.add_with_grant(request, grant)
    return grant


async def audit_kinds(store: Store, w: World) -> list[str]:
    return [e.kind for e in await store.audit.since(w.clock.now() - timedelta(days=1))]


def errors(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR]


# --- the reconciler ----------------------------------------------------------------------------


async def test_a_grant_left_provisioning_by_a_crash_is_finished_and_its_holder_told(world: World) -> None:
    grant = await crashed_while_provisioning(world)

    await world.tick(timedelta(seconds=0))

    finished = await world.store.grants.get(grant.id)
    assert finished is not None and finished.status is GrantStatus.ACTIVE
    assert finished.expires_at == world.clock.now() + timedelta(hours=1)  # counted from activation
    assert [(c.action, c.grant.id) for c in world.noop.calls] == [("grant", grant.id)]
    assert world.chat.inbox(alice.email)[-1].title.startswith("Access granted: prod-db")
    assert await world.audit_kinds() == ["grant.provisioning_resumed", "grant.provisioned"]


async def test_a_left_grant_whose_request_is_missing_is_still_finished(world: World) -> None:
    grant = left_provisioning(world, approved_request(world))
    await world.store.grants.add(grant)  # no request row
    await world.tick(timedelta(seconds=0))
    finished = await world.store.grants.get(grant.id)
    assert finished is not None and finished.status is GrantStatus.ACTIVE
    assert finished.expires_at - world.clock.now() == grant.expires_at - grant.created_at


async def test_a_provisioning_grant_whose_claim_is_live_is_left_to_its_claimant(world: World) -> None:
    grant = await crashed_while_provisioning(world, next_attempt_at=world.clock.now() + LEASE)
    await world.tick(timedelta(seconds=0))
    assert (await world.store.grants.get(grant.id)).status is GrantStatus.PROVISIONING  # type: ignore[union-attr]
    assert world.noop.calls == []
    await world.tick(LEASE)  # the claimant died: its lease runs out
    assert (await world.store.grants.get(grant.id)).status is GrantStatus.ACTIVE  # type: ignore[union-attr]


async def test_a_left_grant_the_provisioner_still_refuses_is_rolled_back_revoked_and_the_holder_told(
    world: World,
) -> None:
    request = approved_request(world, resource="payments-api", flow="incident-auto", approvals=(), decided_by="ackgate")
    grant = left_provisioning(world, request, approved_by=())
    await world.store.requests.add_with_grant(request, grant)
    world.flaky.grant_failures = 1

    await world.tick(timedelta(seconds=0))

    failed = await world.store.grants.get(grant.id)
    assert failed is not None and failed.status is GrantStatus.FAILED
    assert failed.end_reason is EndReason.PROVISIONING_FAILED and "503" in failed.last_error
    assert world.flaky.calls == [("grant", grant.id), ("revoke", grant.id)]  # anything half-granted is undone
    # An automatic grant's command reply is long gone: the holder is told in a message.
    assert [c.title for c in world.chat.inbox(alice.email)] == ["Access to payments-api could not be provisioned"]
    assert await world.audit_kinds() == ["grant.provisioning_resumed", "grant.failed", "grant.ended"]


async def test_a_roll_back_whose_revoke_fails_is_retried_like_any_revoke(world: World) -> None:
    request = approved_request(world, resource="payments-api", flow="incident-auto")
    await world.store.requests.add_with_grant(request, left_provisioning(world, request))
    world.flaky.grant_failures, world.flaky.revoke_failures = 1, 1
    await world.tick(timedelta(seconds=0))
    assert (await world.store.grants.get("g-crashed1")).status is GrantStatus.REVOKING  # type: ignore[union-attr]
    await world.tick(timedelta(seconds=10))
    assert (await world.store.grants.get("g-crashed1")).status is GrantStatus.FAILED  # type: ignore[union-attr]
    assert world.flaky.calls.count(("revoke", "g-crashed1")) == 2


async def test_an_approved_request_with_no_grant_gets_its_grant(world: World) -> None:
    request = approved_request(world)
    await world.store.requests.add(request)  # an older version crashed before inserting the grant

    await world.tick(timedelta(seconds=0))

    [grant] = await world.store.grants.list_for(alice.email, include_ended=True)
    assert (grant.status, grant.request_id, grant.approved_by) == (GrantStatus.ACTIVE, request.id, (dana.email,))
    assert (await world.store.requests.get(request.id)).grant_id == grant.id  # type: ignore[union-attr]
    assert world.chat.inbox(alice.email)[-1].title.startswith("Access granted: prod-db")
    assert await world.audit_kinds() == ["grant.created_by_reconciler", "grant.provisioned"]
    await world.tick(timedelta(seconds=0))
    assert len(world.noop.calls) == 1  # repaired once


async def test_a_live_provisioning_is_never_taken_over_by_the_reconciler(world: World) -> None:
    """While the approver's provisioner call runs (slowly), reconciler passes leave it alone."""
    world.pd.add_user(alice.email, "Alice")
    started, release = asyncio.Event(), asyncio.Event()
    calls: list[str] = []

    class Slow:
        async def grant(self, grant: Grant) -> None:
            calls.append(grant.id)
            started.set()
            await release.wait()

        async def revoke(self, grant: Grant) -> None:
            calls.append("revoke")

    world.service.grants.provisioners = {"noop": Slow(), "flaky": world.flaky}
    await world.type(alice, "prod-db 1h inspect a table")
    [request] = await world.store.requests.list_for(alice.email)
    click = asyncio.create_task(world.click(dana, request.id))
    await started.wait()
    for _ in range(3):
        await world.reconciler.run_once()
    release.set()
    await click
    assert len(calls) == 1
    assert [g.status for g in await world.store.grants.list_for(alice.email)] == [GrantStatus.ACTIVE]


# --- approvals and their grant, atomically -----------------------------------------------------


async def test_the_final_approval_and_its_grant_commit_together(world: World) -> None:
    world.pd.add_user(alice.email, "Alice")
    await world.type(alice, "prod-db 1h inspect a table")
    [request] = await world.store.requests.list_for(alice.email)
    await world.click(dana, request.id)
    stored = await world.store.requests.get(request.id)
    [grant] = await world.store.grants.list_for(alice.email)
    assert stored is not None and stored.grant_id == grant.id


async def test_an_audit_row_that_cannot_be_written_undoes_the_approval_and_its_grant(
    store: Store, monkeypatch: pytest.MonkeyPatch
) -> None:
    async with open_world(store) as w:
        w.pd.add_user(alice.email, "Alice")
        await w.type(alice, "prod-db 1h inspect a table")
        [request] = await store.requests.list_for(alice.email)

        def unwritable(self: events.RequestApproved) -> AuditEvent:
            return AuditEvent(self.at, None, "x", self.request.id)  # type: ignore[arg-type]

        monkeypatch.setattr(events.RequestApproved, "audit", unwritable)
        with pytest.raises(StorageError):
            await w.click(dana, request.id)

        after = await store.requests.get(request.id)
        assert after is not None and (after.status, after.approvals, after.grant_id) == (
            RequestStatus.PENDING,
            (),
            None,
        )
        assert await store.grants.list_for(alice.email, include_ended=True) == []
        assert w.noop.calls == []
        assert "access.approved" not in await audit_kinds(store, w)


async def test_the_core_never_changes_a_request_or_grant_without_its_audit(world: World) -> None:
    """The scenario world's store fails any such call; this shows that guard works."""
    guarded = AuditRequiredStore(world.store)
    with pytest.raises(AssertionError, match="without its audit"):
        await guarded.grants.add(make_grant())
    with pytest.raises(AssertionError, match="without its audit"):
        await guarded.requests.decide("r-1", expected=RequestStatus.PENDING, new=RequestStatus.DENIED, by="x", at=0)


# --- passes: one failure never stops the others --------------------------------------------------


class Exploding:
    """A provisioner with a bug for one grant: its revoke raises something unexpected."""

    def __init__(self, bad: str) -> None:
        self.bad = bad
        self.revoked: list[str] = []

    async def grant(self, grant: Grant) -> None:
        return None

    async def revoke(self, grant: Grant) -> None:
        if grant.id == self.bad:
            raise RuntimeError("provisioner bug")
        self.revoked.append(grant.id)


async def test_a_grant_whose_provisioner_raises_unexpectedly_does_not_stop_the_pass(
    store: Store, caplog: pytest.LogCaptureFixture
) -> None:
    exploding = Exploding("g-bad")
    async with open_world(store, provisioners={"flaky": exploding}) as w:
        now = w.clock.now()
        for grant_id in ("g-first", "g-bad", "g-last"):
            await store.grants.add(make_grant(grant_id, resource="payments-api", holder=alice, expires_at=now))
        await store.requests.add(make_request("r-stale", requester=alice, created_at=now - timedelta(hours=2)))

        await w.tick(timedelta(seconds=1))

        statuses = {g.id: g.status for g in await store.grants.list_for(alice.email, include_ended=True)}
        assert statuses == {"g-first": GrantStatus.ENDED, "g-bad": GrantStatus.REVOKING, "g-last": GrantStatus.ENDED}
        bad = await store.grants.get("g-bad")
        assert bad is not None and bad.revoke_attempts == 1 and "RuntimeError" in bad.last_error
        assert "provisioner bug" not in bad.last_error  # an unexpected error's text is not shown
        assert (await store.requests.get("r-stale")).status is RequestStatus.TIMED_OUT  # type: ignore[union-attr]
        assert (await audit_kinds(store, w)).count("grant.revoke_failed") == 1
        assert errors(caplog) == []


# --- revoke exactly once, two replicas racing ----------------------------------------------------


class SlowCounting:
    """A provisioner whose calls take a while, counting each grant's revokes."""

    def __init__(self) -> None:
        self.revokes: Counter[str] = Counter()

    async def grant(self, grant: Grant) -> None:
        return None

    async def revoke(self, grant: Grant) -> None:
        self.revokes[grant.id] += 1
        await asyncio.sleep(0.05)


GRANTS = 20


async def test_two_replicas_racing_expiries_revoke_each_grant_exactly_once(
    database_url: str, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG, logger="ackgate")
    slow = SlowCounting()
    clock = FakeClock()
    async with (
        opened(database_url) as one,
        opened(database_url) as two,
        open_world(one, provisioners={"noop": slow}, lease=LEASE, clock=clock) as a,
        open_world(two, provisioners={"noop": slow}, lease=LEASE, clock=clock) as b,
    ):
        now = a.clock.now()
        ids = [f"g-race{i:04d}" for i in range(GRANTS)]
        for i, grant_id in enumerate(ids):
            await one.grants.add(make_grant(grant_id, holder=alice, expires_at=now + timedelta(seconds=i % 3)))
        a.clock.advance(timedelta(minutes=1))

        async def later(coro: Any, delay: float) -> Any:
            await asyncio.sleep(delay)
            return await coro

        await asyncio.gather(
            a.scheduler.run_once(),
            b.scheduler.run_once(),
            later(a.scheduler.run_once(), 0.01),
            later(b.service.grants.retry_revokes(), 0.02),  # during the slow revokes: the old double
            later(a.service.grants.retry_revokes(), 0.03),
            later(b.scheduler.run_once(), 0.04),
        )

        assert dict(slow.revokes) == dict.fromkeys(ids, 1)
        statuses = {g.id: g.status for g in await one.grants.list_for(alice.email, include_ended=True)}
        assert statuses == dict.fromkeys(ids, GrantStatus.ENDED)
        kinds = Counter(await audit_kinds(one, a))
        assert (kinds["grant.expired"], kinds["grant.ended"]) == (GRANTS, GRANTS)
        assert errors(caplog) == []
        assert not [r for r in caplog.records if r.levelno == logging.WARNING and r.name.startswith("ackgate")]


# --- the lease -----------------------------------------------------------------------------------


def test_the_lease_outlasts_the_slowest_call_a_webhook_provisioner_can_make() -> None:
    assert PROVISIONER_BACKOFF_CAP_SECONDS == MAX_BACKOFF_SECONDS  # the core's copy of the adapter's cap
    spec = ProvisionerSpec(type="webhook", url="https://p.example/ackgate", timeout_seconds=10, max_attempts=5)
    assert provisioner_lease(spec) == timedelta(seconds=10 * 5 + 30 * 4 + 30)
    assert provisioner_lease(None) == timedelta(seconds=30)


async def test_a_storage_method_that_ignores_its_audit_is_caught_and_the_row_still_written(
    world: World, caplog: pytest.LogCaptureFixture
) -> None:
    async def forgetful(audit: Any) -> str:
        return "stored"  # a backend bug: the audit function is never called

    result = await world.service.bus.commit(
        forgetful, lambda _: [events.ActionRefused(world.clock.now(), alice.email, "x", "r-1", "why")]
    )
    assert result == "stored"
    assert await world.audit_kinds() == ["action.refused"]
    assert errors(caplog) == ["a state change was stored without its audit rows; appending them now"]


async def test_chat_messages_wait_until_the_claimed_provisioner_call_is_made(
    world: World, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A slow chat platform cannot hold a provisioning claim past its lease: the approval cards
    are updated after the provisioner was called."""
    world.pd.add_user(alice.email, "Alice")
    await world.type(alice, "prod-db 1h inspect a table")
    [request] = await world.store.requests.list_for(alice.email)
    order: list[str] = []
    update, grant = world.chat.update, world.noop.grant

    async def updating(ref: Any, card: Any) -> None:
        order.append("card updated")
        await update(ref, card)

    async def granting(g: Grant) -> None:
        order.append("provisioner called")
        await grant(g)

    monkeypatch.setattr(world.chat, "update", updating)
    monkeypatch.setattr(world.noop, "grant", granting)
    await world.click(dana, request.id)
    assert order[0] == "provisioner called" and "card updated" in order


async def test_a_pending_request_that_already_has_its_approvals_is_approved_and_granted_once(world: World) -> None:
    """An older version crashed between the last approval and the decision."""
    at = world.clock.now() - timedelta(minutes=10)
    approvals = (Approval(dana.email, at), Approval(erin.email, at + timedelta(minutes=1)))
    stranded = approved_request(
        world, status=RequestStatus.PENDING, decided_by=None, decided_at=None, required_approvals=2, approvals=approvals
    )
    await world.store.requests.add(stranded)

    await world.tick(timedelta(seconds=0))

    request = await world.store.requests.get(stranded.id)
    assert request is not None and (request.status, request.decided_by) == (RequestStatus.APPROVED, erin.email)
    [grant] = await world.store.grants.list_for(alice.email, include_ended=True)
    assert (grant.status, grant.approved_by, request.grant_id) == (
        GrantStatus.ACTIVE,
        (dana.email, erin.email),
        grant.id,
    )
    assert world.chat.inbox(alice.email)[-1].title.startswith("Access granted: prod-db")
    assert await world.audit_kinds() == ["access.approved", "grant.created_by_reconciler", "grant.provisioned"]
    await world.tick(timedelta(seconds=0))
    assert len(world.noop.calls) == 1  # repaired once


async def test_a_pending_request_still_short_of_approvals_is_left_pending(world: World) -> None:
    await world.store.requests.add(
        approved_request(world, status=RequestStatus.PENDING, decided_by=None, decided_at=None, required_approvals=2)
    )
    await world.tick(timedelta(seconds=0))
    request = await world.store.requests.get("r-crashed1")
    assert request is not None and request.status is RequestStatus.PENDING
    assert await world.audit_kinds() == [] and world.noop.calls == []

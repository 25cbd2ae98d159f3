"""The grant lifecycle through the real entry points: Ackgate's aiohttp app with the Slack and
PagerDuty simulators around it. What a crash left in the database is finished as the app starts;
approval cards tell the truth after a failed provisioning and name every approver; ``/access list``
shows every live grant."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path

import pytest

from bot.adapters.provisioners import NoopProvisioner
from bot.core.clock import FakeClock
from bot.core.domain import Approval, EndReason, GrantStatus, RequestStatus
from bot.runtime.simulators.stage import Stage
from tests.fakes.stage_fixtures import audit_kinds, grants_of, request_id_in
from tests.fakes.storage_fixtures import make_grant, make_request, opened
from tests.fakes.world import FlakyProvisioner

POLICY = """\
version: 1
resources:
  - name: prod-db
    max_duration: 4h
  - name: prod-k8s
    max_duration: 8h
    provisioner: flaky
provisioners:
  flaky:
    type: webhook
    url: http://127.0.0.1:9/unused
flows:
  - name: db-auto
    resources: [prod-db]
    requesters:
      anyone: true
    approval:
      type: auto
    default_duration: 1h
    max_duration: 4h
  - name: k8s-two-person
    resources: [prod-k8s]
    requesters:
      anyone: true
    approval:
      type: approvers
      approvers: [bob@example.com, carol@example.com, dana@example.com]
      required: 2
    default_duration: 30m
    max_duration: 2h
"""


@dataclass
class Rig:
    tmp_path: Path
    clock: FakeClock
    noop: NoopProvisioner
    flaky: FlakyProvisioner

    def stage(self, **settings: object) -> Stage:
        policy = self.tmp_path / "policy.yaml"
        policy.write_text(POLICY, encoding="utf-8")
        return Stage(
            policy_file=policy,
            workdir=self.tmp_path,
            clock=self.clock,
            provisioners={"noop": self.noop, "flaky": self.flaky},
            settings=settings,
        )

    @property
    def database_url(self) -> str:
        return f"sqlite:///{self.tmp_path / 'ackgate.db'}"  # where the stage keeps its store


@pytest.fixture
def rig(tmp_path: Path) -> Rig:
    return Rig(tmp_path, FakeClock(), NoopProvisioner(), FlakyProvisioner())


@pytest.fixture
async def stage(rig: Rig) -> AsyncIterator[Stage]:
    async with rig.stage() as stage:
        yield stage


async def test_a_grant_a_crash_left_provisioning_is_finished_as_ackgate_starts(rig: Rig) -> None:
    now = rig.clock.now()
    async with opened(rig.database_url) as before_the_crash:
        request = make_request(
            "r-crashed1",
            status=RequestStatus.APPROVED,
            flow="db-auto",
            decided_by="ackgate",
            decided_at=now - timedelta(minutes=5),
            created_at=now - timedelta(minutes=5),
        )
        grant = make_grant(
            "g-crashed1",
            request_id=request.id,
            flow="db-auto",
            status=GrantStatus.PROVISIONING,
            created_at=now - timedelta(minutes=5),
            expires_at=now + timedelta(minutes=55),
            next_attempt_at=now - timedelta(minutes=4),  # its claimant died long ago
        )
        await before_the_crash.requests.add_with_grant(request, grant)
        await before_the_crash.requests.add(make_request("r-orphan1", status=RequestStatus.APPROVED, flow="db-auto"))

    async with rig.stage() as stage:
        # Done before the first request is served: no clock moved, no pass was woken.
        grants = {g.request_id: g for g in await grants_of(stage, "alice@example.com")}
        assert grants["r-crashed1"].status is GrantStatus.ACTIVE
        assert grants["r-crashed1"].expires_at == now + timedelta(hours=1)  # from activation
        assert grants["r-orphan1"].status is GrantStatus.ACTIVE
        assert sorted(c.action for c in rig.noop.calls) == ["grant", "grant"]
        kinds = await audit_kinds(stage)
        assert kinds.count("grant.provisioned") == 2
        assert {"grant.provisioning_resumed", "grant.created_by_reconciler"} <= set(kinds)


async def test_a_running_ackgate_keeps_reconciling(stage: Stage, rig: Rig) -> None:
    """A grant another replica left provisioning (it died, its lease ran out) is finished by this one."""
    now = rig.clock.now()
    request = make_request("r-elsewhere", status=RequestStatus.APPROVED, flow="db-auto", decided_at=now)
    grant = make_grant(
        "g-elsewhere",
        request_id=request.id,
        flow="db-auto",
        status=GrantStatus.PROVISIONING,
        next_attempt_at=now + timedelta(seconds=30),
        claimed_by="replica-that-died",
    )
    await stage.parts.store.requests.add_with_grant(request, grant)
    await stage.pass_time(31)
    for _ in range(500):
        if (await stage.parts.store.grants.get(grant.id)).status is GrantStatus.ACTIVE:  # type: ignore[union-attr]
            break
        await asyncio.sleep(0.01)
    assert (await stage.parts.store.grants.get(grant.id)).status is GrantStatus.ACTIVE  # type: ignore[union-attr]
    assert [(c.action, c.grant.id) for c in rig.noop.calls] == [("grant", grant.id)]


async def test_a_restarted_instance_takes_back_the_claims_it_held_when_killed_at_once(rig: Rig) -> None:
    """Killed in the middle of provisioner calls, then restarted: nothing waits for the leases."""
    now = rig.clock.now()
    live_lease = now + timedelta(minutes=3)
    async with opened(rig.database_url) as before_the_kill:
        request = make_request("r-mid-grant", status=RequestStatus.APPROVED, flow="db-auto", decided_at=now)
        granting = make_grant(
            "g-mid-grant",
            request_id=request.id,
            flow="db-auto",
            status=GrantStatus.PROVISIONING,
            next_attempt_at=live_lease,
            claimed_by="replica-a",
        )
        await before_the_kill.requests.add_with_grant(request, granting)
        revoking = make_grant(
            "g-mid-revoke",
            flow="db-auto",
            status=GrantStatus.REVOKING,
            end_reason=EndReason.EXPIRED,
            expires_at=now,
            next_attempt_at=live_lease,
            claimed_by="replica-a",
        )
        await before_the_kill.grants.add(revoking)
        others = make_grant(
            "g-other-replica",
            flow="db-auto",
            status=GrantStatus.REVOKING,
            end_reason=EndReason.EXPIRED,
            expires_at=now,
            next_attempt_at=live_lease,
            claimed_by="replica-b",  # alive, busy with it
        )
        await before_the_kill.grants.add(others)

    async with rig.stage(instance_id="replica-a") as stage:
        # The grant is finished before serving; the revoke by the scheduler's first pass, at once.
        assert (await stage.parts.store.grants.get("g-mid-grant")).status is GrantStatus.ACTIVE  # type: ignore[union-attr]
        for _ in range(500):
            if (await stage.parts.store.grants.get("g-mid-revoke")).status is GrantStatus.ENDED:  # type: ignore[union-attr]
                break
            await asyncio.sleep(0.01)
        statuses = {g.id: g.status for g in await grants_of(stage, "alice@example.com")}
        assert statuses == {
            "g-mid-grant": GrantStatus.ACTIVE,
            "g-mid-revoke": GrantStatus.ENDED,
            "g-other-replica": GrantStatus.REVOKING,
        }
        assert sorted((c.action, c.grant.id) for c in rig.noop.calls) == [
            ("grant", "g-mid-grant"),
            ("revoke", "g-mid-revoke"),
        ]


async def test_the_final_card_of_a_two_person_approval_names_both_approvers(stage: Stage) -> None:
    alice, bob, carol, dana = (stage.person(n) for n in ("alice", "bob", "carol", "dana"))
    await stage.command(alice, "prod-k8s 1h deploy the hotfix")
    request_id = request_id_in(await stage.wait_for_dm(dana, "alice@example.com requests prod-k8s"))

    assert "Approval recorded; 1 more needed" in (await stage.click(bob, "approve", request_id)).text
    await stage.click(carol, "approve", request_id)

    danas_card = stage.dms(dana)[0]
    assert "Approved by bob@example.com, carol@example.com" in danas_card
    assert "[Approve]" not in danas_card
    [grant] = await grants_of(stage, alice.email)
    assert grant.status is GrantStatus.ACTIVE and grant.approved_by == (bob.email, carol.email)


async def test_after_a_failed_provisioning_no_approval_card_still_says_approved(stage: Stage, rig: Rig) -> None:
    alice, bob, carol, dana = (stage.person(n) for n in ("alice", "bob", "carol", "dana"))
    await stage.command(alice, "prod-k8s 1h deploy the hotfix")
    request_id = request_id_in(await stage.wait_for_dm(dana, "alice@example.com requests prod-k8s"))
    await stage.click(bob, "approve", request_id)
    rig.flaky.grant_failures = 1

    click = await stage.click(carol, "approve", request_id)

    assert "could not be provisioned" in click.text
    for approver in (bob, carol, dana):
        card = stage.dms(approver)[0]
        assert "but the access could not be provisioned" in card, card
        assert "The provisioner answered 503." in card
        assert "Approved by bob@example.com, carol@example.com at" not in card  # the success title
    await stage.wait_for_dm(alice, "Access to prod-k8s could not be provisioned")
    [grant] = await grants_of(stage, alice.email)
    assert grant.status is GrantStatus.FAILED
    assert rig.flaky.calls == [("grant", grant.id), ("revoke", grant.id)]  # rolled back at the provisioner


async def test_list_shows_every_active_grant_not_only_ten(stage: Stage, rig: Rig) -> None:
    alice = stage.person("alice")
    now = rig.clock.now()
    store = stage.parts.store
    for i in range(14):
        await store.grants.add(make_grant(f"g-many{i:04d}", expires_at=now + timedelta(minutes=10 + i)))
    await store.requests.add(
        make_request("r-recent1", status=RequestStatus.APPROVED, approvals=(Approval("bob@example.com", now),))
    )

    reply = await stage.command(alice, "list")

    for i in range(14):
        assert f"g-many{i:04d}" in reply.text
    assert "r-recent1" in reply.text

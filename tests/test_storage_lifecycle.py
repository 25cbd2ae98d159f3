"""The storage contract of the crash-safe grant lifecycle, on SQLite and PostgreSQL: audit rows
commit with their state change, an approval commits with its grant, and provisioner calls are
claimed by compare-and-set (raced between two stores on one database)."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from dataclasses import replace
from datetime import timedelta

import pytest

from bot.core.domain import AccessRequest, Approval, AuditEvent, EndReason, Grant, GrantStatus, RequestStatus
from bot.core.errors import AlreadyDecided, NotFound, StorageError
from bot.core.ports import Store
from storage import postgres as postgres_backend
from storage import sqlite as sqlite_backend
from storage.codec import GRANT_COLUMNS, insert
from storage.postgres import PostgresStore
from storage.sqlite import SqliteStore
from tests.fakes import storage_fixtures
from tests.fakes.storage_fixtures import BOB, CAROL, T0, make_grant, make_request, opened

backend = storage_fixtures.backend
database_url = storage_fixtures.database_url
store = storage_fixtures.store

HOUR = timedelta(hours=1)
LEASE = timedelta(minutes=5)


def _line(kind: str, subject: str = "x") -> AuditEvent:
    return AuditEvent(T0, kind, "ackgate", subject, {"n": 1})


def _broken(kind: str) -> AuditEvent:
    """An audit line the database refuses: no kind breaks the column's NOT NULL constraint."""
    return AuditEvent(T0, None, "ackgate", kind)  # type: ignore[arg-type]


def audit_of(*kinds: str):
    def build(result: object) -> Sequence[AuditEvent]:
        return [_line(kind) for kind in kinds]

    return build


def broken_audit(result: object) -> Sequence[AuditEvent]:
    return [_line("fine"), _broken("broken")]


async def kinds(store: Store) -> list[str]:
    return [e.kind for e in await store.audit.since(T0 - 24 * HOUR)]


def provisioning(grant_id: str = "g-aaaa2222", **changes: object) -> Grant:
    return make_grant(grant_id, **{"status": GrantStatus.PROVISIONING, "next_attempt_at": T0 + LEASE, **changes})


def approved(request_id: str = "r-aaaa2222", **changes: object) -> AccessRequest:
    return make_request(request_id, status=RequestStatus.APPROVED, decided_by=BOB.email, decided_at=T0, **changes)


# --- audit rows commit with the change ---------------------------------------------------------


async def test_every_state_change_writes_the_audit_rows_built_from_its_result(store: Store) -> None:
    seen: list[object] = []

    def recording(kind: str):
        def build(result: object) -> Sequence[AuditEvent]:
            seen.append(result)
            return [_line(kind)]

        return build

    await store.requests.add(make_request(), audit=recording("added"))
    updated = await store.requests.add_approval("r-aaaa2222", approver_email=BOB.email, at=T0, audit=recording("one"))
    decided = await store.requests.decide(
        "r-aaaa2222",
        expected=RequestStatus.PENDING,
        new=RequestStatus.DENIED,
        by=BOB.email,
        at=T0,
        audit=recording("no"),
    )
    await store.grants.add(make_grant(), audit=recording("grant"))
    revoking = await store.grants.transition(
        "g-aaaa2222", expected=GrantStatus.ACTIVE, new=GrantStatus.REVOKING, at=T0, audit=recording("revoking")
    )
    retried = await store.grants.schedule_revoke_retry(
        "g-aaaa2222", at=T0 + HOUR, error="503", audit=recording("retry")
    )
    await store.grants.add(make_grant("g-other"))
    extended = await store.grants.extend(
        "g-other", expected_expires_at=T0 + HOUR, new_expires_at=T0 + 2 * HOUR, audit=recording("extended")
    )
    assert await kinds(store) == ["added", "one", "no", "grant", "revoking", "retry", "extended"]
    assert seen == [None, updated, decided, None, revoking, retried, extended]


@pytest.mark.parametrize("change", ["add", "decide", "add_with_grant", "approve", "transition", "add_for_request"])
async def test_an_audit_row_that_cannot_be_written_rolls_the_state_change_back(store: Store, change: str) -> None:
    await store.requests.add(make_request())
    await store.requests.add(approved("r-approved"))
    await store.grants.add(make_grant())
    changes = {
        "add": lambda: store.requests.add(make_request("r-new"), audit=broken_audit),
        "decide": lambda: store.requests.decide(
            "r-aaaa2222", expected=RequestStatus.PENDING, new=RequestStatus.DENIED, by="b", at=T0, audit=broken_audit
        ),
        "add_with_grant": lambda: store.requests.add_with_grant(
            approved("r-new"), provisioning("g-new", request_id="r-new"), audit=broken_audit
        ),
        "approve": lambda: store.requests.approve(
            "r-aaaa2222",
            approver_email=BOB.email,
            at=T0,
            grant=lambda r: provisioning("g-new", request_id=r.id),
            audit=broken_audit,
        ),
        "transition": lambda: store.grants.transition(
            "g-aaaa2222", expected=GrantStatus.ACTIVE, new=GrantStatus.REVOKING, at=T0, audit=broken_audit
        ),
        "add_for_request": lambda: store.grants.add_for_request(
            provisioning("g-new", request_id="r-approved"), audit=broken_audit
        ),
    }
    with pytest.raises(StorageError):
        await changes[change]()
    assert await kinds(store) == []  # not even the writable line
    assert await store.requests.get("r-new") is None
    assert await store.grants.get("g-new") is None
    request = await store.requests.get("r-aaaa2222")
    assert request is not None and (request.status, request.approvals) == (RequestStatus.PENDING, ())
    assert (await store.requests.get("r-approved")).grant_id is None  # type: ignore[union-attr]
    assert (await store.grants.get("g-aaaa2222")).status is GrantStatus.ACTIVE  # type: ignore[union-attr]
    assert [r.id for r in await store.requests.approved_without_grant()] == ["r-approved"]


# --- an approval commits with its grant --------------------------------------------------------


async def test_add_with_grant_stores_the_approved_request_pointing_at_its_grant(store: Store) -> None:
    request, grant = await store.requests.add_with_grant(approved(), provisioning(), audit=audit_of("a", "b"))
    assert request.grant_id == grant.id == "g-aaaa2222"
    assert await store.requests.get(request.id) == request
    assert await store.grants.get(grant.id) == grant
    assert await kinds(store) == ["a", "b"]
    with pytest.raises(StorageError, match="already taken"):  # the grant id is taken: the request is not kept
        await store.requests.add_with_grant(approved("r-second"), provisioning())
    assert await store.requests.get("r-second") is None


async def test_approve_records_approvals_until_enough_then_approves_and_inserts_the_grant(store: Store) -> None:
    await store.requests.add(make_request(required_approvals=2))
    built: list[AccessRequest] = []

    def grant_for(r: AccessRequest) -> Grant:
        built.append(r)
        return provisioning(approved_by=tuple(a.approver_email for a in r.approvals))

    first, none = await store.requests.approve("r-aaaa2222", approver_email=BOB.email, at=T0, grant=grant_for)
    again, still_none = await store.requests.approve("r-aaaa2222", approver_email=BOB.email, at=T0, grant=grant_for)
    assert none is None and still_none is None and built == []
    assert first.status is RequestStatus.PENDING and len(again.approvals) == 1
    later = T0 + timedelta(minutes=1)
    final, grant = await store.requests.approve(
        "r-aaaa2222", approver_email=CAROL.email, at=later, grant=grant_for, audit=audit_of("approved")
    )
    assert grant is not None and grant.approved_by == (BOB.email, CAROL.email)
    assert (final.status, final.decided_by, final.decided_at, final.grant_id) == (
        RequestStatus.APPROVED,
        CAROL.email,
        later,
        grant.id,
    )
    assert final.approvals == (Approval(BOB.email, T0), Approval(CAROL.email, later))
    assert built == [replace(final, status=RequestStatus.PENDING, decided_by=None, decided_at=None, grant_id=None)]
    assert await store.grants.get(grant.id) == grant
    assert await store.requests.get("r-aaaa2222") == final
    assert await kinds(store) == ["approved"]
    with pytest.raises(AlreadyDecided, match="already approved by carol@example.com"):
        await store.requests.approve("r-aaaa2222", approver_email="dana@example.com", at=later, grant=grant_for)
    with pytest.raises(NotFound):
        await store.requests.approve("r-nothere", approver_email=BOB.email, at=T0, grant=grant_for)


async def test_approved_without_grant_lists_only_approved_requests_with_no_grant_oldest_first(store: Store) -> None:
    await store.requests.add(approved("r-late", created_at=T0 + HOUR))
    await store.requests.add(approved("r-early"))
    await store.requests.add(make_request("r-pending"))
    await store.requests.add_with_grant(approved("r-auto"), provisioning("g-auto", request_id="r-auto"))
    # An older version's approved request: no grant_id, but its grant exists.
    await store.requests.add(approved("r-legacy"))
    await store.grants.add(make_grant("g-legacy", request_id="r-legacy"))
    assert [r.id for r in await store.requests.approved_without_grant()] == ["r-early", "r-late"]
    assert [r.id for r in await store.requests.approved_without_grant(limit=1)] == ["r-early"]


async def test_add_for_request_gives_an_approved_request_its_one_grant(store: Store) -> None:
    await store.requests.add(approved())
    await store.requests.add(make_request("r-pending"))
    grant = await store.grants.add_for_request(provisioning(), audit=audit_of("repaired"))
    assert (await store.requests.get("r-aaaa2222")).grant_id == grant.id  # type: ignore[union-attr]
    assert await store.grants.get(grant.id) == grant
    with pytest.raises(AlreadyDecided, match="already has its grant"):
        await store.grants.add_for_request(provisioning("g-second"))
    with pytest.raises(AlreadyDecided, match="still pending"):
        await store.grants.add_for_request(provisioning("g-third", request_id="r-pending"))
    with pytest.raises(NotFound):
        await store.grants.add_for_request(provisioning("g-fourth", request_id="r-nothere"))
    assert [g.id for g in await store.grants.list_for("alice@example.com")] == ["g-aaaa2222"]
    assert await kinds(store) == ["repaired"]


# --- claims ------------------------------------------------------------------------------------


async def test_provisioning_due_lists_grants_whose_claim_ran_out_or_that_have_none(store: Store) -> None:
    await store.grants.add(provisioning("g-live"))  # claimed until T0 + LEASE
    await store.grants.add(provisioning("g-stale", next_attempt_at=T0 - timedelta(seconds=1)))
    await store.grants.add(provisioning("g-legacy", next_attempt_at=None))
    await store.grants.add(make_grant("g-active", next_attempt_at=T0 - HOUR))
    assert sorted(g.id for g in await store.grants.provisioning_due(T0)) == ["g-legacy", "g-stale"]
    assert sorted(g.id for g in await store.grants.provisioning_due(T0 + LEASE)) == ["g-legacy", "g-live", "g-stale"]
    assert len(await store.grants.provisioning_due(T0, limit=1)) == 1


async def test_claim_provisioning_takes_over_only_a_claim_that_ran_out(store: Store) -> None:
    await store.grants.add(provisioning())
    with pytest.raises(AlreadyDecided):
        await store.grants.claim_provisioning("g-aaaa2222", now=T0, lease_until=T0 + LEASE)
    later = T0 + LEASE
    claimed = await store.grants.claim_provisioning(
        "g-aaaa2222", now=later, lease_until=later + LEASE, audit=audit_of("resumed")
    )
    assert (claimed.status, claimed.next_attempt_at) == (GrantStatus.PROVISIONING, later + LEASE)
    with pytest.raises(AlreadyDecided):  # the new claim is live
        await store.grants.claim_provisioning("g-aaaa2222", now=later, lease_until=later + LEASE)
    await store.grants.transition("g-aaaa2222", expected=GrantStatus.PROVISIONING, new=GrantStatus.ACTIVE, at=later)
    with pytest.raises(AlreadyDecided, match="already active"):
        await store.grants.claim_provisioning("g-aaaa2222", now=later + 9 * LEASE, lease_until=later + 10 * LEASE)
    with pytest.raises(NotFound):
        await store.grants.claim_provisioning("g-nothere", now=T0, lease_until=T0)
    assert await kinds(store) == ["resumed"]


async def test_moving_to_revoking_with_a_lease_claims_the_first_attempt(store: Store) -> None:
    await store.grants.add(make_grant())
    revoking = await store.grants.transition(
        "g-aaaa2222",
        expected=GrantStatus.ACTIVE,
        new=GrantStatus.REVOKING,
        at=T0,
        end_reason=EndReason.EXPIRED,
        next_attempt_at=T0 + LEASE,
    )
    assert revoking.next_attempt_at == T0 + LEASE
    assert await store.grants.revokes_due(T0) == []  # nobody else picks it up during the call
    with pytest.raises(AlreadyDecided):
        await store.grants.claim_revoke("g-aaaa2222", now=T0, lease_until=T0 + LEASE)
    assert [g.id for g in await store.grants.revokes_due(T0 + LEASE)] == ["g-aaaa2222"]


async def test_claim_revoke_takes_a_due_attempt_once(store: Store) -> None:
    await store.grants.add(make_grant(status=GrantStatus.REVOKING, next_attempt_at=T0))
    claimed = await store.grants.claim_revoke("g-aaaa2222", now=T0, lease_until=T0 + LEASE)
    assert claimed.next_attempt_at == T0 + LEASE
    with pytest.raises(AlreadyDecided, match="already being revoked"):
        await store.grants.claim_revoke("g-aaaa2222", now=T0, lease_until=T0 + LEASE)
    await store.grants.transition("g-aaaa2222", expected=GrantStatus.REVOKING, new=GrantStatus.ENDED, at=T0)
    with pytest.raises(AlreadyDecided, match="already ended"):
        await store.grants.claim_revoke("g-aaaa2222", now=T0 + 9 * LEASE, lease_until=T0 + 10 * LEASE)
    with pytest.raises(NotFound):
        await store.grants.claim_revoke("g-nothere", now=T0, lease_until=T0)


# --- races between two stores on one database (two replicas) -----------------------------------

RIVALS = 8


async def _race(database_url: str, attempt) -> tuple[list[object], list[BaseException]]:
    """``attempt(store, i)`` run RIVALS times at once, alternating between two stores on one database."""
    async with opened(database_url) as one, opened(database_url) as two:
        results = await asyncio.gather(
            *(attempt(one if i % 2 else two, i) for i in range(RIVALS)), return_exceptions=True
        )
    wins = [r for r in results if not isinstance(r, BaseException)]
    losses = [r for r in results if isinstance(r, BaseException)]
    return wins, losses


async def test_racing_revoke_claims_from_two_replicas_have_one_winner(database_url: str) -> None:
    async with opened(database_url) as setup:
        await setup.grants.add(make_grant(status=GrantStatus.REVOKING, next_attempt_at=T0))
    wins, losses = await _race(
        database_url, lambda s, i: s.grants.claim_revoke("g-aaaa2222", now=T0, lease_until=T0 + LEASE)
    )
    assert len(wins) == 1 and all(isinstance(e, AlreadyDecided) for e in losses)


async def test_racing_provisioning_claims_from_two_replicas_have_one_winner(database_url: str) -> None:
    async with opened(database_url) as setup:
        await setup.grants.add(provisioning(next_attempt_at=T0 - timedelta(seconds=1)))
    wins, losses = await _race(
        database_url, lambda s, i: s.grants.claim_provisioning("g-aaaa2222", now=T0, lease_until=T0 + LEASE)
    )
    assert len(wins) == 1 and all(isinstance(e, AlreadyDecided) for e in losses)


async def test_racing_repairs_of_one_approved_request_create_one_grant(database_url: str) -> None:
    async with opened(database_url) as setup:
        await setup.requests.add(approved())
    wins, losses = await _race(
        database_url, lambda s, i: s.grants.add_for_request(provisioning(f"g-rival{i}"), audit=audit_of("repaired"))
    )
    assert len(wins) == 1 and all(isinstance(e, AlreadyDecided) for e in losses)
    async with opened(database_url) as check:
        assert len(await check.grants.list_for("alice@example.com")) == 1
        assert await kinds(check) == ["repaired"]


async def test_racing_final_approvals_from_two_replicas_insert_one_grant(database_url: str) -> None:
    approvers = [f"approver{i}@example.com" for i in range(RIVALS)]
    async with opened(database_url) as setup:
        await setup.requests.add(make_request(approvers=tuple(approvers)))

    async def approve(s: Store, i: int) -> tuple[AccessRequest, Grant | None]:
        return await s.requests.approve(
            "r-aaaa2222",
            approver_email=approvers[i],
            at=T0,
            grant=lambda r: provisioning(f"g-rival{i}"),
            audit=audit_of("approved"),
        )

    wins, losses = await _race(database_url, approve)
    assert len(wins) == 1 and all(isinstance(e, AlreadyDecided) for e in losses)
    async with opened(database_url) as check:
        request = await check.requests.get("r-aaaa2222")
        assert request is not None and request.status is RequestStatus.APPROVED and len(request.approvals) == 1
        assert [g.id for g in await check.grants.list_for("alice@example.com")] == [request.grant_id]
        assert await kinds(check) == ["approved"]


# --- upgrading from version 2 ------------------------------------------------------------------


async def _add_v2_grant(old: Store, grant: Grant) -> None:
    """Insert a grant the way version 2 could (without the columns 0003 added)."""
    columns = GRANT_COLUMNS[: GRANT_COLUMNS.index("claimed_by")]
    if isinstance(old, SqliteStore):
        values = sqlite_backend._CODEC.grant_values(grant)[: len(columns)]
        async with old._db.writing("save a version 2 grant") as conn:
            await conn.execute(insert("grants", columns, mark=lambda _: "?"), values)
    else:
        assert isinstance(old, PostgresStore)
        values = postgres_backend._CODEC.grant_values(grant)[: len(columns)]
        async with old._db.connection("save a version 2 grant") as conn:
            await conn.execute(insert("grants", columns, mark=lambda n: f"${n}"), *values)


async def test_upgrading_links_old_grants_and_leaves_only_true_orphans_for_the_reconciler(database_url: str) -> None:
    async with opened(database_url, migrate_up_to=2) as old:
        await old.requests.add(approved("r-with-grant"))
        await _add_v2_grant(old, make_grant("g-old", request_id="r-with-grant"))
        await old.requests.add(approved("r-orphan"))
        await _add_v2_grant(old, make_grant("g-stuck", request_id="r-x", status=GrantStatus.PROVISIONING))
    async with opened(database_url) as upgraded:
        assert (await upgraded.requests.get("r-with-grant")).grant_id == "g-old"  # type: ignore[union-attr]
        assert [r.id for r in await upgraded.requests.approved_without_grant()] == ["r-orphan"]
        stuck = await upgraded.grants.provisioning_due(T0)
        assert [(g.id, g.next_attempt_at) for g in stuck] == [("g-stuck", T0)]


# --- who holds a claim ---------------------------------------------------------------------------


async def test_claims_name_their_holder_and_a_restarted_holder_releases_only_its_own_live_ones(store: Store) -> None:
    await store.grants.add(provisioning("g-mine-prov", claimed_by="replica-a"))
    await store.grants.add(make_grant("g-mine-revoke"))
    await store.grants.transition(
        "g-mine-revoke",
        expected=GrantStatus.ACTIVE,
        new=GrantStatus.REVOKING,
        at=T0,
        next_attempt_at=T0 + LEASE,
        claimed_by="replica-a",
    )
    await store.grants.add(provisioning("g-theirs", claimed_by="replica-b"))
    await store.grants.add(make_grant("g-retry", status=GrantStatus.REVOKING, next_attempt_at=T0))
    claimed = await store.grants.claim_revoke("g-retry", now=T0, lease_until=T0 + LEASE, owner="replica-a")
    assert claimed.claimed_by == "replica-a"
    retry = await store.grants.schedule_revoke_retry("g-retry", at=T0 + HOUR, error="503")
    assert retry.claimed_by == ""  # a scheduled retry is nobody's claim
    await store.grants.add(provisioning("g-nobody", claimed_by=""))
    await store.grants.add(make_grant("g-active", claimed_by="replica-a", next_attempt_at=T0 + LEASE))

    released = await store.grants.release_claims("replica-a", now=T0)

    assert sorted(g.id for g in released) == ["g-mine-prov", "g-mine-revoke"]
    assert all(g.next_attempt_at == T0 and g.claimed_by == "" for g in released)
    assert sorted(g.id for g in await store.grants.provisioning_due(T0)) == ["g-mine-prov"]
    assert [g.id for g in await store.grants.revokes_due(T0)] == ["g-mine-revoke"]
    assert (await store.grants.get("g-theirs")).next_attempt_at == T0 + LEASE  # type: ignore[union-attr]
    assert await store.grants.release_claims("", now=T0) == []
    reclaimed = await store.grants.claim_provisioning("g-mine-prov", now=T0, lease_until=T0 + LEASE, owner="replica-a")
    assert reclaimed.claimed_by == "replica-a"

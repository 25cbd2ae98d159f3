"""The timed passes' store methods (issue 9, migration 0008), on SQLite and PostgreSQL: a page of
expired grants ended in two transactions with their audit rows, compare-and-set per grant; the
incidents of active grants a page at a time; pending requests stranded with all their approvals."""

from __future__ import annotations

import asyncio
import sqlite3
from collections.abc import Sequence
from datetime import timedelta
from pathlib import Path

import pytest

from bot.core.domain import Approval, AuditEvent, EndReason, Grant, GrantStatus, RequestStatus
from bot.core.errors import StorageError
from bot.core.ports import Store
from storage import sweeps
from storage.sql import SQLITE, Sql
from tests.fakes import storage_fixtures
from tests.fakes.storage_fixtures import BOB, CAROL, T0, make_grant, make_incident, make_request, opened

backend = storage_fixtures.backend
database_url = storage_fixtures.database_url
store = storage_fixtures.store

HOUR = timedelta(hours=1)
LEASE = T0 + timedelta(minutes=5)


def audit_each(kind: str) -> object:
    def rows(grants: Sequence[Grant]) -> list[AuditEvent]:
        return [AuditEvent(T0, kind, "ackgate", g.id, {}) for g in grants]

    return rows


def broken_audit(result: object) -> Sequence[AuditEvent]:
    return [AuditEvent(T0, None, "ackgate", "broken")]  # type: ignore[arg-type] # refused: kind is NOT NULL


async def kinds(store: Store) -> list[tuple[str, str]]:
    return [(e.kind, e.subject) for e in await store.audit.since(T0 - timedelta(days=1))]


async def expired_grants(store: Store, n: int) -> list[str]:
    ids = [f"g-exp{i:04d}" for i in range(n)]
    for i, grant_id in enumerate(ids):
        await store.grants.add(make_grant(grant_id, request_id=f"r-{i}", expires_at=T0 - timedelta(minutes=i)))
    return ids


async def test_begin_expiry_moves_only_active_expired_grants_claiming_each_with_its_audit_row(store: Store) -> None:
    ids = await expired_grants(store, 3)
    await store.grants.add(make_grant("g-later", request_id="r-later", expires_at=T0 + HOUR))  # not expired yet
    await store.grants.add(make_grant("g-revoked", request_id="r-rev", status=GrantStatus.REVOKING))
    asked = [*ids, "g-later", "g-revoked", "g-missing"]
    moved = await store.grants.begin_expiry(
        asked, now=T0, lease_until=LEASE, owner="host:1", ended_by="ackgate", audit=audit_each("expired")
    )
    assert sorted(g.id for g in moved) == ids
    for grant in moved:
        assert grant.status is GrantStatus.REVOKING
        assert grant.end_reason is EndReason.EXPIRED and grant.ended_by == "ackgate"
        assert grant.next_attempt_at == LEASE and grant.claimed_by == "host:1"
        assert await store.grants.get(grant.id) == grant
    assert (await store.grants.get("g-later")).status is GrantStatus.ACTIVE  # type: ignore[union-attr]
    assert sorted(await kinds(store)) == [("expired", i) for i in ids]
    # nothing due any more; the claimed revokes are not due before their lease
    assert await store.grants.due_to_expire(T0) == []
    assert await store.grants.revokes_due(T0) == []
    assert sorted(g.id for g in await store.grants.revokes_due(LEASE)) == ids


async def test_two_callers_racing_for_the_same_page_each_grant_moves_once(store: Store) -> None:
    ids = await expired_grants(store, 20)

    async def take(owner: str) -> list[Grant]:
        return await store.grants.begin_expiry(ids, now=T0, lease_until=LEASE, owner=owner, ended_by="ackgate")

    first, second = await asyncio.gather(take("a:1"), take("b:1"))
    assert sorted(g.id for g in [*first, *second]) == ids  # every grant once, by exactly one of them


async def test_finish_revokes_ends_only_revoking_grants_with_their_audit_rows(store: Store) -> None:
    ids = await expired_grants(store, 3)
    await store.grants.begin_expiry(ids[:2], now=T0, lease_until=LEASE, ended_by="ackgate")
    at = T0 + timedelta(seconds=2)
    ended = await store.grants.finish_revokes(ids, at=at, audit=audit_each("ended"))  # ids[2] is still active
    assert sorted(g.id for g in ended) == ids[:2]
    assert all(g.status is GrantStatus.ENDED and g.ended_at == at for g in ended)
    assert (await store.grants.get(ids[2])).status is GrantStatus.ACTIVE  # type: ignore[union-attr]
    assert sorted(await kinds(store)) == [("ended", i) for i in ids[:2]]
    assert await store.grants.finish_revokes(ids, at=at) == []  # already ended: nothing moves twice


async def test_a_refused_audit_row_leaves_the_whole_page_unmoved(store: Store) -> None:
    ids = await expired_grants(store, 3)
    with pytest.raises(StorageError):
        await store.grants.begin_expiry(ids, now=T0, lease_until=LEASE, ended_by="ackgate", audit=broken_audit)
    assert [g.status for g in await store.grants.due_to_expire(T0)] == [GrantStatus.ACTIVE] * 3
    await store.grants.begin_expiry(ids, now=T0, lease_until=LEASE, ended_by="ackgate")
    with pytest.raises(StorageError):
        await store.grants.finish_revokes(ids, at=T0, audit=broken_audit)
    assert sorted(g.id for g in await store.grants.revokes_due(LEASE)) == ids  # still revoking, retried later
    assert await kinds(store) == []


async def test_incidents_of_active_pages_distinct_incidents_of_the_given_flows_in_id_order(store: Store) -> None:
    def bound(grant_id: str, incident: str, *, flow: str = "incident-db", **changes: object) -> Grant:
        return make_grant(
            grant_id, request_id=f"r-{grant_id}", flow=flow, incident=make_incident(id=incident), **changes
        )

    for grant in [
        bound("g1", "PINC3"),
        bound("g2", "PINC1"),
        bound("g3", "PINC3"),  # a second grant of one incident: the incident is listed once
        bound("g4", "PINC2"),
        bound("g5", "PINC4", flow="other-flow"),  # not a flow asked for
        bound("g6", "PINC5", status=GrantStatus.ENDED),  # not active
        make_grant("g7", request_id="r-g7"),  # no incident
    ]:
        await store.grants.add(grant)
    flows = ["incident-db", "oncall-approval"]
    assert await store.grants.incidents_of_active(flows) == ["PINC1", "PINC2", "PINC3"]
    assert await store.grants.incidents_of_active(flows, limit=2) == ["PINC1", "PINC2"]
    assert await store.grants.incidents_of_active(flows, after="PINC2", limit=2) == ["PINC3"]
    assert await store.grants.incidents_of_active(flows, after="PINC3") == []
    assert await store.grants.incidents_of_active(["other-flow"]) == ["PINC4"]
    assert await store.grants.incidents_of_active([]) == []


async def test_stranded_pending_lists_only_pending_requests_with_all_their_approvals(store: Store) -> None:
    one = Approval(BOB.email, T0)
    two = (one, Approval(CAROL.email, T0))
    for request in [
        make_request("r-full", approvals=(one,), created_at=T0 - timedelta(minutes=3)),
        make_request("r-none"),  # no approval yet
        make_request("r-half", approvals=(one,), required_approvals=2),
        make_request("r-two", approvals=two, required_approvals=2, created_at=T0 - timedelta(minutes=1)),
        make_request("r-done", approvals=(one,), status=RequestStatus.APPROVED, grant_id="g-x"),
        make_request("r-new", approvals=(one,), created_at=T0 + HOUR),  # created after the cutoff
    ]:
        await store.requests.add(request)
    found = await store.requests.stranded_pending(T0 + timedelta(seconds=1))
    assert [r.id for r in found] == ["r-full", "r-two"]  # oldest first
    assert found[1].approvals == two  # with their approvals
    assert [r.id for r in await store.requests.stranded_pending(T0 + timedelta(seconds=1), limit=1)] == ["r-full"]


@pytest.mark.parametrize(
    ("statement", "index"),
    [
        (sweeps.INCIDENTS_OF_ACTIVE, "grants_active_by_incident"),
        (sweeps.BEGIN_EXPIRY, "sqlite_autoindex_grants_1"),
        (sweeps.FINISH_REVOKES, "sqlite_autoindex_grants_1"),
    ],
)
async def test_sqlite_sweeps_seek_their_index_rather_than_reading_every_grant(
    tmp_path: Path, statement: Sql, index: str
) -> None:
    path = tmp_path / "ackgate.db"
    async with opened(f"sqlite:///{path}"):
        pass
    named = {n: (["x"] if n in ("ids", "flows") else "x") for n in statement.names}
    with sqlite3.connect(path) as raw:
        sql = "EXPLAIN QUERY PLAN " + statement.text(SQLITE)
        plan = " | ".join(row[3] for row in raw.execute(sql, statement.values(SQLITE, (), named)))
    assert f"USING COVERING INDEX {index}" in plan or f"USING INDEX {index} (id=?)" in plan
    assert "SCAN grants" not in plan

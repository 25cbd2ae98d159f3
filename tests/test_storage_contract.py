"""One contract for every storage backend: each test runs against SQLite and PostgreSQL."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from dataclasses import replace
from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path

import pytest

from bot.core.domain import (
    AccessRequest,
    Approval,
    AuditEvent,
    EndReason,
    Grant,
    GrantStatus,
    MessageRef,
    RequestStatus,
)
from bot.core.errors import AlreadyDecided, NotFound, StorageError
from bot.core.ports import Store
from storage import migrations, open_store
from tests.fakes import storage_fixtures
from tests.fakes.storage_fixtures import (
    ALICE,
    BOB,
    CAROL,
    T0,
    make_grant,
    make_incident,
    make_request,
    opened,
    url_for,
)

# Fixtures are registered by name in this module; re-binding them avoids shadowing imports.
backend = storage_fixtures.backend
database_url = storage_fixtures.database_url
store = storage_fixtures.store

HOUR = timedelta(hours=1)
LATEST = len(migrations.load("sqlite"))


def _split(results: Sequence[object]) -> tuple[list[object], list[BaseException]]:
    """The winners and the losers of a race run with ``gather(..., return_exceptions=True)``."""
    wins = [r for r in results if not isinstance(r, BaseException)]
    losses = [r for r in results if isinstance(r, BaseException)]
    return wins, losses


# --- requests ---------------------------------------------------------------------------------


async def test_request_with_every_field_set_round_trips_exactly(store: Store) -> None:
    request = make_request(
        incident=make_incident(),
        approvals=(Approval(BOB.email, T0 + timedelta(minutes=1)), Approval(CAROL.email, T0 + timedelta(minutes=2))),
        required_approvals=2,
        status=RequestStatus.APPROVED,
        decided_by=CAROL.email,
        decided_at=T0 + timedelta(minutes=2, microseconds=123456),
        note="two approvals",
        grant_id="g-aaaa2222",
        approval_channel="C0APPROVALS",
    )
    await store.requests.add(request)
    assert await store.requests.get(request.id) == request


async def test_request_with_only_required_fields_round_trips_exactly(store: Store) -> None:
    request = make_request(reason="", approvers=(), requester=replace(ALICE, name=""))
    await store.requests.add(request)
    assert await store.requests.get(request.id) == request


async def test_unknown_request_and_grant_read_as_none(store: Store) -> None:
    assert await store.requests.get("r-missing") is None
    assert await store.grants.get("g-missing") is None


async def test_adding_a_request_id_twice_raises_storage_error_and_changes_nothing(store: Store) -> None:
    await store.requests.add(make_request())
    duplicate = make_request(reason="other", approvals=(Approval(BOB.email, T0),))
    with pytest.raises(
        StorageError, match=r"^Could not save request r-aaaa2222: that id is already taken\.$"
    ) as caught:
        await store.requests.add(duplicate)
    assert caught.value.__cause__ is not None  # the driver's error is kept for the log
    assert await store.requests.get("r-aaaa2222") == make_request()
    await store.requests.add(make_request("r-bbbb3333"))  # the store still works afterwards


async def test_decide_sets_status_decider_time_note_and_grant(store: Store) -> None:
    await store.requests.add(make_request())
    at = T0 + timedelta(minutes=5)
    decided = await store.requests.decide(
        "r-aaaa2222",
        expected=RequestStatus.PENDING,
        new=RequestStatus.APPROVED,
        by=BOB.email,
        at=at,
        note="looks fine",
        grant_id="g-aaaa2222",
    )
    expected = make_request(
        status=RequestStatus.APPROVED, decided_by=BOB.email, decided_at=at, note="looks fine", grant_id="g-aaaa2222"
    )
    assert decided == expected
    assert await store.requests.get("r-aaaa2222") == expected


async def test_decide_loser_learns_who_won_in_a_sentence(store: Store) -> None:
    await store.requests.add(make_request())
    await store.requests.decide(
        "r-aaaa2222", expected=RequestStatus.PENDING, new=RequestStatus.APPROVED, by=BOB.email, at=T0
    )
    with pytest.raises(AlreadyDecided) as caught:
        await store.requests.decide(
            "r-aaaa2222", expected=RequestStatus.PENDING, new=RequestStatus.DENIED, by=CAROL.email, at=T0
        )
    assert caught.value.message == "This request was already approved by bob@example.com."
    assert (caught.value.status, caught.value.by) == ("approved", BOB.email)
    assert (await store.requests.get("r-aaaa2222")).status is RequestStatus.APPROVED  # type: ignore[union-attr]


async def test_decide_after_a_timeout_says_it_timed_out(store: Store) -> None:
    await store.requests.add(make_request())
    await store.requests.decide(
        "r-aaaa2222", expected=RequestStatus.PENDING, new=RequestStatus.TIMED_OUT, by=None, at=T0
    )
    with pytest.raises(AlreadyDecided, match=r"^This request has already timed out\.$"):
        await store.requests.decide(
            "r-aaaa2222", expected=RequestStatus.PENDING, new=RequestStatus.APPROVED, by=BOB.email, at=T0
        )


async def test_two_concurrent_decides_exactly_one_wins(store: Store) -> None:
    await store.requests.add(make_request())
    results = await asyncio.gather(
        *(
            store.requests.decide(
                "r-aaaa2222", expected=RequestStatus.PENDING, new=new, by=who, at=T0 + timedelta(minutes=1)
            )
            for new, who in ((RequestStatus.APPROVED, BOB.email), (RequestStatus.DENIED, CAROL.email))
        ),
        return_exceptions=True,
    )
    wins, losses = _split(results)
    assert len(wins) == 1
    assert len(losses) == 1
    assert isinstance(losses[0], AlreadyDecided)
    winner = wins[0]
    assert isinstance(winner, AccessRequest)
    assert losses[0].by == winner.decided_by
    assert await store.requests.get("r-aaaa2222") == winner


async def test_decide_unknown_request_raises_not_found(store: Store) -> None:
    with pytest.raises(NotFound, match="r-missing"):
        await store.requests.decide(
            "r-missing", expected=RequestStatus.PENDING, new=RequestStatus.DENIED, by=BOB.email, at=T0
        )


async def test_approvals_are_counted_once_per_approver_in_arrival_order(store: Store) -> None:
    await store.requests.add(make_request(required_approvals=2))
    first = await store.requests.add_approval("r-aaaa2222", approver_email=BOB.email, at=T0 + timedelta(seconds=1))
    again = await store.requests.add_approval("r-aaaa2222", approver_email=BOB.email, at=T0 + timedelta(seconds=2))
    both = await store.requests.add_approval("r-aaaa2222", approver_email=CAROL.email, at=T0 + timedelta(seconds=3))
    assert first.approvals == (Approval(BOB.email, T0 + timedelta(seconds=1)),)
    assert again == first
    assert both.approvals == (
        Approval(BOB.email, T0 + timedelta(seconds=1)),
        Approval(CAROL.email, T0 + timedelta(seconds=3)),
    )
    assert both.status is RequestStatus.PENDING


async def test_concurrent_approvals_by_the_same_approver_count_once(store: Store) -> None:
    await store.requests.add(make_request(required_approvals=2))
    results = await asyncio.gather(
        *(store.requests.add_approval("r-aaaa2222", approver_email=BOB.email, at=T0) for _ in range(5))
    )
    assert all(r.approvals == (Approval(BOB.email, T0),) for r in results)
    assert (await store.requests.get("r-aaaa2222")).approvals == (Approval(BOB.email, T0),)  # type: ignore[union-attr]


async def test_approving_a_decided_request_raises_already_decided(store: Store) -> None:
    await store.requests.add(make_request())
    await store.requests.decide(
        "r-aaaa2222", expected=RequestStatus.PENDING, new=RequestStatus.DENIED, by=CAROL.email, at=T0
    )
    with pytest.raises(AlreadyDecided) as caught:
        await store.requests.add_approval("r-aaaa2222", approver_email=BOB.email, at=T0)
    assert caught.value.message == "This request was already denied by carol@example.com."
    assert (caught.value.status, caught.value.by) == ("denied", CAROL.email)
    assert (await store.requests.get("r-aaaa2222")).approvals == ()  # type: ignore[union-attr]


async def test_approving_an_unknown_request_raises_not_found(store: Store) -> None:
    with pytest.raises(NotFound, match=r"^No request has the id r-missing\.$"):
        await store.requests.add_approval("r-missing", approver_email=BOB.email, at=T0)


async def test_requests_list_for_is_the_requesters_newest_first_and_limited(store: Store) -> None:
    for n in range(4):
        await store.requests.add(make_request(f"r-alice{n}", created_at=T0 + n * HOUR))
    await store.requests.add(make_request("r-bob", requester=BOB, created_at=T0 + 9 * HOUR))
    listed = await store.requests.list_for(ALICE.email, limit=3)
    assert [r.id for r in listed] == ["r-alice3", "r-alice2", "r-alice1"]
    assert [r.id for r in await store.requests.list_for(BOB.email)] == ["r-bob"]
    assert await store.requests.list_for("nobody@example.com") == []


async def test_pending_created_before_lists_only_old_pending_requests_oldest_first(store: Store) -> None:
    await store.requests.add(make_request("r-old2", created_at=T0 - 2 * HOUR))
    await store.requests.add(make_request("r-old1", created_at=T0 - 3 * HOUR))
    await store.requests.add(make_request("r-cutoff", created_at=T0))
    await store.requests.add(make_request("r-new", created_at=T0 + HOUR))
    await store.requests.add(make_request("r-decided", created_at=T0 - 4 * HOUR, status=RequestStatus.APPROVED))
    old = await store.requests.pending_created_before(T0)
    assert [r.id for r in old] == ["r-old1", "r-old2"]


async def test_datetimes_come_back_as_the_same_instant_in_utc(store: Store) -> None:
    plus_two = timezone(timedelta(hours=2))
    local = datetime(2026, 11, 23, 14, 0, 0, 7, tzinfo=plus_two)
    await store.requests.add(make_request(created_at=local))
    got = await store.requests.get("r-aaaa2222")
    assert got is not None
    assert got.created_at == local
    assert got.created_at.utcoffset() == timedelta(0)
    assert got.created_at.tzinfo == UTC


async def test_naive_datetimes_are_refused(store: Store) -> None:
    with pytest.raises(ValueError, match="timezone-aware"):
        await store.requests.add(make_request(created_at=datetime(2026, 11, 23, 12, 0)))


# --- grants -----------------------------------------------------------------------------------


async def test_grant_with_every_field_set_round_trips_exactly(store: Store) -> None:
    grant = make_grant(
        status=GrantStatus.REVOKING,
        incident=make_incident(acknowledger_ids=()),
        approved_by=(BOB.email, CAROL.email),
        end_reason=EndReason.INCIDENT_RESOLVED,
        ended_at=T0 + timedelta(minutes=30, microseconds=1),
        ended_by=BOB.email,
        revoke_attempts=3,
        next_attempt_at=T0 + timedelta(minutes=31),
        last_error="provisioner timed out",
    )
    await store.grants.add(grant)
    assert await store.grants.get(grant.id) == grant


async def test_grant_with_only_required_fields_round_trips_exactly(store: Store) -> None:
    grant = make_grant(status=GrantStatus.PROVISIONING, justification="")
    await store.grants.add(grant)
    assert await store.grants.get(grant.id) == grant


async def test_adding_a_grant_id_twice_raises_storage_error(store: Store) -> None:
    await store.grants.add(make_grant())
    with pytest.raises(StorageError, match=r"^Could not save grant g-aaaa2222: that id is already taken\.$"):
        await store.grants.add(make_grant(resource="other"))
    assert (await store.grants.get("g-aaaa2222")) == make_grant()


async def test_moving_to_revoking_stores_reason_and_actor_and_makes_the_revoke_due_now(store: Store) -> None:
    await store.grants.add(make_grant())
    at = T0 + timedelta(minutes=10)
    revoking = await store.grants.transition(
        "g-aaaa2222",
        expected=GrantStatus.ACTIVE,
        new=GrantStatus.REVOKING,
        at=at,
        end_reason=EndReason.REVOKED,
        ended_by=BOB.email,
    )
    expected = make_grant(
        status=GrantStatus.REVOKING, end_reason=EndReason.REVOKED, ended_by=BOB.email, next_attempt_at=at
    )
    assert revoking == expected
    assert await store.grants.get("g-aaaa2222") == expected
    assert [g.id for g in await store.grants.revokes_due(at)] == ["g-aaaa2222"]


async def test_moving_to_ended_stamps_ended_at_and_keeps_the_reason(store: Store) -> None:
    await store.grants.add(make_grant())
    await store.grants.transition(
        "g-aaaa2222", expected=GrantStatus.ACTIVE, new=GrantStatus.REVOKING, at=T0, end_reason=EndReason.EXPIRED
    )
    ended = await store.grants.transition(
        "g-aaaa2222", expected=GrantStatus.REVOKING, new=GrantStatus.ENDED, at=T0 + timedelta(seconds=3)
    )
    assert ended.status is GrantStatus.ENDED
    assert ended.ended_at == T0 + timedelta(seconds=3)
    assert ended.end_reason is EndReason.EXPIRED


async def test_transition_updates_expiry_and_error_only_when_given(store: Store) -> None:
    await store.grants.add(make_grant(status=GrantStatus.PROVISIONING, last_error="earlier"))
    later = T0 + 2 * HOUR
    active = await store.grants.transition(
        "g-aaaa2222", expected=GrantStatus.PROVISIONING, new=GrantStatus.ACTIVE, at=T0, expires_at=later
    )
    assert (active.expires_at, active.last_error, active.next_attempt_at) == (later, "earlier", None)
    failed = await store.grants.transition(
        "g-aaaa2222", expected=GrantStatus.ACTIVE, new=GrantStatus.FAILED, at=T0, last_error="no such role"
    )
    assert (failed.expires_at, failed.last_error, failed.ended_at) == (later, "no such role", None)


async def test_transition_loser_is_told_the_grant_already_ended(store: Store) -> None:
    await store.grants.add(make_grant(status=GrantStatus.ENDED, ended_by=BOB.email, end_reason=EndReason.REVOKED))
    with pytest.raises(AlreadyDecided) as caught:
        await store.grants.transition("g-aaaa2222", expected=GrantStatus.ACTIVE, new=GrantStatus.REVOKING, at=T0)
    assert caught.value.message == "This grant has already ended."
    assert (caught.value.status, caught.value.by) == ("ended", BOB.email)


async def test_transition_of_an_unknown_grant_raises_not_found(store: Store) -> None:
    with pytest.raises(NotFound, match=r"^No grant has the id g-missing\.$"):
        await store.grants.transition("g-missing", expected=GrantStatus.ACTIVE, new=GrantStatus.REVOKING, at=T0)


async def test_two_concurrent_revokes_of_one_grant_exactly_one_wins(store: Store) -> None:
    await store.grants.add(make_grant())
    results = await asyncio.gather(
        *(
            store.grants.transition(
                "g-aaaa2222", expected=GrantStatus.ACTIVE, new=GrantStatus.REVOKING, at=T0, ended_by=who
            )
            for who in (BOB.email, CAROL.email)
        ),
        return_exceptions=True,
    )
    wins, losses = _split(results)
    assert len(wins) == 1
    assert len(losses) == 1
    assert isinstance(losses[0], AlreadyDecided)
    assert losses[0].message == "This grant is already being revoked."
    assert isinstance(wins[0], Grant)
    assert losses[0].by == wins[0].ended_by


async def test_extend_moves_the_expiry_of_an_active_grant(store: Store) -> None:
    await store.grants.add(make_grant())
    extended = await store.grants.extend("g-aaaa2222", expected_expires_at=T0 + HOUR, new_expires_at=T0 + 3 * HOUR)
    assert extended == make_grant(expires_at=T0 + 3 * HOUR)
    assert await store.grants.next_expiry() == T0 + 3 * HOUR


async def test_extend_with_a_stale_expiry_fails_and_changes_nothing(store: Store) -> None:
    await store.grants.add(make_grant())
    await store.grants.extend("g-aaaa2222", expected_expires_at=T0 + HOUR, new_expires_at=T0 + 2 * HOUR)
    with pytest.raises(AlreadyDecided) as caught:
        await store.grants.extend("g-aaaa2222", expected_expires_at=T0 + HOUR, new_expires_at=T0 + 5 * HOUR)
    assert caught.value.message == "This grant's expiry changed meanwhile. Check it and try again."
    assert caught.value.status == "active"
    assert (await store.grants.get("g-aaaa2222")).expires_at == T0 + 2 * HOUR  # type: ignore[union-attr]


async def test_extend_of_a_grant_that_is_not_active_fails(store: Store) -> None:
    await store.grants.add(make_grant(status=GrantStatus.REVOKING))
    with pytest.raises(AlreadyDecided, match="already being revoked"):
        await store.grants.extend("g-aaaa2222", expected_expires_at=T0 + HOUR, new_expires_at=T0 + 2 * HOUR)
    with pytest.raises(NotFound):
        await store.grants.extend("g-missing", expected_expires_at=T0 + HOUR, new_expires_at=T0 + 2 * HOUR)


async def test_due_to_expire_lists_expired_active_grants_earliest_first_up_to_the_limit(store: Store) -> None:
    await store.grants.add(make_grant("g-due2", expires_at=T0 - timedelta(minutes=1)))
    await store.grants.add(make_grant("g-due1", expires_at=T0 - timedelta(minutes=5)))
    await store.grants.add(make_grant("g-due0", expires_at=T0))  # expiring exactly now counts
    await store.grants.add(make_grant("g-later", expires_at=T0 + timedelta(seconds=1)))
    await store.grants.add(make_grant("g-revoking", status=GrantStatus.REVOKING, expires_at=T0 - HOUR))
    await store.grants.add(make_grant("g-ended", status=GrantStatus.ENDED, expires_at=T0 - HOUR))
    await store.grants.add(make_grant("g-provisioning", status=GrantStatus.PROVISIONING, expires_at=T0 - HOUR))
    assert [g.id for g in await store.grants.due_to_expire(T0)] == ["g-due1", "g-due2", "g-due0"]
    assert [g.id for g in await store.grants.due_to_expire(T0, limit=2)] == ["g-due1", "g-due2"]
    assert await store.grants.due_to_expire(T0 - HOUR) == []


async def test_next_expiry_is_the_earliest_active_expiry_or_none(store: Store) -> None:
    assert await store.grants.next_expiry() is None
    await store.grants.add(make_grant("g-ended", status=GrantStatus.ENDED, expires_at=T0 - HOUR))
    assert await store.grants.next_expiry() is None
    await store.grants.add(make_grant("g-late", expires_at=T0 + 2 * HOUR))
    await store.grants.add(make_grant("g-soon", expires_at=T0 + HOUR))
    assert await store.grants.next_expiry() == T0 + HOUR


async def test_revokes_due_lists_revoking_grants_whose_attempt_is_due_in_order(store: Store) -> None:
    await store.grants.add(make_grant("g-b", status=GrantStatus.REVOKING, next_attempt_at=T0))
    await store.grants.add(make_grant("g-a", status=GrantStatus.REVOKING, next_attempt_at=T0 - HOUR))
    await store.grants.add(make_grant("g-later", status=GrantStatus.REVOKING, next_attempt_at=T0 + HOUR))
    await store.grants.add(make_grant("g-active", next_attempt_at=T0 - HOUR))
    assert [g.id for g in await store.grants.revokes_due(T0)] == ["g-a", "g-b"]
    assert [g.id for g in await store.grants.revokes_due(T0, limit=1)] == ["g-a"]


async def test_schedule_revoke_retry_counts_the_attempt_and_delays_the_next(store: Store) -> None:
    await store.grants.add(make_grant())
    await store.grants.transition("g-aaaa2222", expected=GrantStatus.ACTIVE, new=GrantStatus.REVOKING, at=T0)
    retry_at = T0 + timedelta(minutes=2)
    first = await store.grants.schedule_revoke_retry("g-aaaa2222", at=retry_at, error="HTTP 503")
    second = await store.grants.schedule_revoke_retry("g-aaaa2222", at=retry_at + HOUR, error="HTTP 502")
    assert (first.revoke_attempts, first.next_attempt_at, first.last_error) == (1, retry_at, "HTTP 503")
    assert (second.revoke_attempts, second.next_attempt_at, second.last_error) == (2, retry_at + HOUR, "HTTP 502")
    assert await store.grants.revokes_due(retry_at) == []
    assert [g.id for g in await store.grants.revokes_due(retry_at + HOUR)] == ["g-aaaa2222"]


async def test_schedule_revoke_retry_needs_a_revoking_grant(store: Store) -> None:
    await store.grants.add(make_grant(status=GrantStatus.ENDED))
    with pytest.raises(AlreadyDecided, match=r"^This grant has already ended\.$"):
        await store.grants.schedule_revoke_retry("g-aaaa2222", at=T0, error="x")
    with pytest.raises(NotFound):
        await store.grants.schedule_revoke_retry("g-missing", at=T0, error="x")


async def test_active_for_incident_lists_only_active_grants_of_that_incident(store: Store) -> None:
    incident = make_incident()
    other = make_incident(id="PINC999", number=9)
    await store.grants.add(make_grant("g-1", incident=incident, expires_at=T0 + 2 * HOUR))
    await store.grants.add(make_grant("g-2", incident=incident, expires_at=T0 + HOUR))
    await store.grants.add(make_grant("g-ended", incident=incident, status=GrantStatus.ENDED))
    await store.grants.add(make_grant("g-other", incident=other))
    await store.grants.add(make_grant("g-none"))
    assert [g.id for g in await store.grants.active_for_incident("PINC001")] == ["g-2", "g-1"]
    assert await store.grants.active_for_incident("PNONE") == []


async def test_count_active_counts_only_active_grants(store: Store) -> None:
    assert await store.grants.count_active() == 0
    await store.grants.add(make_grant("g-1"))
    await store.grants.add(make_grant("g-2"))
    await store.grants.add(make_grant("g-3", status=GrantStatus.REVOKING))
    assert await store.grants.count_active() == 2


async def test_grants_list_for_is_the_holders_soonest_expiry_first_ended_only_when_asked(store: Store) -> None:
    await store.grants.add(make_grant("g-late", expires_at=T0 + 3 * HOUR))
    await store.grants.add(make_grant("g-soon", expires_at=T0 + HOUR))
    await store.grants.add(make_grant("g-revoking", status=GrantStatus.REVOKING, expires_at=T0 + 2 * HOUR))
    await store.grants.add(make_grant("g-ended", status=GrantStatus.ENDED, expires_at=T0 - HOUR))
    await store.grants.add(make_grant("g-failed", status=GrantStatus.FAILED, expires_at=T0 - 2 * HOUR))
    await store.grants.add(make_grant("g-bob", holder=BOB))
    assert [g.id for g in await store.grants.list_for(ALICE.email)] == ["g-soon", "g-revoking", "g-late"]
    everything = await store.grants.list_for(ALICE.email, include_ended=True)
    assert [g.id for g in everything] == ["g-failed", "g-ended", "g-soon", "g-revoking", "g-late"]


# --- audit, settings, messages ----------------------------------------------------------------


async def test_audit_since_returns_events_at_or_after_in_append_order_with_data_intact(store: Store) -> None:
    data: dict[str, object] = {"flow": "oncall", "approvers": ["bob@example.com"], "n": 2, "ok": True, "x": None}
    await store.audit.append(AuditEvent(at=T0 - HOUR, kind="access.requested", actor=ALICE.email, subject="r-1"))
    await store.audit.append(AuditEvent(at=T0 + HOUR, kind="gate.evaluated", actor="ackgate", subject="r-1", data=data))
    # Appended later but stamped earlier: order is append order, not time order.
    await store.audit.append(AuditEvent(at=T0, kind="access.granted", actor=BOB.email, subject="g-1"))
    events = await store.audit.since(T0)
    assert [(e.kind, e.at, e.data) for e in events] == [
        ("gate.evaluated", T0 + HOUR, data),
        ("access.granted", T0, {}),
    ]
    seqs = [e.seq for e in events if e.seq is not None]
    assert len(seqs) == 2
    assert seqs[0] < seqs[1]
    assert events[0] == AuditEvent(T0 + HOUR, "gate.evaluated", "ackgate", "r-1", data, seq=seqs[0])


async def test_audit_since_honours_the_limit(store: Store) -> None:
    for n in range(5):
        await store.audit.append(AuditEvent(at=T0, kind=f"k{n}", actor="ackgate", subject="s"))
    assert [e.kind for e in await store.audit.since(T0, limit=3)] == ["k0", "k1", "k2"]


async def test_audit_data_that_is_not_json_is_kept_as_text_rather_than_lost(store: Store) -> None:
    await store.audit.append(
        AuditEvent(at=T0, kind="k", actor="ackgate", subject="s", data={"when": T0, "status": GrantStatus.ACTIVE})
    )
    (event,) = await store.audit.since(T0)
    assert event.data == {"when": T0.isoformat(), "status": "active"}


async def test_settings_set_returns_the_previous_value(store: Store) -> None:
    assert await store.settings.get("approval_channel") is None
    assert await store.settings.set("approval_channel", "C01") is None
    assert await store.settings.set("approval_channel", "C02") == "C01"
    assert await store.settings.get("approval_channel") == "C02"
    assert await store.settings.get("other") is None


async def test_message_refs_are_kept_per_subject_in_order_and_once(store: Store) -> None:
    first = MessageRef(platform="slack", channel="C01", message_id="1700000000.000100")
    second = MessageRef(platform="teams", channel="19:abc@thread.tacv2", message_id="1700000000002")
    await store.messages.add("r-1", first)
    await store.messages.add("r-1", second)
    await store.messages.add("r-1", first)  # a retried delivery records nothing new
    await store.messages.add("r-2", second)
    assert await store.messages.refs("r-1") == [first, second]
    assert await store.messages.refs("r-2") == [second]
    assert await store.messages.refs("r-3") == []


# --- lifecycle and replicas -------------------------------------------------------------------


async def test_opening_an_existing_database_again_keeps_data_and_migrates_nothing(database_url: str) -> None:
    async with opened(database_url) as first:
        await first.requests.add(make_request())
        version = await first.schema_version()  # type: ignore[attr-defined]
    async with opened(database_url) as again, opened(database_url) as third:
        assert await again.requests.get("r-aaaa2222") == make_request()
        assert await again.schema_version() == version == LATEST  # type: ignore[attr-defined]
        assert await third.schema_version() == version  # type: ignore[attr-defined]


async def test_replicas_starting_together_migrate_once(backend: str, tmp_path: Path) -> None:
    async with url_for(backend, tmp_path) as url:
        stores = [open_store(url) for _ in range(3)]
        try:
            await asyncio.gather(*(s.open() for s in stores))
            assert [await s.schema_version() for s in stores] == [LATEST] * 3  # type: ignore[attr-defined]
            await stores[0].settings.set("k", "v")
            assert await stores[2].settings.get("k") == "v"
        finally:
            for s in stores:
                await s.close()


async def test_two_replicas_racing_to_expire_one_grant_produce_one_winner(database_url: str) -> None:
    async with opened(database_url) as replica_a, opened(database_url) as replica_b:
        await replica_a.grants.add(make_grant(expires_at=T0))
        due = await replica_b.grants.due_to_expire(T0)
        assert [g.id for g in due] == ["g-aaaa2222"]
        results = await asyncio.gather(
            *(
                replica.grants.transition(
                    "g-aaaa2222",
                    expected=GrantStatus.ACTIVE,
                    new=GrantStatus.REVOKING,
                    at=T0,
                    end_reason=EndReason.EXPIRED,
                )
                for replica in (replica_a, replica_b, replica_a, replica_b)
            ),
            return_exceptions=True,
        )
        wins, losses = _split(results)
        assert len(wins) == 1
        assert len(losses) == 3
        assert all(isinstance(e, AlreadyDecided) and e.status == "revoking" for e in losses)


async def test_ping_answers_while_open_and_raises_storage_error_once_closed(database_url: str) -> None:
    async with opened(database_url) as store:
        await store.ping()
    with pytest.raises(StorageError, match="not open"):
        await store.ping()
    with pytest.raises(StorageError, match="not open"):
        await store.grants.count_active()


async def test_an_approval_racing_a_decision_on_another_replica_is_all_or_nothing(database_url: str) -> None:
    async with opened(database_url) as replica_a, opened(database_url) as replica_b:
        ids = [f"r-race{n}" for n in range(20)]
        for request_id in ids:
            await replica_a.requests.add(make_request(request_id))

        async def approve(request_id: str) -> object:
            return await replica_a.requests.add_approval(request_id, approver_email=BOB.email, at=T0)

        async def deny(request_id: str) -> object:
            return await replica_b.requests.decide(
                request_id, expected=RequestStatus.PENDING, new=RequestStatus.DENIED, by=CAROL.email, at=T0
            )

        results = await asyncio.gather(
            *(step(request_id) for request_id in ids for step in (approve, deny)), return_exceptions=True
        )
        # Never a driver error: the loser of each pair sees a clean AlreadyDecided or nothing at all.
        assert [r for r in results if isinstance(r, BaseException) and not isinstance(r, AlreadyDecided)] == []
        for request_id, approved in zip(ids, results[0::2], strict=True):
            stored = await replica_b.requests.get(request_id)
            assert stored is not None
            assert stored.status is RequestStatus.DENIED
            if isinstance(approved, AccessRequest):  # the approval landed first, while still pending
                assert approved.status is RequestStatus.PENDING
                assert stored.approvals == (Approval(BOB.email, T0),)
            else:
                assert stored.approvals == ()

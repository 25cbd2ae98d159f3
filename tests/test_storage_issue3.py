"""The issue-3 storage ports (transactions, mirrors, seen keys) and migration 0002, on SQLite and PostgreSQL."""

from __future__ import annotations

import asyncio
import random
from collections.abc import Sequence
from dataclasses import replace
from datetime import datetime, timedelta

import pytest

from bot.core.domain import AuthStatus, AuthTransaction
from bot.core.errors import AlreadyDecided, NotFound, StorageError
from bot.core.ports import Store
from storage import PrunesSeen, migrations, open_store
from tests.fakes import storage_fixtures
from tests.fakes.storage_fixtures import (
    BOB,
    CAROL,
    T0,
    make_mirror,
    make_request,
    make_transaction,
    opened,
)

backend = storage_fixtures.backend
database_url = storage_fixtures.database_url
store = storage_fixtures.store

MINUTE = timedelta(minutes=1)
LATEST = len(migrations.load("sqlite"))


def _split(results: Sequence[object]) -> tuple[list[object], list[BaseException]]:
    wins = [r for r in results if not isinstance(r, BaseException)]
    losses = [r for r in results if isinstance(r, BaseException)]
    return wins, losses


# --- authentication transactions --------------------------------------------------------------


async def test_transaction_with_every_field_set_round_trips_exactly(store: Store) -> None:
    transaction = make_transaction(
        requester=CAROL,
        target=replace(BOB, name=""),
        status=AuthStatus.VERIFIED,
        context="ticket SEC-1234",
        channels=("pagerduty", "chat"),
        dedup_key="ackgate-auth-t-aaaa2222",
        decided_at=T0 + timedelta(minutes=3, microseconds=654321),
        note="PagerDuty accepted the event",
    )
    await store.transactions.add(transaction)
    assert await store.transactions.get(transaction.id) == transaction


async def test_transaction_with_only_required_fields_round_trips_exactly(store: Store) -> None:
    transaction = make_transaction(message="")
    await store.transactions.add(transaction)
    got = await store.transactions.get(transaction.id)
    assert got == transaction
    assert got is not None
    assert (got.channels, got.dedup_key, got.decided_at, got.note) == ((), None, None, "")


async def test_transactions_are_found_by_their_token_hash_and_dedup_key(store: Store) -> None:
    await store.transactions.add(make_transaction(dedup_key="dk-1"))
    await store.transactions.add(make_transaction("t-bbbb3333"))
    found = await store.transactions.by_token_hash("sha256-of-the-token-of-t-bbbb3333")
    assert found is not None
    assert found.id == "t-bbbb3333"
    by_key = await store.transactions.by_dedup_key("dk-1")
    assert by_key is not None
    assert by_key.id == "t-aaaa2222"


async def test_unknown_transaction_token_and_dedup_key_read_as_none(store: Store) -> None:
    await store.transactions.add(make_transaction())
    assert await store.transactions.get("t-missing") is None
    assert await store.transactions.by_token_hash("not-a-stored-hash") is None
    assert await store.transactions.by_dedup_key("dk-missing") is None


async def test_adding_a_transaction_id_twice_raises_storage_error_and_changes_nothing(store: Store) -> None:
    await store.transactions.add(make_transaction())
    with pytest.raises(
        StorageError, match=r"^Could not save authentication request t-aaaa2222: that id is already taken\.$"
    ):
        await store.transactions.add(make_transaction(token_hash="another-hash", message="other"))
    assert await store.transactions.get("t-aaaa2222") == make_transaction()
    assert await store.transactions.by_token_hash("another-hash") is None


async def test_a_token_hash_belongs_to_one_transaction_and_is_never_echoed(store: Store) -> None:
    await store.transactions.add(make_transaction())
    clash = make_transaction("t-bbbb3333", token_hash=make_transaction().token_hash)
    with pytest.raises(StorageError) as caught:
        await store.transactions.add(clash)
    assert caught.value.message == "Could not save authentication request t-bbbb3333: its link token is already in use."
    assert clash.token_hash not in caught.value.message
    assert caught.value.__cause__ is not None
    assert await store.transactions.get("t-bbbb3333") is None
    await store.transactions.add(make_transaction("t-cccc4444"))  # the store still works afterwards


async def test_decide_sets_status_and_time_and_the_note_when_given(store: Store) -> None:
    await store.transactions.add(make_transaction(note="sent through PagerDuty"))
    at = T0 + 2 * MINUTE
    verified = await store.transactions.decide(
        "t-aaaa2222", expected=AuthStatus.PENDING, new=AuthStatus.VERIFIED, at=at, note="verified from the page"
    )
    expected = make_transaction(status=AuthStatus.VERIFIED, decided_at=at, note="verified from the page")
    assert verified == expected
    assert await store.transactions.get("t-aaaa2222") == expected


async def test_decide_without_a_note_keeps_the_stored_note(store: Store) -> None:
    await store.transactions.add(make_transaction(note="PagerDuty was off; sent in chat"))
    denied = await store.transactions.decide(
        "t-aaaa2222", expected=AuthStatus.PENDING, new=AuthStatus.DENIED, at=T0 + MINUTE
    )
    assert (denied.status, denied.note) == (AuthStatus.DENIED, "PagerDuty was off; sent in chat")


@pytest.mark.parametrize(
    ("first", "sentence"),
    [
        (AuthStatus.VERIFIED, "This request was already verified."),
        (AuthStatus.DENIED, "This request was already denied."),
        (AuthStatus.EXPIRED, "This link has expired."),
    ],
)
async def test_a_used_link_loses_with_a_sentence_saying_why(store: Store, first: AuthStatus, sentence: str) -> None:
    await store.transactions.add(make_transaction())
    await store.transactions.decide("t-aaaa2222", expected=AuthStatus.PENDING, new=first, at=T0 + MINUTE)
    with pytest.raises(AlreadyDecided) as caught:
        await store.transactions.decide(
            "t-aaaa2222", expected=AuthStatus.PENDING, new=AuthStatus.VERIFIED, at=T0 + 2 * MINUTE, note="again"
        )
    assert (caught.value.message, caught.value.status, caught.value.by) == (sentence, first.value, None)
    stored = await store.transactions.get("t-aaaa2222")
    assert stored is not None
    assert (stored.status, stored.decided_at, stored.note) == (first, T0 + MINUTE, "")


async def test_two_concurrent_decisions_on_one_link_have_exactly_one_winner(store: Store) -> None:
    await store.transactions.add(make_transaction())
    results = await asyncio.gather(
        *(
            store.transactions.decide("t-aaaa2222", expected=AuthStatus.PENDING, new=new, at=T0 + MINUTE)
            for new in (AuthStatus.VERIFIED, AuthStatus.DENIED)
        ),
        return_exceptions=True,
    )
    wins, losses = _split(results)
    assert len(wins) == 1
    assert len(losses) == 1
    winner = wins[0]
    assert isinstance(winner, AuthTransaction)
    assert isinstance(losses[0], AlreadyDecided)
    assert losses[0].status == winner.status.value
    assert await store.transactions.get("t-aaaa2222") == winner


async def test_ten_concurrent_verifications_of_one_link_succeed_once(store: Store) -> None:
    await store.transactions.add(make_transaction())
    results = await asyncio.gather(
        *(
            store.transactions.decide(
                "t-aaaa2222", expected=AuthStatus.PENDING, new=AuthStatus.VERIFIED, at=T0 + n * MINUTE
            )
            for n in range(10)
        ),
        return_exceptions=True,
    )
    wins, losses = _split(results)
    assert len(wins) == 1
    assert len(losses) == 9
    assert all(isinstance(e, AlreadyDecided) and e.message == "This request was already verified." for e in losses)


async def test_deciding_an_unknown_transaction_raises_not_found(store: Store) -> None:
    with pytest.raises(NotFound, match=r"^No authentication request has the id t-missing\.$"):
        await store.transactions.decide("t-missing", expected=AuthStatus.PENDING, new=AuthStatus.EXPIRED, at=T0)


async def test_update_delivery_records_channels_dedup_key_and_note_only(store: Store) -> None:
    await store.transactions.add(make_transaction(channels=("chat",), note="first try"))
    updated = await store.transactions.update_delivery(
        "t-aaaa2222", channels=("pagerduty", "chat"), dedup_key="ackgate-auth-t-aaaa2222", note="both"
    )
    expected = make_transaction(channels=("pagerduty", "chat"), dedup_key="ackgate-auth-t-aaaa2222", note="both")
    assert updated == expected
    assert await store.transactions.get("t-aaaa2222") == expected
    assert await store.transactions.by_dedup_key("ackgate-auth-t-aaaa2222") == expected
    cleared = await store.transactions.update_delivery("t-aaaa2222", channels=(), dedup_key=None, note="")
    assert cleared == make_transaction()


async def test_update_delivery_of_an_unknown_transaction_raises_not_found(store: Store) -> None:
    with pytest.raises(NotFound, match=r"^No authentication request has the id t-missing\.$"):
        await store.transactions.update_delivery("t-missing", channels=("chat",), dedup_key=None, note="")


async def test_pending_expired_lists_only_pending_links_past_expiry_earliest_first(store: Store) -> None:
    now = T0 + 10 * MINUTE
    cases = [
        ("t-late", now - MINUTE, AuthStatus.PENDING),
        ("t-b-early", now - 5 * MINUTE, AuthStatus.PENDING),
        ("t-a-early", now - 5 * MINUTE, AuthStatus.PENDING),  # same expiry: id breaks the tie
        ("t-exactly-now", now, AuthStatus.PENDING),
        ("t-future", now + timedelta(microseconds=1), AuthStatus.PENDING),
        ("t-verified", now - 9 * MINUTE, AuthStatus.VERIFIED),
        ("t-expired", now - 9 * MINUTE, AuthStatus.EXPIRED),
    ]
    for transaction_id, expires_at, status in cases:
        await store.transactions.add(make_transaction(transaction_id, expires_at=expires_at, status=status))
    expired = await store.transactions.pending_expired(now)
    assert [t.id for t in expired] == ["t-a-early", "t-b-early", "t-late", "t-exactly-now"]
    assert [t.id for t in await store.transactions.pending_expired(now, limit=2)] == ["t-a-early", "t-b-early"]
    assert await store.transactions.pending_expired(now - 6 * MINUTE) == []


async def test_a_naive_expiry_is_refused(store: Store) -> None:
    with pytest.raises(ValueError, match="timezone-aware"):
        await store.transactions.add(make_transaction(expires_at=datetime(2026, 11, 23, 12, 10)))


async def test_two_replicas_racing_on_one_link_produce_one_winner(database_url: str) -> None:
    async with opened(database_url) as replica_a, opened(database_url) as replica_b:
        await replica_a.transactions.add(make_transaction())
        results = await asyncio.gather(
            *(
                replica.transactions.decide(
                    "t-aaaa2222", expected=AuthStatus.PENDING, new=AuthStatus.VERIFIED, at=T0 + MINUTE
                )
                for replica in (replica_a, replica_b, replica_a, replica_b)
            ),
            return_exceptions=True,
        )
        wins, losses = _split(results)
        assert len(wins) == 1
        assert len(losses) == 3
        assert all(isinstance(e, AlreadyDecided) and e.status == "verified" for e in losses)


# --- incident mirrors -------------------------------------------------------------------------


async def test_a_first_mirror_is_stored_and_round_trips_exactly(store: Store) -> None:
    mirror = make_mirror(
        status="acknowledged",
        status_at=T0 + timedelta(seconds=30, microseconds=5),
        acknowledged_by="Bob",
        service_id="PSVC001",
        transaction_id="t-aaaa2222",
        incident_key="ackgate-auth-t-aaaa2222",
    )
    assert await store.mirrors.put_if_newer(mirror) is True
    assert await store.mirrors.get("PINC001") == mirror


async def test_unknown_incident_and_transaction_have_no_mirror(store: Store) -> None:
    await store.mirrors.put_if_newer(make_mirror(transaction_id="t-aaaa2222"))
    assert await store.mirrors.get("PMISSING") is None
    assert await store.mirrors.by_transaction("t-missing") is None


async def test_a_later_event_replaces_the_mirror(store: Store) -> None:
    await store.mirrors.put_if_newer(make_mirror())
    acknowledged = make_mirror(status="acknowledged", status_at=T0 + MINUTE, acknowledged_by="Bob", title="renamed")
    assert await store.mirrors.put_if_newer(acknowledged) is True
    assert await store.mirrors.get("PINC001") == acknowledged


async def test_a_later_event_may_move_the_status_back_as_a_reopen_does(store: Store) -> None:
    await store.mirrors.put_if_newer(make_mirror(status="resolved", status_at=T0 + MINUTE))
    reopened = make_mirror(status="triggered", status_at=T0 + 2 * MINUTE)
    assert await store.mirrors.put_if_newer(reopened) is True
    assert await store.mirrors.get("PINC001") == reopened


async def test_an_older_event_never_moves_the_mirror_backwards(store: Store) -> None:
    resolved = make_mirror(status="resolved", status_at=T0 + 2 * MINUTE)
    await store.mirrors.put_if_newer(resolved)
    late = make_mirror(status="acknowledged", status_at=T0 + MINUTE, acknowledged_by="Bob")
    assert await store.mirrors.put_if_newer(late) is False
    assert await store.mirrors.get("PINC001") == resolved


@pytest.mark.parametrize(
    ("stored", "offered", "taken"),
    [
        ("triggered", "acknowledged", True),
        ("acknowledged", "resolved", True),
        ("triggered", "resolved", True),
        ("acknowledged", "triggered", False),
        ("resolved", "acknowledged", False),
        ("acknowledged", "acknowledged", False),
    ],
)
async def test_at_the_same_instant_only_a_later_status_replaces_the_mirror(
    store: Store, stored: str, offered: str, taken: bool
) -> None:
    first = make_mirror(status=stored, acknowledged_by="first")
    await store.mirrors.put_if_newer(first)
    second = make_mirror(status=offered, acknowledged_by="second")
    assert await store.mirrors.put_if_newer(second) is taken
    assert await store.mirrors.get("PINC001") == (second if taken else first)


async def test_a_newer_event_without_the_links_keeps_the_stored_transaction_and_key(store: Store) -> None:
    await store.mirrors.put_if_newer(make_mirror(transaction_id="t-aaaa2222", incident_key="dk-1"))
    newer = make_mirror(status="resolved", status_at=T0 + MINUTE)
    assert await store.mirrors.put_if_newer(newer) is True
    assert await store.mirrors.get("PINC001") == replace(newer, transaction_id="t-aaaa2222", incident_key="dk-1")
    assert await store.mirrors.by_transaction("t-aaaa2222") == replace(
        newer, transaction_id="t-aaaa2222", incident_key="dk-1"
    )


async def test_mirrors_are_found_by_their_transaction(store: Store) -> None:
    mine = make_mirror("PINC001", transaction_id="t-aaaa2222")
    await store.mirrors.put_if_newer(mine)
    await store.mirrors.put_if_newer(make_mirror("PINC002", transaction_id="t-bbbb3333"))
    await store.mirrors.put_if_newer(make_mirror("PINC003"))
    assert await store.mirrors.by_transaction("t-aaaa2222") == mine


async def test_concurrent_puts_in_any_order_leave_the_newest_status(store: Store) -> None:
    statuses = ["triggered", "acknowledged", "resolved"]
    offered = [
        make_mirror(status=statuses[n % 3], status_at=T0 + (n // 3) * MINUTE, acknowledged_by=f"event {n}")
        for n in range(12)
    ]
    random.Random(3).shuffle(offered)
    results = await asyncio.gather(*(store.mirrors.put_if_newer(m) for m in offered))
    newest = max(offered, key=lambda m: (m.status_at, statuses.index(m.status)))
    assert await store.mirrors.get("PINC001") == newest
    assert results[offered.index(newest)] is True


async def test_the_same_event_put_concurrently_is_stored_once(database_url: str) -> None:
    async with opened(database_url) as replica_a, opened(database_url) as replica_b:
        mirror = make_mirror(status="acknowledged", acknowledged_by="Bob")
        results = await asyncio.gather(
            *(replica.mirrors.put_if_newer(mirror) for replica in (replica_a, replica_b) * 5)
        )
        assert results.count(True) == 1
        assert await replica_b.mirrors.get("PINC001") == mirror


# --- seen keys --------------------------------------------------------------------------------


async def test_a_key_is_seen_for_the_first_time_only_once(store: Store) -> None:
    assert await store.seen.first_time("pagerduty-event:E1", at=T0) is True
    assert await store.seen.first_time("pagerduty-event:E1", at=T0 + MINUTE) is False
    assert await store.seen.first_time("pagerduty-event:E2", at=T0) is True


async def test_ten_concurrent_first_times_of_one_key_give_exactly_one_true(store: Store) -> None:
    results = await asyncio.gather(*(store.seen.first_time("pagerduty-webhook:W1", at=T0) for _ in range(10)))
    assert results.count(True) == 1


async def test_two_replicas_recording_one_key_concurrently_give_exactly_one_true(database_url: str) -> None:
    async with opened(database_url) as replica_a, opened(database_url) as replica_b:
        results = await asyncio.gather(
            *(replica.seen.first_time("pagerduty-webhook:W1", at=T0) for replica in (replica_a, replica_b) * 10)
        )
        assert results.count(True) == 1
        assert await replica_a.seen.first_time("pagerduty-webhook:W1", at=T0) is False


async def test_prune_seen_forgets_only_keys_recorded_before_the_cutoff(store: Store) -> None:
    assert isinstance(store, PrunesSeen)
    await store.seen.first_time("old-1", at=T0 - timedelta(hours=49))
    await store.seen.first_time("old-2", at=T0 - timedelta(hours=48, microseconds=1))
    await store.seen.first_time("at-cutoff", at=T0 - timedelta(hours=48))
    await store.seen.first_time("recent", at=T0)
    assert await store.prune_seen(T0 - timedelta(hours=48)) == 2
    assert await store.prune_seen(T0 - timedelta(hours=48)) == 0
    assert await store.seen.first_time("old-1", at=T0) is True  # forgotten, so new again
    assert await store.seen.first_time("at-cutoff", at=T0) is False
    assert await store.seen.first_time("recent", at=T0) is False


# --- migration 0002 ---------------------------------------------------------------------------


async def test_a_database_at_version_1_upgrades_to_the_latest_keeping_its_data(database_url: str) -> None:
    async with opened(database_url, migrate_up_to=1) as old:
        assert await old.schema_version() == 1  # type: ignore[attr-defined]
        await old.requests.add(make_request())
        with pytest.raises(StorageError):  # the new tables do not exist yet
            await old.transactions.get("t-aaaa2222")
    async with opened(database_url) as upgraded:
        assert await upgraded.schema_version() == LATEST >= 2  # type: ignore[attr-defined]
        assert await upgraded.requests.get("r-aaaa2222") == make_request()
        await upgraded.transactions.add(make_transaction())
        await upgraded.mirrors.put_if_newer(make_mirror())
        assert await upgraded.seen.first_time("k", at=T0) is True
    async with opened(database_url) as again:  # a second open migrates nothing and loses nothing
        assert await again.schema_version() == LATEST  # type: ignore[attr-defined]
        assert await again.transactions.get("t-aaaa2222") == make_transaction()
        assert await again.mirrors.get("PINC001") == make_mirror()
        assert await again.seen.first_time("k", at=T0) is False


async def test_replicas_upgrading_a_version_1_database_together_apply_0002_once(database_url: str) -> None:
    async with opened(database_url, migrate_up_to=1):
        pass
    stores = [open_store(database_url) for _ in range(3)]
    try:
        await asyncio.gather(*(s.open() for s in stores))
        assert [await s.schema_version() for s in stores] == [LATEST] * 3  # type: ignore[attr-defined]
        await stores[0].transactions.add(make_transaction())
        assert await stores[2].transactions.get("t-aaaa2222") == make_transaction()
    finally:
        for s in stores:
            await s.close()


async def test_opening_a_store_stops_at_the_version_asked_for(database_url: str) -> None:
    async with opened(database_url, migrate_up_to=1) as old:
        assert await old.schema_version() == 1  # type: ignore[attr-defined]
    async with opened(database_url, migrate_up_to=1) as still_old:
        assert await still_old.schema_version() == 1  # type: ignore[attr-defined]

"""The contracts of migration 0003's ports on SQLite and PostgreSQL: the webhook inbox, the claim on
an incident's first mirror post and the chat outbox; with races between two stores on one database
(two replicas) for every insert-if-absent and claim."""

from __future__ import annotations

import asyncio
from datetime import timedelta

from bot.core.domain import MessageRef
from bot.core.ports import OutboxDelivery, Store
from tests.fakes import storage_fixtures
from tests.fakes.storage_fixtures import T0, opened

backend = storage_fixtures.backend
database_url = storage_fixtures.database_url
store = storage_fixtures.store

LEASE = timedelta(minutes=2)
SECOND = timedelta(seconds=1)


async def add_event(store: Store, event_id: str = "E1", *, at: object = T0) -> bool:
    return await store.inbox.add(event_id, event_type="incident.triggered", body='{"event": {}}', at=at)  # type: ignore[arg-type]


# --- webhook inbox ---------------------------------------------------------------------------


async def test_an_event_is_stored_once_and_keeps_its_body(store: Store) -> None:
    assert await add_event(store) is True
    assert await add_event(store) is False
    [due] = await store.inbox.due(T0)
    assert (due.event_id, due.event_type, due.body, due.received_at) == (
        "E1",
        "incident.triggered",
        '{"event": {}}',
        T0,
    )
    assert (due.state, due.attempts, due.claim) == ("pending", 0, None)


async def test_a_claim_is_exclusive_until_its_lease_lapses(store: Store) -> None:
    await add_event(store)
    first = await store.inbox.claim("E1", token="a", now=T0, until=T0 + LEASE)
    assert first is not None and first.attempts == 1 and first.claim == "a"
    assert await store.inbox.claim("E1", token="b", now=T0 + SECOND, until=T0 + LEASE) is None
    assert await store.inbox.due(T0 + SECOND) == []  # held: not offered to recovery
    taken = await store.inbox.claim("E1", token="b", now=T0 + LEASE, until=T0 + 2 * LEASE)
    assert taken is not None and taken.attempts == 2
    assert await store.inbox.finish("E1", token="a", at=T0 + LEASE) is False  # the old holder lost it
    assert await store.inbox.finish("E1", token="b", at=T0 + LEASE) is True
    assert await store.inbox.claim("E1", token="c", now=T0 + 9 * LEASE, until=T0 + 10 * LEASE) is None  # done


async def test_an_unknown_event_cannot_be_claimed(store: Store) -> None:
    assert await store.inbox.claim("nope", token="a", now=T0, until=T0 + LEASE) is None


async def test_a_retry_releases_the_claim_and_is_due_at_its_time(store: Store) -> None:
    await add_event(store)
    await store.inbox.claim("E1", token="a", now=T0, until=T0 + LEASE)
    assert await store.inbox.retry("E1", token="x", at=T0 + 10 * SECOND, error="boom") is False
    assert await store.inbox.retry("E1", token="a", at=T0 + 10 * SECOND, error="boom") is True
    assert await store.inbox.due(T0 + 9 * SECOND) == []
    assert await store.inbox.claim("E1", token="b", now=T0 + 9 * SECOND, until=T0 + LEASE) is None
    [due] = await store.inbox.due(T0 + 10 * SECOND)
    assert due.attempts == 1
    assert await store.inbox.claim("E1", token="b", now=T0 + 10 * SECOND, until=T0 + LEASE) is not None


async def test_a_parked_event_is_counted_and_never_offered_again(store: Store) -> None:
    await add_event(store)
    await store.inbox.claim("E1", token="a", now=T0, until=T0 + LEASE)
    assert await store.inbox.park("E1", token="b", at=T0, error="x") is False
    assert await store.inbox.park("E1", token="a", at=T0, error="x") is True
    assert await store.inbox.count_parked() == 1
    assert await store.inbox.due(T0 + timedelta(days=1)) == []


async def test_due_lists_claimable_events_oldest_first_up_to_the_limit(store: Store) -> None:
    for n in range(5):
        await add_event(store, f"E{n}", at=T0 + n * SECOND)
    await store.inbox.claim("E1", token="a", now=T0 + 5 * SECOND, until=T0 + LEASE)
    due = await store.inbox.due(T0 + 5 * SECOND, limit=3)
    assert [d.event_id for d in due] == ["E0", "E2", "E3"]
    assert [d.event_id for d in await store.inbox.due(T0 + 2 * SECOND)] == ["E0", "E2"]  # received by then


async def test_prune_forgets_only_done_events_finished_before_the_cutoff(store: Store) -> None:
    for event_id in ("old", "recent", "pending", "parked"):
        await add_event(store, event_id)
    await store.inbox.claim("old", token="t", now=T0, until=T0 + LEASE)
    await store.inbox.finish("old", token="t", at=T0)
    await store.inbox.claim("recent", token="t", now=T0, until=T0 + LEASE)
    await store.inbox.finish("recent", token="t", at=T0 + timedelta(hours=2))
    await store.inbox.claim("parked", token="t", now=T0, until=T0 + LEASE)
    await store.inbox.park("parked", token="t", at=T0, error="x")
    assert await store.inbox.prune(T0 + timedelta(hours=1)) == 1
    assert await add_event(store, "old") is True  # forgotten
    assert await add_event(store, "recent") is False
    assert await add_event(store, "pending") is False
    assert await add_event(store, "parked") is False


async def test_two_replicas_storing_the_same_event_at_once_store_it_once(database_url: str) -> None:
    async with opened(database_url) as one, opened(database_url) as two:
        for n in range(20):
            results = await asyncio.gather(*(add_event(s, f"E{n}") for s in (one, two, one, two)))
            assert sorted(results) == [False, False, False, True], n


async def test_two_replicas_claiming_the_same_event_at_once_get_one_claim(database_url: str) -> None:
    async with opened(database_url) as one, opened(database_url) as two:
        for n in range(20):
            await add_event(one, f"E{n}")
            claims = await asyncio.gather(
                *(s.inbox.claim(f"E{n}", token=f"t{i}", now=T0, until=T0 + LEASE) for i, s in enumerate((one, two) * 2))
            )
            assert len([c for c in claims if c is not None]) == 1, n


# --- the first mirror post -------------------------------------------------------------------


async def test_the_first_post_of_an_incident_is_claimed_by_one_until_released_or_lapsed(store: Store) -> None:
    assert await store.mirrors.claim_post("P1", token="a", now=T0, until=T0 + LEASE) is True
    assert await store.mirrors.claim_post("P1", token="b", now=T0 + SECOND, until=T0 + LEASE) is False
    assert await store.mirrors.claim_post("P2", token="b", now=T0, until=T0 + LEASE) is True  # per incident
    await store.mirrors.release_post("P1", token="b")  # not b's: nothing happens
    assert await store.mirrors.claim_post("P1", token="c", now=T0 + SECOND, until=T0 + LEASE) is False
    await store.mirrors.release_post("P1", token="a")
    assert await store.mirrors.claim_post("P1", token="c", now=T0 + SECOND, until=T0 + LEASE) is True
    assert await store.mirrors.claim_post("P1", token="d", now=T0 + LEASE, until=T0 + 2 * LEASE) is True  # lapsed


async def test_two_replicas_claiming_a_first_post_at_once_get_one_claim(database_url: str) -> None:
    async with opened(database_url) as one, opened(database_url) as two:
        for n in range(20):
            claims = await asyncio.gather(
                *(
                    s.mirrors.claim_post(f"P{n}", token=f"t{i}", now=T0, until=T0 + LEASE)
                    for i, s in enumerate((one, two) * 2)
                )
            )
            assert claims.count(True) == 1, n


# --- chat outbox -----------------------------------------------------------------------------


def delivery(delivery_id: str = "o-1", *, kind: str = "channel", card: str = '{"title": "t"}') -> OutboxDelivery:
    return OutboxDelivery(
        id=delivery_id, platform="slack", kind=kind, recipient="C-1", card=card, created_at=T0, state="pending"
    )


async def test_a_queued_message_is_stored_due_at_its_time(store: Store) -> None:
    await store.outbox.add(delivery(), at=T0 + SECOND)
    stored = await store.outbox.get("o-1")
    assert stored == delivery()
    assert await store.outbox.due(T0) == []
    assert [d.id for d in await store.outbox.due(T0 + SECOND)] == ["o-1"]
    assert await store.outbox.count_pending() == 1
    assert await store.outbox.get("nope") is None


async def test_an_update_queued_again_keeps_only_the_newest_card_and_is_pending_again(store: Store) -> None:
    await store.outbox.add(delivery("u:1", kind="update", card="v1"), at=T0)
    await store.outbox.claim("u:1", token="a", now=T0, until=T0 + LEASE)
    await store.outbox.add(delivery("u:1", kind="update", card="v2"), at=T0 + SECOND)
    stored = await store.outbox.get("u:1")
    assert stored is not None and (stored.card, stored.state, stored.attempts, stored.claim) == (
        "v2",
        "pending",
        0,
        None,
    )
    # The old claimant's outcome no longer applies: the new card must still be sent.
    assert await store.outbox.delivered("u:1", token="a", at=T0, ref=None, placeholder=None) is False
    assert await store.outbox.count_pending() == 1


async def test_revise_changes_a_pending_card_and_reports_a_sent_one(store: Store) -> None:
    await store.outbox.add(delivery(), at=T0)
    revised = await store.outbox.revise("o-1", card="v2")
    assert revised is not None and (revised.card, revised.state) == ("v2", "pending")
    await store.outbox.claim("o-1", token="a", now=T0, until=T0 + LEASE)
    real = MessageRef("slack", "C-1", "1700.1")
    await store.outbox.delivered("o-1", token="a", at=T0, ref=real, placeholder=None)
    after = await store.outbox.revise("o-1", card="v3")
    assert after is not None and (after.state, after.ref, after.card) == ("done", real, "v2")
    assert await store.outbox.revise("nope", card="x") is None


async def test_delivered_needs_the_claim_and_swaps_the_placeholder_ref_in_one_go(store: Store) -> None:
    await store.outbox.add(delivery(), at=T0)
    placeholder = MessageRef("slack", "C-1", "outbox:o-1")
    await store.messages.add("r-1", placeholder)
    await store.messages.add("r-1", MessageRef("slack", "D-2", "1700.2"))
    real = MessageRef("slack", "C-1", "1700.9")
    assert (
        await store.outbox.delivered("o-1", token="a", at=T0, ref=real, placeholder=placeholder) is False
    )  # unclaimed
    assert placeholder in await store.messages.refs("r-1")
    await store.outbox.claim("o-1", token="a", now=T0, until=T0 + LEASE)
    assert await store.outbox.delivered("o-1", token="a", at=T0, ref=real, placeholder=placeholder) is True
    assert await store.messages.refs("r-1") == [real, MessageRef("slack", "D-2", "1700.2")]  # same place in order
    stored = await store.outbox.get("o-1")
    assert stored is not None and (stored.state, stored.ref) == ("done", real)
    assert await store.outbox.count_pending() == 0


async def test_retry_expire_and_drop(store: Store) -> None:
    for n in range(3):
        await store.outbox.add(delivery(f"o-{n}"), at=T0)
    await store.outbox.claim("o-0", token="a", now=T0, until=T0 + LEASE)
    assert await store.outbox.retry("o-0", token="a", at=T0 + 5 * SECOND, error="ratelimited") is True
    assert [d.id for d in await store.outbox.due(T0 + SECOND)] == ["o-1", "o-2"]
    await store.outbox.claim("o-1", token="a", now=T0, until=T0 + LEASE)
    assert await store.outbox.expire("o-1", token="b", at=T0, error="x") is False
    assert await store.outbox.expire("o-1", token="a", at=T0, error="x") is True
    assert await store.outbox.drop_pending("o-2") is True
    assert await store.outbox.drop_pending("o-1") is False  # expired, not pending
    assert await store.outbox.get("o-2") is None
    assert [d.id for d in await store.outbox.due(T0 + 5 * SECOND)] == ["o-0"]


async def test_a_claimed_message_is_not_dropped(store: Store) -> None:
    await store.outbox.add(delivery(), at=T0)
    await store.outbox.claim("o-1", token="a", now=T0, until=T0 + LEASE)
    assert await store.outbox.drop_pending("o-1") is False


async def test_outbox_prune_forgets_finished_messages_before_the_cutoff(store: Store) -> None:
    for n in range(3):
        await store.outbox.add(delivery(f"o-{n}"), at=T0)
        await store.outbox.claim(f"o-{n}", token="a", now=T0, until=T0 + LEASE)
    await store.outbox.delivered("o-0", token="a", at=T0, ref=MessageRef("slack", "C", "1"), placeholder=None)
    await store.outbox.expire("o-1", token="a", at=T0, error="x")
    assert await store.outbox.prune(T0 + SECOND) == 2
    assert [await store.outbox.get(f"o-{n}") is None for n in range(3)] == [True, True, False]


async def test_two_replicas_claiming_the_same_message_at_once_get_one_claim(database_url: str) -> None:
    async with opened(database_url) as one, opened(database_url) as two:
        for n in range(20):
            await one.outbox.add(delivery(f"o-{n}"), at=T0)
            claims = await asyncio.gather(
                *(
                    s.outbox.claim(f"o-{n}", token=f"t{i}", now=T0, until=T0 + LEASE)
                    for i, s in enumerate((one, two) * 2)
                )
            )
            assert len([c for c in claims if c is not None]) == 1, n

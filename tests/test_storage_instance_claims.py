"""Instance-owned claims (migration 0007), on SQLite and PostgreSQL: an instance that restarts takes
back its own dead claims at once, and only its own; a rival replica's claim keeps its lease. Also the
approval-card claim: one poster per request, even when claims race."""

from __future__ import annotations

import asyncio
from datetime import timedelta

from bot.core.domain import ReceivedCommand, RequestStatus, claim_prefix, claim_token
from bot.core.ports import OutboxDelivery, Store
from tests.fakes import storage_fixtures
from tests.fakes.storage_fixtures import T0, make_request, opened

backend = storage_fixtures.backend
database_url = storage_fixtures.database_url
store = storage_fixtures.store

LEASE = timedelta(seconds=60)
ME = "host-a:8080"
RIVAL = "host-b:8080"


def command(key: str, owner: str) -> ReceivedCommand:
    return ReceivedCommand(
        key=key, kind="command", user_id="U0ALICE", received_at=T0, lease_until=T0 + LEASE, claimed_by=owner
    )


async def recovery_pass(store: Store, at: timedelta, owner: str = "") -> set[str]:
    now = T0 + at
    taken = await store.commands.claim_unanswered(
        now, lease_until=now + LEASE, received_after=T0 - timedelta(days=1), max_attempts=3, owner=owner
    )
    return {c.key for c in taken}


def test_a_claim_token_names_its_owner_and_no_other() -> None:
    token = claim_token(ME)
    assert token.startswith(claim_prefix(ME))
    assert not token.startswith(claim_prefix("host-a:808"))  # a prefix of the name is not the name
    assert claim_token(ME) != token
    assert "/" not in claim_token("")


async def test_a_restarted_instance_takes_back_only_its_own_unanswered_commands(store: Store) -> None:
    assert await store.commands.record(command("command:mine", ME))
    assert await store.commands.record(command("command:rival", RIVAL))
    assert await store.commands.record(command("command:answered", ME))
    assert await store.commands.answered("command:answered", at=T0)
    assert await recovery_pass(store, timedelta(seconds=5)) == set()  # every lease is live

    assert await store.commands.release_claims(ME, now=T0 + timedelta(seconds=5)) == 1
    assert await recovery_pass(store, timedelta(seconds=5), owner=ME) == {"command:mine"}
    # The rival's row waits for its lease; then whoever takes it over owns it.
    assert await recovery_pass(store, timedelta(seconds=59)) == set()
    assert await recovery_pass(store, timedelta(seconds=60), owner=ME) == {"command:rival"}


async def test_a_taken_over_command_belongs_to_its_new_owner(store: Store) -> None:
    assert await store.commands.record(command("command:1", RIVAL))
    assert await recovery_pass(store, timedelta(seconds=61), owner=ME) == {"command:1"}
    # The rival restarting does not touch it; this instance restarting does.
    assert await store.commands.release_claims(RIVAL, now=T0 + timedelta(seconds=62)) == 0
    assert await store.commands.release_claims(ME, now=T0 + timedelta(seconds=62)) == 1
    assert await recovery_pass(store, timedelta(seconds=62)) == {"command:1"}


async def test_an_unowned_row_is_never_released(store: Store) -> None:
    assert await store.commands.record(command("command:old", ""))
    assert await store.commands.release_claims("", now=T0 + timedelta(seconds=5)) == 0
    assert await recovery_pass(store, timedelta(seconds=5)) == set()


async def test_concurrent_take_overs_after_a_release_give_each_command_once(store: Store) -> None:
    for n in range(6):
        assert await store.commands.record(command(f"command:{n}", ME))
    await store.commands.release_claims(ME, now=T0 + timedelta(seconds=1))
    passes = await asyncio.gather(*(recovery_pass(store, timedelta(seconds=1), owner=o) for o in (ME, RIVAL) * 3))
    taken = [key for keys in passes for key in keys]
    assert sorted(taken) == sorted(f"command:{n}" for n in range(6))


async def test_webhook_claims_of_a_restarted_instance_are_claimable_at_once(store: Store) -> None:
    now = T0
    for event_id in ("01MINE", "01RIVAL", "01DONE"):
        assert await store.inbox.add(event_id, event_type="incident.triggered", body="{}", at=now)
    mine, rival, done = claim_token(ME), claim_token(RIVAL), claim_token(ME)
    assert await store.inbox.claim("01MINE", token=mine, now=now, until=now + LEASE)
    assert await store.inbox.claim("01RIVAL", token=rival, now=now, until=now + LEASE)
    assert await store.inbox.claim("01DONE", token=done, now=now, until=now + LEASE)
    assert await store.inbox.finish("01DONE", token=done, at=now)
    later = now + timedelta(seconds=1)
    assert [d.event_id for d in await store.inbox.due(later)] == []

    assert await store.inbox.release_claims(ME) == 1
    assert [d.event_id for d in await store.inbox.due(later)] == ["01MINE"]
    assert await store.inbox.claim("01MINE", token=claim_token(ME), now=later, until=later + LEASE) is not None
    assert await store.inbox.claim("01RIVAL", token=claim_token(ME), now=later, until=later + LEASE) is None


async def test_chat_outbox_claims_of_a_restarted_instance_are_claimable_at_once(store: Store) -> None:
    now = T0
    for delivery_id in ("o-mine", "o-rival"):
        delivery = OutboxDelivery(delivery_id, "slack", "channel", "C-1", "{}", created_at=now, state="pending")
        await store.outbox.add(delivery, at=now)
    assert await store.outbox.claim("o-mine", token=claim_token(ME), now=now, until=now + LEASE)
    assert await store.outbox.claim("o-rival", token=claim_token(RIVAL), now=now, until=now + LEASE)
    later = now + timedelta(seconds=1)
    assert await store.outbox.release_claims(ME) == 1
    assert [d.id for d in await store.outbox.due(later)] == ["o-mine"]


async def test_mirror_post_claims_of_a_restarted_instance_lapse_and_stay_owed_and_a_rivals_keep_their_lease(
    store: Store,
) -> None:
    now = T0
    assert await store.mirrors.claim_post("PMINE", token=claim_token(ME), now=now, until=now + LEASE)
    assert await store.mirrors.claim_post("PRIVAL", token=claim_token(RIVAL), now=now, until=now + LEASE)
    assert await store.mirrors.lapsed_posts(now) == []
    assert await store.mirrors.release_posts(ME, now=now) == 1
    assert await store.mirrors.release_posts(ME, now=now) == 0  # lapsed already
    assert await store.mirrors.lapsed_posts(now) == ["PMINE"]  # the message is still owed
    assert await store.mirrors.lapsed_posts(now + LEASE) == ["PMINE", "PRIVAL"]
    later = now + timedelta(seconds=1)
    assert await store.mirrors.claim_post("PMINE", token=claim_token(ME), now=later, until=later + LEASE)
    assert not await store.mirrors.claim_post("PRIVAL", token=claim_token(ME), now=later, until=later + LEASE)
    assert await store.mirrors.lapsed_posts(later) == []  # taken again


async def test_a_mirror_post_claim_is_owed_until_released_and_handed_back_at_once_when_the_post_fails(
    store: Store,
) -> None:
    mine, rival = claim_token(ME), claim_token(RIVAL)
    assert await store.mirrors.claim_post("PFAIL", token=mine, now=T0, until=T0 + LEASE)
    assert await store.mirrors.sending("PFAIL", token=mine)
    await store.mirrors.lapse_post("PFAIL", token=rival, now=T0)  # not the holder: nothing happens
    assert await store.mirrors.lapsed_posts(T0 + timedelta(seconds=1)) == []
    await store.mirrors.lapse_post("PFAIL", token=mine, now=T0)
    assert await store.mirrors.lapsed_posts(T0 + timedelta(seconds=1)) == ["PFAIL"]
    later = T0 + timedelta(seconds=1)
    assert await store.mirrors.claim_post("PFAIL", token=rival, now=later, until=later + LEASE)
    assert await store.mirrors.release_posts(RIVAL, now=later) == 1  # the failed call counts as not begun
    await store.mirrors.release_post("PFAIL", token=rival)  # posted: nothing owed any more
    assert await store.mirrors.lapsed_posts(T0 + 2 * LEASE) == []


async def pending_unshown(store: Store, at: timedelta) -> list[str]:
    now = T0 + at
    return [r.id for r in await store.requests.pending_without_cards(now, created_before=now)]


async def test_approval_cards_are_claimed_once_and_never_again_once_posted(store: Store) -> None:
    await store.requests.add(make_request("r-shown"))
    await store.requests.add(make_request("r-unshown"))
    await store.requests.add(make_request("r-approved", status=RequestStatus.APPROVED))
    assert await pending_unshown(store, timedelta(seconds=1)) == ["r-shown", "r-unshown"]
    now = T0 + timedelta(seconds=1)
    assert await store.messages.claim_cards("r-shown", owner=ME, now=now, until=now + LEASE)
    assert not await store.messages.claim_cards("r-shown", owner=RIVAL, now=now, until=now + LEASE)
    assert await pending_unshown(store, timedelta(seconds=1)) == ["r-unshown"]  # being posted
    assert not await store.messages.cards_posted("r-shown", owner=RIVAL, at=now)  # not the holder
    assert await store.messages.cards_posted("r-shown", owner=ME, at=now)
    # Posted: never offered or claimable again, whatever the lease says.
    assert await pending_unshown(store, timedelta(hours=1)) == ["r-unshown"]
    hour = T0 + timedelta(hours=1)
    assert not await store.messages.claim_cards("r-shown", owner=RIVAL, now=hour, until=hour + LEASE)


async def test_an_unposted_card_claim_lapses_with_its_lease_or_its_owners_restart(store: Store) -> None:
    await store.requests.add(make_request("r-mine"))
    await store.requests.add(make_request("r-rival"))
    now = T0 + timedelta(seconds=1)
    assert await store.messages.claim_cards("r-mine", owner=ME, now=now, until=now + LEASE)
    assert await store.messages.claim_cards("r-rival", owner=RIVAL, now=now, until=now + LEASE)
    assert await pending_unshown(store, timedelta(seconds=2)) == []
    assert await store.messages.release_card_claims(ME, now=T0 + timedelta(seconds=2)) == 1
    assert await pending_unshown(store, timedelta(seconds=2)) == ["r-mine"]
    assert await pending_unshown(store, timedelta(seconds=61)) == ["r-mine", "r-rival"]
    later = T0 + timedelta(seconds=61)
    assert await store.messages.claim_cards("r-rival", owner=ME, now=later, until=later + LEASE)


async def test_two_stores_racing_for_one_requests_cards_let_exactly_one_post(database_url: str) -> None:
    """Replicas: separate pools on one database claiming the same request's cards at the same time."""
    async with opened(database_url) as one, opened(database_url) as two:
        for n in range(8):
            request_id = f"r-race{n:04d}"
            await one.requests.add(make_request(request_id))
            now = T0 + timedelta(seconds=1)
            claims = [
                s.messages.claim_cards(request_id, owner=o, now=now, until=now + LEASE)
                for s, o in ((one, ME), (two, RIVAL)) * 3
            ]
            assert (await asyncio.gather(*claims)).count(True) == 1


async def test_a_mirror_post_claim_whose_chat_call_began_outlives_its_owners_restart(store: Store) -> None:
    """The message may exist: only the lease ends such a claim, so a restart never posts a second one."""
    now = T0
    began, idle = claim_token(ME), claim_token(ME)
    assert await store.mirrors.claim_post("PBEGAN", token=began, now=now, until=now + LEASE)
    assert await store.mirrors.claim_post("PIDLE", token=idle, now=now, until=now + LEASE)
    assert not await store.mirrors.sending("PBEGAN", token=claim_token(RIVAL))  # not the holder
    assert await store.mirrors.sending("PBEGAN", token=began)
    assert await store.mirrors.release_posts(ME, now=now) == 1
    later = now + timedelta(seconds=1)
    assert await store.mirrors.lapsed_posts(later) == ["PIDLE"]
    assert await store.mirrors.claim_post("PIDLE", token=claim_token(ME), now=later, until=later + LEASE)
    assert not await store.mirrors.claim_post("PBEGAN", token=claim_token(ME), now=later, until=later + LEASE)
    # Once the lease ends it is owed and taken over as before, and the new holder has not begun.
    end = now + LEASE
    assert await store.mirrors.lapsed_posts(end) == ["PBEGAN"]
    taken = claim_token(ME)
    assert await store.mirrors.claim_post("PBEGAN", token=taken, now=end, until=end + LEASE)
    assert await store.mirrors.release_posts(ME, now=end) == 2

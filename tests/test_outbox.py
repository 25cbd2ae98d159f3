"""Chat messages are never dropped: an approval card Slack refused with 429 reaches the approver
later, through the real app, and later updates edit that message; the wrapper and the worker on
both backends (placeholders, revisions, coalesced updates, expiry, two replicas' workers racing)."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from datetime import timedelta

import pytest

from bot.core.clock import FakeClock
from bot.core.domain import MessageRef
from bot.core.errors import ChatError
from bot.core.outbox import OutboxNotifier, OutboxWorker, card_from_json, card_to_json, is_placeholder
from bot.core.ports import OutboxDelivery, Store
from bot.core.views import Action, Card, Fact, Link, Tone
from bot.runtime.simulators.stage import Stage
from handlers.slack.retry import MAX_RETRIES
from storage import open_store
from tests.fakes import storage_fixtures
from tests.fakes.chat import RecordingNotifier
from tests.fakes.stage_fixtures import request_id_in, requests_of
from tests.fakes.world import person

backend = storage_fixtures.backend
database_url = storage_fixtures.database_url
store = storage_fixtures.store

CARD = Card(
    title="alice@example.com requests prod-k8s",
    text="Line one\nline two",
    facts=(Fact("Resource", "prod-k8s"), Fact("Incident", "#7 Checkout", url="https://pd.example/incidents/P7")),
    actions=(Action("approve", "Approve", "r-1", style="primary"), Action("deny", "Deny", "r-1")),
    links=(Link("Open", "https://pd.example"),),
    footnote="Request r-1",
    tone=Tone.WARNING,
)


def test_a_card_round_trips_through_json() -> None:
    assert card_from_json(card_to_json(CARD)) == CARD
    assert card_from_json(card_to_json(Card(title="bare"))) == Card(title="bare")


# --- through the real app ----------------------------------------------------------------------


async def test_an_approval_card_refused_with_429_reaches_the_approver_later_and_updates_edit_it(
    stage: Stage,
) -> None:
    alice, bob, _carol = stage.person("alice"), stage.person("bob"), stage.person("carol")
    # bob's card is refused (rate limited) for longer than the Web API client's own retries;
    # carol's, posted after, goes straight through.
    refusals = 1 + MAX_RETRIES
    for _ in range(refusals):
        stage.slack.fail_next("chat.postMessage", "ratelimited", status=429)

    reply = await stage.command(alice, "prod-k8s 1h debugging a stuck pod")
    assert "Waiting for approval: prod-k8s" in reply.text
    await stage.wait_for_dm(_carol, "alice@example.com requests prod-k8s")
    assert stage.dms(bob) == []
    assert await stage.parts.store.outbox.count_pending() == 1

    for _ in range(refusals):
        stage.slack.fail_next("chat.postMessage", "ratelimited", status=429)
    await stage.pass_time(3)  # the worker's first retry: refused again, retries included
    await stage.slack.wait_for(lambda: len(stage.slack.calls_to("chat.postMessage")) >= 2 * refusals + 1)
    await retry_recorded(stage)
    assert stage.dms(bob) == []
    await stage.pass_time(10)
    card = await stage.wait_for_dm(bob, "alice@example.com requests prod-k8s")
    assert "[Approve]" in card

    request_id = request_id_in(card)

    async def swapped() -> bool:  # the worker records the ref just after Slack answered
        return not any(is_placeholder(r) for r in await stage.parts.store.messages.refs(request_id))

    await eventually(swapped)
    refs = await stage.parts.store.messages.refs(request_id)
    assert len(refs) == 2  # bob's real ref replaced the placeholder, next to carol's

    click = await stage.click(bob, "approve", request_id)
    assert click.status == 200
    await stage.slack.wait_for(lambda: "Approved by bob@example.com" in stage.dms(bob)[0])
    [bobs_card] = stage.slack.messages[stage.slack.dm_channel(bob.user_id)]
    assert bobs_card.edits >= 1  # edited in place, not posted again
    [approved] = await requests_of(stage, alice.email)
    assert approved.decided_by == "bob@example.com"
    assert await stage.parts.store.outbox.count_pending() == 0


async def eventually(check: Callable[[], Awaitable[bool]]) -> None:
    """Wait (5 s at most) until ``check()``: for what the app writes to its database in the background."""
    for _ in range(500):
        if await check():
            return
        await asyncio.sleep(0.01)
    raise AssertionError(f"{check.__name__} never became true")


async def retry_recorded(stage: Stage) -> None:
    """Wait until the worker has recorded its failed attempt (the claim released, a retry set)."""

    async def recorded() -> bool:
        return bool(await stage.parts.store.outbox.due(stage.clock.now() + timedelta(seconds=30)))

    await eventually(recorded)


# --- the wrapper and the worker, on both backends --------------------------------------------


class World:
    def __init__(self, store: Store) -> None:
        self.clock = FakeClock()
        self.chat = RecordingNotifier()
        self.store = store
        self.notifier = OutboxNotifier(self.chat, outbox=store.outbox, clock=self.clock, platform="slack")
        self.expired: list[int] = []
        self.worker = OutboxWorker(
            store.outbox,
            notifiers={"slack": self.chat},
            clock=self.clock,
            max_age=timedelta(minutes=30),
            on_expired=lambda: self.expired.append(1),
        )


@pytest.fixture
def world(store: Store) -> World:
    return World(store)


async def test_a_refused_channel_post_is_queued_behind_a_placeholder_and_sent_with_the_newest_card(
    world: World,
) -> None:
    world.chat.down = True
    ref = await world.notifier.send_to_channel("C-APPROVALS", CARD)
    assert is_placeholder(ref) and ref.channel == "C-APPROVALS"
    await world.store.messages.add("r-1", ref)
    newer = Card(title="Approved by bob@example.com")
    await world.notifier.update(ref, newer)  # revises the queued card; nothing reaches chat
    assert await world.worker.run_once() == 0  # not due yet: the client has only just retried
    world.clock.advance(timedelta(seconds=3))
    assert await world.worker.run_once() == 0  # chat still down
    world.chat.down = False
    assert await world.worker.run_once() == 0  # backing off
    world.clock.advance(timedelta(seconds=3))
    assert await world.worker.run_once() == 1
    [sent] = world.chat.sent
    assert sent.card == newer and sent.to == "C-APPROVALS"
    assert await world.store.messages.refs("r-1") == [sent.ref]
    # An update through the placeholder the caller may still hold now edits the real message.
    await world.notifier.update(ref, CARD)
    assert sent.card == CARD
    assert await world.worker.run_once() == 0


async def test_a_refused_direct_message_is_delivered_later_to_the_same_person(world: World) -> None:
    bob = person("bob")
    world.chat.down = True
    ref = await world.notifier.send_to_user(bob, CARD)
    assert is_placeholder(ref) and ref.channel == bob.user_id
    world.chat.down = False
    world.clock.advance(timedelta(seconds=3))
    assert await world.worker.run_once() == 1
    assert world.chat.inbox(bob.email) == [CARD]


async def test_failed_updates_of_one_message_are_coalesced_to_the_newest_card(world: World) -> None:
    ref = await world.notifier.send_to_channel("C-1", CARD)
    world.chat.down = True
    for n in range(3):
        await world.notifier.update(ref, Card(title=f"version {n}"))
    assert await world.store.outbox.count_pending() == 1
    world.chat.down = False
    world.clock.advance(timedelta(seconds=3))
    assert await world.worker.run_once() == 1
    [sent] = world.chat.sent
    assert sent.card.title == "version 2" and [c.title for c in sent.history] == [CARD.title]


async def test_a_direct_update_that_succeeds_drops_an_older_queued_one(world: World) -> None:
    ref = await world.notifier.send_to_channel("C-1", CARD)
    world.chat.down = True
    await world.notifier.update(ref, Card(title="older"))
    world.chat.down = False
    await world.notifier.update(ref, Card(title="newest"))
    world.clock.advance(timedelta(seconds=10))
    assert await world.worker.run_once() == 0
    assert world.chat.sent[0].card.title == "newest"


async def test_a_message_that_never_gets_through_is_given_up_after_its_age_logged_once_and_counted(
    world: World, caplog: pytest.LogCaptureFixture
) -> None:
    world.chat.down = True
    await world.notifier.send_to_channel("C-1", CARD)
    with caplog.at_level(logging.INFO, logger="ackgate.outbox"):
        for _ in range(40):
            world.clock.advance(timedelta(minutes=1))
            await world.worker.run_once()
    assert world.expired == [1]
    assert await world.store.outbox.count_pending() == 0
    gave_up = [r for r in caplog.records if "gave up" in r.getMessage()]
    assert len(gave_up) == 1 and gave_up[0].levelno == logging.WARNING and gave_up[0].exc_info is None


async def test_when_the_outbox_cannot_store_the_message_the_chat_error_reaches_the_caller() -> None:
    unopened = open_store("sqlite:///:memory:")
    notifier = OutboxNotifier(RecordingNotifier(), outbox=unopened.outbox, clock=FakeClock(), platform="slack")
    notifier.inner.down = True  # type: ignore[attr-defined]
    with pytest.raises(ChatError):
        await notifier.send_to_channel("C-1", CARD)


async def test_two_replicas_workers_send_each_queued_message_once(database_url: str) -> None:
    async with storage_fixtures.opened(database_url) as one, storage_fixtures.opened(database_url) as two:
        a, b = World(one), World(two)
        b.chat = a.chat  # one chat platform
        b.worker.notifiers = {"slack": a.chat}
        b.clock = a.worker.clock = b.worker.clock = a.clock
        a.chat.down = True
        placeholders = [await a.notifier.send_to_channel(f"C-{n}", Card(title=f"m{n}")) for n in range(30)]
        for n, ref in enumerate(placeholders):
            await one.messages.add(f"r-{n}", ref)
        a.chat.down = False
        a.clock.advance(timedelta(seconds=3))
        sent = await asyncio.gather(a.worker.run_once(), b.worker.run_once(), a.worker.run_once())
        assert sum(sent) == 30
        assert sorted(s.to for s in a.chat.sent) == sorted(f"C-{n}" for n in range(30))
        for n in range(30):
            [ref] = await two.messages.refs(f"r-{n}")
            assert not is_placeholder(ref) and ref in [s.ref for s in a.chat.sent]


def test_placeholders_are_recognised() -> None:
    assert is_placeholder(MessageRef("slack", "C1", "outbox:o-1"))
    assert not is_placeholder(MessageRef("slack", "C1", "1700000000.000100"))


async def test_admin_status_shows_parked_webhook_events_and_waiting_chat_messages(issue3_stage: Stage) -> None:
    stage = issue3_stage
    carol = stage.person("carol")  # the stage's admin
    status = await stage.command(carol, "admin status")
    assert "no PagerDuty webhook event parked; no chat message waiting" in status.text
    store, now = stage.parts.store, stage.clock.now()
    await store.outbox.add(
        OutboxDelivery("o-1", "slack", "channel", "C-1", card_to_json(CARD), created_at=now, state="pending"),
        at=now + timedelta(hours=1),
    )
    await store.inbox.add("01PARKED", event_type="incident.triggered", body="{}", at=now)
    await store.inbox.claim("01PARKED", token="t", now=now, until=now + timedelta(minutes=1))
    await store.inbox.park("01PARKED", token="t", at=now, error="boom")
    status = await stage.command(carol, "admin status")
    assert "1 PagerDuty webhook event(s) failed repeatedly and are parked" in status.text
    assert "1 chat message(s) waiting to be sent again" in status.text

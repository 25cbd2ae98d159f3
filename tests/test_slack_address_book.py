"""Slack caches email ↔ user id in the chat address book: users.lookupByEmail is asked once per
email within ADDRESS_FRESH, identities seen by users.info are recorded, and a failing store only
costs a Slack call. Also Slack's own health check (auth.test) for the admin status row."""

from __future__ import annotations

from collections.abc import AsyncIterator
from datetime import timedelta

import pytest
from slack_sdk.web.async_client import AsyncWebClient

from bot.core.clock import FakeClock
from bot.core.domain import Principal
from bot.core.errors import ChatError, StorageError
from bot.core.ports import ChatAddress, Store
from bot.runtime.simulators.slack import SlackSimulator
from handlers.slack.notifier import ADDRESS_FRESH, SlackIdentity, SlackNotifier
from storage import open_store

ALICE = Principal(platform="slack", user_id="U0ALICE", email="alice@example.com", name="Alice")


@pytest.fixture
async def slack() -> AsyncIterator[SlackSimulator]:
    async with SlackSimulator() as sim:
        sim.add_user("U0ALICE", "alice@example.com", "Alice")
        yield sim


@pytest.fixture
def client(slack: SlackSimulator) -> AsyncWebClient:
    return AsyncWebClient(token=slack.token, base_url=slack.base_url)


@pytest.fixture
async def store() -> AsyncIterator[Store]:
    store = open_store("sqlite:///:memory:")
    await store.open()
    yield store
    await store.close()


async def test_lookups_by_email_are_answered_from_the_book_while_fresh(
    slack: SlackSimulator, client: AsyncWebClient, store: Store
) -> None:
    clock = FakeClock()
    notifier = SlackNotifier(client, address_book=store.address_book, now=clock.now)

    assert await notifier.user_by_email("Alice@Example.com") == ALICE
    assert await store.address_book.by_user("slack", "U0ALICE") == ChatAddress(
        "slack", "U0ALICE", "alice@example.com", "Alice", updated_at=clock.now()
    )
    clock.advance(ADDRESS_FRESH - timedelta(seconds=1))
    assert await notifier.user_by_email("alice@example.com") == ALICE
    assert len(slack.calls_to("users.lookupByEmail")) == 1

    clock.advance(timedelta(seconds=1))
    assert await notifier.user_by_email("alice@example.com") == ALICE
    assert len(slack.calls_to("users.lookupByEmail")) == 2


async def test_an_identity_from_users_info_is_recorded_so_the_email_lookup_needs_no_call(
    slack: SlackSimulator, client: AsyncWebClient, store: Store
) -> None:
    clock = FakeClock()
    await SlackIdentity(client, address_book=store.address_book, now=clock.now).principal("U0ALICE")

    notifier = SlackNotifier(client, address_book=store.address_book, now=clock.now)
    assert await notifier.user_by_email("alice@example.com") == ALICE
    assert slack.calls_to("users.lookupByEmail") == []


class BrokenBook:
    async def upsert(self, address: ChatAddress, *, at: object) -> None:
        raise StorageError("The database is not answering.")

    async def by_user(self, platform: str, user_id: str) -> ChatAddress | None:
        raise StorageError("The database is not answering.")

    async def by_email(self, email: str, *, platform: str | None = None) -> list[ChatAddress]:
        raise StorageError("The database is not answering.")


async def test_a_failing_address_book_only_costs_a_slack_call(slack: SlackSimulator, client: AsyncWebClient) -> None:
    notifier = SlackNotifier(client, address_book=BrokenBook())
    assert await notifier.user_by_email("alice@example.com") == ALICE
    assert await SlackIdentity(client, address_book=BrokenBook()).principal("U0ALICE") == ALICE


async def test_health_is_auth_test_and_a_refusal_is_a_chat_error(slack: SlackSimulator, client: AsyncWebClient) -> None:
    await SlackNotifier(client).health()
    assert slack.calls_to("auth.test") != []
    slack.fail_next("auth.test", "invalid_auth")
    with pytest.raises(ChatError, match="invalid_auth"):
        await SlackNotifier(client).health()

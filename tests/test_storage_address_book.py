"""The chat address book port (migration 0006), on both backends: upserts, lookups by
(platform, user id) and by email (any case), and conversation data kept across lookups."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from bot.core.ports import ChatAddress, Store
from tests.fakes import storage_fixtures

backend = storage_fixtures.backend
database_url = storage_fixtures.database_url
store = storage_fixtures.store

T0 = datetime(2026, 11, 23, 12, 0, tzinfo=UTC)
TEAMS_REF = '{"conversation": {"id": "a:1Bob"}, "serviceUrl": "https://smba.trafficmanager.net/emea/"}'


async def test_an_address_round_trips_by_user_and_by_email(store: Store) -> None:
    bob = ChatAddress("teams", "29:1bob", "bob@example.com", "Bob", TEAMS_REF)
    await store.address_book.upsert(bob, at=T0)

    stored = ChatAddress("teams", "29:1bob", "bob@example.com", "Bob", TEAMS_REF, updated_at=T0)
    assert await store.address_book.by_user("teams", "29:1bob") == stored
    assert await store.address_book.by_email("bob@example.com") == [stored]
    assert await store.address_book.by_user("slack", "29:1bob") is None
    assert await store.address_book.by_email("nobody@example.com") == []


async def test_emails_match_in_any_case_and_are_stored_lower_cased(store: Store) -> None:
    await store.address_book.upsert(ChatAddress("slack", "U0BOB", "Bob@Example.COM"), at=T0)

    [found] = await store.address_book.by_email("BOB@example.com")
    assert (found.user_id, found.email) == ("U0BOB", "bob@example.com")


async def test_upsert_replaces_the_row_and_keeps_conversation_data_it_was_not_given(store: Store) -> None:
    book = store.address_book
    await book.upsert(ChatAddress("teams", "29:1bob", "bob@example.com", "Bob", TEAMS_REF), at=T0)
    later = T0 + timedelta(minutes=5)
    await book.upsert(ChatAddress("teams", "29:1bob", "robert@example.com"), at=later)

    found = await book.by_user("teams", "29:1bob")
    assert found == ChatAddress("teams", "29:1bob", "robert@example.com", "Bob", TEAMS_REF, updated_at=later)
    assert await book.by_email("bob@example.com") == []
    newer = '{"conversation": {"id": "a:2Bob"}}'
    await book.upsert(ChatAddress("teams", "29:1bob", "robert@example.com", "Robert", newer), at=later)
    again = await book.by_user("teams", "29:1bob")
    assert again is not None and (again.display_name, again.conversation) == ("Robert", newer)


async def test_one_email_on_two_platforms_newest_first_and_filtered_by_platform(store: Store) -> None:
    book = store.address_book
    await book.upsert(ChatAddress("slack", "U0BOB", "bob@example.com"), at=T0)
    await book.upsert(ChatAddress("teams", "29:1bob", "bob@example.com", conversation=TEAMS_REF), at=T0 + timedelta(1))

    assert [a.platform for a in await book.by_email("bob@example.com")] == ["teams", "slack"]
    assert [a.user_id for a in await book.by_email("bob@example.com", platform="slack")] == ["U0BOB"]

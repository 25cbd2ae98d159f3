"""The command inbox's contract (``slack_commands``), on SQLite and PostgreSQL: insert-if-absent
is atomic even across processes, and a take-over of an unanswered command happens once per lease."""

from __future__ import annotations

import asyncio
from contextlib import AsyncExitStack
from dataclasses import replace
from datetime import timedelta
from pathlib import Path

from bot.core.domain import ReceivedCommand
from bot.core.ports import Store
from storage.postgres import POOL_SIZE
from tests.fakes import storage_fixtures
from tests.fakes.storage_fixtures import T0, opened

backend = storage_fixtures.backend
database_url = storage_fixtures.database_url
store = storage_fixtures.store

LEASE = timedelta(seconds=60)
LONG_AGO = T0 - timedelta(days=1)


def command(key: str = "command:1234.5678.abcd", **changes: object) -> ReceivedCommand:
    made = ReceivedCommand(
        key=key,
        kind="command",
        user_id="U0ALICE",
        channel_id="C0APPROVALS",
        text="prod-db 1h replication lag",
        response_url="https://hooks.slack.com/commands/T0/1/abc",
        received_at=T0,
        lease_until=T0 + LEASE,
    )
    return replace(made, **changes)  # type: ignore[arg-type]


async def claim(store: Store, after: timedelta, *, max_attempts: int = 3) -> list[ReceivedCommand]:
    """A recovery pass ``after`` past T0."""
    at = T0 + after
    return await store.commands.claim_unanswered(
        at, lease_until=at + LEASE, received_after=LONG_AGO, max_attempts=max_attempts
    )


async def test_the_first_record_of_a_key_wins_and_every_later_one_is_refused(store: Store) -> None:
    assert await store.commands.record(command()) is True
    assert await store.commands.record(command()) is False
    assert await store.commands.record(command(text="something else entirely")) is False
    assert await store.commands.record(command("command:other")) is True


async def test_concurrent_records_of_one_key_let_exactly_one_through(store: Store) -> None:
    results = await asyncio.gather(*(store.commands.record(command()) for _ in range(12)))
    assert results.count(True) == 1


async def test_two_stores_on_one_database_racing_on_a_key_let_exactly_one_through(database_url: str) -> None:
    """Replicas: separate pools (or connections) on one database, inserting the same key at once."""
    async with opened(database_url) as one, opened(database_url) as two:
        for round_ in range(10):
            key = f"command:race-{round_}"
            results = await asyncio.gather(*(s.commands.record(command(key)) for s in (one, two, one, two, one, two)))
            assert results.count(True) == 1, results


async def test_an_answered_command_is_never_taken_over(store: Store) -> None:
    await store.commands.record(command())
    assert await store.commands.answered(command().key, at=T0 + timedelta(seconds=2)) is True
    assert await store.commands.answered(command().key, at=T0 + timedelta(seconds=3)) is False
    assert await claim(store, timedelta(hours=1)) == []


async def test_an_unanswered_command_is_taken_over_only_after_its_lease_lapsed(store: Store) -> None:
    await store.commands.record(command())
    assert await claim(store, timedelta(seconds=59)) == []
    [taken] = await claim(store, timedelta(seconds=60))
    assert taken.key == command().key
    assert taken.attempts == 1
    assert taken.text == "prod-db 1h replication lag"
    assert taken.response_url == command().response_url
    assert taken.received_at == T0
    assert taken.lease_until == T0 + timedelta(seconds=60) + LEASE
    # the new lease holds it against the next pass until it lapses in turn
    assert await claim(store, timedelta(seconds=61)) == []
    [again] = await claim(store, timedelta(seconds=120))
    assert again.attempts == 2


async def test_a_command_is_given_up_after_its_attempts(store: Store) -> None:
    await store.commands.record(command())
    for minute in (1, 3, 5):
        assert len(await claim(store, timedelta(minutes=minute), max_attempts=3)) == 1
    assert await claim(store, timedelta(minutes=7), max_attempts=3) == []


async def test_commands_received_before_the_window_are_not_taken_over(store: Store) -> None:
    await store.commands.record(command())
    at = T0 + timedelta(hours=2)
    taken = await store.commands.claim_unanswered(at, lease_until=at + LEASE, received_after=T0, max_attempts=3)
    assert taken == []


async def test_concurrent_passes_take_each_command_over_once(database_url: str) -> None:
    async with opened(database_url) as one, opened(database_url) as two:
        for n in range(15):
            await one.commands.record(command(f"command:k{n}"))
        results = await asyncio.gather(*(claim(s, timedelta(minutes=5)) for s in (one, two, one, two)))
        keys = [c.key for batch in results for c in batch]
        assert sorted(keys) == sorted(f"command:k{n}" for n in range(15))


async def test_pruning_drops_only_commands_received_before_the_cutoff(store: Store) -> None:
    await store.commands.record(command("command:old", received_at=T0 - timedelta(days=4)))
    await store.commands.record(command("command:new"))
    assert await store.commands.prune(T0 - timedelta(days=3)) == 1
    assert await store.commands.record(command("command:old")) is True  # forgotten, so new again
    assert await store.commands.record(command("command:new")) is False


async def test_a_take_over_by_kind_takes_only_that_platforms_commands(store: Store) -> None:
    """Slack's and Teams' recovery passes share the inbox; each takes over its own kinds of row."""
    assert await store.commands.record(command("command:slack"))
    assert await store.commands.record(command("teams:a:1", kind="teams_command", user_id="29:alice"))
    at = T0 + LEASE
    teams = await store.commands.claim_unanswered(
        at, lease_until=at + LEASE, received_after=LONG_AGO, max_attempts=3, kinds=("teams_command", "teams_click")
    )
    assert [c.key for c in teams] == ["teams:a:1"]
    slack = await store.commands.claim_unanswered(
        at, lease_until=at + LEASE, received_after=LONG_AGO, max_attempts=3, kinds=("command", "click")
    )
    assert [c.key for c in slack] == ["command:slack"]
    assert await claim(store, LEASE) == []  # both taken for the new lease


async def test_a_burst_of_distinct_commands_is_each_recorded_once_and_each_answered_once(store: Store) -> None:
    """Group commit: commands arriving together share one statement, and each caller still learns
    about its own row (a new key True, a repeated one False)."""
    keys = [f"command:burst-{n}" for n in range(150)]
    first = await asyncio.gather(*(store.commands.record(command(key)) for key in keys))
    assert first == [True] * len(keys)
    again = await asyncio.gather(*(store.commands.record(command(key)) for key in keys[::3]))
    assert again == [False] * len(keys[::3])
    answered = await asyncio.gather(*(store.commands.answered(key, at=T0) for key in [*keys[:10], keys[0]]))
    assert answered == [True] * 10 + [False]  # keys[0] twice: its first mark counts, the second does not
    assert await store.commands.answered("command:never-recorded", at=T0) is False
    at = T0 + LEASE + timedelta(seconds=1)
    unanswered = await store.commands.claim_unanswered(
        at, lease_until=at + LEASE, received_after=LONG_AGO, max_attempts=3, limit=500
    )
    assert sorted(c.key for c in unanswered) == sorted(keys[10:])


async def test_on_postgresql_a_command_is_recorded_while_the_background_holds_every_pooled_connection(
    tmp_path: Path,
) -> None:
    """The ack waits for the record: it has a connection of its own, so a background that holds
    the whole pool (say, every flow waiting on a slow PagerDuty inside a read) cannot stall it."""
    async with storage_fixtures.url_for("postgres", tmp_path) as url, opened(url) as one, AsyncExitStack() as held:
        for n in range(POOL_SIZE):
            await held.enter_async_context(one._db.read(f"hold connection {n}"))  # type: ignore[attr-defined]
        assert await asyncio.wait_for(one.commands.record(command("command:while-full")), 5) is True

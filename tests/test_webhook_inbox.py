"""The webhook inbox through the real endpoint, on SQLite and PostgreSQL: a delivery and its
retry arriving at once (on one replica, or on two sharing the database) are processed exactly once;
a delivery stored and then lost to a crash is processed by the recovery after a restart;
``triggered`` and ``acknowledged`` of a new incident reaching two replicas at once give one channel
message; hostile signed bodies get a quick 400; repeated failures are retried, then parked."""

from __future__ import annotations

import asyncio
import json
import logging
import sqlite3
import time
from datetime import timedelta
from pathlib import Path

import pytest

from bot.core.clock import FakeClock
from bot.core.mirror import subject
from bot.core.webhook_inbox import Inbox
from bot.core.webhooks import WebhookEvent
from bot.runtime.simulators.stage import Stage
from tests.fakes import storage_fixtures
from tests.fakes.incident_world import webhook_body
from tests.fakes.issue3_stage import database_file
from tests.fakes.webhook_replicas import Replicas, replicas

backend = storage_fixtures.backend
database_url = storage_fixtures.database_url

INCIDENTS = 100


@pytest.fixture
def sqlite_url(tmp_path: Path) -> str:
    return f"sqlite:///{tmp_path / 'ackgate.db'}"


def bodies(replicas: Replicas, event_type: str = "incident.triggered", *, count: int = INCIDENTS) -> list[bytes]:
    at = replicas.clock.now()
    return [
        webhook_body(event_type, incident_id=f"PINC{n:04d}", at=at, event_id=f"01EVT{event_type[9:12]}{n:04d}")
        for n in range(count)
    ]


async def test_the_same_delivery_twice_at_once_on_one_replica_is_processed_exactly_once(database_url: str) -> None:
    """PagerDuty's retry racing the original: both answered 202, one `accepted`, one `duplicate`."""
    async with replicas(database_url, count=1) as world:
        [replica] = world.members
        answers = []
        for body in bodies(world):
            answers += await asyncio.gather(replica.post(body), replica.post(body))
        await world.settle()
        assert {status for status, _ in answers} == {202}
        outcomes = [json.loads(text)["status"] for _, text in answers]
        assert outcomes.count("accepted") == outcomes.count("duplicate") == INCIDENTS
        assert len(world.processed) == INCIDENTS and set(world.processed.values()) == {1}
        assert len(world.chat.inbox("C-INCIDENTS")) == INCIDENTS  # every incident mirrored, once


async def test_the_same_delivery_at_two_replicas_at_once_is_processed_exactly_once(database_url: str) -> None:
    async with replicas(database_url, count=2) as world:
        a, b = world.members
        answers = await asyncio.gather(*(r.post(body) for body in bodies(world) for r in (a, b)))
        await world.settle()
        assert {status for status, _ in answers} == {202}
        assert len(world.processed) == INCIDENTS and set(world.processed.values()) == {1}
        assert len(world.chat.inbox("C-INCIDENTS")) == INCIDENTS


async def test_triggered_and_acknowledged_at_two_replicas_at_once_give_one_message_per_incident(
    database_url: str,
) -> None:
    """The first post is claimed in storage: the loser stores its newer status, the claimant draws it."""
    async with replicas(database_url, count=2) as world:
        a, b = world.members
        triggered = bodies(world, "incident.triggered", count=75)
        world.clock.advance(timedelta(seconds=1))
        acknowledged = bodies(world, "incident.acknowledged", count=75)
        await asyncio.gather(*(p for t, k in zip(triggered, acknowledged, strict=True) for p in (a.post(t), b.post(k))))
        await world.settle()
        posts = world.chat.inbox("C-INCIDENTS")
        assert len(posts) == 75  # one per incident; and each incident has exactly one:
        for n in range(75):
            refs = await a.store.messages.refs(subject(f"PINC{n:04d}"))
            assert len(refs) == 1, n
            [message] = [s for s in world.chat.sent if s.ref == refs[0]]
            status = next(f.value for f in message.card.facts if f.label == "Status")
            assert status == "Acknowledged", n  # never left at the older status
            assert (await a.store.mirrors.get(f"PINC{n:04d}")).status == "acknowledged"  # type: ignore[union-attr]


async def test_a_delivery_stored_but_never_processed_is_processed_by_recovery_after_a_restart(
    database_url: str,
) -> None:
    """202 was sent, then the replica died before processing: the next start-up's pass finds it."""
    body = webhook_body("incident.triggered", incident_id="PCRASH1", at=FakeClock().now(), event_id="01CRASHED")
    async with replicas(database_url, count=1) as before:
        # What the endpoint stores before answering, without the processing that a kill prevented.
        assert await before.members[0].store.inbox.add(
            "01CRASHED", event_type="incident.triggered", body=body.decode(), at=before.clock.now()
        )
    async with replicas(database_url, count=1) as after:
        [replica] = after.members
        assert await replica.inbox.recover() == 1
        assert after.processed == {"01CRASHED": 1}
        assert len(after.chat.inbox("C-INCIDENTS")) == 1
        assert await replica.inbox.recover() == 0  # done: never again
        assert (await replica.post(body))[1] == '{"status": "duplicate"}'  # PagerDuty's redelivery too


async def test_an_event_held_by_a_replica_that_died_is_recovered_once_its_lease_lapses(database_url: str) -> None:
    """A SIGKILL mid-processing leaves the claim in place; another replica takes it after the lease."""
    async with replicas(database_url, count=2) as world:
        a, b = world.members
        body = webhook_body("incident.triggered", incident_id="PKILL01", at=world.clock.now(), event_id="01KILLED")
        now = world.clock.now()
        assert await a.store.inbox.add("01KILLED", event_type="incident.triggered", body=body.decode(), at=now)
        # Replica a claimed it and was killed before finishing.
        assert await a.store.inbox.claim("01KILLED", token="dead", now=now, until=now + a.inbox.lease) is not None
        assert await b.inbox.recover() == 0  # still leased to the dead replica
        world.clock.advance(a.inbox.lease + timedelta(seconds=1))
        assert await b.inbox.recover() == 1
        assert world.processed == {"01KILLED": 1}
        assert len(world.chat.inbox("C-INCIDENTS")) == 1


async def test_processing_cancelled_at_shutdown_hands_the_event_back_at_once(database_url: str) -> None:
    async with replicas(database_url, count=2) as world:
        a, b = world.members
        gate = asyncio.Event()
        started = asyncio.Event()
        inner = a.inbox.on_event

        async def slow(event: WebhookEvent) -> None:
            started.set()
            await gate.wait()
            await inner(event)

        a.inbox.on_event = slow
        body = webhook_body("incident.triggered", incident_id="PSTOP01", at=world.clock.now(), event_id="01STOPPED")
        assert (await a.post(body))[0] == 202
        await asyncio.wait_for(started.wait(), timeout=5)
        for task in a.tasks:
            task.cancel()  # the replica stops while processing
        await asyncio.gather(*a.tasks, return_exceptions=True)
        a.tasks.clear()
        assert await b.inbox.recover() == 1  # no need to wait for the lease
        assert world.processed == {"01STOPPED": 1}
        assert len(world.chat.inbox("C-INCIDENTS")) == 1


async def test_a_failing_event_is_retried_with_backoff_then_parked_and_logged_once(
    database_url: str, caplog: pytest.LogCaptureFixture
) -> None:
    async with replicas(database_url, count=1) as world:
        [replica] = world.members
        parked: list[int] = []
        attempts: list[str] = []

        async def broken(event: WebhookEvent) -> None:
            attempts.append(event.id)
            raise RuntimeError("mirror exploded")

        inbox = Inbox(
            replica.store.inbox, on_event=broken, clock=world.clock, max_attempts=3, on_parked=lambda: parked.append(1)
        )
        replica.inbox.on_event = broken
        body = webhook_body("incident.triggered", incident_id="PBAD001", at=world.clock.now(), event_id="01POISON")
        with caplog.at_level(logging.INFO, logger="ackgate.webhooks"):
            assert (await replica.post(body))[0] == 202
            await world.settle()
            for _ in range(6):
                world.clock.advance(timedelta(minutes=11))
                await inbox.recover()
        assert attempts == ["01POISON"] * 3
        assert parked == [1]
        assert await replica.store.inbox.count_parked() == 1
        errors = [r for r in caplog.records if r.levelno >= logging.ERROR]
        assert len(errors) == 1 and "01POISON" in errors[0].getMessage() and "parked" in errors[0].getMessage()
        assert len([r for r in caplog.records if r.levelno == logging.WARNING]) == 2


# --- hostile signed bodies -------------------------------------------------------------------

HOSTILE = {
    "nested-100000-deep": b'{"event": ' + b"[" * 100_000 + b"]" * 100_000 + b"}",
    "nested-in-data": b'{"event": {"id": "01X", "event_type": "incident.triggered", "occurred_at": "2026-11-23T12:00:00Z", "data": '
    + b'{"a":' * 20_000
    + b"1"
    + b"}" * 20_000
    + b"}}",
    "id-5000-digits-number": b'{"event": {"id": ' + b"9" * 5000 + b', "event_type": "incident.triggered"}}',
    "id-5000-digits-string": b'{"event": {"id": "' + b"9" * 5000 + b'", "event_type": "incident.triggered", '
    b'"occurred_at": "2026-11-23T12:00:00Z"}}',
    "number-5000-digits": b'{"event": {"id": "01X", "event_type": "incident.triggered", "occurred_at": "2026-11-23T12:00:00Z", '
    b'"data": {"type": "incident", "id": "P1", "number": ' + b"7" * 5000 + b"}}}",
    "event-is-a-list": b'{"event": []}',
    "id-is-an-object": b'{"event": {"id": {"a": 1}, "event_type": "incident.triggered", "occurred_at": "2026-11-23T12:00:00Z"}}',
    "type-is-a-number": b'{"event": {"id": "01X", "event_type": 7, "occurred_at": "2026-11-23T12:00:00Z"}}',
    "occurred-at-is-a-number": b'{"event": {"id": "01X", "event_type": "incident.triggered", "occurred_at": 1}}',
    "occurred-at-huge": b'{"event": {"id": "01X", "event_type": "incident.triggered", "occurred_at": "'
    + b"2" * 10_000
    + b'"}}',
    "not-utf8": b'{"event": "\xff\xfe"}',
    "lone-surrogate": b'{"event": {"id": "\\ud800", "event_type": "incident.triggered", "occurred_at": "2026-11-23T12:00:00Z"}}',
    "event-type-huge": b'{"event": {"id": "01X", "event_type": "'
    + b"x" * 5000
    + b'", "occurred_at": "2026-11-23T12:00:00Z"}}',
}


@pytest.mark.parametrize("name", sorted(HOSTILE))
async def test_a_hostile_signed_body_gets_a_quick_400_one_log_line_and_no_echo(
    name: str, sqlite_url: str, caplog: pytest.LogCaptureFixture
) -> None:
    body = HOSTILE[name]
    async with replicas(sqlite_url, count=1) as world:
        [replica] = world.members
        with caplog.at_level(logging.DEBUG, logger="ackgate"):
            started = time.perf_counter()
            status, text = await replica.post(body)
            elapsed = time.perf_counter() - started
        await world.settle()
        assert world.processed == {}
        assert await replica.store.inbox.due(world.clock.now() + timedelta(days=1)) == []
    assert status == 400, text
    assert elapsed < 1.0
    assert len(text) < 300 and "9999999999" not in text and "[[[[" not in text
    lines = [r for r in caplog.records if r.name.startswith("ackgate")]
    assert len(lines) == 1
    assert len(lines[0].getMessage()) < 500 and lines[0].exc_info is None


async def test_the_running_app_recovers_a_stored_event_on_its_scheduler(stage: Stage) -> None:
    """The composition root puts the inbox's recovery on the expiry scheduler (start-up and every 10 s)."""
    store = stage.parts.store
    body = webhook_body("incident.triggered", incident_id="PAPP001", at=stage.clock.now(), event_id="01INAPP")
    assert await store.inbox.add("01INAPP", event_type="incident.triggered", body=body.decode(), at=stage.clock.now())

    async def processed() -> bool:
        return await store.inbox.due(stage.clock.now() + timedelta(days=1)) == []

    for _ in range(500):
        await stage.pass_time(11)
        if await processed():
            break
        await asyncio.sleep(0.01)
    assert await processed()
    assert (await stage.parts.org.webhook_status()).last_event_at is not None  # it went through the app's handler
    assert await stage.webhook(body) == 202  # and PagerDuty's redelivery is a duplicate
    assert await store.inbox.due(stage.clock.now() + timedelta(days=1)) == []
    assert not await store.inbox.add("01INAPP", event_type="incident.triggered", body="{}", at=stage.clock.now())

    # 72 hours on, the hourly prune job has forgotten it (PagerDuty stops redelivering after 48).
    assert inbox_rows(stage) == 1
    await stage.pass_time(timedelta(hours=73).total_seconds())
    for _ in range(500):
        if inbox_rows(stage) == 0:
            break
        await asyncio.sleep(0.01)
    assert inbox_rows(stage) == 0
    assert await store.inbox.add("01INAPP", event_type="incident.triggered", body="{}", at=stage.clock.now())


def inbox_rows(stage: Stage) -> int:
    # Read-only, beside the app's own connection: what is committed is what the app stored.
    with sqlite3.connect(f"file:{database_file(stage)}?mode=ro", uri=True) as conn:
        return int(conn.execute("SELECT count(*) FROM webhook_inbox").fetchone()[0])

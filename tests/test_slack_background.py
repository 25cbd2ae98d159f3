"""The work Slack listeners do after their ack (handlers.slack.app.Background): bounded turns, a
backlog kept as data and served first in first out, "busy" for what waited too long or found the
backlog full; and a request that cannot even be recorded in time is answered "busy" inside
Slack's deadline instead of failing, and its work is never started."""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from datetime import UTC, datetime, timedelta

import aiohttp
import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer
from pydantic import SecretStr
from slack_sdk.web.async_client import AsyncWebClient

from bot.core import lanes, messages
from bot.core.domain import ReceivedCommand
from bot.core.ports import Store
from bot.runtime.simulators.slack import SlackSimulator
from handlers.slack import app as slack_app_module
from handlers.slack.app import Background, build_slack_app, mount_slack
from handlers.slack.notifier import SlackIdentity, SlackNotifier
from tests.fakes import storage_fixtures
from tests.test_slack_handler import ALICE, SECRET, FakeAccess, Rig, _typed

memory_store = storage_fixtures.memory_store


class Clock:
    def __init__(self) -> None:
        self.t = 1000.0

    def __call__(self) -> float:
        return self.t


def recorder(log: list[str], name: str, gate: asyncio.Event | None = None) -> Callable[[], Awaitable[None]]:
    async def job() -> None:
        log.append(f"start {name}")
        if gate is not None:
            await gate.wait()
        log.append(f"end {name}")

    return job


async def settle(rounds: int = 1) -> None:
    """Let the loop run the tasks the backlog started (and what those started), ``rounds`` times over."""
    for _ in range(5 * rounds):
        await asyncio.sleep(0)


def fill(background: Background, log: list[str], gate: asyncio.Event, count: int) -> None:
    """Submit ``count`` jobs that wait on ``gate``, each with a busy answer of its own."""
    for n in range(count):
        background.submit(recorder(log, str(n), gate), recorder(log, f"busy {n}"))


async def test_at_most_the_turns_run_at_once_and_the_backlog_is_served_in_arrival_order() -> None:
    background = Background(2, wait=60, backlog=100)
    log: list[str] = []
    gate = asyncio.Event()
    fill(background, log, gate, 5)
    await settle()
    assert log == ["start 0", "start 1"] and len(background) == 3
    gate.set()
    await settle(20)
    assert [entry for entry in log if entry.startswith("start")] == [f"start {n}" for n in range(5)]
    assert not any("busy" in entry for entry in log) and len(background) == 0


async def test_a_job_that_waited_past_the_wait_gets_its_busy_answer_and_never_runs() -> None:
    clock = Clock()
    background = Background(1, wait=20, backlog=100, now=clock)
    log: list[str] = []
    gate = asyncio.Event()
    background.submit(recorder(log, "long", gate), recorder(log, "busy long"))
    background.submit(recorder(log, "old"), recorder(log, "busy old"))
    await settle()
    clock.t += 21
    background._tick()  # what the backlog's timer does every second
    await settle()
    assert "start busy old" in log and "start old" not in log
    gate.set()
    await settle()
    assert "start old" not in log


async def test_a_full_backlog_answers_busy_at_once() -> None:
    background = Background(1, wait=60, backlog=2)
    log: list[str] = []
    gate = asyncio.Event()
    fill(background, log, gate, 4)
    await settle()
    assert "start busy 3" in log and len(background) == 2
    gate.set()
    await settle(10)


async def test_a_failing_job_is_logged_and_frees_its_turn(caplog: pytest.LogCaptureFixture) -> None:
    background = Background(1, wait=60, backlog=10)
    log: list[str] = []

    async def broken() -> None:
        raise RuntimeError("defect")

    background.submit(broken, recorder(log, "busy"))
    background.submit(recorder(log, "next"), recorder(log, "busy next"))
    with caplog.at_level(logging.ERROR):
        await settle(10)
    assert "end next" in log
    assert "failed after its acknowledgement" in caplog.text


async def test_a_job_is_given_its_arguments_and_its_busy_answer_the_same_ones() -> None:
    clock = Clock()
    background = Background(1, wait=5, backlog=10, now=clock)
    calls: list[tuple[str, tuple[object, ...]]] = []
    gate = asyncio.Event()

    async def hold(*args: object) -> None:
        await gate.wait()

    async def work(*args: object) -> None:
        calls.append(("work", args))

    async def busy(*args: object) -> None:
        calls.append(("busy", args))

    background.submit(hold, busy)
    background.submit(work, busy, "first", 1)
    background.submit(work, busy, "second", 2)
    clock.t += 6
    background._tick()
    await settle()
    assert calls == [("busy", ("first", 1)), ("busy", ("second", 2))]
    gate.set()
    await settle()


class SlowInbox:
    """The store's command inbox, with records that wait for ``gate``."""

    def __init__(self, store: Store) -> None:
        self.inner = store.commands
        self.gate = asyncio.Event()

    async def record(self, command: ReceivedCommand) -> bool:
        await self.gate.wait()
        return await self.inner.record(command)

    def __getattr__(self, name: str) -> object:
        return getattr(self.inner, name)


@asynccontextmanager
async def _alice_rig(inbox: object, background: Background | None = None) -> AsyncIterator[Rig]:
    """The Slack app behind a real HTTP server, Alice its one user, over ``inbox``."""
    async with SlackSimulator() as slack:
        slack.add_user(ALICE, "alice@example.com", "Alice Liddell")
        client = AsyncWebClient(token=slack.token, base_url=slack.base_url)
        service = FakeAccess(slack)
        built = build_slack_app(
            client=client,
            service=_typed(service),
            identity=SlackIdentity(client),
            inbox=inbox,  # type: ignore[arg-type]
            notifier=SlackNotifier(client),
            background=background,
        )
        web_app = web.Application()
        mount_slack(web_app, slack_app=built, signing_secret=SecretStr(SECRET))
        async with TestServer(web_app, host="127.0.0.1") as server, aiohttp.ClientSession() as session:
            yield Rig(slack, service, str(server.make_url("/slack/events")), session)


@pytest.fixture
async def slow_rig(memory_store: Store, monkeypatch: pytest.MonkeyPatch) -> AsyncIterator[tuple[Rig, SlowInbox]]:
    monkeypatch.setattr(slack_app_module, "ACK_BUDGET", 0.3)
    inbox = SlowInbox(memory_store)
    async with _alice_rig(inbox) as rig:
        yield rig, inbox


async def test_a_request_not_recorded_within_the_budget_is_answered_busy_and_its_work_never_starts(
    slow_rig: tuple[Rig, SlowInbox], memory_store: Store
) -> None:
    rig, inbox = slow_rig
    started = asyncio.get_running_loop().time()
    status, ack, token = await rig.command("prod-db 2h fixing replication lag", trigger_id="late.1")
    assert asyncio.get_running_loop().time() - started < 2.0
    assert status == 200
    assert json.loads(ack) == {"response_type": "ephemeral", "text": messages.SLACK_BUSY}
    inbox.gate.set()  # the record completes late: the listener must not start the work
    (answer,) = await rig.answers(token)
    assert messages.SLACK_BUSY in json.dumps(answer)
    assert rig.service.executed == []
    # ...and the row is marked answered, so no recovery pass runs it later either
    far = datetime.now(UTC) + timedelta(hours=1)
    for _ in range(100):
        left = await memory_store.commands.claim_unanswered(
            far, lease_until=far, received_after=far - timedelta(days=1), max_attempts=10_000
        )
        if not left:
            break
        await asyncio.sleep(0.02)
    assert left == []
    assert rig.service.executed == []


async def test_once_a_stop_cancels_a_running_job_no_waiting_job_is_started() -> None:
    background = Background(1, wait=60, backlog=10)
    log: list[str] = []
    gate = asyncio.Event()
    background.submit(recorder(log, "running", gate), recorder(log, "busy"))
    background.submit(recorder(log, "waiting"), recorder(log, "busy waiting"))
    await settle()
    (running,) = [t for t in asyncio.all_tasks() if "_guarded" in repr(t)]
    running.cancel()  # what the graceful stop's drain does when its time is up
    await settle(10)
    assert log == ["start running"] and len(background) == 1  # left for the recovery pass


async def test_a_click_not_recorded_within_the_budget_gets_an_empty_200_then_busy_and_decides_nothing(
    slow_rig: tuple[Rig, SlowInbox],
) -> None:
    rig, inbox = slow_rig
    status, token = await rig.click("ackgate.approve", "r-aaaa2222")
    assert status == 200  # Slack is answered in time: no "dispatch_failed" for the clicker
    inbox.gate.set()
    (answer,) = await rig.answers(token)
    assert messages.SLACK_BUSY in json.dumps(answer)
    assert rig.service.decided == []


async def test_jobs_and_busy_answers_run_in_the_background_lane_never_ahead_of_an_ack() -> None:
    clock = Clock()
    background = Background(1, wait=5, backlog=1, now=clock)
    lanes_seen: list[tuple[str, bool]] = []
    gate = asyncio.Event()

    async def work(name: str) -> None:
        lanes_seen.append((name, lanes.in_background()))
        await gate.wait()

    async def busy(name: str) -> None:
        lanes_seen.append((f"busy {name}", lanes.in_background()))

    background.submit(work, busy, "first")  # takes the one turn
    background.submit(work, busy, "second")  # waits in the backlog
    background.submit(work, busy, "third")  # the backlog is full: busy at once
    await settle()
    gate.set()
    await settle()
    assert sorted(lanes_seen) == [("busy third", True), ("first", True), ("second", True)]


@pytest.fixture
async def full_rig(memory_store: Store) -> AsyncIterator[tuple[Rig, Background]]:
    """The Slack app with a background of one turn and a backlog of one, both taken by the test."""
    background = Background(1, wait=60, backlog=1)
    async with _alice_rig(memory_store.commands, background) as rig:
        yield rig, background


async def test_a_command_finding_the_background_full_is_answered_busy_in_its_ack_and_nothing_is_recorded(
    full_rig: tuple[Rig, Background], memory_store: Store
) -> None:
    rig, background = full_rig
    gate = asyncio.Event()
    log: list[str] = []
    fill(background, log, gate, 2)  # the one turn runs, the one backlog place waits
    await settle()
    assert background.full()
    status, ack, token = await rig.command("prod-db 2h fixing replication lag", trigger_id="full.1")
    assert status == 200
    assert json.loads(ack) == {"response_type": "ephemeral", "text": messages.SLACK_BUSY}
    # nothing recorded (no recovery pass will run it), nothing posted later, nothing executed
    far = datetime.now(UTC) + timedelta(hours=1)
    unanswered = await memory_store.commands.claim_unanswered(
        far, lease_until=far, received_after=far - timedelta(days=1), max_attempts=10_000
    )
    assert unanswered == []
    gate.set()
    await settle(3)
    assert rig.slack.responses.get(token, []) == []
    assert rig.service.executed == []
    assert not background.full()
    # with a turn free again the same user's next command is recorded and runs
    status, ack, token = await rig.command("prod-db 2h fixing replication lag", trigger_id="full.2")
    assert status == 200 and messages.SLACK_BUSY not in ack
    (answer,) = await rig.answers(token)
    assert messages.SLACK_BUSY not in json.dumps(answer)
    assert len(rig.service.executed) == 1


def test_full_means_no_free_turn_and_a_full_backlog() -> None:
    background = Background(1, wait=60, backlog=1)
    assert not background.full()
    background._free = 0
    assert not background.full()  # the backlog has room
    background._queue.append((0.0, recorder([], "x"), recorder([], "y"), ()))
    assert background.full()

"""Two real Ackgate apps (``build_app``, as ``serve`` runs them) on one database, sharing the Slack
simulator: PagerDuty's retry of a delivery racing the original across the two replicas is
processed once, and ``triggered`` and ``acknowledged`` of a new incident reaching the two at once
give one channel message per incident, on SQLite (one file) and PostgreSQL."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path

import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer
from pydantic import SecretStr

from bot.core.clock import FakeClock
from bot.core.policy import Policy
from bot.runtime.app import PARTS, build_app
from bot.runtime.config import Settings
from bot.runtime.simulators.slack import SlackSimulator
from tests.fakes import storage_fixtures
from tests.fakes.incident_world import POLICY, webhook_body
from tests.fakes.storage_fixtures import opened
from tests.pagerduty_webhook_reference import sign

backend = storage_fixtures.backend
database_url = storage_fixtures.database_url

SECRET = "whsec-app-replicas-0123456789abcdef"
CHANNEL = "C0MIRROR"
SERVICE = "PSVC001"  # webhook_body's default service, mirrored by configuration
INCIDENTS = 30


@dataclass
class World:
    clients: list[TestClient[web.Request, web.Application]]
    slack: SlackSimulator
    clock: FakeClock
    url: str

    async def post(self, replica: int, body: bytes) -> int:
        headers = {"Content-Type": "application/json", "X-PagerDuty-Signature": sign(body, SECRET)}
        async with self.clients[replica].post("/webhooks/pagerduty", data=body, headers=headers) as resp:
            return resp.status

    def posts(self) -> int:
        return len([c for c in self.slack.calls_to("chat.postMessage") if c.get("channel") == CHANNEL])

    async def settled(self) -> None:
        """Until every stored delivery is done (the apps process in background tasks). A day ahead,
        every lease has lapsed, so ``due`` lists whatever is not done, in progress or not."""
        async with opened(self.url) as reader:
            for _ in range(1000):
                if not await reader.inbox.due(self.clock.now() + timedelta(days=1)):
                    break
                await asyncio.sleep(0.01)
            else:
                raise AssertionError("deliveries left unprocessed")


@pytest.fixture
async def world(database_url: str, tmp_path: Path) -> AsyncIterator[World]:
    clock = FakeClock()
    async with SlackSimulator() as slack, AsyncExitStack() as stack:
        slack.add_channel(CHANNEL)
        settings = Settings(
            slack_bot_token=SecretStr(slack.token),
            slack_signing_secret=SecretStr("app-replicas-signing-secret"),
            slack_api_url=slack.base_url,
            pagerduty_api_token=SecretStr("unused-token"),
            pagerduty_api_url="http://127.0.0.1:9",  # never called on the webhook path
            database_url=database_url,
            public_url="http://127.0.0.1:8080",
            pagerduty_webhook_secrets=[SecretStr(SECRET)],
            mirror_channel=CHANNEL,
            mirror_services=[SERVICE],
        )
        clients = []
        for _ in range(2):
            app = build_app(settings, policy=Policy.model_validate(POLICY), clock=clock, run_scheduler=False)
            client = TestClient(TestServer(app, host="127.0.0.1"))
            await client.start_server()
            stack.push_async_callback(client.close)
            clients.append(client)
        assert clients[0].app is not None and clients[1].app is not None
        assert clients[0].app[PARTS].store is not clients[1].app[PARTS].store  # two connections, one database
        yield World(clients, slack, clock, database_url)


async def test_a_delivery_and_its_retry_at_two_replicas_at_once_mirror_each_incident_once(world: World) -> None:
    at = world.clock.now()
    bodies = [
        webhook_body("incident.triggered", incident_id=f"PAPP{n:03d}", at=at, event_id=f"01T{n:03d}")
        for n in range(INCIDENTS)
    ]
    statuses = await asyncio.gather(*(world.post(r, body) for body in bodies for r in (0, 1)))
    assert set(statuses) == {202}
    await world.settled()
    await world.slack.wait_for(lambda: world.posts() >= INCIDENTS)
    assert world.posts() == INCIDENTS  # none lost, none twice


async def test_triggered_and_acknowledged_at_two_replicas_at_once_give_one_message_each(world: World) -> None:
    at = world.clock.now()
    pairs = [
        (
            webhook_body("incident.triggered", incident_id=f"PACK{n:03d}", at=at, event_id=f"01T{n:03d}"),
            webhook_body(
                "incident.acknowledged",
                incident_id=f"PACK{n:03d}",
                at=at + timedelta(seconds=1),
                event_id=f"01A{n:03d}",
            ),
        )
        for n in range(INCIDENTS)
    ]
    statuses = await asyncio.gather(*(post for t, k in pairs for post in (world.post(0, t), world.post(1, k))))
    assert set(statuses) == {202}
    await world.settled()
    await world.slack.wait_for(lambda: world.posts() >= INCIDENTS)
    assert world.posts() == INCIDENTS
    messages = world.slack.messages[CHANNEL]
    assert len(messages) == INCIDENTS

    # Each message ends showing the newer status, whichever replica posted it.
    async def acknowledged() -> bool:
        return all("Acknowledged" in (m.text + str(m.blocks)) for m in world.slack.messages[CHANNEL])

    for _ in range(500):
        if await acknowledged():
            break
        await asyncio.sleep(0.01)
    assert await acknowledged()

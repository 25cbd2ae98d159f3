"""Several Ackgate replicas' webhook side on one database: each replica has its own store
connection (pool or SQLite connection), its own inbox, mirror service and aiohttp app serving the
real ``POST /webhooks/pagerduty`` on loopback, as ``serve`` wires them; they share the database,
one chat platform (a :class:`RecordingNotifier` counting every post) and a fake clock.

``processed`` counts each event id handed to the mirror, across replicas.
"""

from __future__ import annotations

import asyncio
from collections import Counter
from collections.abc import AsyncIterator, Coroutine
from contextlib import AsyncExitStack, asynccontextmanager
from dataclasses import dataclass, field
from typing import Any

from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer
from pydantic import SecretStr

from bot.adapters.pagerduty import PagerDutyClient
from bot.adapters.provisioners import NoopProvisioner
from bot.core.access import AccessService
from bot.core.bus import MessageBus
from bot.core.clock import FakeClock
from bot.core.grants import GrantLifecycle
from bot.core.mirror import MirrorService
from bot.core.policy import Policy
from bot.core.ports import Store
from bot.core.webhook_inbox import Inbox
from bot.core.webhooks import WebhookEvent
from handlers.pagerduty_webhooks import mount_pagerduty_webhooks
from tests.fakes.chat import RecordingNotifier
from tests.fakes.incident_world import CHANNEL, POLICY, WATCHED_SERVICE
from tests.fakes.storage_fixtures import opened
from tests.pagerduty_webhook_reference import sign

SECRET = "whsec-replica-tests-0123456789abcdef"
PATH = "/webhooks/pagerduty"


@dataclass
class Replica:
    name: str
    store: Store
    inbox: Inbox
    mirror: MirrorService
    client: TestClient[web.Request, web.Application]
    tasks: list[asyncio.Task[None]] = field(default_factory=list)

    async def post(self, body: bytes) -> tuple[int, str]:
        headers = {"Content-Type": "application/json", "X-PagerDuty-Signature": sign(body, SECRET)}
        async with self.client.post(PATH, data=body, headers=headers) as resp:
            return resp.status, await resp.text()

    def spawn(self, coro: Coroutine[Any, Any, None]) -> None:
        self.tasks.append(asyncio.get_running_loop().create_task(coro))

    async def settle(self) -> None:
        """Wait for the processing this replica spawned."""
        while self.tasks:
            await self.tasks.pop(0)


@dataclass
class Replicas:
    members: list[Replica]
    chat: RecordingNotifier
    clock: FakeClock
    processed: Counter[str]

    async def settle(self) -> None:
        for replica in self.members:
            await replica.settle()


@asynccontextmanager
async def replicas(url: str, count: int = 2) -> AsyncIterator[Replicas]:
    """``count`` replicas on the database at ``url`` (already empty; each opens its own store)."""
    clock = FakeClock()
    chat = RecordingNotifier()
    processed: Counter[str] = Counter()
    policy = Policy.model_validate(POLICY)
    async with AsyncExitStack() as stack:
        # Never called on the webhook path; a port nobody listens on.
        pagerduty = PagerDutyClient(
            SecretStr("unused"), base_url="http://127.0.0.1:9", cache_ttl=0.0, user_cache_ttl=0.0
        )
        stack.push_async_callback(pagerduty.aclose)
        members = []
        for n in range(count):
            store = await stack.enter_async_context(opened(url))
            bus = MessageBus(audit=store.audit)
            access = AccessService(
                GrantLifecycle(
                    policy=policy,
                    store=store,
                    pagerduty=pagerduty,
                    provisioners={"noop": NoopProvisioner()},
                    bus=bus,
                    clock=clock,
                ),
            )
            mirror = MirrorService(
                store=store,
                notifiers={"slack": chat},
                access=access.grants,
                pagerduty=pagerduty,
                bus=bus,
                clock=clock,
                channel=CHANNEL,
                services=[WATCHED_SERVICE, "PSVC001"],
            )

            def counting(mirror: MirrorService = mirror) -> Any:
                async def on_event(event: WebhookEvent) -> None:
                    processed[event.id] += 1
                    await mirror.on_event(event)

                return on_event

            inbox = Inbox(store.inbox, on_event=counting(), clock=clock)
            app = web.Application()
            replica = Replica(f"replica-{n}", store, inbox, mirror, client=None)  # type: ignore[arg-type]
            mount_pagerduty_webhooks(app, secrets=[SecretStr(SECRET)], inbox=inbox, path=PATH, spawn=replica.spawn)
            replica.client = TestClient(TestServer(app, host="127.0.0.1"))
            await replica.client.start_server()
            stack.push_async_callback(replica.client.close)
            stack.push_async_callback(replica.settle)
            members.append(replica)
        yield Replicas(members, chat, clock, processed)

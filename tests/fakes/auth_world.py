"""A world for authentication-request tests: a real SQLite store, the Events API simulator over
loopback with the real client (every event checked against PagerDuty's schemas), a recording chat
and a fake clock. Bind the fixture in a test module with ``from tests.fakes.auth_world import auth``.
"""

from __future__ import annotations

import re
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from datetime import timedelta
from typing import Any

import pytest
from jsonschema.protocols import Validator
from pydantic import SecretStr

from bot.adapters.pagerduty_events import EventsClient
from bot.core.auth import AuthService, target_subject
from bot.core.auth_reactions import AuthReactions, auth_registry
from bot.core.bus import MessageBus
from bot.core.clock import FakeClock
from bot.core.commands import RequestAuth, parse_command
from bot.core.domain import AuthTransaction, Principal
from bot.core.org_settings import OrgSettings
from bot.core.ports import Store
from bot.core.views import Card
from bot.runtime.simulators.pagerduty_events import EventsSimulator
from storage import open_store
from tests.fakes.chat import RecordingNotifier
from tests.test_pagerduty_events import _errors, _reference, _validators

KEY = "0123456789abcdefABCDEF0123456789"
PUBLIC_URL = "https://ackgate.example.com"
ALICE = Principal("slack", "U0ALICE", "alice@example.com", "Alice")
BOB = Principal("slack", "U0BOB", "bob@example.com", "Bob")
HIDDEN = Principal("slack", "U0HIDDEN", "", "Hidden Harry")  # a user whose email the app can't see
LINK = re.compile(re.escape(PUBLIC_URL) + r"/auth/([A-Za-z0-9_-]+)")

_SCHEMAS: list[Validator] = []


def conforms(event: dict[str, Any]) -> None:
    """The simulator's check: the event validates against the official OpenAPI and the derived schema."""
    if not _SCHEMAS:
        _SCHEMAS.extend(_validators(_reference("openapiv3.json"), check_formats=True))
    problems = _errors(_SCHEMAS, event)
    if problems:
        raise AssertionError("; ".join(problems))


class Ticker:
    """Injected into the Events client: records its back-off sleeps instead of sleeping."""

    def __init__(self) -> None:
        self.now = 1000.0
        self.sleeps: list[float] = []

    def monotonic(self) -> float:
        return self.now

    async def sleep(self, seconds: float) -> None:
        self.sleeps.append(seconds)
        self.now += seconds


@dataclass
class AuthWorld:
    service: AuthService
    store: Store
    org: OrgSettings
    chat: RecordingNotifier
    sim: EventsSimulator
    clock: FakeClock
    ticker: Ticker
    changed: list[str] = field(default_factory=list)  # transaction ids the mirror was told about

    async def ask(self, target: str = "@U0BOB", message: str = "confirming your password reset") -> Card:
        """Alice types ``/access auth <target> <message>``; returns her answer."""
        command = parse_command(f"auth {target} {message}")
        assert isinstance(command, RequestAuth)
        return await self.service.request(ALICE, command)

    def link(self, who: Principal = BOB) -> str:
        """The verification link in ``who``'s latest chat message that has one."""
        for sent in reversed(self.chat.sent):
            if sent.to == who.email:
                for link in (*sent.card.links, *(old for card in sent.history for old in card.links)):
                    if LINK.fullmatch(link.url):
                        return link.url
        raise AssertionError(f"{who.email} received no verification link")

    def token(self, who: Principal = BOB) -> str:
        match = LINK.fullmatch(self.link(who))
        assert match is not None
        return match.group(1)

    async def transaction(self, transaction_id: str) -> AuthTransaction:
        tx = await self.store.transactions.get(transaction_id)
        assert tx is not None
        return tx

    async def only_transaction(self) -> AuthTransaction:
        """The one transaction opened so far, found through its audit line."""
        ids = {e.subject for e in await self.store.audit.since(self.clock.now() - timedelta(days=1))}
        assert len(ids) == 1, ids
        return await self.transaction(ids.pop())

    async def audit_kinds(self) -> list[str]:
        return [e.kind for e in await self.store.audit.since(self.clock.now() - timedelta(days=1))]

    async def requester_cards(self, transaction_id: str) -> list[Card]:
        """The current content of every stored requester message of the transaction."""
        refs = await self.store.messages.refs(transaction_id)
        return [s.card for s in self.chat.sent if s.ref in refs]

    async def target_cards(self, transaction_id: str) -> list[Card]:
        refs = await self.store.messages.refs(target_subject(transaction_id))
        return [s.card for s in self.chat.sent if s.ref in refs]


async def build(
    *, env_key: str | None = KEY, events_url: str | None = None, link_ttl: timedelta = timedelta(minutes=10)
) -> AsyncIterator[AuthWorld]:
    clock = FakeClock()
    ticker = Ticker()
    store = open_store("sqlite:///:memory:")
    await store.open()
    async with EventsSimulator(validator=conforms) as sim:
        events = EventsClient(base_url=events_url or sim.base_url, sleep=ticker.sleep, monotonic=ticker.monotonic)
        org = OrgSettings(store.settings, box=None, env_key=SecretStr(env_key) if env_key else None)
        chat = RecordingNotifier()
        for person in (ALICE, BOB, HIDDEN):
            chat.add(person)
        bus = MessageBus(audit=store.audit)
        world = AuthWorld(
            service=AuthService(
                store=store,
                org=org,
                events=events,
                notifiers={"slack": chat},
                bus=bus,
                clock=clock,
                public_url=PUBLIC_URL + "/",
                source="ackgate.example.com",
                link_ttl=link_ttl,
            ),
            store=store,
            org=org,
            chat=chat,
            sim=sim,
            clock=clock,
            ticker=ticker,
        )

        async def changed(transaction_id: str) -> None:
            world.changed.append(transaction_id)

        reactions = AuthReactions(
            notifiers={"slack": chat}, messages=store.messages, org=org, events=events, clock=clock
        )
        bus.use(auth_registry(reactions, transaction_changed=changed))
        try:
            yield world
            assert sim.validation_errors == [], "an event Ackgate sent does not conform to PagerDuty's schemas"
        finally:
            await events.aclose()
            await store.close()


@pytest.fixture
async def auth() -> AsyncIterator[AuthWorld]:
    async for world in build():
        yield world

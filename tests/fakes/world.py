"""A small world for core scenario tests: a policy, a real SQLite store, the PagerDuty simulator
over loopback with the real client, a recording chat, provisioners and a fake clock."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

import pytest
from pydantic import SecretStr

from bot.adapters.pagerduty import PagerDutyClient
from bot.adapters.provisioners import NoopProvisioner
from bot.core.access import AccessService
from bot.core.bus import MessageBus
from bot.core.clock import FakeClock
from bot.core.commands import parse_command
from bot.core.domain import Principal
from bot.core.errors import ProvisioningError
from bot.core.expiry import ExpiryScheduler
from bot.core.grants import GrantLifecycle
from bot.core.policy import Policy
from bot.core.ports import Store
from bot.core.reactions import Reactions, registry
from bot.core.reconciler import Reconciler
from bot.core.router import CommandRouter
from bot.core.views import Card
from bot.runtime.simulators.pagerduty import PagerDutySimulator
from storage import open_store
from tests.fakes.chat import RecordingNotifier

PD_TOKEN = "y_NbAkKc66ryYTWUXYEu"

POLICY: dict[str, Any] = {
    "version": 1,
    "groups": {"dba": ["dana@example.com", "erin@example.com"]},
    "resources": [
        {"name": "prod-db", "description": "Production PostgreSQL", "max_duration": "8h"},
        {"name": "prod-k8s", "description": "Production Kubernetes", "max_duration": "4h"},
        {"name": "billing-db", "description": "Billing database", "max_duration": "8h"},
        {"name": "payments-api", "description": "Payments API admin", "max_duration": "2h", "provisioner": "flaky"},
    ],
    "provisioners": {"flaky": {"type": "webhook", "url": "http://127.0.0.1:9/unused"}},
    "flows": [
        {
            "name": "incident-auto",
            "resources": ["prod-db", "payments-api"],
            "gate": {"type": "acknowledged_incident", "services": [{"id": "PCHKOUT", "name": "Checkout API"}]},
            "approval": {"type": "auto"},
            "default_duration": "1h",
            "max_duration": "4h",
        },
        {
            "name": "dba-approval",
            "resources": ["prod-db", "billing-db"],
            "approval": {"type": "approvers", "groups": ["dba"], "required": 1},
            "max_duration": "2h",
        },
        {
            "name": "two-person",
            "resources": ["prod-k8s"],
            "approval": {
                "type": "approvers",
                "approvers": ["bob@example.com", "dana@example.com", "erin@example.com"],
                "required": 2,
            },
            "max_duration": "2h",
        },
        {
            "name": "on-call-delegated",
            "resources": ["billing-db"],
            "approval": {"type": "on_call", "escalation_policy": "PESCAL1"},
        },
    ],
}


class FlakyProvisioner:
    """Fails the next ``failures`` calls of each kind, then succeeds; records every call."""

    def __init__(self) -> None:
        self.grant_failures = 0
        self.revoke_failures = 0
        self.calls: list[tuple[str, str]] = []

    async def grant(self, grant: Any) -> None:
        self.calls.append(("grant", grant.id))
        if self.grant_failures:
            self.grant_failures -= 1
            raise ProvisioningError("The provisioner answered 503.")

    async def revoke(self, grant: Any) -> None:
        self.calls.append(("revoke", grant.id))
        if self.revoke_failures:
            self.revoke_failures -= 1
            raise ProvisioningError("The provisioner answered 503.")


def person(name: str) -> Principal:
    return Principal("slack", f"U{name.upper()}", f"{name}@example.com", name)


@dataclass
class World:
    service: AccessService
    scheduler: ExpiryScheduler
    store: Store
    pd: PagerDutySimulator
    client: PagerDutyClient
    chat: RecordingNotifier
    clock: FakeClock
    noop: NoopProvisioner
    flaky: FlakyProvisioner
    reconciler: Reconciler

    async def type(self, who: Principal, text: str) -> Card:
        """``who`` types ``/access <text>``; returns what Ackgate answers them."""
        return await CommandRouter(self.service).execute(who, parse_command(text))

    async def click(self, who: Principal, request_id: str, *, approve: bool = True) -> Card:
        return await self.service.decide(request_id, actor=who, approve=approve)

    async def tick(self, delta: timedelta) -> None:
        """Move the clock and let the expiry scheduler do what is due."""
        self.clock.advance(delta)
        await self.scheduler.run_once()

    async def audit_kinds(self) -> list[str]:
        return [e.kind for e in await self.store.audit.since(self.clock.now() - timedelta(days=30))]


# The methods that change a request or a grant: the core must always pass them its audit.
AUDITED = frozenset(
    {"add", "add_approval", "decide", "add_with_grant", "approve", "transition", "extend"}
    | {"schedule_revoke_retry", "add_for_request", "claim_provisioning"}
)


class _AuditRequired:
    """One role of a store, failing any state change the core makes without its audit rows."""

    def __init__(self, inner: Any) -> None:
        self._inner = inner

    def __getattr__(self, name: str) -> Any:
        method = getattr(self._inner, name)
        if name not in AUDITED:
            return method

        def audited(*args: Any, **kwargs: Any) -> Any:
            assert kwargs.get("audit") is not None, f"{name} was called without its audit rows"
            return method(*args, **kwargs)

        return audited


class AuditRequiredStore:
    """The store as the core sees it in scenario tests: requests and grants must be audited."""

    def __init__(self, inner: Store) -> None:
        self._inner = inner
        self.requests = _AuditRequired(inner.requests)
        self.grants = _AuditRequired(inner.grants)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._inner, name)


@asynccontextmanager
async def open_world(
    store: Store,
    *,
    clock: FakeClock | None = None,
    provisioners: dict[str, Any] | None = None,
    lease: timedelta | None = None,
) -> AsyncIterator[World]:
    """A world on an opened ``store`` (any backend). ``provisioners`` replace ``flaky`` and ``noop``
    by name; ``lease`` fixes the provisioner claim length."""
    clock = clock or FakeClock()
    async with PagerDutySimulator(token=PD_TOKEN) as pd:
        client = PagerDutyClient(
            SecretStr(PD_TOKEN), base_url=pd.base_url, deadline=2.0, cache_ttl=0.0, user_cache_ttl=0.0
        )
        chat = RecordingNotifier()
        for name in ("alice", "bob", "carol", "dana", "erin"):
            chat.add(person(name))
        noop, flaky = NoopProvisioner(), FlakyProvisioner()
        audited = AuditRequiredStore(store)
        bus = MessageBus(audit=store.audit)
        service = AccessService(
            GrantLifecycle(
                policy=Policy.model_validate(POLICY),
                store=audited,  # type: ignore[arg-type]
                pagerduty=client,
                provisioners={"noop": noop, "flaky": flaky, **(provisioners or {})},
                bus=bus,
                clock=clock,
                admins=frozenset({"carol@example.com"}),
                lease=lease,
            ),
            approval_timeout=timedelta(hours=1),
        )
        reconciler = Reconciler(service.grants, store=audited, clock=clock)  # type: ignore[arg-type]
        scheduler = ExpiryScheduler(service, grants=store.grants, clock=clock, reconciler=reconciler)
        bus.use(
            registry(Reactions(notifiers={"slack": chat}, messages=store.messages, wake_scheduler=scheduler.expires))
        )
        try:
            yield World(service, scheduler, store, pd, client, chat, clock, noop, flaky, reconciler)
        finally:
            await client.aclose()


@pytest.fixture
async def world() -> AsyncIterator[World]:
    store = open_store("sqlite:///:memory:")
    await store.open()
    try:
        async with open_world(store) as w:
            yield w
    finally:
        await store.close()

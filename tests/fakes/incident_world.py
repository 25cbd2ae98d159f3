"""A world for incident mirroring and incident-bound grants: the core world's parts with a policy
whose flows revoke on resolve and write incident notes, the PagerDuty simulator checked against
the REST OpenAPI subset, the real client (with ``From``), the mirror and the note reactions wired
into the bus, and V3 webhook bodies to feed it."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

import pytest
from pydantic import SecretStr

from bot.adapters.pagerduty import PagerDutyClient
from bot.adapters.provisioners import NoopProvisioner
from bot.core.access import AccessService
from bot.core.bus import MessageBus
from bot.core.clock import FakeClock
from bot.core.commands import parse_command
from bot.core.domain import AuthStatus, AuthTransaction, Grant, Principal
from bot.core.expiry import ExpiryScheduler
from bot.core.grants import GrantLifecycle
from bot.core.incident_notes import IncidentNotes, notes_registry
from bot.core.mirror import MirrorService
from bot.core.policy import Policy
from bot.core.ports import Store
from bot.core.reactions import Reactions, registry
from bot.core.router import CommandRouter
from bot.core.views import Card
from bot.core.webhooks import parse_event
from bot.runtime.simulators.pagerduty import PagerDutySimulator
from bot.runtime.simulators.pagerduty_state import SimIncident
from storage import open_store
from tests.fakes.chat import RecordingNotifier
from tests.fakes.pagerduty_openapi import Conformance
from tests.fakes.world import person

PD_TOKEN = "y_NbAkKc66ryYTWUXYEu"
FROM_EMAIL = "ackgate-bot@example.com"
CHANNEL = "C-INCIDENTS"
WATCHED_SERVICE = "PWATCH1"

_GATE = {"type": "acknowledged_incident"}

POLICY: dict[str, Any] = {
    "version": 1,
    "resources": [
        {"name": "prod-db", "description": "Production PostgreSQL"},
        {"name": "prod-k8s", "description": "Production Kubernetes"},
        {"name": "billing-db", "description": "Billing database"},
    ],
    "flows": [
        {
            "name": "incident-bound",
            "resources": ["prod-db"],
            "gate": _GATE,
            "approval": {"type": "auto"},
            "revoke_on_resolve": True,
            "incident_notes": True,
        },
        {
            "name": "incident-kept",
            "resources": ["prod-k8s"],
            "gate": _GATE,
            "approval": {"type": "auto"},
            "revoke_on_resolve": False,
            "incident_notes": False,
        },
        {
            "name": "incident-approved",
            "resources": ["billing-db"],
            "gate": _GATE,
            "approval": {"type": "approvers", "approvers": ["bob@example.com"]},
            "revoke_on_resolve": True,
            "incident_notes": True,
        },
    ],
}


@dataclass
class IncidentWorld:
    service: AccessService
    mirror: MirrorService
    scheduler: ExpiryScheduler
    store: Store
    pd: PagerDutySimulator
    client: PagerDutyClient
    chat: RecordingNotifier
    clock: FakeClock
    noop: NoopProvisioner

    async def type(self, who: Principal, text: str) -> Card:
        """``who`` types ``/access <text>``; returns what Ackgate answers them."""
        return await CommandRouter(self.service).execute(who, parse_command(text))

    def acknowledged_incident(self, who: str, title: str = "Checkout latency") -> SimIncident:
        """``who`` has acknowledged a fresh incident in PagerDuty."""
        user_id = self.pd.add_user(f"{who}@example.com", who.title())
        return self.pd.add_incident(title, assigned_to=[user_id], acknowledged_by=[user_id])

    async def only_grant(self, email: str) -> Grant:
        grants = await self.store.grants.list_for(email, include_ended=True)
        assert len(grants) == 1, grants
        return grants[0]

    async def webhook(self, body: bytes) -> None:
        """PagerDuty delivers ``body`` (already verified and de-duplicated by the endpoint)."""
        await self.mirror.on_event(parse_event(body))

    def channel_messages(self) -> list[Card]:
        return self.chat.inbox(CHANNEL)

    def notes(self, incident_id: str) -> list[str]:
        return [n["content"] for n in self.pd.incidents[incident_id].notes]

    async def add_transaction(self, dedup_key: str, *, target: Principal) -> AuthTransaction:
        now = self.clock.now()
        transaction = AuthTransaction(
            id="t-" + dedup_key[-8:],
            requester=person("alice"),
            target=target,
            message="confirming your password reset",
            status=AuthStatus.PENDING,
            created_at=now,
            expires_at=now + timedelta(minutes=10),
            token_hash="h-" + dedup_key,
            channels=("pagerduty",),
            dedup_key=dedup_key,
        )
        await self.store.transactions.add(transaction)
        return transaction


def webhook_body(
    event_type: str,
    *,
    incident_id: str,
    at: datetime,
    status: str | None = None,
    number: int = 7,
    title: str = "Authentication request from alice@example.com",
    service_id: str = "PSVC001",
    incident_key: str | None = None,
    agent: str | None = None,
    event_id: str | None = None,
) -> bytes:
    """A V3 webhook body in the shape PagerDuty sends (see webhooks-v3/examples/captured-signed)."""
    data: dict[str, Any] = {
        "id": incident_id,
        "type": "incident",
        "self": f"https://api.pagerduty.com/incidents/{incident_id}",
        "html_url": f"https://acme.pagerduty.com/incidents/{incident_id}",
        "number": number,
        "status": status or event_type.removeprefix("incident."),
        "title": title,
        "service": {"id": service_id, "type": "service_reference", "summary": "Service"},
        "urgency": "high",
    }
    if incident_key is not None:
        data["incident_key"] = incident_key
    agent_ref = (
        {"id": "PAGENT1", "type": "user_reference", "summary": agent, "html_url": "https://acme.pagerduty.com/users/P"}
        if agent
        else None
    )
    event = {
        "id": event_id or f"01{event_type}{at.isoformat()}",
        "event_type": event_type,
        "resource_type": "incident",
        "occurred_at": at.isoformat().replace("+00:00", "Z"),
        "agent": agent_ref,
        "client": None,
        "data": data,
    }
    return json.dumps({"event": event}).encode()


@pytest.fixture
async def iw() -> AsyncIterator[IncidentWorld]:
    clock = FakeClock()
    store = open_store("sqlite:///:memory:")
    await store.open()
    sim = PagerDutySimulator(token=PD_TOKEN, clock=clock, validator=Conformance())
    sim.add_user(FROM_EMAIL, "Ackgate Bot")
    async with sim as pd:
        client = PagerDutyClient(
            SecretStr(PD_TOKEN),
            base_url=pd.base_url,
            from_email=FROM_EMAIL,
            deadline=2.0,
            cache_ttl=0.0,
            user_cache_ttl=0.0,
        )
        chat = RecordingNotifier()
        for name in ("alice", "bob", "carol"):
            chat.add(person(name))
        noop = NoopProvisioner()
        bus = MessageBus(audit=store.audit)
        policy = Policy.model_validate(POLICY)
        service = AccessService(
            GrantLifecycle(
                policy=policy,
                store=store,
                pagerduty=client,
                provisioners={"noop": noop},
                bus=bus,
                clock=clock,
            ),
        )
        scheduler = ExpiryScheduler(service, grants=store.grants, clock=clock)
        mirror = MirrorService(
            store=store,
            notifiers={"slack": chat},
            access=service.grants,
            pagerduty=client,
            bus=bus,
            clock=clock,
            channel=CHANNEL,
            services=[WATCHED_SERVICE],
        )
        reactions = registry(Reactions(notifiers={"slack": chat}, messages=store.messages))
        for event_type, more in notes_registry(IncidentNotes(writer=client, policy=policy)).items():
            reactions.setdefault(event_type, []).extend(more)
        bus.use(reactions)
        try:
            yield IncidentWorld(service, mirror, scheduler, store, pd, client, chat, clock, noop)
        finally:
            await client.aclose()
            await store.close()
    assert pd.validation_errors == [], "traffic did not match PagerDuty's REST OpenAPI subset"

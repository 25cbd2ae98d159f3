"""A gate that lets a request through is audited in the transaction that stores the request (one
write instead of two), and still audited on its own when storing the request fails."""

from __future__ import annotations

import pytest

from bot.core.domain import AuditEvent
from bot.core.errors import StorageError
from bot.runtime.simulators.pagerduty_state import SimIncident
from tests.fakes.world import World, person

alice = person("alice")


def _ack_incident(w: World) -> SimIncident:
    user_id = w.pd.add_user("alice@example.com", "Alice")
    return w.pd.add_incident("Checkout latency", service="PCHKOUT", assigned_to=[user_id], acknowledged_by=[user_id])


def _lone_audit_rows(world: World, monkeypatch: pytest.MonkeyPatch) -> list[AuditEvent]:
    """The audit rows written on their own (not in a state change's transaction), as they are written."""
    lone: list[AuditEvent] = []
    append = world.store.audit.append

    async def recording(event: AuditEvent) -> None:
        lone.append(event)
        await append(event)

    monkeypatch.setattr(world.store.audit, "append", recording)
    return lone


async def test_an_auto_grant_writes_its_gate_row_with_the_request(
    world: World, monkeypatch: pytest.MonkeyPatch
) -> None:
    _ack_incident(world)
    lone = _lone_audit_rows(world, monkeypatch)
    card = await world.type(alice, "prod-db 2h")
    assert card.title.startswith("Access granted: prod-db")
    assert lone == []
    assert await world.audit_kinds() == ["gate.evaluated", "access.requested", "access.approved", "grant.provisioned"]


async def test_a_request_for_approval_writes_its_gate_row_with_the_request(
    world: World, monkeypatch: pytest.MonkeyPatch
) -> None:
    world.pd.add_user("alice@example.com", "Alice")  # no incident: the first flow's gate fails, dba-approval's passes
    lone = _lone_audit_rows(world, monkeypatch)
    card = await world.type(alice, "prod-db 1h need to inspect a table")
    assert card.title == "Waiting for approval: prod-db"
    # the failed gate changed nothing and is written on its own; the passing one with the request
    assert [(e.kind, e.data["passed"]) for e in lone] == [("gate.evaluated", False)]
    kinds = await world.audit_kinds()
    assert kinds == ["gate.evaluated", "gate.evaluated", "access.requested", "approval.requested"]


@pytest.mark.parametrize("method", ["add_with_grant", "add"])
async def test_when_storing_the_request_fails_the_gate_row_is_written_on_its_own(
    world: World, monkeypatch: pytest.MonkeyPatch, method: str
) -> None:
    if method == "add_with_grant":
        _ack_incident(world)
        text = "prod-db 2h"
    else:
        world.pd.add_user("alice@example.com", "Alice")
        text = "prod-db 1h need to inspect a table"

    async def fail(*args: object, **kwargs: object) -> object:
        raise StorageError("Could not store the request: disk full.")

    monkeypatch.setattr(world.store.requests, method, fail)
    with pytest.raises(StorageError, match="disk full"):
        await world.type(alice, text)
    kinds = await world.audit_kinds()
    assert kinds[-1] == "gate.evaluated" and "access.requested" not in kinds
    rows = await world.store.audit.since(world.clock.now().replace(year=2000))
    assert [e.data["passed"] for e in rows if e.kind == "gate.evaluated"][-1] is True

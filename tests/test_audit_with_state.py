"""Through the core: each authentication decision and each admin change writes exactly its audit
row, in the change's own transaction, so an audit row the database refuses leaves the change
unmade (and nothing told about it)."""

from __future__ import annotations

import json
from collections.abc import Awaitable, Callable
from datetime import timedelta

import pytest

from bot.core.admin import SettingChanged
from bot.core.auth import PageState
from bot.core.auth_events import AuthDecided, AuthExpired
from bot.core.domain import AuditEvent, AuthStatus
from bot.core.errors import StorageError
from bot.core.events import Event
from bot.core.org_settings import INTEGRATION_KEY, PAGERDUTY_ENABLED, RESOLVE_ON_COMPLETE, SEVERITY
from tests.fakes.auth_world import BOB, AuthWorld, auth
from tests.test_admin import KEY, MASKED_KEY, AdminWorld, admin, build, parsed, w

__all__ = ["auth", "build", "w"]  # the fixtures, bound here


def refused(self: Event) -> AuditEvent:
    """An audit row the database refuses (no kind breaks the column's NOT NULL constraint)."""
    return AuditEvent(self.at, None, "ackgate", "refused")  # type: ignore[arg-type]


# --- authentication requests -------------------------------------------------------------------

Decide = Callable[[AuthWorld], Awaitable[object]]


async def _verify(auth: AuthWorld) -> object:
    return await auth.service.decide(auth.token(), verify=True)


async def _deny(auth: AuthWorld) -> object:
    return await auth.service.decide(auth.token(), verify=False)


async def _expire_by_scheduler(auth: AuthWorld) -> object:
    auth.clock.advance(timedelta(minutes=10))
    return await auth.service.expire_due()


async def _expire_by_visit(auth: AuthWorld) -> object:
    auth.clock.advance(timedelta(minutes=10))
    return await auth.service.page(auth.token())


DECISIONS: dict[str, tuple[Decide, str, AuthStatus, str]] = {
    "verify": (_verify, "auth.verified", AuthStatus.VERIFIED, BOB.email),
    "deny": (_deny, "auth.denied", AuthStatus.DENIED, BOB.email),
    "expire_due": (_expire_by_scheduler, "auth.expired", AuthStatus.EXPIRED, "ackgate"),
    "expire_on_visit": (_expire_by_visit, "auth.expired", AuthStatus.EXPIRED, "ackgate"),
}


@pytest.mark.parametrize("decision", list(DECISIONS))
async def test_each_authentication_decision_writes_exactly_its_audit_row(auth: AuthWorld, decision: str) -> None:
    act, kind, status, actor = DECISIONS[decision]
    await auth.ask()
    tx = await auth.only_transaction()

    await act(auth)

    rows = await auth.store.audit.since(auth.clock.now() - timedelta(days=1))
    assert [(e.kind, e.subject) for e in rows] == [("auth.requested", tx.id), (kind, tx.id)]
    assert rows[-1].actor == actor and rows[-1].data["status"] == status.value
    assert (await auth.transaction(tx.id)).status is status
    assert auth.changed == [tx.id]


@pytest.mark.parametrize("decision", list(DECISIONS))
async def test_an_authentication_decision_whose_audit_row_is_refused_is_not_stored_nor_announced(
    auth: AuthWorld, decision: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    act, kind, status, _ = DECISIONS[decision]
    await auth.ask()
    tx = await auth.only_transaction()
    before = await auth.requester_cards(tx.id)
    monkeypatch.setattr(AuthDecided, "audit", refused)
    monkeypatch.setattr(AuthExpired, "audit", refused)

    with pytest.raises(StorageError):
        await act(auth)

    assert await auth.audit_kinds() == ["auth.requested"]
    assert (await auth.transaction(tx.id)).status is AuthStatus.PENDING
    assert await auth.requester_cards(tx.id) == before and auth.changed == []

    monkeypatch.undo()  # the database takes audit rows again: the same answer now counts, once
    if decision.startswith("expire"):
        assert await auth.service.expire_due() == 1
    else:
        assert (await auth.service.decide(auth.token(), verify=status is AuthStatus.VERIFIED)).state is PageState.DONE
    assert await auth.audit_kinds() == ["auth.requested", kind]


async def test_a_request_whose_audit_row_is_refused_leaves_no_audited_delivery(
    auth: AuthWorld, monkeypatch: pytest.MonkeyPatch
) -> None:
    from bot.core.auth_events import AuthRequested

    monkeypatch.setattr(AuthRequested, "audit", refused)
    with pytest.raises(StorageError):
        await auth.ask()
    assert await auth.audit_kinds() == []
    monkeypatch.undo()
    auth.clock.advance(timedelta(minutes=10))
    # the delivery was not recorded; the scheduler expires the transaction, audited, in due time
    [tx] = await auth.store.transactions.pending_expired(auth.clock.now())
    assert tx.channels == () and tx.dedup_key is None
    assert await auth.service.expire_due() == 1
    assert await auth.audit_kinds() == ["auth.expired"]


# --- administration -----------------------------------------------------------------------------

CHANGES: dict[str, tuple[str, str, str, str | None, str]] = {
    # command, setting key, audited setting name, old, new
    "severity": ("admin severity warning", SEVERITY, "severity", "critical", "warning"),
    "pagerduty": ("admin pagerduty off", PAGERDUTY_ENABLED, "pagerduty", "on", "off"),
    "resolve": ("admin resolve on", RESOLVE_ON_COMPLETE, "resolve_on_complete", "off", "on"),
}


async def _change(w: AdminWorld, name: str) -> None:
    if name == "key":
        await w.service.set_key(admin, KEY)
    elif name == "prefs":
        await w.service.set_prefs(admin, parsed("prefs pagerduty off"))
    else:
        await w.service.execute(admin, parsed(CHANGES[name][0]))


@pytest.mark.parametrize("name", [*CHANGES, "key"])
async def test_each_admin_change_writes_exactly_its_audit_row(w: AdminWorld, name: str) -> None:
    await _change(w, name)

    [row] = await w.audit()
    assert (row.kind, row.actor, row.subject) == ("setting.changed", admin.email, "org")
    if name == "key":
        assert row.data == {"setting": "integration_key", "old": None, "new": f"{MASKED_KEY} (stored encrypted)"}
        assert KEY not in json.dumps(row.data)
        assert await w.store.settings.get(INTEGRATION_KEY) is not None
    else:
        _, key, setting, old, new = CHANGES[name]
        assert row.data == {"setting": setting, "old": old, "new": new}
        assert await w.store.settings.get(key) == new

    await _change(w, name)  # the same again: severity and the switches change nothing, so no row
    assert len(await w.audit()) == (2 if name == "key" else 1)


@pytest.mark.parametrize("name", [*CHANGES, "key", "prefs"])
async def test_an_admin_change_whose_audit_row_is_refused_is_not_stored(
    w: AdminWorld, name: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(SettingChanged, "audit", refused)

    with pytest.raises(StorageError):
        await _change(w, name)

    assert await w.audit() == []
    for key in (SEVERITY, PAGERDUTY_ENABLED, RESOLVE_ON_COMPLETE, INTEGRATION_KEY, f"prefs:{admin.email}"):
        assert await w.store.settings.get(key) is None


async def test_a_preference_change_writes_exactly_its_audit_row(w: AdminWorld) -> None:
    await _change(w, "prefs")
    [row] = await w.audit()
    assert (row.kind, row.subject, row.data["setting"]) == ("setting.changed", f"prefs:{admin.email}", "prefs")
    assert row.data["old"] != row.data["new"]

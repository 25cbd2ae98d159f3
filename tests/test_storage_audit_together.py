"""The storage contract of authentication transactions and settings, on SQLite and PostgreSQL: each
state change writes the audit rows built from its result in its own transaction, and an audit row
the database refuses rolls the change back too."""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Sequence
from datetime import timedelta

import pytest

from bot.core.domain import AuditEvent, AuthStatus
from bot.core.errors import StorageError
from bot.core.ports import Store
from tests.fakes import storage_fixtures
from tests.fakes.storage_fixtures import T0, make_transaction

backend = storage_fixtures.backend
database_url = storage_fixtures.database_url
store = storage_fixtures.store


def _line(kind: str) -> AuditEvent:
    return AuditEvent(T0, kind, "ackgate", "x", {"n": 1})


def broken_audit(result: object) -> Sequence[AuditEvent]:
    """A writable line, then one the database refuses: no kind breaks the column's NOT NULL constraint."""
    return [_line("fine"), AuditEvent(T0, None, "ackgate", "broken")]  # type: ignore[arg-type]


async def kinds(store: Store) -> list[str]:
    return [e.kind for e in await store.audit.since(T0 - timedelta(days=1))]


async def test_transaction_and_setting_changes_write_the_audit_rows_built_from_their_result(store: Store) -> None:
    seen: list[object] = []

    def recording(kind: str) -> Callable[[object], Sequence[AuditEvent]]:
        def build(result: object) -> Sequence[AuditEvent]:
            seen.append(result)
            return [_line(kind)]

        return build

    await store.transactions.add(make_transaction(), audit=recording("added"))
    delivered = await store.transactions.update_delivery(
        "t-aaaa2222", channels=("chat",), dedup_key=None, note="", audit=recording("delivered")
    )
    decided = await store.transactions.decide(
        "t-aaaa2222", expected=AuthStatus.PENDING, new=AuthStatus.VERIFIED, at=T0, audit=recording("verified")
    )
    first = await store.settings.set("org.severity", "warning", audit=recording("severity"))
    second = await store.settings.set("org.severity", "error", audit=recording("severity again"))

    assert await kinds(store) == ["added", "delivered", "verified", "severity", "severity again"]
    assert seen == [None, delivered, decided, None, "warning"]
    assert (delivered.channels, decided.status) == (("chat",), AuthStatus.VERIFIED)
    assert (first, second) == (None, "warning")


@pytest.mark.parametrize("change", ["add", "update_delivery", "decide", "set", "set_new"])
async def test_an_audit_row_that_cannot_be_written_rolls_the_transaction_or_setting_back(
    store: Store, change: str
) -> None:
    await store.transactions.add(make_transaction())
    await store.settings.set("org.severity", "warning")
    changes: dict[str, Callable[[], Awaitable[object]]] = {
        "add": lambda: store.transactions.add(make_transaction("t-new", token_hash="other"), audit=broken_audit),
        "update_delivery": lambda: store.transactions.update_delivery(
            "t-aaaa2222", channels=("pagerduty",), dedup_key="dk-1", note="sent", audit=broken_audit
        ),
        "decide": lambda: store.transactions.decide(
            "t-aaaa2222", expected=AuthStatus.PENDING, new=AuthStatus.DENIED, at=T0, audit=broken_audit
        ),
        "set": lambda: store.settings.set("org.severity", "error", audit=broken_audit),
        "set_new": lambda: store.settings.set("org.resolve_on_complete", "on", audit=broken_audit),
    }
    with pytest.raises(StorageError):
        await changes[change]()

    assert await kinds(store) == []  # not even the writable line
    assert await store.transactions.get("t-new") is None
    tx = await store.transactions.get("t-aaaa2222")
    assert tx is not None
    assert (tx.status, tx.channels, tx.dedup_key, tx.decided_at) == (AuthStatus.PENDING, (), None, None)
    assert await store.settings.get("org.severity") == "warning"
    assert await store.settings.get("org.resolve_on_complete") is None
    # and the store still works afterwards
    assert await store.settings.set("org.severity", "info", audit=lambda old: [_line(f"from {old}")]) == "warning"
    assert await kinds(store) == ["from warning"]

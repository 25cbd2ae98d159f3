"""Events of authentication requests. Each audits itself; their side effects are in
:mod:`bot.core.auth_reactions`. The link's token (and its hash) never appears in an audit line.
"""

from __future__ import annotations

from dataclasses import dataclass

from bot.core.domain import AuditEvent, AuthTransaction
from bot.core.events import SYSTEM, Event


def _transaction_data(tx: AuthTransaction) -> dict[str, object]:
    return {
        "requester": tx.requester.email,
        "target": tx.target.email,
        "platform": tx.requester.platform,
        "message": tx.message,
        "context": tx.context,
        "status": tx.status.value,
        "channels": list(tx.channels),
        "dedup_key": tx.dedup_key,
        "expires_at": tx.expires_at.isoformat(),
        "decided_at": tx.decided_at.isoformat() if tx.decided_at else None,
        "note": tx.note,
    }


@dataclass(frozen=True)
class AuthRequested(Event):
    """A transaction was opened and its target reached (``transaction.channels`` says how)."""

    transaction: AuthTransaction

    def audit(self) -> AuditEvent:
        tx = self.transaction
        return AuditEvent(self.at, "auth.requested", tx.requester.email, tx.id, _transaction_data(tx))


@dataclass(frozen=True)
class AuthDecided(Event):
    """The target verified or denied through the link (``transaction.status`` says which)."""

    transaction: AuthTransaction

    def audit(self) -> AuditEvent:
        tx = self.transaction
        return AuditEvent(self.at, f"auth.{tx.status.value}", tx.target.email, tx.id, _transaction_data(tx))


@dataclass(frozen=True)
class AuthExpired(Event):
    """Nobody answered before the link expired, or the target could not be reached at all."""

    transaction: AuthTransaction

    def audit(self) -> AuditEvent:
        tx = self.transaction
        return AuditEvent(self.at, "auth.expired", SYSTEM, tx.id, _transaction_data(tx))


@dataclass(frozen=True)
class AuthPagedLate(Event):
    """PagerDuty took the target's page after the requester's answer had gone by chat; the
    incident (``transaction.dedup_key``) is now recorded on the transaction."""

    transaction: AuthTransaction

    def audit(self) -> AuditEvent:
        tx = self.transaction
        return AuditEvent(self.at, "auth.paged_late", SYSTEM, tx.id, _transaction_data(tx))

"""Domain events: what happened, in the past tense. Side effects (audit, chat messages,
metrics) hang off these through the one explicit map in :mod:`bot.core.reactions`.

Every event knows how it is audited, so no path can forget the audit: publishing is auditing.
A state change's events are audited in the change's own transaction (:meth:`bot.core.bus.MessageBus.commit`).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime

from bot.core.domain import AccessRequest, AuditEvent, Grant, Incident

SYSTEM = "ackgate"


def _incident(incident: Incident | None) -> dict[str, object] | None:
    if incident is None:
        return None
    return {"id": incident.id, "number": incident.number, "title": incident.title, "url": incident.html_url}


def _request_data(r: AccessRequest) -> dict[str, object]:
    return {
        "requester": r.requester.email,
        "platform": r.requester.platform,
        "resource": r.resource,
        "duration_seconds": r.duration_seconds,
        "reason": r.reason,
        "flow": r.flow,
        "status": r.status.value,
        "incident": _incident(r.incident),
    }


def _grant_data(g: Grant) -> dict[str, object]:
    return {
        "holder": g.holder.email,
        "resource": g.resource,
        "request": g.request_id,
        "flow": g.flow,
        "expires_at": g.expires_at.isoformat(),
        "justification": g.justification,
        "incident": _incident(g.incident),
    }


@dataclass(frozen=True)
class Event:
    at: datetime

    def audit(self) -> AuditEvent:
        raise NotImplementedError


@dataclass(frozen=True)
class AccessRequested(Event):
    request: AccessRequest

    def audit(self) -> AuditEvent:
        r = self.request
        return AuditEvent(self.at, "access.requested", r.requester.email, r.id, _request_data(r))


@dataclass(frozen=True)
class GateEvaluated(Event):
    """One flow's gate was checked. ``facts`` are the PagerDuty facts the verdict rests on."""

    actor: str
    resource: str
    flow: str
    passed: bool
    reason: str
    facts: dict[str, object] = field(default_factory=dict)

    def audit(self) -> AuditEvent:
        data = {"resource": self.resource, "flow": self.flow, "passed": self.passed, "reason": self.reason}
        return AuditEvent(self.at, "gate.evaluated", self.actor, self.resource, {**data, "facts": self.facts})


@dataclass(frozen=True)
class AccessRefused(Event):
    request: AccessRequest
    reasons: dict[str, str]

    def audit(self) -> AuditEvent:
        r = self.request
        return AuditEvent(
            self.at, "access.refused", r.requester.email, r.id, {**_request_data(r), "reasons": self.reasons}
        )


@dataclass(frozen=True)
class ApprovalRequested(Event):
    request: AccessRequest

    def audit(self) -> AuditEvent:
        r = self.request
        data = {**_request_data(r), "approvers": list(r.approvers), "required": r.required_approvals}
        return AuditEvent(self.at, "approval.requested", SYSTEM, r.id, data)


@dataclass(frozen=True)
class ApprovalRecorded(Event):
    request: AccessRequest
    approver: str

    def audit(self) -> AuditEvent:
        data: dict[str, object] = {
            "approvals": len(self.request.approvals),
            "required": self.request.required_approvals,
        }
        return AuditEvent(self.at, "approval.recorded", self.approver, self.request.id, data)


@dataclass(frozen=True)
class RequestApproved(Event):
    request: AccessRequest
    by: str  # an approver's email, or SYSTEM for automatic access

    def audit(self) -> AuditEvent:
        return AuditEvent(self.at, "access.approved", self.by, self.request.id, _request_data(self.request))


@dataclass(frozen=True)
class RequestDenied(Event):
    request: AccessRequest
    by: str

    def audit(self) -> AuditEvent:
        return AuditEvent(self.at, "access.denied", self.by, self.request.id, _request_data(self.request))


@dataclass(frozen=True)
class RequestTimedOut(Event):
    request: AccessRequest

    def audit(self) -> AuditEvent:
        return AuditEvent(self.at, "access.timed_out", SYSTEM, self.request.id, _request_data(self.request))


@dataclass(frozen=True)
class AccessGranted(Event):
    """The provisioner confirmed the grant. ``recovered``: finished by the reconciler after a crash,
    so no command's reply tells the holder."""

    grant: Grant
    request: AccessRequest
    recovered: bool = False

    def audit(self) -> AuditEvent:
        data = {**_grant_data(self.grant), "approved_by": list(self.grant.approved_by)}
        if self.recovered:
            data["recovered"] = True
        return AuditEvent(self.at, "grant.provisioned", SYSTEM, self.grant.id, data)


@dataclass(frozen=True)
class ProvisioningFailed(Event):
    """Provisioning failed; the grant is rolled back (a revoke undoes anything half-granted)."""

    grant: Grant
    request: AccessRequest
    error: str
    recovered: bool = False

    def audit(self) -> AuditEvent:
        data: dict[str, object] = {**_grant_data(self.grant), "error": self.error}
        if self.recovered:
            data["recovered"] = True
        return AuditEvent(self.at, "grant.failed", SYSTEM, self.grant.id, data)


@dataclass(frozen=True)
class ProvisioningResumed(Event):
    """The reconciler took over a grant a crash left provisioning; the provisioner is asked again."""

    grant: Grant

    def audit(self) -> AuditEvent:
        return AuditEvent(self.at, "grant.provisioning_resumed", SYSTEM, self.grant.id, _grant_data(self.grant))


@dataclass(frozen=True)
class MissingGrantCreated(Event):
    """The reconciler found an approved request without its grant and created it."""

    grant: Grant
    request: AccessRequest

    def audit(self) -> AuditEvent:
        data = {**_grant_data(self.grant), "approved_by": list(self.grant.approved_by)}
        return AuditEvent(self.at, "grant.created_by_reconciler", SYSTEM, self.grant.id, data)


@dataclass(frozen=True)
class GrantExtended(Event):
    grant: Grant
    previous_expiry: datetime
    by: str

    def audit(self) -> AuditEvent:
        data = {**_grant_data(self.grant), "previous_expires_at": self.previous_expiry.isoformat()}
        return AuditEvent(self.at, "grant.extended", self.by, self.grant.id, data)


@dataclass(frozen=True)
class GrantRevoked(Event):
    """Someone ended a grant early; the provisioner's revoke follows."""

    grant: Grant
    by: str

    def audit(self) -> AuditEvent:
        return AuditEvent(self.at, "grant.revoked", self.by, self.grant.id, _grant_data(self.grant))


@dataclass(frozen=True)
class GrantExpired(Event):
    grant: Grant

    def audit(self) -> AuditEvent:
        return AuditEvent(self.at, "grant.expired", SYSTEM, self.grant.id, _grant_data(self.grant))


@dataclass(frozen=True)
class GrantEnded(Event):
    """The provisioner confirmed the revoke: access is gone."""

    grant: Grant

    def audit(self) -> AuditEvent:
        lag = (self.at - self.grant.expires_at).total_seconds()
        data = {**_grant_data(self.grant), "reason": str(self.grant.end_reason), "revoke_lag_seconds": lag}
        return AuditEvent(self.at, "grant.ended", SYSTEM, self.grant.id, data)


@dataclass(frozen=True)
class RevokeFailed(Event):
    grant: Grant
    error: str
    retry_at: datetime

    def audit(self) -> AuditEvent:
        data = {**_grant_data(self.grant), "error": self.error, "retry_at": self.retry_at.isoformat()}
        return AuditEvent(self.at, "grant.revoke_failed", SYSTEM, self.grant.id, data)


@dataclass(frozen=True)
class ActionRefused(Event):
    """Someone tried something they may not do: audited, and told why."""

    actor: str
    action: str
    subject: str
    reason: str

    def audit(self) -> AuditEvent:
        return AuditEvent(
            self.at,
            "action.refused",
            self.actor,
            self.subject,
            {"action": self.action, "reason": self.reason},
        )

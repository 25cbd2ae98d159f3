"""Ackgate's domain values: who asks, for what, and what PagerDuty says about them.

Everything here is a frozen value. State changes happen in storage by compare-and-set
(see :mod:`bot.core.ports`), never by mutating these objects.
"""

from __future__ import annotations

import re
import secrets
from dataclasses import dataclass, field
from datetime import datetime
from enum import StrEnum

_ID_ALPHABET = "23456789abcdefghjkmnpqrstuvwxyz"
_ID_BYTES_KEPT = 256 - 256 % len(_ID_ALPHABET)  # bytes at or past it would favour the first letters


def new_id(prefix: str) -> str:
    """A short, unguessable, human-typable id such as ``g-7k2m9q4x``: 8 letters drawn uniformly
    from the system's random source, read once (``secrets.choice`` would read it for each letter)."""
    letters: list[str] = []
    while len(letters) < 8:
        letters += [_ID_ALPHABET[b % len(_ID_ALPHABET)] for b in secrets.token_bytes(12) if b < _ID_BYTES_KEPT]
    return prefix + "-" + "".join(letters[:8])


@dataclass(frozen=True)
class Principal:
    """A chat user, neutral of platform. Email is the join key with PagerDuty and the policy."""

    platform: str  # "slack" | "teams"
    user_id: str
    email: str
    name: str = ""

    @property
    def key(self) -> str:
        return f"{self.platform}:{self.user_id}"


@dataclass(frozen=True)
class MessageRef:
    """Where a message Ackgate posted lives, so it can be updated in place later."""

    platform: str
    channel: str
    message_id: str


BARE_CHANNEL_PLATFORM = "slack"  # a channel written without ``platform:`` (before issue 7) is Slack's
_PLATFORM_PREFIX = re.compile(r"^([a-z][a-z0-9_]*):(.*)$")


def split_channel(text: str) -> tuple[str, str]:
    """``slack:C0123`` → ("slack", "C0123"); ``teams:19:x@thread.tacv2`` → ("teams", "19:x@thread.tacv2");
    a bare ``C0123`` → ("slack", "C0123"), as policies and settings wrote it before issue 7."""
    match = _PLATFORM_PREFIX.match(text)
    if match is None:
        return BARE_CHANNEL_PLATFORM, text
    return match.group(1), match.group(2)


# --- PagerDuty facts -----------------------------------------------------------------------


@dataclass(frozen=True)
class PagerDutyUser:
    id: str
    email: str
    name: str = ""


@dataclass(frozen=True)
class Incident:
    """The PagerDuty incident a request is tied to: its ticket and its justification."""

    id: str
    number: int
    title: str
    status: str  # triggered | acknowledged | resolved
    html_url: str
    service_id: str = ""
    service_name: str = ""
    urgency: str = ""
    acknowledger_ids: tuple[str, ...] = ()

    @property
    def label(self) -> str:
        return f"#{self.number} {self.title}"


@dataclass(frozen=True)
class OnCall:
    user_id: str
    user_email: str
    escalation_policy_id: str
    escalation_level: int
    schedule_id: str | None = None
    start: datetime | None = None
    end: datetime | None = None  # None: permanent on-call


# --- requests and grants -------------------------------------------------------------------


class RequestStatus(StrEnum):
    PENDING = "pending"  # waiting for approvals
    APPROVED = "approved"  # approved (or auto-approved); a grant exists
    DENIED = "denied"
    REFUSED = "refused"  # no flow's gate passed
    TIMED_OUT = "timed_out"  # nobody decided in time
    CANCELLED = "cancelled"


class GrantStatus(StrEnum):
    PROVISIONING = "provisioning"  # written before the provisioner is called
    ACTIVE = "active"
    REVOKING = "revoking"  # revoke owed (an end, or a failed provisioning's roll-back); retried until confirmed
    ENDED = "ended"
    FAILED = "failed"  # provisioning kept failing (and its roll-back revoke was confirmed)


class EndReason(StrEnum):
    EXPIRED = "expired"
    REVOKED = "revoked"
    INCIDENT_RESOLVED = "incident_resolved"
    PROVISIONING_FAILED = "provisioning_failed"  # rolled back: the revoke undoes anything half-granted


@dataclass(frozen=True)
class Approval:
    approver_email: str
    at: datetime


@dataclass(frozen=True)
class AccessRequest:
    id: str
    requester: Principal
    resource: str
    duration_seconds: int
    reason: str
    flow: str
    status: RequestStatus
    created_at: datetime
    incident: Incident | None = None
    approvers: tuple[str, ...] = ()  # eligible approver emails, fixed when the request was made
    required_approvals: int = 1
    approvals: tuple[Approval, ...] = ()
    decided_by: str | None = None
    decided_at: datetime | None = None
    note: str = ""  # why it was refused, denied or timed out
    grant_id: str | None = None
    approval_channel: str | None = None

    @property
    def justification(self) -> str:
        """The requester's reason, else the incident's title."""
        if self.reason:
            return self.reason
        if self.incident is not None:
            return f"PagerDuty incident {self.incident.label}"
        return ""


@dataclass(frozen=True)
class Grant:
    id: str
    request_id: str
    resource: str
    holder: Principal
    flow: str
    status: GrantStatus
    created_at: datetime
    expires_at: datetime
    justification: str = ""
    incident: Incident | None = None
    approved_by: tuple[str, ...] = ()
    end_reason: EndReason | None = None
    ended_at: datetime | None = None
    ended_by: str | None = None
    revoke_attempts: int = 0
    next_attempt_at: datetime | None = None  # when the next attempt is due, or until when a claim on it lasts
    last_error: str = ""
    claimed_by: str = ""  # the instance holding the claim that ``next_attempt_at`` bounds, if any


@dataclass(frozen=True)
class AuditEvent:
    """One line of the append-only audit log."""

    at: datetime
    kind: str  # e.g. "access.requested", "gate.evaluated", "grant.expired"
    actor: str  # email of who caused it, or "ackgate"
    subject: str  # request, grant or transaction id
    data: dict[str, object] = field(default_factory=dict)
    seq: int | None = None  # assigned by storage


# --- authentication requests and incident mirroring ---------------------------------------


class AuthStatus(StrEnum):
    PENDING = "pending"
    VERIFIED = "verified"
    DENIED = "denied"
    EXPIRED = "expired"


@dataclass(frozen=True)
class AuthTransaction:
    """A request to verify ``target``'s identity, answered through a single-use link.

    Only a hash of the link's token is stored; the token itself exists in the link alone.
    """

    id: str
    requester: Principal
    target: Principal
    message: str
    status: AuthStatus
    created_at: datetime
    expires_at: datetime
    token_hash: str
    context: str = ""
    channels: tuple[str, ...] = ()  # how the target was reached: "pagerduty", "chat"
    dedup_key: str | None = None  # the Events API dedup key, when an incident was triggered
    decided_at: datetime | None = None
    note: str = ""  # e.g. why PagerDuty could not be used


@dataclass(frozen=True)
class IncidentMirror:
    """What Ackgate last knew of a PagerDuty incident it mirrors into a channel."""

    incident_id: str
    number: int
    title: str
    html_url: str
    status: str
    status_at: datetime  # occurred_at of the event that set ``status``
    acknowledged_by: str = ""
    service_id: str = ""
    transaction_id: str | None = None
    incident_key: str = ""


@dataclass(frozen=True)
class ReceivedCommand:
    """A chat command or form submission acknowledged to the platform and not yet known answered.

    ``key`` is the platform's per-invocation id (Slack's ``trigger_id``), so a retry or a replay of
    the same request finds the same row. ``lease_until`` is when a recovery pass may take it over
    from whoever is handling it; ``attempts`` counts those take-overs.
    """

    key: str
    kind: str  # "command" (slash command text), "form" (request form as command text), "key_form"
    user_id: str
    received_at: datetime
    lease_until: datetime
    channel_id: str = ""
    text: str = ""  # never a secret: the key form stores nothing of what was pasted
    response_url: str = ""
    attempts: int = 0
    answered_at: datetime | None = None
    claimed_by: str = ""  # the instance owing the answer (see ``CommandInbox.release_claims``)


CLAIM_OWNER_END = "/"


def claim_token(owner: str) -> str:
    """A fresh claim token that names its holder: ``<owner>/<random>``, so the owner, restarted, can
    take back the claims its previous run died holding (``release_claims``). Random alone without an owner."""
    random_part = secrets.token_hex(8)
    return f"{owner}{CLAIM_OWNER_END}{random_part}" if owner else random_part


def claim_prefix(owner: str) -> str:
    """What every token :func:`claim_token` makes for ``owner`` starts with."""
    return f"{owner}{CLAIM_OWNER_END}"

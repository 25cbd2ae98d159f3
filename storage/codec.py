"""Row <-> domain mapping shared by the SQLite and PostgreSQL backends.

The backends differ only in how they hold a datetime (ISO text in SQLite, ``timestamptz`` in
PostgreSQL), so a :class:`Codec` is built with those two functions and does everything else once:
column order, JSON for nested values, enums, and the error a lost compare-and-set raises (its
sentence comes from :mod:`bot.core.messages`). The statements themselves are in :mod:`storage.roles`.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterable, Sequence
from dataclasses import fields
from datetime import UTC, datetime
from enum import Enum
from typing import Any, Protocol

from bot.core import messages
from bot.core.domain import (
    AccessRequest,
    Approval,
    AuditEvent,
    AuthStatus,
    AuthTransaction,
    EndReason,
    Grant,
    GrantStatus,
    Incident,
    IncidentMirror,
    MessageRef,
    Principal,
    ReceivedCommand,
    RequestStatus,
)
from bot.core.errors import AlreadyDecided, NotFound, StorageError, UserError
from bot.core.webhooks import STATUS_ORDER


class Row(Protocol):
    """What both drivers' rows offer: ``sqlite3.Row`` and ``asyncpg.Record``."""

    def __getitem__(self, key: str, /) -> Any: ...


REQUEST_COLUMNS = (
    "id",
    "requester_platform",
    "requester_user_id",
    "requester_email",
    "requester_name",
    "resource",
    "duration_seconds",
    "reason",
    "flow",
    "status",
    "created_at",
    "incident",
    "approvers",
    "required_approvals",
    "decided_by",
    "decided_at",
    "note",
    "grant_id",
    "approval_channel",
)

GRANT_COLUMNS = (
    "id",
    "request_id",
    "resource",
    "holder_platform",
    "holder_user_id",
    "holder_email",
    "holder_name",
    "flow",
    "status",
    "created_at",
    "expires_at",
    "justification",
    "incident",
    "incident_id",
    "approved_by",
    "end_reason",
    "ended_at",
    "ended_by",
    "revoke_attempts",
    "next_attempt_at",
    "last_error",
    "claimed_by",
)

AUDIT_COLUMNS = ("at", "kind", "actor", "subject", "data")

TRANSACTION_COLUMNS = (
    "id",
    "requester_platform",
    "requester_user_id",
    "requester_email",
    "requester_name",
    "target_platform",
    "target_user_id",
    "target_email",
    "target_name",
    "message",
    "status",
    "created_at",
    "expires_at",
    "token_hash",
    "context",
    "channels",
    "dedup_key",
    "decided_at",
    "note",
)

COMMAND_COLUMNS = (
    "key",
    "kind",
    "user_id",
    "channel_id",
    "text",
    "response_url",
    "received_at",
    "lease_until",
    "claimed_by",
)

MIRROR_COLUMNS = (
    "incident_id",
    "number",
    "title",
    "html_url",
    "status",
    "status_rank",
    "status_at",
    "acknowledged_by",
    "service_id",
    "transaction_id",
    "incident_key",
)


def status_rank(status: str) -> int:
    """Where an incident status sits in triggered < acknowledged < resolved; unknown ones rank lowest.

    Stored beside the status so ``put_if_newer`` can break a tie between two events stamped with
    the same instant inside one SQL statement.
    """
    return STATUS_ORDER.get(status, -1)


def utc(at: datetime) -> datetime:
    """``at`` in UTC. A naive datetime is a programming error: its zone is unknowable."""
    if at.tzinfo is None or at.utcoffset() is None:
        raise ValueError(f"Storage needs timezone-aware datetimes, got naive {at.isoformat()}.")
    return at.astimezone(UTC)


def iso(at: datetime) -> str:
    """Fixed-width UTC text, so SQLite's string comparison orders it like time."""
    return utc(at).isoformat(timespec="microseconds")


def from_iso(text: str) -> datetime:
    return datetime.fromisoformat(text).astimezone(UTC)


def _json_default(value: object) -> object:
    # Audit data should be JSON already; a stray datetime or enum must not lose an audit line.
    if isinstance(value, datetime):
        return value.isoformat()
    if isinstance(value, Enum):
        return value.value
    return str(value)


# One encoder for every row: json.dumps with options builds a new JSONEncoder at each call.
_ENCODER = json.JSONEncoder(default=_json_default, separators=(",", ":"))


def dump_json(value: object) -> str:
    return _ENCODER.encode(value)


_INCIDENT_NAMES = tuple(f.name for f in fields(Incident))  # in declaration order, as asdict gives them
_INCIDENT_FIELDS = frozenset(_INCIDENT_NAMES)


def _dump_incident(incident: Incident | None) -> str | None:
    # its fields are plain values: read directly, not through asdict's recursive deep copy
    return None if incident is None else dump_json({name: getattr(incident, name) for name in _INCIDENT_NAMES})


def _load_incident(text: str | None) -> Incident | None:
    if text is None:
        return None
    stored = json.loads(text)
    # Keep only fields this version knows, so a row written by a newer replica still loads.
    known = {k: v for k, v in stored.items() if k in _INCIDENT_FIELDS}
    known["acknowledger_ids"] = tuple(known.get("acknowledger_ids", ()))
    return Incident(**known)


class Codec:
    """Maps domain values to column tuples and rows back to domain values."""

    def __init__(self, *, dump_time: Callable[[datetime], object], load_time: Callable[[Any], datetime]):
        self.dump_time = dump_time
        self._load_time = load_time

    def _maybe_time(self, at: datetime | None) -> object:
        return None if at is None else self.dump_time(at)

    def _load_maybe_time(self, value: object) -> datetime | None:
        return None if value is None else self._load_time(value)

    # --- requests ---------------------------------------------------------------------------

    def request_values(self, r: AccessRequest) -> tuple[object, ...]:
        """Column values in :data:`REQUEST_COLUMNS` order (approvals live in their own table)."""
        return (
            r.id,
            r.requester.platform,
            r.requester.user_id,
            r.requester.email,
            r.requester.name,
            r.resource,
            r.duration_seconds,
            r.reason,
            r.flow,
            r.status.value,
            self.dump_time(r.created_at),
            _dump_incident(r.incident),
            dump_json(list(r.approvers)),
            r.required_approvals,
            r.decided_by,
            self._maybe_time(r.decided_at),
            r.note,
            r.grant_id,
            r.approval_channel,
        )

    def approval(self, row: Row) -> Approval:
        return Approval(approver_email=row["approver_email"], at=self._load_time(row["at"]))

    def request(self, row: Row, approvals: Sequence[Approval]) -> AccessRequest:
        return AccessRequest(
            id=row["id"],
            requester=Principal(
                platform=row["requester_platform"],
                user_id=row["requester_user_id"],
                email=row["requester_email"],
                name=row["requester_name"],
            ),
            resource=row["resource"],
            duration_seconds=int(row["duration_seconds"]),
            reason=row["reason"],
            flow=row["flow"],
            status=RequestStatus(row["status"]),
            created_at=self._load_time(row["created_at"]),
            incident=_load_incident(row["incident"]),
            approvers=tuple(json.loads(row["approvers"])),
            required_approvals=int(row["required_approvals"]),
            approvals=tuple(approvals),
            decided_by=row["decided_by"],
            decided_at=self._load_maybe_time(row["decided_at"]),
            note=row["note"],
            grant_id=row["grant_id"],
            approval_channel=row["approval_channel"],
        )

    def requests(self, rows: Sequence[Row], approval_rows: Iterable[Row]) -> list[AccessRequest]:
        """Requests in the rows' order, each with its approvals (``approval_rows`` may hold any of
        theirs, mixed, in the order they were given)."""
        approvals: dict[str, list[Approval]] = {row["id"]: [] for row in rows}
        for a in approval_rows:
            approvals[a["request_id"]].append(self.approval(a))
        return [self.request(row, approvals[row["id"]]) for row in rows]

    # --- grants -----------------------------------------------------------------------------

    def grant_values(self, g: Grant) -> tuple[object, ...]:
        """Column values in :data:`GRANT_COLUMNS` order."""
        return (
            g.id,
            g.request_id,
            g.resource,
            g.holder.platform,
            g.holder.user_id,
            g.holder.email,
            g.holder.name,
            g.flow,
            g.status.value,
            self.dump_time(g.created_at),
            self.dump_time(g.expires_at),
            g.justification,
            _dump_incident(g.incident),
            None if g.incident is None else g.incident.id,
            dump_json(list(g.approved_by)),
            None if g.end_reason is None else g.end_reason.value,
            self._maybe_time(g.ended_at),
            g.ended_by,
            g.revoke_attempts,
            self._maybe_time(g.next_attempt_at),
            g.last_error,
            g.claimed_by,
        )

    def transition_values(
        self,
        new: GrantStatus,
        *,
        at: datetime,
        end_reason: EndReason | None,
        ended_by: str | None,
        expires_at: datetime | None,
        last_error: str | None,
        next_attempt_at: datetime | None = None,
    ) -> dict[str, object]:
        """What a grant transition sets, by column; ``None`` keeps the stored value (``COALESCE``).

        Moving to REVOKING sets next_attempt_at: the caller's lease on its own first attempt when
        given, else ``at`` (due now)."""
        return {
            "status": new.value,
            "end_reason": None if end_reason is None else end_reason.value,
            "ended_by": ended_by,
            "expires_at": self._maybe_time(expires_at),
            "last_error": last_error,
            "next_attempt_at": self.dump_time(next_attempt_at or at) if new is GrantStatus.REVOKING else None,
            "ended_at": self.dump_time(at) if new is GrantStatus.ENDED else None,
        }

    def grant(self, row: Row) -> Grant:
        end_reason = row["end_reason"]
        return Grant(
            id=row["id"],
            request_id=row["request_id"],
            resource=row["resource"],
            holder=Principal(
                platform=row["holder_platform"],
                user_id=row["holder_user_id"],
                email=row["holder_email"],
                name=row["holder_name"],
            ),
            flow=row["flow"],
            status=GrantStatus(row["status"]),
            created_at=self._load_time(row["created_at"]),
            expires_at=self._load_time(row["expires_at"]),
            justification=row["justification"],
            incident=_load_incident(row["incident"]),
            approved_by=tuple(json.loads(row["approved_by"])),
            end_reason=None if end_reason is None else EndReason(end_reason),
            ended_at=self._load_maybe_time(row["ended_at"]),
            ended_by=row["ended_by"],
            revoke_attempts=int(row["revoke_attempts"]),
            next_attempt_at=self._load_maybe_time(row["next_attempt_at"]),
            last_error=row["last_error"],
            claimed_by=row["claimed_by"],
        )

    # --- audit and messages -----------------------------------------------------------------

    def audit_values(self, e: AuditEvent) -> tuple[object, ...]:
        return (self.dump_time(e.at), e.kind, e.actor, e.subject, dump_json(e.data))

    def audit(self, row: Row) -> AuditEvent:
        return AuditEvent(
            at=self._load_time(row["at"]),
            kind=row["kind"],
            actor=row["actor"],
            subject=row["subject"],
            data=json.loads(row["data"]),
            seq=int(row["seq"]),
        )

    @staticmethod
    def message_ref(row: Row) -> MessageRef:
        return MessageRef(platform=row["platform"], channel=row["channel"], message_id=row["message_id"])

    # --- acknowledged chat commands ----------------------------------------------------------

    def command_values(self, c: ReceivedCommand) -> tuple[object, ...]:
        """Column values in :data:`COMMAND_COLUMNS` order."""
        return (
            c.key,
            c.kind,
            c.user_id,
            c.channel_id,
            c.text,
            c.response_url,
            self.dump_time(c.received_at),
            self.dump_time(c.lease_until),
            c.claimed_by,
        )

    def command(self, row: Row) -> ReceivedCommand:
        return ReceivedCommand(
            key=row["key"],
            kind=row["kind"],
            user_id=row["user_id"],
            channel_id=row["channel_id"],
            text=row["text"],
            response_url=row["response_url"],
            received_at=self._load_time(row["received_at"]),
            lease_until=self._load_time(row["lease_until"]),
            attempts=int(row["attempts"]),
            answered_at=self._load_maybe_time(row["answered_at"]),
            claimed_by=row["claimed_by"],
        )

    # --- authentication transactions and mirrored incidents ---------------------------------

    def transaction_values(self, t: AuthTransaction) -> tuple[object, ...]:
        """Column values in :data:`TRANSACTION_COLUMNS` order."""
        return (
            t.id,
            t.requester.platform,
            t.requester.user_id,
            t.requester.email,
            t.requester.name,
            t.target.platform,
            t.target.user_id,
            t.target.email,
            t.target.name,
            t.message,
            t.status.value,
            self.dump_time(t.created_at),
            self.dump_time(t.expires_at),
            t.token_hash,
            t.context,
            dump_json(list(t.channels)),
            t.dedup_key,
            self._maybe_time(t.decided_at),
            t.note,
        )

    def transaction(self, row: Row) -> AuthTransaction:
        return AuthTransaction(
            id=row["id"],
            requester=_principal(row, "requester"),
            target=_principal(row, "target"),
            message=row["message"],
            status=AuthStatus(row["status"]),
            created_at=self._load_time(row["created_at"]),
            expires_at=self._load_time(row["expires_at"]),
            token_hash=row["token_hash"],
            context=row["context"],
            channels=tuple(json.loads(row["channels"])),
            dedup_key=row["dedup_key"],
            decided_at=self._load_maybe_time(row["decided_at"]),
            note=row["note"],
        )

    def mirror_values(self, m: IncidentMirror) -> tuple[object, ...]:
        """Column values in :data:`MIRROR_COLUMNS` order."""
        return (
            m.incident_id,
            m.number,
            m.title,
            m.html_url,
            m.status,
            status_rank(m.status),
            self.dump_time(m.status_at),
            m.acknowledged_by,
            m.service_id,
            m.transaction_id,
            m.incident_key,
        )

    def mirror(self, row: Row) -> IncidentMirror:
        return IncidentMirror(
            incident_id=row["incident_id"],
            number=int(row["number"]),
            title=row["title"],
            html_url=row["html_url"],
            status=row["status"],
            status_at=self._load_time(row["status_at"]),
            acknowledged_by=row["acknowledged_by"],
            service_id=row["service_id"],
            transaction_id=row["transaction_id"],
            incident_key=row["incident_key"],
        )


def _principal(row: Row, prefix: str) -> Principal:
    return Principal(
        platform=row[f"{prefix}_platform"],
        user_id=row[f"{prefix}_user_id"],
        email=row[f"{prefix}_email"],
        name=row[f"{prefix}_name"],
    )


# --- what a lost compare-and-set or a duplicate insert raises (the sentences: bot/core/messages.py) ----


def request_conflict(request_id: str, row: Row | None) -> UserError:
    """The error for a request transition that changed no row; ``row`` holds status and decided_by."""
    if row is None:
        return NotFound(messages.not_stored("request", request_id))
    status, by = row["status"], row["decided_by"]
    return AlreadyDecided(messages.request_already(status, by), status=status, by=by)


def request_has_grant(request_id: str, row: Row | None) -> UserError:
    """The error for a grant that could not be added to its request; ``row`` holds status and decided_by."""
    if row is None or row["status"] != RequestStatus.APPROVED.value:
        return request_conflict(request_id, row)
    return AlreadyDecided(messages.REQUEST_HAS_GRANT, status=row["status"], by=row["decided_by"])


def grant_conflict(grant_id: str, row: Row | None, *, checks_expiry: bool = False) -> UserError:
    """The error for a grant transition that changed no row; ``row`` holds status and ended_by.

    With ``checks_expiry`` (the update also compared the expiry), a grant still ACTIVE lost because
    its expiry moved meanwhile.
    """
    if row is None:
        return NotFound(messages.not_stored("grant", grant_id))
    status = GrantStatus(row["status"])
    if checks_expiry and status is GrantStatus.ACTIVE:
        return AlreadyDecided(messages.GRANT_EXPIRY_MOVED, status=status.value)
    return AlreadyDecided(messages.grant_already(status.value), status=status.value, by=row["ended_by"])


def transaction_conflict(transaction_id: str, row: Row | None) -> UserError:
    """The error for a transaction decision that changed no row; ``row`` holds the status."""
    if row is None:
        return transaction_missing(transaction_id)
    status = AuthStatus(row["status"])
    return AlreadyDecided(messages.transaction_already(status.value), status=status.value)


def transaction_missing(transaction_id: str) -> NotFound:
    return NotFound(messages.not_stored("authentication request", transaction_id))


def id_taken(what: str) -> StorageError:
    """The error for an insert whose id is already stored; ``what`` names it (``request r-1``)."""
    return StorageError(messages.id_taken(what))


def transaction_taken(transaction_id: str, *, token: bool) -> StorageError:
    """The error for a duplicate authentication request: its id, or (``token``) its link's hash."""
    return StorageError(messages.transaction_taken(transaction_id, token=token))


# --- audit rows written inside a state change's transaction --------------------------------------


def audit_rows(
    codec: Codec, audit: Callable[[Any], Sequence[AuditEvent]] | None, result: object
) -> list[tuple[object, ...]]:
    """The column values of the audit events ``audit`` builds from ``result`` (none without ``audit``)."""
    return [] if audit is None else [codec.audit_values(e) for e in audit(result)]

"""Row <-> domain mapping shared by the SQLite and PostgreSQL backends.

The backends differ only in how they hold a datetime (ISO text in SQLite, ``timestamptz`` in
PostgreSQL), so a :class:`Codec` is built with those two functions and does everything else once:
column order, JSON for nested values, enums, and the error a lost compare-and-set raises.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterable, Sequence
from dataclasses import asdict, dataclass, fields
from datetime import UTC, datetime
from enum import Enum
from typing import Any, Protocol

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


def dump_json(value: object) -> str:
    return json.dumps(value, default=_json_default, separators=(",", ":"))


_INCIDENT_FIELDS = frozenset(f.name for f in fields(Incident))


def _dump_incident(incident: Incident | None) -> str | None:
    return None if incident is None else dump_json(asdict(incident))


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
    ) -> tuple[object, ...]:
        """What a grant transition sets, in the order status, end_reason, ended_by, expires_at,
        last_error, next_attempt_at, ended_at; ``None`` keeps the stored value (``COALESCE``).

        Moving to REVOKING sets next_attempt_at: the caller's lease on its own first attempt when
        given, else ``at`` (due now)."""
        return (
            new.value,
            None if end_reason is None else end_reason.value,
            ended_by,
            self._maybe_time(expires_at),
            last_error,
            self.dump_time(next_attempt_at or at) if new is GrantStatus.REVOKING else None,
            self.dump_time(at) if new is GrantStatus.ENDED else None,
        )

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


def mirror_upsert(insert: str) -> str:
    """``insert`` (an INSERT of :data:`MIRROR_COLUMNS`) made into the compare-and-set upsert of
    ``put_if_newer``; both dialects share this SQL and differ only in their placeholders.

    The update happens only for a later ``status_at``, or the same instant and a later status, so a
    late delivery never moves an incident backwards. A link the newer event does not carry (the
    transaction, the incident key) is kept rather than erased. ``RETURNING`` yields a row only
    when something was written.
    """
    linked = {"transaction_id", "incident_key"}
    assignments = [f"{c} = excluded.{c}" for c in MIRROR_COLUMNS if c != "incident_id" and c not in linked]
    assignments += [
        "transaction_id = COALESCE(excluded.transaction_id, incident_mirrors.transaction_id)",
        "incident_key = COALESCE(NULLIF(excluded.incident_key, ''), incident_mirrors.incident_key)",
    ]
    return (
        f"{insert} ON CONFLICT (incident_id) DO UPDATE SET {', '.join(assignments)}"
        " WHERE excluded.status_at > incident_mirrors.status_at"
        " OR (excluded.status_at = incident_mirrors.status_at AND excluded.status_rank > incident_mirrors.status_rank)"
        " RETURNING incident_id"
    )


def insert(table: str, columns: Sequence[str], *, mark: Callable[[int], str]) -> str:
    """An INSERT of one row of ``columns``; ``mark(n)`` is the dialect's placeholder for the n-th value."""
    marks = ", ".join(mark(n) for n in range(1, len(columns) + 1))
    return f"INSERT INTO {table} ({', '.join(columns)}) VALUES ({marks})"  # noqa: S608 - constant names


@dataclass(frozen=True)
class RowWrites:
    """The statements that write a domain value as one whole row, each taking the codec's ``*_values``."""

    request: str
    grant: str
    audit: str
    transaction: str
    put_mirror: str  # the compare-and-set upsert of :func:`mirror_upsert`


def row_writes(mark: Callable[[int], str]) -> RowWrites:
    """:class:`RowWrites` in a dialect's placeholders (see :func:`insert`)."""
    return RowWrites(
        request=insert("requests", REQUEST_COLUMNS, mark=mark),
        grant=insert("grants", GRANT_COLUMNS, mark=mark),
        audit=insert("audit", AUDIT_COLUMNS, mark=mark),
        transaction=insert("auth_transactions", TRANSACTION_COLUMNS, mark=mark),
        put_mirror=mirror_upsert(insert("incident_mirrors", MIRROR_COLUMNS, mark=mark)),
    )


# --- what a lost compare-and-set raises ----------------------------------------------------------
# Short sentences shown to the person who clicked; they say who got there first when known.

_REQUEST_DONE = {
    RequestStatus.APPROVED: "This request was already approved",
    RequestStatus.DENIED: "This request was already denied",
    RequestStatus.REFUSED: "This request was already refused",
    RequestStatus.CANCELLED: "This request was already cancelled",
    RequestStatus.TIMED_OUT: "This request has already timed out",
    RequestStatus.PENDING: "This request is still pending",
}

_GRANT_STATE = {
    GrantStatus.PROVISIONING: "This grant is still being set up.",
    GrantStatus.ACTIVE: "This grant is already active.",
    GrantStatus.REVOKING: "This grant is already being revoked.",
    GrantStatus.ENDED: "This grant has already ended.",
    GrantStatus.FAILED: "This grant could not be set up.",
}


def request_conflict(request_id: str, row: Row | None) -> UserError:
    """The error for a request transition that changed no row; ``row`` holds status and decided_by."""
    if row is None:
        return NotFound(f"No request has the id {request_id}.")
    status = RequestStatus(row["status"])
    by: str | None = row["decided_by"]
    timed_out = status in (RequestStatus.TIMED_OUT, RequestStatus.PENDING)
    sentence = _REQUEST_DONE[status] + ("" if by is None or timed_out else f" by {by}") + "."
    return AlreadyDecided(sentence, status=status.value, by=by)


def request_has_grant(request_id: str, row: Row | None) -> UserError:
    """The error for a grant that could not be added to its request; ``row`` holds status and decided_by."""
    if row is None or row["status"] != RequestStatus.APPROVED.value:
        return request_conflict(request_id, row)
    return AlreadyDecided("This request already has its grant.", status=row["status"], by=row["decided_by"])


def grant_conflict(grant_id: str, row: Row | None, *, checks_expiry: bool = False) -> UserError:
    """The error for a grant transition that changed no row; ``row`` holds status and ended_by.

    With ``checks_expiry`` (the update also compared the expiry), a grant still ACTIVE lost because
    its expiry moved meanwhile.
    """
    if row is None:
        return NotFound(f"No grant has the id {grant_id}.")
    status = GrantStatus(row["status"])
    if checks_expiry and status is GrantStatus.ACTIVE:
        return expiry_moved()
    by: str | None = row["ended_by"]
    return AlreadyDecided(_GRANT_STATE[status], status=status.value, by=by)


_TRANSACTION_STATE = {
    AuthStatus.VERIFIED: "This request was already verified.",
    AuthStatus.DENIED: "This request was already denied.",
    AuthStatus.EXPIRED: "This link has expired.",
    AuthStatus.PENDING: "This request is still waiting for an answer.",
}


def transaction_conflict(transaction_id: str, row: Row | None) -> UserError:
    """The error for a transaction decision that changed no row; ``row`` holds the status."""
    if row is None:
        return transaction_missing(transaction_id)
    status = AuthStatus(row["status"])
    return AlreadyDecided(_TRANSACTION_STATE[status], status=status.value)


def transaction_missing(transaction_id: str) -> NotFound:
    return NotFound(f"No authentication request has the id {transaction_id}.")


def expiry_moved() -> AlreadyDecided:
    return AlreadyDecided(
        "This grant's expiry changed meanwhile. Check it and try again.", status=GrantStatus.ACTIVE.value
    )


# --- what a duplicate insert raises --------------------------------------------------------------


def id_taken(what: str) -> StorageError:
    """The error for an insert whose id is already stored; ``what`` names it (``request r-1``)."""
    return StorageError(f"Could not save {what}: that id is already taken.")


def transaction_taken(transaction_id: str, *, token: bool) -> StorageError:
    """The error for a duplicate authentication request: its id, or (``token``) its link's hash."""
    taken = "its link token is already in use" if token else "that id is already taken"
    return StorageError(f"Could not save authentication request {transaction_id}: {taken}.")


# --- audit rows written inside a state change's transaction --------------------------------------


def audit_rows(
    codec: Codec, audit: Callable[[Any], Sequence[AuditEvent]] | None, result: object
) -> list[tuple[object, ...]]:
    """The column values of the audit events ``audit`` builds from ``result`` (none without ``audit``)."""
    return [] if audit is None else [codec.audit_values(e) for e in audit(result)]

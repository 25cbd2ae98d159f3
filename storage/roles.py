"""The role ports of the store, written once for both backends: each statement is an :class:`Sql`
(see :mod:`storage.sql` for what differs between the dialects) run through the backend's
:class:`~storage.sql.Database`.

Concurrency, the same on both: a compare-and-set is one ``UPDATE ... WHERE <expected> RETURNING *``
(no row back: it lost, and a second read says to what); an insert-if-absent is one ``INSERT ... ON
CONFLICT DO NOTHING RETURNING``; a state change and its audit rows (``audit=``) commit in one
transaction. Under PostgreSQL's READ COMMITTED a second writer waits on the row lock and re-checks
the condition; SQLite runs every write in ``BEGIN IMMEDIATE``, one writer at a time.
"""

# ruff: noqa: S608 - every statement is constant text with named parameters

from __future__ import annotations

from collections.abc import Callable, Sequence
from contextlib import AbstractAsyncContextManager
from dataclasses import replace
from datetime import datetime
from typing import Any

from bot.core.domain import (
    AccessRequest,
    AuditEvent,
    AuthStatus,
    AuthTransaction,
    EndReason,
    Grant,
    GrantStatus,
    IncidentMirror,
    MessageRef,
    ReceivedCommand,
    RequestStatus,
    claim_prefix,
)
from bot.core.ports import AuditFor
from storage.codec import (
    AUDIT_COLUMNS,
    COMMAND_COLUMNS,
    GRANT_COLUMNS,
    MIRROR_COLUMNS,
    REQUEST_COLUMNS,
    TRANSACTION_COLUMNS,
    Row,
    audit_rows,
    dump_json,
    grant_conflict,
    id_taken,
    request_conflict,
    request_has_grant,
    transaction_conflict,
    transaction_missing,
    transaction_taken,
)
from storage.group_commit import GroupCommit
from storage.sql import Database, Dialect, Duplicate, Session, Sql
from storage.sweeps import BEGIN_EXPIRY, FINISH_REVOKES, INCIDENTS_OF_ACTIVE, STRANDED_PENDING


class Role:
    """One role port, working through the backend's connection holder."""

    def __init__(self, db: Database) -> None:
        self._db = db
        self._codec = db.dialect.codec

    def _atomic(self, doing: str, *, audit: object) -> AbstractAsyncContextManager[Session]:
        """One statement alone, or a transaction when audit rows go with it."""
        return self._db.write(doing) if audit is None else self._db.transaction(doing)

    async def _audit(self, s: Session, audit: AuditFor[Any] | None, result: object) -> None:
        """Append the audit rows of a state change inside its transaction."""
        await s.execute_many(INSERT_AUDIT, audit_rows(self._codec, audit, result))


async def _insert_new(s: Session, sql: Sql, values: Sequence[object], *, what: str) -> None:
    """Insert one row whose id must be new; a taken id raises ``StorageError`` naming ``what``."""
    try:
        await s.execute(sql, *values)
    except Duplicate as exc:
        raise id_taken(what) from exc


def _mirror_upsert() -> Sql:
    """The compare-and-set upsert of ``put_if_newer``.

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
    return Sql.insert(
        "incident_mirrors",
        MIRROR_COLUMNS,
        suffix=f"ON CONFLICT (incident_id) DO UPDATE SET {', '.join(assignments)}"
        " WHERE excluded.status_at > incident_mirrors.status_at"
        " OR (excluded.status_at = incident_mirrors.status_at AND excluded.status_rank > incident_mirrors.status_rank)"
        " RETURNING incident_id",
    )


# Whole rows, each taking the codec's ``*_values`` in column order.
INSERT_REQUEST = Sql.insert("requests", REQUEST_COLUMNS)
INSERT_GRANT = Sql.insert("grants", GRANT_COLUMNS)
INSERT_AUDIT = Sql.insert("audit", AUDIT_COLUMNS)
INSERT_TRANSACTION = Sql.insert("auth_transactions", TRANSACTION_COLUMNS)
PUT_MIRROR = _mirror_upsert()

# Read by the sweepers and look-ups; tests EXPLAIN them to see an index serve each one.
DUE_TO_EXPIRE = Sql(
    "SELECT * FROM grants WHERE status = :status AND expires_at <= :now ORDER BY expires_at, id LIMIT :limit"
)
REVOKES_DUE = Sql(
    "SELECT * FROM grants WHERE status = :status AND next_attempt_at <= :now ORDER BY next_attempt_at, id LIMIT :limit"
)
ACTIVE_FOR_INCIDENT = Sql(
    "SELECT * FROM grants WHERE incident_id = :incident_id AND status = :status ORDER BY expires_at, id"
)
PENDING_EXPIRED = Sql(
    "SELECT * FROM auth_transactions WHERE status = :status AND expires_at <= :now ORDER BY expires_at, id LIMIT :limit"
)
BY_DEDUP_KEY = Sql("SELECT * FROM auth_transactions WHERE dedup_key = :key ORDER BY created_at DESC, id DESC LIMIT 1")
BY_TRANSACTION = Sql("SELECT * FROM incident_mirrors WHERE transaction_id = :id ORDER BY status_at DESC LIMIT 1")
PROVISIONING_DUE = Sql(
    "SELECT * FROM grants WHERE status = 'provisioning' AND (next_attempt_at IS NULL OR next_attempt_at <= :now)"
    " ORDER BY next_attempt_at NULLS FIRST, id LIMIT :limit"
)
APPROVED_WITHOUT_GRANT = Sql(
    "SELECT * FROM requests WHERE status = 'approved' AND grant_id IS NULL"
    " AND NOT EXISTS (SELECT 1 FROM grants WHERE grants.request_id = requests.id) ORDER BY created_at, id LIMIT :limit"
)
PENDING_WITHOUT_CARDS = Sql(
    "SELECT * FROM requests WHERE status = 'pending' AND created_at < :created_before AND NOT EXISTS ("
    " SELECT 1 FROM approval_card_posts p WHERE p.request_id = requests.id"
    " AND (p.posted_at IS NOT NULL OR p.lease_until > :now)) ORDER BY created_at, id LIMIT :limit"
)

# A claim token starts with its owner's prefix (bot.core.domain.claim_prefix): an owner that restarted
# releases the claims it held, whose leases are void.
OWNED = "substr(claim, 1, length(CAST(:prefix AS text))) = CAST(:prefix AS text)"

_PENDING = RequestStatus.PENDING.value
_ACTIVE = GrantStatus.ACTIVE.value
_REVOKING = GrantStatus.REVOKING.value


# --- requests --------------------------------------------------------------------------------------

_REQUEST = Sql("SELECT * FROM requests WHERE id = :id")
_REQUEST_STATE = Sql("SELECT status, decided_by FROM requests WHERE id = :id")
# Under PostgreSQL the row lock keeps decide() from changing the status between this check and the
# approval's insert; SQLite's BEGIN IMMEDIATE already holds the write lock.
_REQUEST_STATE_LOCKED = Sql("SELECT status, decided_by FROM requests WHERE id = :id{for_update}")
_APPROVALS_OF = Sql("SELECT * FROM approvals WHERE request_id {in_list:ids} ORDER BY seq")
_INSERT_APPROVAL = Sql(
    "INSERT INTO approvals (request_id, approver_email, at) VALUES (:request_id, :approver_email, :at)"
    " ON CONFLICT (request_id, approver_email) DO NOTHING"
)
_APPROVE = Sql(
    "UPDATE requests SET status = 'approved', decided_by = :by, decided_at = :at, grant_id = :grant_id"
    " WHERE id = :id AND status = 'pending' RETURNING *"
)
_DECIDE_REQUEST = Sql(
    "UPDATE requests SET status = :new, decided_by = :by, decided_at = :at, note = :note,"
    " grant_id = COALESCE(:grant_id, grant_id) WHERE id = :id AND status = :expected RETURNING *"
)
_REQUESTS_OF = Sql(
    "SELECT * FROM requests WHERE requester_email = :email ORDER BY created_at DESC, id DESC LIMIT :limit"
)
_PENDING_BEFORE = Sql("SELECT * FROM requests WHERE status = :status AND created_at < :cutoff ORDER BY created_at, id")


class Requests(Role):
    async def _complete(self, s: Session, rows: Sequence[Row]) -> list[AccessRequest]:
        """Attach each request's approvals (one query for all of them), keeping the rows' order."""
        if not rows:
            return []
        approvals = await s.rows(_APPROVALS_OF, ids=[row["id"] for row in rows])
        return self._codec.requests(rows, approvals)

    async def _insert(self, s: Session, request: AccessRequest) -> None:
        await _insert_new(s, INSERT_REQUEST, self._codec.request_values(request), what=f"request {request.id}")
        await s.execute_many(_INSERT_APPROVAL, [(request.id, a.approver_email, a.at) for a in request.approvals])

    async def add(self, request: AccessRequest, *, audit: AuditFor[None] | None = None) -> None:
        async with self._db.transaction(f"save request {request.id}") as s:
            await self._insert(s, request)
            await self._audit(s, audit, None)

    async def add_with_grant(
        self, request: AccessRequest, grant: Grant, *, audit: AuditFor[tuple[AccessRequest, Grant]] | None = None
    ) -> tuple[AccessRequest, Grant]:
        request = replace(request, grant_id=grant.id)
        async with self._db.transaction(f"save request {request.id} and its grant") as s:
            await self._insert(s, request)
            await _insert_new(s, INSERT_GRANT, self._codec.grant_values(grant), what=f"grant {grant.id}")
            await self._audit(s, audit, (request, grant))
        return request, grant

    async def approve(
        self,
        request_id: str,
        *,
        approver_email: str,
        at: datetime,
        grant: Callable[[AccessRequest], Grant],
        audit: AuditFor[tuple[AccessRequest, Grant | None]] | None = None,
    ) -> tuple[AccessRequest, Grant | None]:
        async with self._db.transaction(f"record an approval of request {request_id}") as s:
            request = await self._approval(s, request_id, approver_email, at)
            made: Grant | None = None
            if len(request.approvals) >= request.required_approvals:
                made = grant(request)
                rows = await s.rows(_APPROVE, by=approver_email, at=at, grant_id=made.id, id=request_id)
                request = (await self._complete(s, rows))[0]
                await _insert_new(s, INSERT_GRANT, self._codec.grant_values(made), what=f"grant {made.id}")
            await self._audit(s, audit, (request, made))
        return request, made

    async def approved_without_grant(self, *, limit: int = 100) -> list[AccessRequest]:
        async with self._db.read("list approved requests without a grant") as s:
            return await self._complete(s, await s.rows(APPROVED_WITHOUT_GRANT, limit=limit))

    async def pending_without_cards(
        self, now: datetime, *, created_before: datetime, limit: int = 100
    ) -> list[AccessRequest]:
        async with self._db.read("list pending requests no approver was shown") as s:
            rows = await s.rows(PENDING_WITHOUT_CARDS, created_before=created_before, now=now, limit=limit)
            return await self._complete(s, rows)

    async def get(self, request_id: str) -> AccessRequest | None:
        async with self._db.read(f"read request {request_id}") as s:
            found = await self._complete(s, await s.rows(_REQUEST, id=request_id))
        return found[0] if found else None

    async def list_for(self, requester_email: str, *, limit: int = 20) -> list[AccessRequest]:
        async with self._db.read(f"list the requests of {requester_email}") as s:
            return await self._complete(s, await s.rows(_REQUESTS_OF, email=requester_email, limit=limit))

    async def _approval(self, s: Session, request_id: str, approver_email: str, at: datetime) -> AccessRequest:
        row = await s.row(_REQUEST_STATE_LOCKED, id=request_id)
        if row is None or row["status"] != _PENDING:
            raise request_conflict(request_id, row)
        await s.execute(_INSERT_APPROVAL, request_id=request_id, approver_email=approver_email, at=at)
        return (await self._complete(s, await s.rows(_REQUEST, id=request_id)))[0]

    async def add_approval(
        self, request_id: str, *, approver_email: str, at: datetime, audit: AuditFor[AccessRequest] | None = None
    ) -> AccessRequest:
        async with self._db.transaction(f"record an approval of request {request_id}") as s:
            request = await self._approval(s, request_id, approver_email, at)
            await self._audit(s, audit, request)
        return request

    async def decide(
        self,
        request_id: str,
        *,
        expected: RequestStatus,
        new: RequestStatus,
        by: str | None,
        at: datetime,
        note: str = "",
        grant_id: str | None = None,
        audit: AuditFor[AccessRequest] | None = None,
    ) -> AccessRequest:
        params = {"new": new.value, "by": by, "at": at, "note": note, "grant_id": grant_id}
        async with self._db.transaction(f"decide request {request_id}") as s:
            updated = await s.rows(_DECIDE_REQUEST, **params, id=request_id, expected=expected.value)
            if not updated:
                raise request_conflict(request_id, await s.row(_REQUEST_STATE, id=request_id))
            request = (await self._complete(s, updated))[0]
            await self._audit(s, audit, request)
        return request

    async def pending_created_before(self, cutoff: datetime) -> list[AccessRequest]:
        async with self._db.read("list pending requests") as s:
            return await self._complete(s, await s.rows(_PENDING_BEFORE, status=_PENDING, cutoff=cutoff))

    async def stranded_pending(self, created_before: datetime, *, limit: int = 50) -> list[AccessRequest]:
        async with self._db.read("list fully approved pending requests") as s:
            rows = await s.rows(STRANDED_PENDING, created_before=created_before, limit=limit)
            return await self._complete(s, rows)


# --- grants ----------------------------------------------------------------------------------------

_GRANT = Sql("SELECT * FROM grants WHERE id = :id")
_GRANT_STATE = Sql("SELECT status, ended_by, expires_at FROM grants WHERE id = :id")
_GRANTS_OF = Sql("SELECT * FROM grants WHERE holder_email = :email ORDER BY expires_at, id")
_LIVE_GRANTS_OF = Sql(
    "SELECT * FROM grants WHERE holder_email = :email AND status NOT IN ('ended', 'failed') ORDER BY expires_at, id"
)
_TRANSITION = Sql(
    "UPDATE grants SET status = :status, end_reason = COALESCE(:end_reason, end_reason),"
    " ended_by = COALESCE(:ended_by, ended_by), expires_at = COALESCE(:expires_at, expires_at),"
    " last_error = COALESCE(:last_error, last_error), next_attempt_at = COALESCE(:next_attempt_at, next_attempt_at),"
    " ended_at = COALESCE(:ended_at, ended_at), claimed_by = COALESCE(:claimed_by, claimed_by)"
    " WHERE id = :id AND status = :expected RETURNING *"
)
_EXTEND = Sql(
    "UPDATE grants SET expires_at = :new_expires_at"
    " WHERE id = :id AND status = 'active' AND expires_at = :expected_expires_at RETURNING *"
)
_NEXT_EXPIRY = Sql("SELECT min(expires_at) AS at FROM grants WHERE status = 'active'")
_SCHEDULE_REVOKE_RETRY = Sql(
    "UPDATE grants SET revoke_attempts = revoke_attempts + 1, next_attempt_at = :at, last_error = :error,"
    " claimed_by = '' WHERE id = :id AND status = 'revoking' RETURNING *"
)
_COUNT_ACTIVE = Sql("SELECT count(*) AS n FROM grants WHERE status = 'active'")
# The UPDATE takes the request's row lock (SQLite: the write lock): a rival repair waits, then finds grant_id set.
_LINK_GRANT = Sql(
    "UPDATE requests SET grant_id = :grant_id WHERE id = :request_id AND status = 'approved' AND grant_id IS NULL"
    " AND NOT EXISTS (SELECT 1 FROM grants WHERE request_id = :request_id) RETURNING id"
)
_CLAIM_PROVISIONING = Sql(
    "UPDATE grants SET next_attempt_at = :lease_until, claimed_by = :owner WHERE id = :id AND status = 'provisioning'"
    " AND (next_attempt_at IS NULL OR next_attempt_at <= :now) RETURNING *"
)
_CLAIM_REVOKE = Sql(
    "UPDATE grants SET next_attempt_at = :lease_until, claimed_by = :owner"
    " WHERE id = :id AND status = 'revoking' AND next_attempt_at <= :now RETURNING *"
)
_RELEASE_GRANT_CLAIMS = Sql(
    "UPDATE grants SET next_attempt_at = :now, claimed_by = '' WHERE claimed_by = :owner AND claimed_by != ''"
    " AND status IN ('provisioning', 'revoking') AND next_attempt_at > :now RETURNING *"
)


class Grants(Role):
    async def _cas(
        self,
        grant_id: str,
        doing: str,
        sql: Sql,
        params: dict[str, object],
        *,
        checks_expiry: bool = False,
        audit: AuditFor[Grant] | None = None,
    ) -> Grant:
        """Run a ``... RETURNING *`` update (and its audit rows); no row back means the compare-and-set lost."""
        async with self._db.transaction(doing) as s:
            updated = await s.row(sql, **params, id=grant_id)
            if updated is None:
                current = await s.row(_GRANT_STATE, id=grant_id)
                raise grant_conflict(grant_id, current, checks_expiry=checks_expiry)
            grant = self._codec.grant(updated)
            await self._audit(s, audit, grant)
        return grant

    async def _select(self, doing: str, sql: Sql, **params: object) -> list[Grant]:
        async with self._db.read(doing) as s:
            return [self._codec.grant(row) for row in await s.rows(sql, **params)]

    async def add(self, grant: Grant, *, audit: AuditFor[None] | None = None) -> None:
        async with self._db.transaction(f"save grant {grant.id}") as s:
            await _insert_new(s, INSERT_GRANT, self._codec.grant_values(grant), what=f"grant {grant.id}")
            await self._audit(s, audit, None)

    async def get(self, grant_id: str) -> Grant | None:
        found = await self._select(f"read grant {grant_id}", _GRANT, id=grant_id)
        return found[0] if found else None

    async def list_for(self, holder_email: str, *, include_ended: bool = False) -> list[Grant]:
        sql = _GRANTS_OF if include_ended else _LIVE_GRANTS_OF
        return await self._select(f"list the grants of {holder_email}", sql, email=holder_email)

    async def transition(
        self,
        grant_id: str,
        *,
        expected: GrantStatus,
        new: GrantStatus,
        at: datetime,
        end_reason: EndReason | None = None,
        ended_by: str | None = None,
        expires_at: datetime | None = None,
        last_error: str | None = None,
        next_attempt_at: datetime | None = None,
        claimed_by: str | None = None,
        audit: AuditFor[Grant] | None = None,
    ) -> Grant:
        values = self._codec.transition_values(
            new,
            at=at,
            end_reason=end_reason,
            ended_by=ended_by,
            expires_at=expires_at,
            last_error=last_error,
            next_attempt_at=next_attempt_at,
        )
        params = {**values, "claimed_by": claimed_by, "expected": expected.value}
        return await self._cas(grant_id, f"move grant {grant_id} to {new.value}", _TRANSITION, params, audit=audit)

    async def extend(
        self,
        grant_id: str,
        *,
        expected_expires_at: datetime,
        new_expires_at: datetime,
        audit: AuditFor[Grant] | None = None,
    ) -> Grant:
        params: dict[str, object] = {"new_expires_at": new_expires_at, "expected_expires_at": expected_expires_at}
        doing = f"extend grant {grant_id}"
        return await self._cas(grant_id, doing, _EXTEND, params, checks_expiry=True, audit=audit)

    async def due_to_expire(self, now: datetime, *, limit: int = 100) -> list[Grant]:
        return await self._select("list grants due to expire", DUE_TO_EXPIRE, status=_ACTIVE, now=now, limit=limit)

    async def next_expiry(self) -> datetime | None:
        async with self._db.read("find the next grant expiry") as s:
            row = await s.row(_NEXT_EXPIRY)
        return None if row is None or row["at"] is None else self._db.dialect.load_time(row["at"])

    async def revokes_due(self, now: datetime, *, limit: int = 100) -> list[Grant]:
        return await self._select("list revokes due", REVOKES_DUE, status=_REVOKING, now=now, limit=limit)

    async def schedule_revoke_retry(
        self, grant_id: str, *, at: datetime, error: str, audit: AuditFor[Grant] | None = None
    ) -> Grant:
        doing = f"schedule a revoke retry of grant {grant_id}"
        return await self._cas(grant_id, doing, _SCHEDULE_REVOKE_RETRY, {"at": at, "error": error}, audit=audit)

    async def active_for_incident(self, incident_id: str) -> list[Grant]:
        doing = f"list the grants of incident {incident_id}"
        return await self._select(doing, ACTIVE_FOR_INCIDENT, incident_id=incident_id, status=_ACTIVE)

    async def incidents_of_active(self, flows: Sequence[str], *, after: str = "", limit: int = 100) -> list[str]:
        async with self._db.read("list the incidents of active grants") as s:
            rows = await s.rows(INCIDENTS_OF_ACTIVE, flows=list(flows), after=after, limit=limit)
        return [str(row["incident_id"]) for row in rows]

    async def begin_expiry(
        self,
        grant_ids: Sequence[str],
        *,
        now: datetime,
        lease_until: datetime,
        owner: str = "",
        ended_by: str,
        audit: AuditFor[list[Grant]] | None = None,
    ) -> list[Grant]:
        params: dict[str, object] = {"now": now, "lease_until": lease_until, "owner": owner, "ended_by": ended_by}
        async with self._db.transaction("start revoking expired grants") as s:
            rows = await s.rows(BEGIN_EXPIRY, ids=list(grant_ids), end_reason=EndReason.EXPIRED.value, **params)
            grants = [self._codec.grant(row) for row in rows]
            await self._audit(s, audit, grants)
        return grants

    async def finish_revokes(
        self, grant_ids: Sequence[str], *, at: datetime, audit: AuditFor[list[Grant]] | None = None
    ) -> list[Grant]:
        async with self._db.transaction("end revoked grants") as s:
            grants = [self._codec.grant(row) for row in await s.rows(FINISH_REVOKES, ids=list(grant_ids), at=at)]
            await self._audit(s, audit, grants)
        return grants

    async def count_active(self) -> int:
        async with self._db.read("count active grants") as s:
            row = await s.row(_COUNT_ACTIVE)
        return 0 if row is None else int(row["n"])

    async def add_for_request(self, grant: Grant, *, audit: AuditFor[Grant] | None = None) -> Grant:
        async with self._db.transaction(f"save grant {grant.id} for request {grant.request_id}") as s:
            if await s.row(_LINK_GRANT, grant_id=grant.id, request_id=grant.request_id) is None:
                raise request_has_grant(grant.request_id, await s.row(_REQUEST_STATE, id=grant.request_id))
            await _insert_new(s, INSERT_GRANT, self._codec.grant_values(grant), what=f"grant {grant.id}")
            await self._audit(s, audit, grant)
        return grant

    async def claim_provisioning(
        self,
        grant_id: str,
        *,
        now: datetime,
        lease_until: datetime,
        owner: str = "",
        audit: AuditFor[Grant] | None = None,
    ) -> Grant:
        params: dict[str, object] = {"lease_until": lease_until, "owner": owner, "now": now}
        doing = f"claim the provisioning of grant {grant_id}"
        return await self._cas(grant_id, doing, _CLAIM_PROVISIONING, params, audit=audit)

    async def claim_revoke(self, grant_id: str, *, now: datetime, lease_until: datetime, owner: str = "") -> Grant:
        params: dict[str, object] = {"lease_until": lease_until, "owner": owner, "now": now}
        return await self._cas(grant_id, f"claim a revoke attempt of grant {grant_id}", _CLAIM_REVOKE, params)

    async def release_claims(self, owner: str, *, now: datetime) -> list[Grant]:
        async with self._db.write(f"release the claims of {owner}") as s:
            return [self._codec.grant(row) for row in await s.rows(_RELEASE_GRANT_CLAIMS, now=now, owner=owner)]

    async def provisioning_due(self, now: datetime, *, limit: int = 100) -> list[Grant]:
        return await self._select("list grants left provisioning", PROVISIONING_DUE, now=now, limit=limit)


# --- the audit log, settings, message references -----------------------------------------------------

_AUDIT_SINCE = Sql("SELECT * FROM audit WHERE at >= :at ORDER BY seq LIMIT :limit")
_SETTING = Sql("SELECT value FROM settings WHERE key = :key")
_SETTING_LOCKED = Sql("SELECT value FROM settings WHERE key = :key{for_update}")
_PUT_SETTING = Sql(
    "INSERT INTO settings (key, value) VALUES (:key, :value) ON CONFLICT (key) DO UPDATE SET value = excluded.value"
)
_ADD_REF = Sql(
    "INSERT INTO message_refs (subject, platform, channel, message_id)"
    " VALUES (:subject, :platform, :channel, :message_id) ON CONFLICT DO NOTHING"
)
_REFS = Sql("SELECT * FROM message_refs WHERE subject = :subject ORDER BY seq")
# A rival's insert of the same id waits for the first to commit, then re-checks the WHERE.
_CLAIM_CARDS = Sql(
    "INSERT INTO approval_card_posts (request_id, claimed_by, lease_until) VALUES (:request_id, :owner, :until)"
    " ON CONFLICT (request_id) DO UPDATE SET claimed_by = excluded.claimed_by, lease_until = excluded.lease_until"
    " WHERE approval_card_posts.posted_at IS NULL AND approval_card_posts.lease_until <= :now RETURNING request_id"
)
_CARDS_POSTED = Sql(
    "UPDATE approval_card_posts SET posted_at = :at WHERE request_id = :request_id AND claimed_by = :owner"
    " AND posted_at IS NULL RETURNING request_id"
)
_RELEASE_CARD_CLAIMS = Sql(
    "UPDATE approval_card_posts SET lease_until = :now WHERE claimed_by = :owner AND claimed_by != ''"
    " AND posted_at IS NULL AND lease_until > :now RETURNING request_id"
)


class Audit(Role):
    async def append(self, event: AuditEvent) -> None:
        async with self._db.write(f"append audit event {event.kind}") as s:
            await s.execute(INSERT_AUDIT, *self._codec.audit_values(event))

    async def since(self, at: datetime, *, limit: int = 100_000) -> list[AuditEvent]:
        async with self._db.read("read the audit log") as s:
            return [self._codec.audit(row) for row in await s.rows(_AUDIT_SINCE, at=at, limit=limit)]


class Settings(Role):
    async def get(self, key: str) -> str | None:
        async with self._db.read(f"read setting {key}") as s:
            row = await s.row(_SETTING, key=key)
        return None if row is None else str(row["value"])

    async def set(self, key: str, value: str, *, audit: AuditFor[str | None] | None = None) -> str | None:
        async with self._db.transaction(f"save setting {key}") as s:
            row = await s.row(_SETTING_LOCKED, key=key)
            await s.execute(_PUT_SETTING, key=key, value=value)
            previous = None if row is None else str(row["value"])
            await self._audit(s, audit, previous)
        return previous


class Messages(Role):
    async def add(self, subject: str, ref: MessageRef) -> None:
        async with self._db.write(f"remember a message about {subject}") as s:
            await s.execute(_ADD_REF, subject, ref.platform, ref.channel, ref.message_id)

    async def refs(self, subject: str) -> list[MessageRef]:
        async with self._db.read(f"read the messages about {subject}") as s:
            rows = await s.rows(_REFS, subject=subject)
        return [self._codec.message_ref(row) for row in rows]

    async def claim_cards(self, request_id: str, *, owner: str, now: datetime, until: datetime) -> bool:
        async with self._db.write(f"claim the approval cards of {request_id}") as s:
            return await s.row(_CLAIM_CARDS, request_id=request_id, owner=owner, until=until, now=now) is not None

    async def cards_posted(self, request_id: str, *, owner: str, at: datetime) -> bool:
        async with self._db.write(f"record the approval cards of {request_id} as posted") as s:
            return await s.row(_CARDS_POSTED, at=at, request_id=request_id, owner=owner) is not None

    async def release_card_claims(self, owner: str, *, now: datetime) -> int:
        async with self._db.write(f"release the approval card claims of {owner}") as s:
            return len(await s.rows(_RELEASE_CARD_CLAIMS, now=now, owner=owner))


# --- authentication requests and mirrored incidents ------------------------------------------------

_TRANSACTION = Sql("SELECT * FROM auth_transactions WHERE id = :id")
_TRANSACTION_STATE = Sql("SELECT status FROM auth_transactions WHERE id = :id")
# The hash is never put in an error message: it is as good as the link for a look-up.
_BY_TOKEN_HASH = Sql("SELECT * FROM auth_transactions WHERE token_hash = :hash")
_DECIDE_TRANSACTION = Sql(
    "UPDATE auth_transactions SET status = :new, decided_at = :at, note = COALESCE(:note, note)"
    " WHERE id = :id AND status = :expected RETURNING *"
)
_UPDATE_DELIVERY = Sql(
    "UPDATE auth_transactions SET channels = :channels, dedup_key = :dedup_key, note = :note WHERE id = :id RETURNING *"
)
_MIRROR = Sql("SELECT * FROM incident_mirrors WHERE incident_id = :id")
# The first message of a mirrored incident is posted by whoever claims it (a lease).
_CLAIM_POST = Sql(
    "INSERT INTO incident_mirror_claims (incident_id, claim, lease_until) VALUES (:incident, :token, :until)"
    " ON CONFLICT (incident_id) DO UPDATE SET claim = excluded.claim, lease_until = excluded.lease_until,"
    " sending = FALSE WHERE incident_mirror_claims.lease_until <= :now RETURNING incident_id"
)
_RELEASE_POST = Sql("DELETE FROM incident_mirror_claims WHERE incident_id = :incident AND claim = :token")
_POST_SENDING = Sql(
    "UPDATE incident_mirror_claims SET sending = TRUE WHERE incident_id = :incident AND claim = :token"
    " RETURNING incident_id"
)
_LAPSE_POST = Sql(
    "UPDATE incident_mirror_claims SET lease_until = :now, sending = FALSE"
    " WHERE incident_id = :incident AND claim = :token"
)
# A restarted owner's claim lapses, and stays as the record that the message is owed; one whose chat
# call began keeps its lease: its message may exist (the lease decides, as for a rival).
_RELEASE_POSTS = Sql(
    "UPDATE incident_mirror_claims SET lease_until = :now"
    f" WHERE {OWNED} AND NOT sending AND lease_until > :now RETURNING incident_id"
)
_LAPSED_POSTS = Sql(
    "SELECT incident_id FROM incident_mirror_claims WHERE lease_until <= :now"
    " ORDER BY lease_until, incident_id LIMIT :limit"
)


class Transactions(Role):
    async def _one(self, doing: str, sql: Sql, **params: object) -> AuthTransaction | None:
        async with self._db.read(doing) as s:
            row = await s.row(sql, **params)
        return None if row is None else self._codec.transaction(row)

    async def add(self, transaction: AuthTransaction, *, audit: AuditFor[None] | None = None) -> None:
        async with self._atomic(f"save authentication request {transaction.id}", audit=audit) as s:
            try:
                await s.execute(INSERT_TRANSACTION, *self._codec.transaction_values(transaction))
            except Duplicate as exc:
                raise transaction_taken(transaction.id, token="token_hash" in exc.key) from exc
            await self._audit(s, audit, None)

    async def get(self, transaction_id: str) -> AuthTransaction | None:
        return await self._one(f"read authentication request {transaction_id}", _TRANSACTION, id=transaction_id)

    async def by_token_hash(self, token_hash: str) -> AuthTransaction | None:
        return await self._one("find an authentication request by its link", _BY_TOKEN_HASH, hash=token_hash)

    async def by_dedup_key(self, dedup_key: str) -> AuthTransaction | None:
        return await self._one(f"find the authentication request of {dedup_key}", BY_DEDUP_KEY, key=dedup_key)

    async def decide(
        self,
        transaction_id: str,
        *,
        expected: AuthStatus,
        new: AuthStatus,
        at: datetime,
        note: str | None = None,
        audit: AuditFor[AuthTransaction] | None = None,
    ) -> AuthTransaction:
        params = {"new": new.value, "at": at, "note": note, "id": transaction_id, "expected": expected.value}
        async with self._db.transaction(f"decide authentication request {transaction_id}") as s:
            updated = await s.row(_DECIDE_TRANSACTION, **params)
            if updated is None:
                raise transaction_conflict(transaction_id, await s.row(_TRANSACTION_STATE, id=transaction_id))
            decided = self._codec.transaction(updated)
            await self._audit(s, audit, decided)
        return decided

    async def update_delivery(
        self,
        transaction_id: str,
        *,
        channels: tuple[str, ...],
        dedup_key: str | None,
        note: str,
        audit: AuditFor[AuthTransaction] | None = None,
    ) -> AuthTransaction:
        params = {"channels": dump_json(list(channels)), "dedup_key": dedup_key, "note": note, "id": transaction_id}
        async with self._atomic(f"record how authentication request {transaction_id} was sent", audit=audit) as s:
            updated = await s.row(_UPDATE_DELIVERY, **params)
            if updated is None:
                raise transaction_missing(transaction_id)
            delivered = self._codec.transaction(updated)
            await self._audit(s, audit, delivered)
        return delivered

    async def pending_expired(self, now: datetime, *, limit: int = 100) -> list[AuthTransaction]:
        params = {"status": AuthStatus.PENDING.value, "now": now, "limit": limit}
        async with self._db.read("list expired authentication requests") as s:
            return [self._codec.transaction(row) for row in await s.rows(PENDING_EXPIRED, **params)]


class Mirrors(Role):
    async def get(self, incident_id: str) -> IncidentMirror | None:
        async with self._db.read(f"read the mirror of incident {incident_id}") as s:
            row = await s.row(_MIRROR, id=incident_id)
        return None if row is None else self._codec.mirror(row)

    async def put_if_newer(self, mirror: IncidentMirror) -> bool:
        # One upsert: a concurrent insert of the same incident waits on the key, then re-checks the WHERE.
        async with self._db.write(f"save the mirror of incident {mirror.incident_id}") as s:
            return await s.row(PUT_MIRROR, *self._codec.mirror_values(mirror)) is not None

    async def by_transaction(self, transaction_id: str) -> IncidentMirror | None:
        async with self._db.read(f"find the incident of authentication request {transaction_id}") as s:
            row = await s.row(BY_TRANSACTION, id=transaction_id)
        return None if row is None else self._codec.mirror(row)

    async def claim_post(self, incident_id: str, *, token: str, now: datetime, until: datetime) -> bool:
        # One upsert: a rival insert waits on the key, then finds a live lease and takes nothing.
        async with self._db.write(f"claim the first message of incident {incident_id}") as s:
            claimed = await s.row(_CLAIM_POST, incident=incident_id, now=now, token=token, until=until)
        return claimed is not None

    async def release_post(self, incident_id: str, *, token: str) -> None:
        async with self._db.write(f"release the first message of incident {incident_id}") as s:
            await s.execute(_RELEASE_POST, incident=incident_id, token=token)

    async def sending(self, incident_id: str, *, token: str) -> bool:
        async with self._db.write(f"mark the first message of incident {incident_id} as being sent") as s:
            return await s.row(_POST_SENDING, incident=incident_id, token=token) is not None

    async def lapse_post(self, incident_id: str, *, token: str, now: datetime) -> None:
        async with self._db.write(f"hand back the first message of incident {incident_id}") as s:
            await s.execute(_LAPSE_POST, incident=incident_id, token=token, now=now)

    async def release_posts(self, owner: str, *, now: datetime) -> int:
        async with self._db.write(f"release the mirror post claims of {owner}") as s:
            return len(await s.rows(_RELEASE_POSTS, prefix=claim_prefix(owner), now=now))

    async def lapsed_posts(self, now: datetime, *, limit: int = 100) -> list[str]:
        async with self._db.read("list the mirror posts owed") as s:
            return [row["incident_id"] for row in await s.rows(_LAPSED_POSTS, now=now, limit=limit)]


# --- delivery keys and acknowledged chat commands --------------------------------------------------

_FIRST_TIME = Sql("INSERT INTO webhook_seen (key, at) VALUES (:key, :at) ON CONFLICT (key) DO NOTHING RETURNING key")
_PRUNE_SEEN = Sql("DELETE FROM webhook_seen WHERE at < :before RETURNING key")
# ON CONFLICT DO NOTHING: a concurrent insert of the same key waits for the first to commit, then
# inserts nothing, so exactly one of two replicas gets the row back.
_ANSWERED = Sql(
    "UPDATE slack_commands SET answered_at = :at WHERE key {in_list:keys} AND answered_at IS NULL RETURNING key"
)


_RECORD_TEXTS: dict[tuple[str, int], str] = {}


def _record_commands(dialect: Dialect, count: int) -> str:
    """One INSERT of ``count`` commands (positional values, row after row); a key already stored
    inserts nothing and returns nothing."""
    done = _RECORD_TEXTS.get((dialect.name, count))
    if done is not None:
        return done
    width = len(COMMAND_COLUMNS)
    rows = ", ".join(
        "(" + ", ".join(dialect.mark(row * width + column) for column in range(1, width + 1)) + ")"
        for row in range(count)
    )
    columns = ", ".join(COMMAND_COLUMNS)
    text = f"INSERT INTO slack_commands ({columns}) VALUES {rows} ON CONFLICT (key) DO NOTHING RETURNING key"
    _RECORD_TEXTS[(dialect.name, count)] = text
    return text


def _first_of_each(keys: Sequence[str], changed: set[str]) -> list[bool]:
    """For each of a batch's keys, whether the statement changed its row: a key that came twice
    in one batch counts for its first caller only."""
    left = set(changed)
    results: list[bool] = []
    for key in keys:
        results.append(key in left)
        left.discard(key)
    return results


# PostgreSQL's SKIP LOCKED: a rival replica's pass skips the rows this one is taking; the outer WHERE
# re-checks the lease after any wait, so a row is never taken twice for one lease. (SQLite: one writer.)
_CLAIM_UNANSWERED = (
    "UPDATE slack_commands SET lease_until = :lease_until, claimed_by = :owner, attempts = attempts + 1 WHERE key IN ("
    " SELECT key FROM slack_commands WHERE answered_at IS NULL AND lease_until <= :now{kinds}"
    " AND received_at > :received_after AND attempts < :max_attempts ORDER BY lease_until, key LIMIT :limit{skip_locked})"
    " AND answered_at IS NULL AND lease_until <= :now RETURNING *"
)
# Every platform's rows, or (``kinds`` given) one platform's: each recovery pass answers its own.
_CLAIM_ANY_UNANSWERED = Sql(_CLAIM_UNANSWERED.replace("{kinds}", ""))
_CLAIM_UNANSWERED_OF = Sql(_CLAIM_UNANSWERED.replace("{kinds}", " AND kind {in_list:kinds}"))
_RELEASE_COMMANDS = Sql(
    "UPDATE slack_commands SET lease_until = :now WHERE claimed_by = :owner AND claimed_by != ''"
    " AND answered_at IS NULL AND lease_until > :now RETURNING key"
)
_PRUNE_COMMANDS = Sql("DELETE FROM slack_commands WHERE received_at < :before RETURNING key")


class Seen(Role):
    """Deliveries already processed, as rows of ``webhook_seen``."""

    async def first_time(self, key: str, *, at: datetime) -> bool:
        async with self._db.write("record a webhook delivery") as s:
            return await s.row(_FIRST_TIME, key=key, at=at) is not None

    async def prune(self, before: datetime) -> int:
        async with self._db.write("forget old webhook deliveries") as s:
            return len(await s.rows(_PRUNE_SEEN, before=before))


class Commands(Role):
    """Acknowledged chat commands, as rows of ``slack_commands``.

    Recording and marking answered are group-committed (:class:`storage.group_commit.GroupCommit`):
    the commands that arrive together are written by one statement, so acknowledgements at hundreds
    a second do not queue one commit each behind one another."""

    def __init__(self, db: Database) -> None:
        super().__init__(db)
        self._records = GroupCommit(lambda: db.write("record chat commands", urgent=True), self._record_all)
        self._answers = GroupCommit(lambda: db.write("mark chat commands answered"), self._answer_all)

    async def record(self, command: ReceivedCommand) -> bool:
        return await self._records.submit(command)  # an ack waits for it

    async def _record_all(self, s: Session, commands: Sequence[ReceivedCommand]) -> list[bool]:
        rows = await s.rows(_record_commands(self._db.dialect, len(commands)), *self._command_values(commands))
        return _first_of_each([command.key for command in commands], {row["key"] for row in rows})

    def _command_values(self, commands: Sequence[ReceivedCommand]) -> list[object]:
        return [value for command in commands for value in self._codec.command_values(command)]

    async def answered(self, key: str, *, at: datetime) -> bool:
        return await self._answers.submit((key, at))

    async def _answer_all(self, s: Session, answers: Sequence[tuple[str, datetime]]) -> list[bool]:
        at = max(when for _, when in answers)
        keys = [key for key, _ in answers]
        rows = await s.rows(_ANSWERED, at=at, keys=keys)
        return _first_of_each(keys, {row["key"] for row in rows})

    async def claim_unanswered(
        self,
        now: datetime,
        *,
        lease_until: datetime,
        received_after: datetime,
        max_attempts: int,
        limit: int = 20,
        owner: str = "",
        kinds: Sequence[str] = (),
    ) -> list[ReceivedCommand]:
        params: dict[str, object] = {"lease_until": lease_until, "owner": owner, "now": now}
        params.update(received_after=received_after, max_attempts=max_attempts, limit=limit)
        claim = _CLAIM_ANY_UNANSWERED
        if kinds:
            claim, params["kinds"] = _CLAIM_UNANSWERED_OF, list(kinds)
        async with self._db.write("take over unanswered chat commands") as s:
            rows = await s.rows(claim, **params)
        return sorted((self._codec.command(r) for r in rows), key=lambda c: (c.received_at, c.key))

    async def release_claims(self, owner: str, *, now: datetime) -> int:
        async with self._db.write(f"release the chat commands of {owner}") as s:
            return len(await s.rows(_RELEASE_COMMANDS, now=now, owner=owner))

    async def prune(self, before: datetime) -> int:
        async with self._db.write("forget old chat commands") as s:
            return len(await s.rows(_PRUNE_COMMANDS, before=before))

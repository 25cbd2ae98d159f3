"""The PostgreSQL backend: an asyncpg pool shared by several replicas.

Compare-and-set is one ``UPDATE ... WHERE status = $expected RETURNING *``: under READ COMMITTED a
second writer waits for the first row lock, re-checks the condition and updates nothing, so two
replicas racing resolve exactly once. Migrations run under a transaction-scoped advisory lock so
replicas starting together apply them once.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable, Sequence
from contextlib import asynccontextmanager
from dataclasses import replace
from datetime import UTC, datetime
from typing import Any
from urllib.parse import urlsplit

import asyncpg

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
from bot.core.errors import ConfigError, StorageError
from bot.core.ports import AuditFor, InboxDelivery, OutboxDelivery
from storage.address_book import PostgresAddressBook
from storage.codec import (
    Codec,
    Row,
    audit_rows,
    dump_json,
    grant_conflict,
    id_taken,
    request_conflict,
    request_has_grant,
    row_writes,
    transaction_conflict,
    transaction_missing,
    transaction_taken,
    utc,
)
from storage.common import Role, Roles, RoleStore, pending
from storage.deliveries import delivery_sql, inbox_delivery, outbox_delivery

# Any bigint works; every Ackgate replica must use the same one. These are the bytes "ackgate!".
MIGRATION_LOCK = int.from_bytes(b"ackgate!", "big")
ACQUIRE_TIMEOUT_SECONDS = 10.0
COMMAND_TIMEOUT_SECONDS = 30.0
_DRIVER_ERRORS = (asyncpg.PostgresError, asyncpg.InterfaceError, asyncpg.InternalClientError, OSError, TimeoutError)


def _load_time(value: datetime) -> datetime:
    return value.astimezone(UTC)


_CODEC = Codec(dump_time=utc, load_time=_load_time)
_ACTIVE = GrantStatus.ACTIVE.value
_REVOKING = GrantStatus.REVOKING.value
_PENDING = RequestStatus.PENDING.value
_WRITES = row_writes(lambda n: f"${n}")
_DELIVERIES = delivery_sql(lambda n: f"${n}")
_LINK_HASH_UNIQUE = "auth_transactions_token_hash_key"  # PostgreSQL's name for the UNIQUE column
_INSERT_APPROVAL = (
    "INSERT INTO approvals (request_id, approver_email, at) VALUES ($1, $2, $3)"
    " ON CONFLICT (request_id, approver_email) DO NOTHING"
)

# Exposed so tests can EXPLAIN them and see an index scan.
DUE_TO_EXPIRE_SQL = "SELECT * FROM grants WHERE status = $1 AND expires_at <= $2 ORDER BY expires_at, id LIMIT $3"
REVOKES_DUE_SQL = (
    "SELECT * FROM grants WHERE status = $1 AND next_attempt_at <= $2 ORDER BY next_attempt_at, id LIMIT $3"
)
ACTIVE_FOR_INCIDENT_SQL = "SELECT * FROM grants WHERE incident_id = $1 AND status = $2 ORDER BY expires_at, id"
PENDING_EXPIRED_SQL = (
    "SELECT * FROM auth_transactions WHERE status = $1 AND expires_at <= $2 ORDER BY expires_at, id LIMIT $3"
)
BY_DEDUP_KEY_SQL = "SELECT * FROM auth_transactions WHERE dedup_key = $1 ORDER BY created_at DESC, id DESC LIMIT 1"
BY_TRANSACTION_SQL = "SELECT * FROM incident_mirrors WHERE transaction_id = $1 ORDER BY status_at DESC LIMIT 1"
PROVISIONING_DUE_SQL = (
    "SELECT * FROM grants WHERE status = 'provisioning' AND (next_attempt_at IS NULL OR next_attempt_at <= $1)"
    " ORDER BY next_attempt_at NULLS FIRST, id LIMIT $2"
)
APPROVED_WITHOUT_GRANT_SQL = (
    "SELECT * FROM requests WHERE status = 'approved' AND grant_id IS NULL"
    " AND NOT EXISTS (SELECT 1 FROM grants WHERE grants.request_id = requests.id) ORDER BY created_at, id LIMIT $1"
)
PENDING_WITHOUT_CARDS_SQL = (
    "SELECT * FROM requests WHERE status = 'pending' AND created_at < $1 AND NOT EXISTS ("
    " SELECT 1 FROM approval_card_posts p WHERE p.request_id = requests.id"
    " AND (p.posted_at IS NOT NULL OR p.lease_until > $2)) ORDER BY created_at, id LIMIT $3"
)


def describe(dsn: str) -> str:
    """host:port/database, never the password, for error messages."""
    parts = urlsplit(dsn)
    try:
        port: object = parts.port or 5432
    except ValueError:  # not a number; open() reports it as a configuration error
        port = "?"
    return f"{parts.hostname or 'localhost'}:{port}{parts.path or '/'}"


class _Pool:
    """The pool and the translation of driver errors into ``StorageError``."""

    def __init__(self, dsn: str) -> None:
        self.dsn = dsn
        self.where = describe(dsn)
        self._pool: Any = None

    async def open(self) -> None:
        if self._pool is not None:
            return
        try:
            self._pool = await asyncpg.create_pool(
                self.dsn, min_size=1, max_size=10, command_timeout=COMMAND_TIMEOUT_SECONDS
            )
        except ValueError as exc:  # asyncpg's ClientConfigurationError is one too
            raise ConfigError(
                "ACKGATE_DATABASE_URL is not a valid PostgreSQL URL: use postgresql://user:password@host:5432/dbname."
            ) from exc
        except _DRIVER_ERRORS as exc:
            raise StorageError(
                f"Could not connect to PostgreSQL at {self.where}: {exc}. "
                "Check ACKGATE_DATABASE_URL and that the database is running."
            ) from exc

    async def close(self) -> None:
        if self._pool is not None:
            pool, self._pool = self._pool, None
            await pool.close()

    @asynccontextmanager
    async def connection(self, doing: str, *, transaction: bool = False) -> AsyncIterator[Any]:
        """A pooled connection, inside a transaction when asked; any exception rolls it back."""
        if self._pool is None:
            raise StorageError("The PostgreSQL store is not open. Call open() before using it.")
        try:
            async with self._pool.acquire(timeout=ACQUIRE_TIMEOUT_SECONDS) as conn:
                if not transaction:
                    yield conn
                    return
                async with conn.transaction():
                    yield conn
        except _DRIVER_ERRORS as exc:
            raise StorageError(
                f"Could not {doing} in PostgreSQL at {self.where}: {exc}. "
                "Check that the database is running and reachable."
            ) from exc


async def _audit(conn: Any, audit: AuditFor[Any] | None, result: object) -> None:
    """Append the audit rows of a state change inside its transaction."""
    rows = audit_rows(_CODEC, audit, result)
    if rows:
        await conn.executemany(_WRITES.audit, rows)


async def _insert_grant(conn: Any, grant: Grant) -> None:
    try:
        await conn.execute(_WRITES.grant, *_CODEC.grant_values(grant))
    except asyncpg.UniqueViolationError as exc:
        raise id_taken(f"grant {grant.id}") from exc


class _Requests(Role[_Pool]):
    @staticmethod
    async def _complete(conn: Any, rows: Sequence[Row]) -> list[AccessRequest]:
        """Attach each request's approvals (one query for all of them), keeping the rows' order."""
        if not rows:
            return []
        ids = [row["id"] for row in rows]
        sql = "SELECT * FROM approvals WHERE request_id = ANY($1::text[]) ORDER BY seq"
        return _CODEC.requests(rows, await conn.fetch(sql, ids))

    @staticmethod
    async def _insert(conn: Any, request: AccessRequest) -> None:
        try:
            await conn.execute(_WRITES.request, *_CODEC.request_values(request))
        except asyncpg.UniqueViolationError as exc:
            raise id_taken(f"request {request.id}") from exc
        await conn.executemany(_INSERT_APPROVAL, [(request.id, a.approver_email, utc(a.at)) for a in request.approvals])

    async def add(self, request: AccessRequest, *, audit: AuditFor[None] | None = None) -> None:
        async with self._db.connection(f"save request {request.id}", transaction=True) as conn:
            await self._insert(conn, request)
            await _audit(conn, audit, None)

    async def add_with_grant(
        self, request: AccessRequest, grant: Grant, *, audit: AuditFor[tuple[AccessRequest, Grant]] | None = None
    ) -> tuple[AccessRequest, Grant]:
        request = replace(request, grant_id=grant.id)
        async with self._db.connection(f"save request {request.id} and its grant", transaction=True) as conn:
            await self._insert(conn, request)
            await _insert_grant(conn, grant)
            await _audit(conn, audit, (request, grant))
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
        async with self._db.connection(f"record an approval of request {request_id}", transaction=True) as conn:
            request = await self._approval(conn, request_id, approver_email, at)
            made: Grant | None = None
            if len(request.approvals) >= request.required_approvals:
                made = grant(request)
                sql = (
                    "UPDATE requests SET status = $1, decided_by = $2, decided_at = $3, grant_id = $4"
                    " WHERE id = $5 AND status = $6 RETURNING *"
                )
                params = (RequestStatus.APPROVED.value, approver_email, utc(at), made.id, request_id, _PENDING)
                request = (await self._complete(conn, [await conn.fetchrow(sql, *params)]))[0]
                await _insert_grant(conn, made)
            await _audit(conn, audit, (request, made))
        return request, made

    async def approved_without_grant(self, *, limit: int = 100) -> list[AccessRequest]:
        async with self._db.connection("list approved requests without a grant") as conn:
            return await self._complete(conn, await conn.fetch(APPROVED_WITHOUT_GRANT_SQL, limit))

    async def pending_without_cards(
        self, now: datetime, *, created_before: datetime, limit: int = 100
    ) -> list[AccessRequest]:
        async with self._db.connection("list pending requests no approver was shown") as conn:
            rows = await conn.fetch(PENDING_WITHOUT_CARDS_SQL, utc(created_before), utc(now), limit)
            return await self._complete(conn, rows)

    async def get(self, request_id: str) -> AccessRequest | None:
        async with self._db.connection(f"read request {request_id}") as conn:
            rows = await conn.fetch("SELECT * FROM requests WHERE id = $1", request_id)
            found = await self._complete(conn, rows)
        return found[0] if found else None

    async def list_for(self, requester_email: str, *, limit: int = 20) -> list[AccessRequest]:
        sql = "SELECT * FROM requests WHERE requester_email = $1 ORDER BY created_at DESC, id DESC LIMIT $2"
        async with self._db.connection(f"list the requests of {requester_email}") as conn:
            return await self._complete(conn, await conn.fetch(sql, requester_email, limit))

    async def _approval(self, conn: Any, request_id: str, approver_email: str, at: datetime) -> AccessRequest:
        # The row lock keeps decide() from changing the status between this check and the insert.
        row = await conn.fetchrow("SELECT status, decided_by FROM requests WHERE id = $1 FOR UPDATE", request_id)
        if row is None or row["status"] != _PENDING:
            raise request_conflict(request_id, row)
        await conn.execute(_INSERT_APPROVAL, request_id, approver_email, utc(at))
        rows = await conn.fetch("SELECT * FROM requests WHERE id = $1", request_id)
        return (await self._complete(conn, rows))[0]

    async def add_approval(
        self, request_id: str, *, approver_email: str, at: datetime, audit: AuditFor[AccessRequest] | None = None
    ) -> AccessRequest:
        async with self._db.connection(f"record an approval of request {request_id}", transaction=True) as conn:
            request = await self._approval(conn, request_id, approver_email, at)
            await _audit(conn, audit, request)
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
        sql = (
            "UPDATE requests SET status = $1, decided_by = $2, decided_at = $3, note = $4,"
            " grant_id = COALESCE($5, grant_id) WHERE id = $6 AND status = $7 RETURNING *"
        )
        params = (new.value, by, utc(at), note, grant_id, request_id, expected.value)
        async with self._db.connection(f"decide request {request_id}", transaction=True) as conn:
            updated = await conn.fetchrow(sql, *params)
            if updated is None:
                current = await conn.fetchrow("SELECT status, decided_by FROM requests WHERE id = $1", request_id)
                raise request_conflict(request_id, current)
            request = (await self._complete(conn, [updated]))[0]
            await _audit(conn, audit, request)
        return request

    async def pending_created_before(self, cutoff: datetime) -> list[AccessRequest]:
        sql = "SELECT * FROM requests WHERE status = $1 AND created_at < $2 ORDER BY created_at, id"
        async with self._db.connection("list pending requests") as conn:
            return await self._complete(conn, await conn.fetch(sql, RequestStatus.PENDING.value, utc(cutoff)))


class _Grants(Role[_Pool]):
    async def _cas(
        self,
        grant_id: str,
        doing: str,
        sql: str,
        params: Sequence[object],
        *,
        checks_expiry: bool = False,
        audit: AuditFor[Grant] | None = None,
    ) -> Grant:
        """Run a ``... RETURNING *`` update (and its audit rows); no row back means the compare-and-set lost."""
        async with self._db.connection(doing, transaction=True) as conn:
            updated = await conn.fetchrow(sql, *params)
            if updated is None:
                current = await conn.fetchrow("SELECT status, ended_by FROM grants WHERE id = $1", grant_id)
                raise grant_conflict(grant_id, current, checks_expiry=checks_expiry)
            grant = _CODEC.grant(updated)
            await _audit(conn, audit, grant)
        return grant

    async def _select(self, doing: str, sql: str, *params: object) -> list[Grant]:
        async with self._db.connection(doing) as conn:
            return [_CODEC.grant(row) for row in await conn.fetch(sql, *params)]

    async def add(self, grant: Grant, *, audit: AuditFor[None] | None = None) -> None:
        async with self._db.connection(f"save grant {grant.id}", transaction=True) as conn:
            await _insert_grant(conn, grant)
            await _audit(conn, audit, None)

    async def get(self, grant_id: str) -> Grant | None:
        found = await self._select(f"read grant {grant_id}", "SELECT * FROM grants WHERE id = $1", grant_id)
        return found[0] if found else None

    async def list_for(self, holder_email: str, *, include_ended: bool = False) -> list[Grant]:
        sql = "SELECT * FROM grants WHERE holder_email = $1"
        if not include_ended:
            sql += " AND status NOT IN ('ended', 'failed')"
        sql += " ORDER BY expires_at, id"
        return await self._select(f"list the grants of {holder_email}", sql, holder_email)

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
        sql = (
            "UPDATE grants SET status = $1, end_reason = COALESCE($2, end_reason),"
            " ended_by = COALESCE($3, ended_by), expires_at = COALESCE($4, expires_at),"
            " last_error = COALESCE($5, last_error), next_attempt_at = COALESCE($6, next_attempt_at),"
            " ended_at = COALESCE($7, ended_at), claimed_by = COALESCE($8, claimed_by)"
            " WHERE id = $9 AND status = $10 RETURNING *"
        )
        values = _CODEC.transition_values(
            new,
            at=at,
            end_reason=end_reason,
            ended_by=ended_by,
            expires_at=expires_at,
            last_error=last_error,
            next_attempt_at=next_attempt_at,
        )
        params = (*values, claimed_by, grant_id, expected.value)
        return await self._cas(grant_id, f"move grant {grant_id} to {new.value}", sql, params, audit=audit)

    async def extend(
        self,
        grant_id: str,
        *,
        expected_expires_at: datetime,
        new_expires_at: datetime,
        audit: AuditFor[Grant] | None = None,
    ) -> Grant:
        sql = "UPDATE grants SET expires_at = $1 WHERE id = $2 AND status = $3 AND expires_at = $4 RETURNING *"
        params = (utc(new_expires_at), grant_id, _ACTIVE, utc(expected_expires_at))
        return await self._cas(grant_id, f"extend grant {grant_id}", sql, params, checks_expiry=True, audit=audit)

    async def due_to_expire(self, now: datetime, *, limit: int = 100) -> list[Grant]:
        return await self._select("list grants due to expire", DUE_TO_EXPIRE_SQL, _ACTIVE, utc(now), limit)

    async def next_expiry(self) -> datetime | None:
        async with self._db.connection("find the next grant expiry") as conn:
            at = await conn.fetchval("SELECT min(expires_at) FROM grants WHERE status = $1", _ACTIVE)
        return None if at is None else _load_time(at)

    async def revokes_due(self, now: datetime, *, limit: int = 100) -> list[Grant]:
        return await self._select("list revokes due", REVOKES_DUE_SQL, _REVOKING, utc(now), limit)

    async def schedule_revoke_retry(
        self, grant_id: str, *, at: datetime, error: str, audit: AuditFor[Grant] | None = None
    ) -> Grant:
        sql = (
            "UPDATE grants SET revoke_attempts = revoke_attempts + 1, next_attempt_at = $1, last_error = $2,"
            " claimed_by = '' WHERE id = $3 AND status = $4 RETURNING *"
        )
        params = (utc(at), error, grant_id, _REVOKING)
        return await self._cas(grant_id, f"schedule a revoke retry of grant {grant_id}", sql, params, audit=audit)

    async def active_for_incident(self, incident_id: str) -> list[Grant]:
        doing = f"list the grants of incident {incident_id}"
        return await self._select(doing, ACTIVE_FOR_INCIDENT_SQL, incident_id, _ACTIVE)

    async def count_active(self) -> int:
        async with self._db.connection("count active grants") as conn:
            return int(await conn.fetchval("SELECT count(*) FROM grants WHERE status = $1", _ACTIVE))

    async def add_for_request(self, grant: Grant, *, audit: AuditFor[Grant] | None = None) -> Grant:
        # The UPDATE takes the request's row lock: a rival repair waits, then finds grant_id set.
        sql = (
            "UPDATE requests SET grant_id = $1 WHERE id = $2 AND status = 'approved' AND grant_id IS NULL"
            " AND NOT EXISTS (SELECT 1 FROM grants WHERE request_id = $2) RETURNING id"
        )
        doing = f"save grant {grant.id} for request {grant.request_id}"
        async with self._db.connection(doing, transaction=True) as conn:
            if await conn.fetchrow(sql, grant.id, grant.request_id) is None:
                current = await conn.fetchrow("SELECT status, decided_by FROM requests WHERE id = $1", grant.request_id)
                raise request_has_grant(grant.request_id, current)
            await _insert_grant(conn, grant)
            await _audit(conn, audit, grant)
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
        sql = (
            "UPDATE grants SET next_attempt_at = $1, claimed_by = $2 WHERE id = $3 AND status = 'provisioning'"
            " AND (next_attempt_at IS NULL OR next_attempt_at <= $4) RETURNING *"
        )
        params = (utc(lease_until), owner, grant_id, utc(now))
        return await self._cas(grant_id, f"claim the provisioning of grant {grant_id}", sql, params, audit=audit)

    async def claim_revoke(self, grant_id: str, *, now: datetime, lease_until: datetime, owner: str = "") -> Grant:
        sql = (
            "UPDATE grants SET next_attempt_at = $1, claimed_by = $2 WHERE id = $3 AND status = $4"
            " AND next_attempt_at <= $5 RETURNING *"
        )
        params = (utc(lease_until), owner, grant_id, _REVOKING, utc(now))
        return await self._cas(grant_id, f"claim a revoke attempt of grant {grant_id}", sql, params)

    async def release_claims(self, owner: str, *, now: datetime) -> list[Grant]:
        sql = (
            "UPDATE grants SET next_attempt_at = $1, claimed_by = '' WHERE claimed_by = $2 AND claimed_by != ''"
            " AND status IN ('provisioning', 'revoking') AND next_attempt_at > $1 RETURNING *"
        )
        async with self._db.connection(f"release the claims of {owner}", transaction=True) as conn:
            return [_CODEC.grant(row) for row in await conn.fetch(sql, utc(now), owner)]

    async def provisioning_due(self, now: datetime, *, limit: int = 100) -> list[Grant]:
        return await self._select("list grants left provisioning", PROVISIONING_DUE_SQL, utc(now), limit)


class _Audit(Role[_Pool]):
    async def append(self, event: AuditEvent) -> None:
        async with self._db.connection(f"append audit event {event.kind}") as conn:
            await conn.execute(_WRITES.audit, *_CODEC.audit_values(event))

    async def since(self, at: datetime, *, limit: int = 100_000) -> list[AuditEvent]:
        sql = "SELECT * FROM audit WHERE at >= $1 ORDER BY seq LIMIT $2"
        async with self._db.connection("read the audit log") as conn:
            return [_CODEC.audit(row) for row in await conn.fetch(sql, utc(at), limit)]


class _Settings(Role[_Pool]):
    async def get(self, key: str) -> str | None:
        async with self._db.connection(f"read setting {key}") as conn:
            value = await conn.fetchval("SELECT value FROM settings WHERE key = $1", key)
        return None if value is None else str(value)

    async def set(self, key: str, value: str, *, audit: AuditFor[str | None] | None = None) -> str | None:
        async with self._db.connection(f"save setting {key}", transaction=True) as conn:
            previous = await conn.fetchval("SELECT value FROM settings WHERE key = $1 FOR UPDATE", key)
            await conn.execute(
                "INSERT INTO settings (key, value) VALUES ($1, $2)"
                " ON CONFLICT (key) DO UPDATE SET value = EXCLUDED.value",
                key,
                value,
            )
            old = None if previous is None else str(previous)
            await _audit(conn, audit, old)
        return old


class _Messages(Role[_Pool]):
    async def add(self, subject: str, ref: MessageRef) -> None:
        sql = (
            "INSERT INTO message_refs (subject, platform, channel, message_id) VALUES ($1, $2, $3, $4)"
            " ON CONFLICT DO NOTHING"
        )
        async with self._db.connection(f"remember a message about {subject}") as conn:
            await conn.execute(sql, subject, ref.platform, ref.channel, ref.message_id)

    async def refs(self, subject: str) -> list[MessageRef]:
        async with self._db.connection(f"read the messages about {subject}") as conn:
            rows = await conn.fetch("SELECT * FROM message_refs WHERE subject = $1 ORDER BY seq", subject)
        return [_CODEC.message_ref(row) for row in rows]

    async def claim_cards(self, request_id: str, *, owner: str, now: datetime, until: datetime) -> bool:
        # A rival's insert of the same id waits for the first to commit, then re-checks the WHERE.
        sql = (
            "INSERT INTO approval_card_posts (request_id, claimed_by, lease_until) VALUES ($1, $2, $3)"
            " ON CONFLICT (request_id) DO UPDATE SET claimed_by = EXCLUDED.claimed_by, lease_until = EXCLUDED.lease_until"
            " WHERE approval_card_posts.posted_at IS NULL AND approval_card_posts.lease_until <= $4 RETURNING request_id"
        )
        async with self._db.connection(f"claim the approval cards of {request_id}") as conn:
            return await conn.fetchrow(sql, request_id, owner, utc(until), utc(now)) is not None

    async def cards_posted(self, request_id: str, *, owner: str, at: datetime) -> bool:
        sql = (
            "UPDATE approval_card_posts SET posted_at = $1 WHERE request_id = $2 AND claimed_by = $3"
            " AND posted_at IS NULL RETURNING request_id"
        )
        async with self._db.connection(f"record the approval cards of {request_id} as posted") as conn:
            return await conn.fetchrow(sql, utc(at), request_id, owner) is not None

    async def release_card_claims(self, owner: str, *, now: datetime) -> int:
        sql = (
            "UPDATE approval_card_posts SET lease_until = $1 WHERE claimed_by = $2 AND claimed_by != ''"
            " AND posted_at IS NULL AND lease_until > $1 RETURNING request_id"
        )
        async with self._db.connection(f"release the approval card claims of {owner}") as conn:
            return len(await conn.fetch(sql, utc(now), owner))


class _Transactions(Role[_Pool]):
    async def _one(self, doing: str, sql: str, *params: object) -> AuthTransaction | None:
        async with self._db.connection(doing) as conn:
            row = await conn.fetchrow(sql, *params)
        return None if row is None else _CODEC.transaction(row)

    async def add(self, transaction: AuthTransaction, *, audit: AuditFor[None] | None = None) -> None:
        doing = f"save authentication request {transaction.id}"
        async with self._db.connection(doing, transaction=audit is not None) as conn:
            try:
                await conn.execute(_WRITES.transaction, *_CODEC.transaction_values(transaction))
            except asyncpg.UniqueViolationError as exc:
                raise transaction_taken(transaction.id, token=exc.constraint_name == _LINK_HASH_UNIQUE) from exc
            await _audit(conn, audit, None)

    async def get(self, transaction_id: str) -> AuthTransaction | None:
        sql = "SELECT * FROM auth_transactions WHERE id = $1"
        return await self._one(f"read authentication request {transaction_id}", sql, transaction_id)

    async def by_token_hash(self, token_hash: str) -> AuthTransaction | None:
        # The hash is never put in the error message: it is as good as the link for a look-up.
        sql = "SELECT * FROM auth_transactions WHERE token_hash = $1"
        return await self._one("find an authentication request by its link", sql, token_hash)

    async def by_dedup_key(self, dedup_key: str) -> AuthTransaction | None:
        return await self._one(f"find the authentication request of {dedup_key}", BY_DEDUP_KEY_SQL, dedup_key)

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
        sql = (
            "UPDATE auth_transactions SET status = $1, decided_at = $2, note = COALESCE($3, note)"
            " WHERE id = $4 AND status = $5 RETURNING *"
        )
        params = (new.value, utc(at), note, transaction_id, expected.value)
        async with self._db.connection(f"decide authentication request {transaction_id}", transaction=True) as conn:
            updated = await conn.fetchrow(sql, *params)
            if updated is None:
                current = await conn.fetchrow("SELECT status FROM auth_transactions WHERE id = $1", transaction_id)
                raise transaction_conflict(transaction_id, current)
            decided = _CODEC.transaction(updated)
            await _audit(conn, audit, decided)
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
        sql = "UPDATE auth_transactions SET channels = $1, dedup_key = $2, note = $3 WHERE id = $4 RETURNING *"
        doing = f"record how authentication request {transaction_id} was sent"
        async with self._db.connection(doing, transaction=audit is not None) as conn:
            updated = await conn.fetchrow(sql, dump_json(list(channels)), dedup_key, note, transaction_id)
            if updated is None:
                raise transaction_missing(transaction_id)
            delivered = _CODEC.transaction(updated)
            await _audit(conn, audit, delivered)
        return delivered

    async def pending_expired(self, now: datetime, *, limit: int = 100) -> list[AuthTransaction]:
        async with self._db.connection("list expired authentication requests") as conn:
            rows = await conn.fetch(PENDING_EXPIRED_SQL, AuthStatus.PENDING.value, utc(now), limit)
        return [_CODEC.transaction(row) for row in rows]


class _Mirrors(Role[_Pool]):
    async def get(self, incident_id: str) -> IncidentMirror | None:
        async with self._db.connection(f"read the mirror of incident {incident_id}") as conn:
            row = await conn.fetchrow("SELECT * FROM incident_mirrors WHERE incident_id = $1", incident_id)
        return None if row is None else _CODEC.mirror(row)

    async def put_if_newer(self, mirror: IncidentMirror) -> bool:
        # One upsert: a concurrent insert of the same incident waits on the key, then re-checks the WHERE.
        async with self._db.connection(f"save the mirror of incident {mirror.incident_id}") as conn:
            return await conn.fetchrow(_WRITES.put_mirror, *_CODEC.mirror_values(mirror)) is not None

    async def by_transaction(self, transaction_id: str) -> IncidentMirror | None:
        async with self._db.connection(f"find the incident of authentication request {transaction_id}") as conn:
            row = await conn.fetchrow(BY_TRANSACTION_SQL, transaction_id)
        return None if row is None else _CODEC.mirror(row)

    async def claim_post(self, incident_id: str, *, token: str, now: datetime, until: datetime) -> bool:
        # One upsert: a rival insert waits on the key, then finds a live lease and takes nothing.
        async with self._db.connection(f"claim the first message of incident {incident_id}") as conn:
            row = await conn.fetchrow(_DELIVERIES.claim_post, incident_id, utc(now), token, utc(until))
        return row is not None

    async def release_post(self, incident_id: str, *, token: str) -> None:
        async with self._db.connection(f"release the first message of incident {incident_id}") as conn:
            await conn.execute(_DELIVERIES.release_post, incident_id, token)

    async def sending(self, incident_id: str, *, token: str) -> bool:
        async with self._db.connection(f"mark the first message of incident {incident_id} as being sent") as conn:
            return await conn.fetchrow(_DELIVERIES.post_sending, incident_id, token) is not None

    async def release_posts(self, owner: str) -> int:
        async with self._db.connection(f"release the mirror post claims of {owner}") as conn:
            return len(await conn.fetch(_DELIVERIES.release_posts, claim_prefix(owner)))


class _Seen(Role[_Pool]):
    """Deliveries already processed, as rows of ``webhook_seen``."""

    async def first_time(self, key: str, *, at: datetime) -> bool:
        sql = "INSERT INTO webhook_seen (key, at) VALUES ($1, $2) ON CONFLICT (key) DO NOTHING RETURNING key"
        async with self._db.connection("record a webhook delivery") as conn:
            return await conn.fetchrow(sql, key, utc(at)) is not None

    async def prune(self, before: datetime) -> int:
        sql = "WITH gone AS (DELETE FROM webhook_seen WHERE at < $1 RETURNING 1) SELECT count(*) FROM gone"
        async with self._db.connection("forget old webhook deliveries") as conn:
            return int(await conn.fetchval(sql, utc(before)))


def _command(row: Row) -> ReceivedCommand:
    return ReceivedCommand(
        key=row["key"],
        kind=row["kind"],
        user_id=row["user_id"],
        channel_id=row["channel_id"],
        text=row["text"],
        response_url=row["response_url"],
        received_at=_load_time(row["received_at"]),
        lease_until=_load_time(row["lease_until"]),
        attempts=int(row["attempts"]),
        answered_at=None if row["answered_at"] is None else _load_time(row["answered_at"]),
        claimed_by=row["claimed_by"],
    )


class _Commands(Role[_Pool]):
    """Acknowledged chat commands, as rows of ``slack_commands``."""

    async def record(self, command: ReceivedCommand) -> bool:
        # ON CONFLICT DO NOTHING: a concurrent insert of the same key waits for the first to commit,
        # then inserts nothing, so exactly one of two replicas gets the row back.
        sql = (
            "INSERT INTO slack_commands"
            " (key, kind, user_id, channel_id, text, response_url, received_at, lease_until, claimed_by)"
            " VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9) ON CONFLICT (key) DO NOTHING RETURNING key"
        )
        async with self._db.connection("record a chat command") as conn:
            row = await conn.fetchrow(
                sql,
                command.key,
                command.kind,
                command.user_id,
                command.channel_id,
                command.text,
                command.response_url,
                utc(command.received_at),
                utc(command.lease_until),
                command.claimed_by,
            )
        return row is not None

    async def answered(self, key: str, *, at: datetime) -> bool:
        sql = "UPDATE slack_commands SET answered_at = $1 WHERE key = $2 AND answered_at IS NULL RETURNING key"
        async with self._db.connection("mark a chat command answered") as conn:
            return await conn.fetchrow(sql, utc(at), key) is not None

    async def claim_unanswered(
        self,
        now: datetime,
        *,
        lease_until: datetime,
        received_after: datetime,
        max_attempts: int,
        limit: int = 20,
        owner: str = "",
    ) -> list[ReceivedCommand]:
        # SKIP LOCKED: a rival replica's pass skips the rows this one is taking; the outer WHERE
        # re-checks the lease after any wait, so a row is never taken twice for one lease.
        sql = (
            "UPDATE slack_commands SET lease_until = $1, claimed_by = $6, attempts = attempts + 1 WHERE key IN ("
            " SELECT key FROM slack_commands WHERE answered_at IS NULL AND lease_until <= $2"
            " AND received_at > $3 AND attempts < $4 ORDER BY lease_until, key LIMIT $5 FOR UPDATE SKIP LOCKED)"
            " AND answered_at IS NULL AND lease_until <= $2 RETURNING *"
        )
        async with self._db.connection("take over unanswered chat commands") as conn:
            rows = await conn.fetch(sql, utc(lease_until), utc(now), utc(received_after), max_attempts, limit, owner)
        return sorted((_command(r) for r in rows), key=lambda c: (c.received_at, c.key))

    async def release_claims(self, owner: str, *, now: datetime) -> int:
        sql = (
            "UPDATE slack_commands SET lease_until = $1 WHERE claimed_by = $2 AND claimed_by != ''"
            " AND answered_at IS NULL AND lease_until > $1 RETURNING key"
        )
        async with self._db.connection(f"release the chat commands of {owner}") as conn:
            return len(await conn.fetch(sql, utc(now), owner))

    async def prune(self, before: datetime) -> int:
        sql = "WITH gone AS (DELETE FROM slack_commands WHERE received_at < $1 RETURNING 1) SELECT count(*) FROM gone"
        async with self._db.connection("forget old chat commands") as conn:
            return int(await conn.fetchval(sql, utc(before)))


class _Inbox(Role[_Pool]):
    """Webhook deliveries, as rows of ``webhook_inbox``."""

    async def _changed(self, doing: str, sql: str, *params: object) -> bool:
        async with self._db.connection(doing) as conn:
            return await conn.fetchrow(sql, *params) is not None

    async def add(self, event_id: str, *, event_type: str, body: str, at: datetime) -> bool:
        sql = _DELIVERIES.inbox_add
        return await self._changed("store a webhook delivery", sql, event_id, event_type, body, utc(at))

    async def claim(self, event_id: str, *, token: str, now: datetime, until: datetime) -> InboxDelivery | None:
        async with self._db.connection(f"claim webhook event {event_id}") as conn:
            row = await conn.fetchrow(_DELIVERIES.inbox_claim, event_id, utc(now), token, utc(until))
        return None if row is None else inbox_delivery(row, _load_time)

    async def finish(self, event_id: str, *, token: str, at: datetime) -> bool:
        return await self._changed(
            f"finish webhook event {event_id}", _DELIVERIES.inbox_finish, event_id, token, utc(at)
        )

    async def retry(self, event_id: str, *, token: str, at: datetime, error: str) -> bool:
        sql = _DELIVERIES.inbox_retry
        return await self._changed(f"reschedule webhook event {event_id}", sql, event_id, token, utc(at), error)

    async def park(self, event_id: str, *, token: str, at: datetime, error: str) -> bool:
        sql = _DELIVERIES.inbox_park
        return await self._changed(f"park webhook event {event_id}", sql, event_id, token, utc(at), error)

    async def due(self, now: datetime, *, limit: int = 100) -> list[InboxDelivery]:
        async with self._db.connection("list webhook deliveries to process") as conn:
            rows = await conn.fetch(_DELIVERIES.inbox_due, limit, utc(now))
        return [inbox_delivery(row, _load_time) for row in rows]

    async def count_parked(self) -> int:
        async with self._db.connection("count parked webhook deliveries") as conn:
            return int(await conn.fetchval(_DELIVERIES.inbox_count_parked))

    async def prune(self, before: datetime) -> int:
        async with self._db.connection("forget processed webhook deliveries") as conn:
            return len(await conn.fetch(_DELIVERIES.inbox_prune, utc(before)))

    async def release_claims(self, owner: str) -> int:
        async with self._db.connection(f"release the webhook claims of {owner}") as conn:
            return len(await conn.fetch(_DELIVERIES.inbox_release, claim_prefix(owner)))


class _Outbox(Role[_Pool]):
    """Chat messages waiting for the platform, as rows of ``chat_outbox``."""

    async def _changed(self, doing: str, sql: str, *params: object) -> bool:
        async with self._db.connection(doing) as conn:
            return await conn.fetchrow(sql, *params) is not None

    async def _one(self, doing: str, sql: str, *params: object) -> OutboxDelivery | None:
        async with self._db.connection(doing) as conn:
            row = await conn.fetchrow(sql, *params)
        return None if row is None else outbox_delivery(row, _load_time)

    async def add(self, delivery: OutboxDelivery, *, at: datetime) -> None:
        d = delivery
        async with self._db.connection(f"queue chat message {d.id}") as conn:
            await conn.execute(
                _DELIVERIES.outbox_add, d.id, d.platform, d.kind, d.recipient, d.card, utc(at), utc(d.created_at)
            )

    async def get(self, delivery_id: str) -> OutboxDelivery | None:
        return await self._one(f"read chat message {delivery_id}", _DELIVERIES.outbox_get, delivery_id)

    async def revise(self, delivery_id: str, *, card: str) -> OutboxDelivery | None:
        revised = await self._one(f"revise chat message {delivery_id}", _DELIVERIES.outbox_revise, delivery_id, card)
        return revised if revised is not None else await self.get(delivery_id)

    async def drop_pending(self, delivery_id: str) -> bool:
        return await self._changed(f"drop chat message {delivery_id}", _DELIVERIES.outbox_drop, delivery_id)

    async def claim(self, delivery_id: str, *, token: str, now: datetime, until: datetime) -> OutboxDelivery | None:
        sql = _DELIVERIES.outbox_claim
        return await self._one(f"claim chat message {delivery_id}", sql, delivery_id, utc(now), token, utc(until))

    async def delivered(
        self, delivery_id: str, *, token: str, at: datetime, ref: MessageRef | None, placeholder: MessageRef | None
    ) -> bool:
        channel, message_id = (ref.channel, ref.message_id) if ref is not None else (None, None)
        async with self._db.connection(f"record chat message {delivery_id} as sent", transaction=True) as conn:
            done = await conn.fetchrow(_DELIVERIES.outbox_delivered, delivery_id, token, utc(at), channel, message_id)
            if done is not None and ref is not None and placeholder is not None:
                await conn.execute(
                    _DELIVERIES.outbox_swap_refs,
                    ref.channel,
                    ref.message_id,
                    placeholder.platform,
                    placeholder.channel,
                    placeholder.message_id,
                )
        return done is not None

    async def retry(self, delivery_id: str, *, token: str, at: datetime, error: str) -> bool:
        sql = _DELIVERIES.outbox_retry
        return await self._changed(f"reschedule chat message {delivery_id}", sql, delivery_id, token, utc(at), error)

    async def expire(self, delivery_id: str, *, token: str, at: datetime, error: str) -> bool:
        sql = _DELIVERIES.outbox_expire
        return await self._changed(f"give up chat message {delivery_id}", sql, delivery_id, token, utc(at), error)

    async def due(self, now: datetime, *, limit: int = 100) -> list[OutboxDelivery]:
        async with self._db.connection("list chat messages to send") as conn:
            rows = await conn.fetch(_DELIVERIES.outbox_due, limit, utc(now))
        return [outbox_delivery(row, _load_time) for row in rows]

    async def count_pending(self) -> int:
        async with self._db.connection("count queued chat messages") as conn:
            return int(await conn.fetchval(_DELIVERIES.outbox_count_pending))

    async def prune(self, before: datetime) -> int:
        async with self._db.connection("forget sent chat messages") as conn:
            return len(await conn.fetch(_DELIVERIES.outbox_prune, utc(before)))

    async def release_claims(self, owner: str) -> int:
        async with self._db.connection(f"release the chat message claims of {owner}") as conn:
            return len(await conn.fetch(_DELIVERIES.outbox_release, claim_prefix(owner)))


_ROLES = Roles(
    requests=_Requests,
    grants=_Grants,
    audit=_Audit,
    settings=_Settings,
    messages=_Messages,
    transactions=_Transactions,
    mirrors=_Mirrors,
    seen=_Seen,
    commands=_Commands,
    inbox=_Inbox,
    outbox=_Outbox,
    address_book=PostgresAddressBook,
)


class PostgresStore(RoleStore[_Pool]):
    """Every role port over one PostgreSQL database.

    Extra query parameters in the URL are sent as server settings, so
    ``postgresql://ackgate@db/ackgate?search_path=ackgate`` keeps Ackgate's tables in their own schema.
    """

    def __init__(self, dsn: str) -> None:
        super().__init__(_Pool(dsn), roles=_ROLES)

    async def _migrate(self, *, up_to: int | None) -> None:
        async with self._db.connection("apply database migrations", transaction=True) as conn:
            # Held until commit: a replica that starts meanwhile waits, then finds nothing to do.
            await conn.execute("SELECT pg_advisory_xact_lock($1)", MIGRATION_LOCK)
            await conn.execute(
                "CREATE TABLE IF NOT EXISTS schema_version (version integer PRIMARY KEY,"
                " name text NOT NULL, applied_at timestamptz NOT NULL DEFAULT now())"
            )
            current = int(await conn.fetchval("SELECT coalesce(max(version), 0) FROM schema_version"))
            for migration in pending("postgres", current=current, up_to=up_to):
                await conn.execute(migration.sql)  # no arguments: the simple protocol runs many statements
                await conn.execute(
                    "INSERT INTO schema_version (version, name) VALUES ($1, $2)", migration.version, migration.name
                )

    async def schema_version(self) -> int:
        """The highest migration applied to this database."""
        async with self._db.connection("read the schema version") as conn:
            return int(await conn.fetchval("SELECT coalesce(max(version), 0) FROM schema_version"))

    async def ping(self) -> None:
        async with self._db.connection("answer a health check") as conn:
            await conn.fetchval("SELECT 1")

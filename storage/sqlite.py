"""The SQLite backend: one aiosqlite connection in WAL mode.

One connection is shared by every coroutine, so a lock keeps their statements from interleaving,
and each write runs in ``BEGIN IMMEDIATE`` so a second process on the same file waits
(``busy_timeout``) instead of racing: compare-and-set stays atomic. The lock serves urgent writes
first (:class:`storage.priority_lock.PriorityLock`): recording a chat command, which Slack's
acknowledgement waits for, never queues behind the background's writes.
"""

from __future__ import annotations

import asyncio
import sqlite3
from collections.abc import AsyncIterator, Callable, Iterable, Sequence
from contextlib import asynccontextmanager
from dataclasses import replace
from datetime import datetime
from typing import Any

import aiosqlite

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
from bot.core.errors import StorageError
from bot.core.ports import AuditFor, InboxDelivery, OutboxDelivery
from storage.address_book import SqliteAddressBook
from storage.codec import (
    Codec,
    audit_rows,
    dump_json,
    from_iso,
    grant_conflict,
    id_taken,
    iso,
    request_conflict,
    request_has_grant,
    row_writes,
    transaction_conflict,
    transaction_missing,
    transaction_taken,
)
from storage.common import Role, Roles, RoleStore, pending
from storage.deliveries import delivery_sql, inbox_delivery, outbox_delivery
from storage.priority_lock import PriorityLock

BUSY_TIMEOUT_MS = 5000
WAL_RETRY_SECONDS = 0.05


async def _enable_wal(conn: aiosqlite.Connection) -> None:
    """Switch to WAL. Switching takes an exclusive lock and SQLite does not wait on busy_timeout
    for it, so two processes opening a new file at once would see "database is locked": retry
    within the same busy budget."""
    attempts = int(BUSY_TIMEOUT_MS / 1000 / WAL_RETRY_SECONDS)
    for attempt in range(attempts):
        try:
            await conn.execute("PRAGMA journal_mode = WAL")
            return
        except sqlite3.OperationalError as exc:
            if "locked" not in str(exc) or attempt == attempts - 1:
                raise
            await asyncio.sleep(WAL_RETRY_SECONDS)


_CODEC = Codec(dump_time=iso, load_time=from_iso)
_ACTIVE = GrantStatus.ACTIVE.value
_REVOKING = GrantStatus.REVOKING.value
_PENDING = RequestStatus.PENDING.value
_WRITES = row_writes(lambda _: "?")
_DELIVERIES = delivery_sql(lambda n: f"?{n}")  # numbered: these statements reuse a parameter
_INSERT_APPROVAL = (
    "INSERT INTO approvals (request_id, approver_email, at) VALUES (?, ?, ?)"
    " ON CONFLICT (request_id, approver_email) DO NOTHING"
)

# Exposed so tests can EXPLAIN them and see an index range scan.
DUE_TO_EXPIRE_SQL = "SELECT * FROM grants WHERE status = ? AND expires_at <= ? ORDER BY expires_at, id LIMIT ?"
REVOKES_DUE_SQL = "SELECT * FROM grants WHERE status = ? AND next_attempt_at <= ? ORDER BY next_attempt_at, id LIMIT ?"
ACTIVE_FOR_INCIDENT_SQL = "SELECT * FROM grants WHERE incident_id = ? AND status = ? ORDER BY expires_at, id"
PENDING_EXPIRED_SQL = (
    "SELECT * FROM auth_transactions WHERE status = ? AND expires_at <= ? ORDER BY expires_at, id LIMIT ?"
)
BY_DEDUP_KEY_SQL = "SELECT * FROM auth_transactions WHERE dedup_key = ? ORDER BY created_at DESC, id DESC LIMIT 1"
BY_TRANSACTION_SQL = "SELECT * FROM incident_mirrors WHERE transaction_id = ? ORDER BY status_at DESC LIMIT 1"
PROVISIONING_DUE_SQL = (
    "SELECT * FROM grants WHERE status = 'provisioning' AND (next_attempt_at IS NULL OR next_attempt_at <= ?)"
    " ORDER BY next_attempt_at, id LIMIT ?"
)
APPROVED_WITHOUT_GRANT_SQL = (
    "SELECT * FROM requests WHERE status = 'approved' AND grant_id IS NULL"
    " AND NOT EXISTS (SELECT 1 FROM grants WHERE grants.request_id = requests.id) ORDER BY created_at, id LIMIT ?"
)
PENDING_WITHOUT_CARDS_SQL = (
    "SELECT * FROM requests WHERE status = 'pending' AND created_at < ?1 AND NOT EXISTS ("
    " SELECT 1 FROM approval_card_posts p WHERE p.request_id = requests.id"
    " AND (p.posted_at IS NOT NULL OR p.lease_until > ?2)) ORDER BY created_at, id LIMIT ?3"
)


def split_statements(script: str) -> list[str]:
    """Split a migration into statements; SQLite itself says where one ends (trigger bodies hold ``;``)."""
    statements: list[str] = []
    buffer = ""
    for line in script.splitlines(keepends=True):
        buffer += line
        if sqlite3.complete_statement(buffer):
            statements.append(buffer.strip())
            buffer = ""
    return statements


def _probe(path: str) -> None:
    sqlite3.connect(path).close()


class _Db:
    """The connection, its lock, and the translation of driver errors into ``StorageError``."""

    def __init__(self, path: str) -> None:
        self.path = path
        self._conn: aiosqlite.Connection | None = None
        self._lock = PriorityLock()

    async def open(self) -> None:
        if self._conn is not None:
            return
        conn: aiosqlite.Connection | None = None
        try:
            if self.path != ":memory:":
                # Fail here, in our thread, rather than inside aiosqlite's connect: a failed connect
                # leaves its worker thread to report to an event loop that may be gone by then.
                await asyncio.to_thread(_probe, self.path)
            # isolation_level=None: we issue BEGIN ourselves, so sqlite3 never opens one behind our back.
            conn = await aiosqlite.connect(self.path, isolation_level=None)
            conn.row_factory = aiosqlite.Row
            await conn.execute(f"PRAGMA busy_timeout = {BUSY_TIMEOUT_MS}")
            await _enable_wal(conn)
            await conn.execute("PRAGMA synchronous = NORMAL")  # durable enough with WAL, much faster
            await conn.execute("PRAGMA foreign_keys = ON")
        except sqlite3.Error as exc:
            if conn is not None:
                await conn.close()
            raise StorageError(
                f"Could not open the SQLite database {self.path}: {exc}. "
                "Check ACKGATE_DATABASE_URL and that the directory exists and is writable."
            ) from exc
        self._conn = conn

    async def close(self) -> None:
        async with self._lock:
            if self._conn is not None:
                conn, self._conn = self._conn, None
                await conn.close()

    def _connection(self) -> aiosqlite.Connection:
        if self._conn is None:
            raise StorageError("The SQLite store is not open. Call open() before using it.")
        return self._conn

    def _failed(self, doing: str, exc: sqlite3.Error) -> StorageError:
        return StorageError(
            f"Could not {doing} in the SQLite database {self.path}: {exc}. "
            "Check the file's permissions and free disk space."
        )

    @asynccontextmanager
    async def reading(self, doing: str) -> AsyncIterator[aiosqlite.Connection]:
        async with self._lock:
            conn = self._connection()
            try:
                yield conn
            except sqlite3.Error as exc:
                raise self._failed(doing, exc) from exc

    @asynccontextmanager
    async def writing(self, doing: str, *, urgent: bool = False) -> AsyncIterator[aiosqlite.Connection]:
        """One write transaction; any exception rolls it back, so a failure changes nothing.
        ``urgent``: ahead of every write and read waiting for the connection."""
        async with self._lock.held(urgent=urgent):
            conn = self._connection()
            try:
                await conn.execute("BEGIN IMMEDIATE")
                try:
                    yield conn
                except BaseException:
                    await conn.rollback()
                    raise
                await conn.commit()
            except sqlite3.Error as exc:
                raise self._failed(doing, exc) from exc


async def _rows(conn: aiosqlite.Connection, sql: str, params: Iterable[object] = ()) -> list[sqlite3.Row]:
    return list(await conn.execute_fetchall(sql, tuple(params)))


async def _row(conn: aiosqlite.Connection, sql: str, params: Iterable[object] = ()) -> sqlite3.Row | None:
    rows = await _rows(conn, sql, params)
    return rows[0] if rows else None


def _is_duplicate(exc: sqlite3.IntegrityError) -> bool:
    return "UNIQUE" in str(exc)


async def _insert_new(conn: aiosqlite.Connection, sql: str, values: Sequence[object], *, what: str) -> None:
    """Insert one row whose id must be new; a taken id raises ``StorageError`` naming ``what``."""
    try:
        await conn.execute(sql, values)
    except sqlite3.IntegrityError as exc:
        if not _is_duplicate(exc):
            raise
        raise id_taken(what) from exc


async def _audit(conn: aiosqlite.Connection, audit: AuditFor[Any] | None, result: object) -> None:
    """Append the audit rows of a state change inside its transaction."""
    await conn.executemany(_WRITES.audit, audit_rows(_CODEC, audit, result))


class _Requests(Role[_Db]):
    async def _complete(self, conn: aiosqlite.Connection, rows: Sequence[sqlite3.Row]) -> list[AccessRequest]:
        """Attach each request's approvals (one query for all of them), keeping the rows' order."""
        if not rows:
            return []
        ids = [row["id"] for row in rows]
        marks = ", ".join("?" for _ in ids)
        sql = f"SELECT * FROM approvals WHERE request_id IN ({marks}) ORDER BY seq"  # noqa: S608 - only marks
        return _CODEC.requests(rows, await _rows(conn, sql, ids))

    async def _insert(self, conn: aiosqlite.Connection, request: AccessRequest) -> None:
        await _insert_new(conn, _WRITES.request, _CODEC.request_values(request), what=f"request {request.id}")
        await conn.executemany(_INSERT_APPROVAL, [(request.id, a.approver_email, iso(a.at)) for a in request.approvals])

    async def add(self, request: AccessRequest, *, audit: AuditFor[None] | None = None) -> None:
        async with self._db.writing(f"save request {request.id}") as conn:
            await self._insert(conn, request)
            await _audit(conn, audit, None)

    async def add_with_grant(
        self, request: AccessRequest, grant: Grant, *, audit: AuditFor[tuple[AccessRequest, Grant]] | None = None
    ) -> tuple[AccessRequest, Grant]:
        request = replace(request, grant_id=grant.id)
        async with self._db.writing(f"save request {request.id} and its grant") as conn:
            await self._insert(conn, request)
            await _insert_new(conn, _WRITES.grant, _CODEC.grant_values(grant), what=f"grant {grant.id}")
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
        async with self._db.writing(f"record an approval of request {request_id}") as conn:
            request = await self._approval(conn, request_id, approver_email, at)
            made: Grant | None = None
            if len(request.approvals) >= request.required_approvals:
                made = grant(request)
                sql = (
                    "UPDATE requests SET status = ?, decided_by = ?, decided_at = ?, grant_id = ?"
                    " WHERE id = ? AND status = ? RETURNING *"
                )
                params = (RequestStatus.APPROVED.value, approver_email, iso(at), made.id, request_id, _PENDING)
                request = (await self._complete(conn, await _rows(conn, sql, params)))[0]
                await _insert_new(conn, _WRITES.grant, _CODEC.grant_values(made), what=f"grant {made.id}")
            await _audit(conn, audit, (request, made))
        return request, made

    async def approved_without_grant(self, *, limit: int = 100) -> list[AccessRequest]:
        async with self._db.reading("list approved requests without a grant") as conn:
            return await self._complete(conn, await _rows(conn, APPROVED_WITHOUT_GRANT_SQL, [limit]))

    async def pending_without_cards(
        self, now: datetime, *, created_before: datetime, limit: int = 100
    ) -> list[AccessRequest]:
        params = (iso(created_before), iso(now), limit)
        async with self._db.reading("list pending requests no approver was shown") as conn:
            return await self._complete(conn, await _rows(conn, PENDING_WITHOUT_CARDS_SQL, params))

    async def get(self, request_id: str) -> AccessRequest | None:
        async with self._db.reading(f"read request {request_id}") as conn:
            found = await self._complete(conn, await _rows(conn, "SELECT * FROM requests WHERE id = ?", [request_id]))
        return found[0] if found else None

    async def list_for(self, requester_email: str, *, limit: int = 20) -> list[AccessRequest]:
        sql = "SELECT * FROM requests WHERE requester_email = ? ORDER BY created_at DESC, id DESC LIMIT ?"
        async with self._db.reading(f"list the requests of {requester_email}") as conn:
            return await self._complete(conn, await _rows(conn, sql, [requester_email, limit]))

    async def _approval(
        self, conn: aiosqlite.Connection, request_id: str, approver_email: str, at: datetime
    ) -> AccessRequest:
        # BEGIN IMMEDIATE holds the write lock, so nothing can decide the request between
        # this check and the insert.
        row = await _row(conn, "SELECT status, decided_by FROM requests WHERE id = ?", [request_id])
        if row is None or row["status"] != _PENDING:
            raise request_conflict(request_id, row)
        await conn.execute(_INSERT_APPROVAL, (request_id, approver_email, iso(at)))
        found = await _rows(conn, "SELECT * FROM requests WHERE id = ?", [request_id])
        return (await self._complete(conn, found))[0]

    async def add_approval(
        self, request_id: str, *, approver_email: str, at: datetime, audit: AuditFor[AccessRequest] | None = None
    ) -> AccessRequest:
        async with self._db.writing(f"record an approval of request {request_id}") as conn:
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
            "UPDATE requests SET status = ?, decided_by = ?, decided_at = ?, note = ?,"
            " grant_id = COALESCE(?, grant_id) WHERE id = ? AND status = ? RETURNING *"
        )
        params = (new.value, by, iso(at), note, grant_id, request_id, expected.value)
        async with self._db.writing(f"decide request {request_id}") as conn:
            updated = await _rows(conn, sql, params)
            if not updated:
                current = await _row(conn, "SELECT status, decided_by FROM requests WHERE id = ?", [request_id])
                raise request_conflict(request_id, current)
            request = (await self._complete(conn, updated))[0]
            await _audit(conn, audit, request)
        return request

    async def pending_created_before(self, cutoff: datetime) -> list[AccessRequest]:
        sql = "SELECT * FROM requests WHERE status = ? AND created_at < ? ORDER BY created_at, id"
        async with self._db.reading("list pending requests") as conn:
            return await self._complete(conn, await _rows(conn, sql, [RequestStatus.PENDING.value, iso(cutoff)]))


class _Grants(Role[_Db]):
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
        async with self._db.writing(doing) as conn:
            updated = await _row(conn, sql, params)
            if updated is None:
                current = await _row(conn, "SELECT status, ended_by, expires_at FROM grants WHERE id = ?", [grant_id])
                raise grant_conflict(grant_id, current, checks_expiry=checks_expiry)
            grant = _CODEC.grant(updated)
            await _audit(conn, audit, grant)
        return grant

    async def _select(self, doing: str, sql: str, params: Sequence[object]) -> list[Grant]:
        async with self._db.reading(doing) as conn:
            return [_CODEC.grant(row) for row in await _rows(conn, sql, params)]

    async def add(self, grant: Grant, *, audit: AuditFor[None] | None = None) -> None:
        async with self._db.writing(f"save grant {grant.id}") as conn:
            await _insert_new(conn, _WRITES.grant, _CODEC.grant_values(grant), what=f"grant {grant.id}")
            await _audit(conn, audit, None)

    async def get(self, grant_id: str) -> Grant | None:
        found = await self._select(f"read grant {grant_id}", "SELECT * FROM grants WHERE id = ?", [grant_id])
        return found[0] if found else None

    async def list_for(self, holder_email: str, *, include_ended: bool = False) -> list[Grant]:
        sql = "SELECT * FROM grants WHERE holder_email = ?"
        if not include_ended:
            sql += " AND status NOT IN ('ended', 'failed')"
        sql += " ORDER BY expires_at, id"
        return await self._select(f"list the grants of {holder_email}", sql, [holder_email])

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
            "UPDATE grants SET status = ?, end_reason = COALESCE(?, end_reason),"
            " ended_by = COALESCE(?, ended_by), expires_at = COALESCE(?, expires_at),"
            " last_error = COALESCE(?, last_error), next_attempt_at = COALESCE(?, next_attempt_at),"
            " ended_at = COALESCE(?, ended_at), claimed_by = COALESCE(?, claimed_by) WHERE id = ? AND status = ?"
            " RETURNING *"
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
        sql = "UPDATE grants SET expires_at = ? WHERE id = ? AND status = ? AND expires_at = ? RETURNING *"
        params = (iso(new_expires_at), grant_id, _ACTIVE, iso(expected_expires_at))
        return await self._cas(grant_id, f"extend grant {grant_id}", sql, params, checks_expiry=True, audit=audit)

    async def due_to_expire(self, now: datetime, *, limit: int = 100) -> list[Grant]:
        return await self._select("list grants due to expire", DUE_TO_EXPIRE_SQL, [_ACTIVE, iso(now), limit])

    async def next_expiry(self) -> datetime | None:
        async with self._db.reading("find the next grant expiry") as conn:
            row = await _row(conn, "SELECT min(expires_at) AS at FROM grants WHERE status = ?", [_ACTIVE])
        return None if row is None or row["at"] is None else from_iso(row["at"])

    async def revokes_due(self, now: datetime, *, limit: int = 100) -> list[Grant]:
        return await self._select("list revokes due", REVOKES_DUE_SQL, [_REVOKING, iso(now), limit])

    async def schedule_revoke_retry(
        self, grant_id: str, *, at: datetime, error: str, audit: AuditFor[Grant] | None = None
    ) -> Grant:
        sql = (
            "UPDATE grants SET revoke_attempts = revoke_attempts + 1, next_attempt_at = ?, last_error = ?,"
            " claimed_by = '' WHERE id = ? AND status = ? RETURNING *"
        )
        params = (iso(at), error, grant_id, _REVOKING)
        return await self._cas(grant_id, f"schedule a revoke retry of grant {grant_id}", sql, params, audit=audit)

    async def active_for_incident(self, incident_id: str) -> list[Grant]:
        doing = f"list the grants of incident {incident_id}"
        return await self._select(doing, ACTIVE_FOR_INCIDENT_SQL, [incident_id, _ACTIVE])

    async def count_active(self) -> int:
        async with self._db.reading("count active grants") as conn:
            row = await _row(conn, "SELECT count(*) AS n FROM grants WHERE status = ?", [_ACTIVE])
        return 0 if row is None else int(row["n"])

    async def add_for_request(self, grant: Grant, *, audit: AuditFor[Grant] | None = None) -> Grant:
        sql = (
            "UPDATE requests SET grant_id = ? WHERE id = ? AND status = 'approved' AND grant_id IS NULL"
            " AND NOT EXISTS (SELECT 1 FROM grants WHERE request_id = ?) RETURNING id"
        )
        async with self._db.writing(f"save grant {grant.id} for request {grant.request_id}") as conn:
            if await _row(conn, sql, (grant.id, grant.request_id, grant.request_id)) is None:
                current = await _row(conn, "SELECT status, decided_by FROM requests WHERE id = ?", [grant.request_id])
                raise request_has_grant(grant.request_id, current)
            await _insert_new(conn, _WRITES.grant, _CODEC.grant_values(grant), what=f"grant {grant.id}")
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
            "UPDATE grants SET next_attempt_at = ?, claimed_by = ? WHERE id = ? AND status = 'provisioning'"
            " AND (next_attempt_at IS NULL OR next_attempt_at <= ?) RETURNING *"
        )
        params = (iso(lease_until), owner, grant_id, iso(now))
        return await self._cas(grant_id, f"claim the provisioning of grant {grant_id}", sql, params, audit=audit)

    async def claim_revoke(self, grant_id: str, *, now: datetime, lease_until: datetime, owner: str = "") -> Grant:
        sql = (
            "UPDATE grants SET next_attempt_at = ?, claimed_by = ? WHERE id = ? AND status = ? AND next_attempt_at <= ?"
            " RETURNING *"
        )
        params = (iso(lease_until), owner, grant_id, _REVOKING, iso(now))
        return await self._cas(grant_id, f"claim a revoke attempt of grant {grant_id}", sql, params)

    async def release_claims(self, owner: str, *, now: datetime) -> list[Grant]:
        sql = (
            "UPDATE grants SET next_attempt_at = ?, claimed_by = '' WHERE claimed_by = ? AND claimed_by != ''"
            " AND status IN ('provisioning', 'revoking') AND next_attempt_at > ? RETURNING *"
        )
        async with self._db.writing(f"release the claims of {owner}") as conn:
            return [_CODEC.grant(row) for row in await _rows(conn, sql, (iso(now), owner, iso(now)))]

    async def provisioning_due(self, now: datetime, *, limit: int = 100) -> list[Grant]:
        return await self._select("list grants left provisioning", PROVISIONING_DUE_SQL, [iso(now), limit])


class _Audit(Role[_Db]):
    async def append(self, event: AuditEvent) -> None:
        async with self._db.writing(f"append audit event {event.kind}") as conn:
            await conn.execute(_WRITES.audit, _CODEC.audit_values(event))

    async def since(self, at: datetime, *, limit: int = 100_000) -> list[AuditEvent]:
        sql = "SELECT * FROM audit WHERE at >= ? ORDER BY seq LIMIT ?"
        async with self._db.reading("read the audit log") as conn:
            return [_CODEC.audit(row) for row in await _rows(conn, sql, [iso(at), limit])]


class _Settings(Role[_Db]):
    async def get(self, key: str) -> str | None:
        async with self._db.reading(f"read setting {key}") as conn:
            row = await _row(conn, "SELECT value FROM settings WHERE key = ?", [key])
        return None if row is None else str(row["value"])

    async def set(self, key: str, value: str, *, audit: AuditFor[str | None] | None = None) -> str | None:
        async with self._db.writing(f"save setting {key}") as conn:
            row = await _row(conn, "SELECT value FROM settings WHERE key = ?", [key])
            await conn.execute(
                "INSERT INTO settings (key, value) VALUES (?, ?) ON CONFLICT (key) DO UPDATE SET value = excluded.value",
                (key, value),
            )
            previous = None if row is None else str(row["value"])
            await _audit(conn, audit, previous)
        return previous


class _Messages(Role[_Db]):
    async def add(self, subject: str, ref: MessageRef) -> None:
        sql = (
            "INSERT INTO message_refs (subject, platform, channel, message_id) VALUES (?, ?, ?, ?)"
            " ON CONFLICT DO NOTHING"
        )
        async with self._db.writing(f"remember a message about {subject}") as conn:
            await conn.execute(sql, (subject, ref.platform, ref.channel, ref.message_id))

    async def refs(self, subject: str) -> list[MessageRef]:
        async with self._db.reading(f"read the messages about {subject}") as conn:
            rows = await _rows(conn, "SELECT * FROM message_refs WHERE subject = ? ORDER BY seq", [subject])
        return [_CODEC.message_ref(row) for row in rows]

    async def claim_cards(self, request_id: str, *, owner: str, now: datetime, until: datetime) -> bool:
        sql = (
            "INSERT INTO approval_card_posts (request_id, claimed_by, lease_until) VALUES (?1, ?2, ?3)"
            " ON CONFLICT (request_id) DO UPDATE SET claimed_by = excluded.claimed_by, lease_until = excluded.lease_until"
            " WHERE approval_card_posts.posted_at IS NULL AND approval_card_posts.lease_until <= ?4 RETURNING request_id"
        )
        async with self._db.writing(f"claim the approval cards of {request_id}") as conn:
            return await _row(conn, sql, (request_id, owner, iso(until), iso(now))) is not None

    async def cards_posted(self, request_id: str, *, owner: str, at: datetime) -> bool:
        sql = (
            "UPDATE approval_card_posts SET posted_at = ? WHERE request_id = ? AND claimed_by = ?"
            " AND posted_at IS NULL RETURNING request_id"
        )
        async with self._db.writing(f"record the approval cards of {request_id} as posted") as conn:
            return await _row(conn, sql, (iso(at), request_id, owner)) is not None

    async def release_card_claims(self, owner: str, *, now: datetime) -> int:
        sql = (
            "UPDATE approval_card_posts SET lease_until = ?1 WHERE claimed_by = ?2 AND claimed_by != ''"
            " AND posted_at IS NULL AND lease_until > ?1 RETURNING request_id"
        )
        async with self._db.writing(f"release the approval card claims of {owner}") as conn:
            return len(await _rows(conn, sql, (iso(now), owner)))


class _Transactions(Role[_Db]):
    async def _one(self, doing: str, sql: str, params: Sequence[object]) -> AuthTransaction | None:
        async with self._db.reading(doing) as conn:
            row = await _row(conn, sql, params)
        return None if row is None else _CODEC.transaction(row)

    async def add(self, transaction: AuthTransaction, *, audit: AuditFor[None] | None = None) -> None:
        async with self._db.writing(f"save authentication request {transaction.id}") as conn:
            try:
                await conn.execute(_WRITES.transaction, _CODEC.transaction_values(transaction))
            except sqlite3.IntegrityError as exc:
                if not _is_duplicate(exc):
                    raise
                raise transaction_taken(transaction.id, token="token_hash" in str(exc)) from exc
            await _audit(conn, audit, None)

    async def get(self, transaction_id: str) -> AuthTransaction | None:
        sql = "SELECT * FROM auth_transactions WHERE id = ?"
        return await self._one(f"read authentication request {transaction_id}", sql, [transaction_id])

    async def by_token_hash(self, token_hash: str) -> AuthTransaction | None:
        # The hash is never put in the error message: it is as good as the link for a look-up.
        sql = "SELECT * FROM auth_transactions WHERE token_hash = ?"
        return await self._one("find an authentication request by its link", sql, [token_hash])

    async def by_dedup_key(self, dedup_key: str) -> AuthTransaction | None:
        return await self._one(f"find the authentication request of {dedup_key}", BY_DEDUP_KEY_SQL, [dedup_key])

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
            "UPDATE auth_transactions SET status = ?, decided_at = ?, note = COALESCE(?, note)"
            " WHERE id = ? AND status = ? RETURNING *"
        )
        params = (new.value, iso(at), note, transaction_id, expected.value)
        async with self._db.writing(f"decide authentication request {transaction_id}") as conn:
            updated = await _row(conn, sql, params)
            if updated is None:
                current = await _row(conn, "SELECT status FROM auth_transactions WHERE id = ?", [transaction_id])
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
        sql = "UPDATE auth_transactions SET channels = ?, dedup_key = ?, note = ? WHERE id = ? RETURNING *"
        params = (dump_json(list(channels)), dedup_key, note, transaction_id)
        async with self._db.writing(f"record how authentication request {transaction_id} was sent") as conn:
            updated = await _row(conn, sql, params)
            if updated is None:
                raise transaction_missing(transaction_id)
            delivered = _CODEC.transaction(updated)
            await _audit(conn, audit, delivered)
        return delivered

    async def pending_expired(self, now: datetime, *, limit: int = 100) -> list[AuthTransaction]:
        params = (AuthStatus.PENDING.value, iso(now), limit)
        async with self._db.reading("list expired authentication requests") as conn:
            return [_CODEC.transaction(row) for row in await _rows(conn, PENDING_EXPIRED_SQL, params)]


class _Mirrors(Role[_Db]):
    async def get(self, incident_id: str) -> IncidentMirror | None:
        async with self._db.reading(f"read the mirror of incident {incident_id}") as conn:
            row = await _row(conn, "SELECT * FROM incident_mirrors WHERE incident_id = ?", [incident_id])
        return None if row is None else _CODEC.mirror(row)

    async def put_if_newer(self, mirror: IncidentMirror) -> bool:
        async with self._db.writing(f"save the mirror of incident {mirror.incident_id}") as conn:
            return await _row(conn, _WRITES.put_mirror, _CODEC.mirror_values(mirror)) is not None

    async def by_transaction(self, transaction_id: str) -> IncidentMirror | None:
        async with self._db.reading(f"find the incident of authentication request {transaction_id}") as conn:
            row = await _row(conn, BY_TRANSACTION_SQL, [transaction_id])
        return None if row is None else _CODEC.mirror(row)

    async def claim_post(self, incident_id: str, *, token: str, now: datetime, until: datetime) -> bool:
        async with self._db.writing(f"claim the first message of incident {incident_id}") as conn:
            row = await _row(conn, _DELIVERIES.claim_post, (incident_id, iso(now), token, iso(until)))
        return row is not None

    async def release_post(self, incident_id: str, *, token: str) -> None:
        async with self._db.writing(f"release the first message of incident {incident_id}") as conn:
            await conn.execute(_DELIVERIES.release_post, (incident_id, token))

    async def sending(self, incident_id: str, *, token: str) -> bool:
        async with self._db.writing(f"mark the first message of incident {incident_id} as being sent") as conn:
            return await _row(conn, _DELIVERIES.post_sending, (incident_id, token)) is not None

    async def release_posts(self, owner: str) -> int:
        async with self._db.writing(f"release the mirror post claims of {owner}") as conn:
            return len(await _rows(conn, _DELIVERIES.release_posts, [claim_prefix(owner)]))


class _Seen(Role[_Db]):
    """Deliveries already processed, as rows of ``webhook_seen``."""

    async def first_time(self, key: str, *, at: datetime) -> bool:
        sql = "INSERT INTO webhook_seen (key, at) VALUES (?, ?) ON CONFLICT (key) DO NOTHING RETURNING key"
        async with self._db.writing("record a webhook delivery") as conn:
            return await _row(conn, sql, (key, iso(at))) is not None

    async def prune(self, before: datetime) -> int:
        async with self._db.writing("forget old webhook deliveries") as conn:
            return len(await _rows(conn, "DELETE FROM webhook_seen WHERE at < ? RETURNING key", [iso(before)]))


def _command(row: sqlite3.Row) -> ReceivedCommand:
    return ReceivedCommand(
        key=row["key"],
        kind=row["kind"],
        user_id=row["user_id"],
        channel_id=row["channel_id"],
        text=row["text"],
        response_url=row["response_url"],
        received_at=from_iso(row["received_at"]),
        lease_until=from_iso(row["lease_until"]),
        attempts=int(row["attempts"]),
        answered_at=None if row["answered_at"] is None else from_iso(row["answered_at"]),
        claimed_by=row["claimed_by"],
    )


class _Commands(Role[_Db]):
    """Acknowledged chat commands, as rows of ``slack_commands``."""

    async def record(self, command: ReceivedCommand) -> bool:
        sql = (
            "INSERT INTO slack_commands"
            " (key, kind, user_id, channel_id, text, response_url, received_at, lease_until, claimed_by)"
            " VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?) ON CONFLICT (key) DO NOTHING RETURNING key"
        )
        values = (
            command.key,
            command.kind,
            command.user_id,
            command.channel_id,
            command.text,
            command.response_url,
            iso(command.received_at),
            iso(command.lease_until),
            command.claimed_by,
        )
        async with self._db.writing("record a chat command", urgent=True) as conn:  # an ack waits for it
            return await _row(conn, sql, values) is not None

    async def answered(self, key: str, *, at: datetime) -> bool:
        sql = "UPDATE slack_commands SET answered_at = ? WHERE key = ? AND answered_at IS NULL RETURNING key"
        async with self._db.writing("mark a chat command answered") as conn:
            return await _row(conn, sql, (iso(at), key)) is not None

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
        # BEGIN IMMEDIATE serialises writers, so the WHERE is re-read by whoever comes second.
        sql = (
            "UPDATE slack_commands SET lease_until = ?, claimed_by = ?, attempts = attempts + 1 WHERE key IN ("
            " SELECT key FROM slack_commands WHERE answered_at IS NULL AND lease_until <= ?"
            " AND received_at > ? AND attempts < ? ORDER BY lease_until, key LIMIT ?) RETURNING *"
        )
        params = (iso(lease_until), owner, iso(now), iso(received_after), max_attempts, limit)
        async with self._db.writing("take over unanswered chat commands") as conn:
            rows = await _rows(conn, sql, params)
        return sorted((_command(r) for r in rows), key=lambda c: (c.received_at, c.key))

    async def release_claims(self, owner: str, *, now: datetime) -> int:
        sql = (
            "UPDATE slack_commands SET lease_until = ?1 WHERE claimed_by = ?2 AND claimed_by != ''"
            " AND answered_at IS NULL AND lease_until > ?1 RETURNING key"
        )
        async with self._db.writing(f"release the chat commands of {owner}") as conn:
            return len(await _rows(conn, sql, (iso(now), owner)))

    async def prune(self, before: datetime) -> int:
        async with self._db.writing("forget old chat commands") as conn:
            return len(
                await _rows(conn, "DELETE FROM slack_commands WHERE received_at < ? RETURNING key", [iso(before)])
            )


class _Inbox(Role[_Db]):
    """Webhook deliveries, as rows of ``webhook_inbox``."""

    async def _changed(self, doing: str, sql: str, params: Sequence[object]) -> bool:
        async with self._db.writing(doing) as conn:
            return await _row(conn, sql, params) is not None

    async def add(self, event_id: str, *, event_type: str, body: str, at: datetime) -> bool:
        params = (event_id, event_type, body, iso(at))
        return await self._changed("store a webhook delivery", _DELIVERIES.inbox_add, params)

    async def claim(self, event_id: str, *, token: str, now: datetime, until: datetime) -> InboxDelivery | None:
        async with self._db.writing(f"claim webhook event {event_id}") as conn:
            row = await _row(conn, _DELIVERIES.inbox_claim, (event_id, iso(now), token, iso(until)))
        return None if row is None else inbox_delivery(row, from_iso)

    async def finish(self, event_id: str, *, token: str, at: datetime) -> bool:
        params = (event_id, token, iso(at))
        return await self._changed(f"finish webhook event {event_id}", _DELIVERIES.inbox_finish, params)

    async def retry(self, event_id: str, *, token: str, at: datetime, error: str) -> bool:
        params = (event_id, token, iso(at), error)
        return await self._changed(f"reschedule webhook event {event_id}", _DELIVERIES.inbox_retry, params)

    async def park(self, event_id: str, *, token: str, at: datetime, error: str) -> bool:
        params = (event_id, token, iso(at), error)
        return await self._changed(f"park webhook event {event_id}", _DELIVERIES.inbox_park, params)

    async def due(self, now: datetime, *, limit: int = 100) -> list[InboxDelivery]:
        async with self._db.reading("list webhook deliveries to process") as conn:
            rows = await _rows(conn, _DELIVERIES.inbox_due, (limit, iso(now)))
        return [inbox_delivery(row, from_iso) for row in rows]

    async def count_parked(self) -> int:
        async with self._db.reading("count parked webhook deliveries") as conn:
            row = await _row(conn, _DELIVERIES.inbox_count_parked)
        return 0 if row is None else int(row["n"])

    async def prune(self, before: datetime) -> int:
        async with self._db.writing("forget processed webhook deliveries") as conn:
            return len(await _rows(conn, _DELIVERIES.inbox_prune, [iso(before)]))

    async def release_claims(self, owner: str) -> int:
        async with self._db.writing(f"release the webhook claims of {owner}") as conn:
            return len(await _rows(conn, _DELIVERIES.inbox_release, [claim_prefix(owner)]))


class _Outbox(Role[_Db]):
    """Chat messages waiting for the platform, as rows of ``chat_outbox``."""

    async def _changed(self, doing: str, sql: str, params: Sequence[object]) -> bool:
        async with self._db.writing(doing) as conn:
            return await _row(conn, sql, params) is not None

    async def _one(self, doing: str, sql: str, params: Sequence[object]) -> OutboxDelivery | None:
        async with self._db.writing(doing) as conn:
            row = await _row(conn, sql, params)
        return None if row is None else outbox_delivery(row, from_iso)

    async def add(self, delivery: OutboxDelivery, *, at: datetime) -> None:
        d = delivery
        async with self._db.writing(f"queue chat message {d.id}") as conn:
            params = (d.id, d.platform, d.kind, d.recipient, d.card, iso(at), iso(d.created_at))
            await conn.execute(_DELIVERIES.outbox_add, params)

    async def get(self, delivery_id: str) -> OutboxDelivery | None:
        async with self._db.reading(f"read chat message {delivery_id}") as conn:
            row = await _row(conn, _DELIVERIES.outbox_get, [delivery_id])
        return None if row is None else outbox_delivery(row, from_iso)

    async def revise(self, delivery_id: str, *, card: str) -> OutboxDelivery | None:
        sql = _DELIVERIES.outbox_revise
        revised = await self._one(f"revise chat message {delivery_id}", sql, (delivery_id, card))
        return revised if revised is not None else await self.get(delivery_id)

    async def drop_pending(self, delivery_id: str) -> bool:
        return await self._changed(f"drop chat message {delivery_id}", _DELIVERIES.outbox_drop, [delivery_id])

    async def claim(self, delivery_id: str, *, token: str, now: datetime, until: datetime) -> OutboxDelivery | None:
        params = (delivery_id, iso(now), token, iso(until))
        return await self._one(f"claim chat message {delivery_id}", _DELIVERIES.outbox_claim, params)

    async def delivered(
        self, delivery_id: str, *, token: str, at: datetime, ref: MessageRef | None, placeholder: MessageRef | None
    ) -> bool:
        channel, message_id = (ref.channel, ref.message_id) if ref is not None else (None, None)
        params = (delivery_id, token, iso(at), channel, message_id)
        async with self._db.writing(f"record chat message {delivery_id} as sent") as conn:
            done = await _row(conn, _DELIVERIES.outbox_delivered, params)
            if done is not None and ref is not None and placeholder is not None:
                swap = (ref.channel, ref.message_id, placeholder.platform, placeholder.channel, placeholder.message_id)
                await conn.execute(_DELIVERIES.outbox_swap_refs, swap)
        return done is not None

    async def retry(self, delivery_id: str, *, token: str, at: datetime, error: str) -> bool:
        params = (delivery_id, token, iso(at), error)
        return await self._changed(f"reschedule chat message {delivery_id}", _DELIVERIES.outbox_retry, params)

    async def expire(self, delivery_id: str, *, token: str, at: datetime, error: str) -> bool:
        params = (delivery_id, token, iso(at), error)
        return await self._changed(f"give up chat message {delivery_id}", _DELIVERIES.outbox_expire, params)

    async def due(self, now: datetime, *, limit: int = 100) -> list[OutboxDelivery]:
        async with self._db.reading("list chat messages to send") as conn:
            rows = await _rows(conn, _DELIVERIES.outbox_due, (limit, iso(now)))
        return [outbox_delivery(row, from_iso) for row in rows]

    async def count_pending(self) -> int:
        async with self._db.reading("count queued chat messages") as conn:
            row = await _row(conn, _DELIVERIES.outbox_count_pending)
        return 0 if row is None else int(row["n"])

    async def prune(self, before: datetime) -> int:
        async with self._db.writing("forget sent chat messages") as conn:
            return len(await _rows(conn, _DELIVERIES.outbox_prune, [iso(before)]))

    async def release_claims(self, owner: str) -> int:
        async with self._db.writing(f"release the chat message claims of {owner}") as conn:
            return len(await _rows(conn, _DELIVERIES.outbox_release, [claim_prefix(owner)]))


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
    address_book=SqliteAddressBook,
)


class SqliteStore(RoleStore[_Db]):
    """Every role port over one SQLite file (or ``:memory:``)."""

    def __init__(self, path: str) -> None:
        super().__init__(_Db(path), roles=_ROLES)

    @property
    def path(self) -> str:
        return self._db.path

    async def _migrate(self, *, up_to: int | None) -> None:
        async with self._db.writing("apply database migrations") as conn:
            await conn.execute(
                "CREATE TABLE IF NOT EXISTS schema_version (version INTEGER PRIMARY KEY,"
                " name TEXT NOT NULL, applied_at TEXT NOT NULL DEFAULT CURRENT_TIMESTAMP)"
            )
            row = await _row(conn, "SELECT coalesce(max(version), 0) AS v FROM schema_version")
            current = 0 if row is None else int(row["v"])
            for migration in pending("sqlite", current=current, up_to=up_to):
                for statement in split_statements(migration.sql):
                    await conn.execute(statement)
                await conn.execute(
                    "INSERT INTO schema_version (version, name) VALUES (?, ?)", (migration.version, migration.name)
                )

    async def schema_version(self) -> int:
        """The highest migration applied to this database."""
        async with self._db.reading("read the schema version") as conn:
            row = await _row(conn, "SELECT coalesce(max(version), 0) AS v FROM schema_version")
        return 0 if row is None else int(row["v"])

    async def ping(self) -> None:
        async with self._db.reading("answer a health check") as conn:
            await _row(conn, "SELECT 1")

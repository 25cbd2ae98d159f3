"""The SQLite backend: one aiosqlite connection in WAL mode.

One connection is shared by every coroutine, so an :class:`asyncio.Lock` keeps their
statements from interleaving, and each write runs in ``BEGIN IMMEDIATE`` so a second process
on the same file waits (``busy_timeout``) instead of racing: compare-and-set stays atomic.
"""

from __future__ import annotations

import asyncio
import sqlite3
from collections.abc import AsyncIterator, Iterable, Sequence
from contextlib import asynccontextmanager
from datetime import datetime

import aiosqlite

from bot.domain import (
    AccessRequest,
    Approval,
    AuditEvent,
    AuthStatus,
    AuthTransaction,
    EndReason,
    Grant,
    GrantStatus,
    IncidentMirror,
    MessageRef,
    RequestStatus,
)
from bot.errors import StorageError
from bot.ports import (
    AuditLog,
    GrantStore,
    MessageStore,
    MirrorStore,
    RequestStore,
    SeenStore,
    SettingsStore,
    TransactionStore,
)
from storage import migrations
from storage.codec import (
    AUDIT_COLUMNS,
    GRANT_COLUMNS,
    MIRROR_COLUMNS,
    REQUEST_COLUMNS,
    TRANSACTION_COLUMNS,
    Codec,
    dump_json,
    expiry_moved,
    from_iso,
    grant_conflict,
    iso,
    mirror_upsert,
    request_conflict,
    transaction_conflict,
    transaction_missing,
)

BUSY_TIMEOUT_MS = 5000
_CODEC = Codec(dump_time=iso, load_time=from_iso)
_ACTIVE = GrantStatus.ACTIVE.value
_REVOKING = GrantStatus.REVOKING.value


def _insert(table: str, columns: Sequence[str]) -> str:
    marks = ", ".join("?" for _ in columns)
    return f"INSERT INTO {table} ({', '.join(columns)}) VALUES ({marks})"  # noqa: S608 - constant names


_INSERT_REQUEST = _insert("requests", REQUEST_COLUMNS)
_INSERT_GRANT = _insert("grants", GRANT_COLUMNS)
_INSERT_AUDIT = _insert("audit", AUDIT_COLUMNS)
_INSERT_TRANSACTION = _insert("auth_transactions", TRANSACTION_COLUMNS)
_PUT_MIRROR = mirror_upsert(_insert("incident_mirrors", MIRROR_COLUMNS))
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
        self._lock = asyncio.Lock()

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
            await conn.execute("PRAGMA journal_mode = WAL")
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
    async def writing(self, doing: str) -> AsyncIterator[aiosqlite.Connection]:
        """One write transaction; any exception rolls it back, so a failure changes nothing."""
        async with self._lock:
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


class _Requests:
    def __init__(self, db: _Db) -> None:
        self._db = db

    async def _complete(self, conn: aiosqlite.Connection, rows: Sequence[sqlite3.Row]) -> list[AccessRequest]:
        """Attach each request's approvals (one query for all of them), keeping the rows' order."""
        if not rows:
            return []
        ids = [row["id"] for row in rows]
        marks = ", ".join("?" for _ in ids)
        approvals: dict[str, list[Approval]] = {i: [] for i in ids}
        sql = f"SELECT * FROM approvals WHERE request_id IN ({marks}) ORDER BY seq"  # noqa: S608 - only marks
        for a in await _rows(conn, sql, ids):
            approvals[a["request_id"]].append(_CODEC.approval(a))
        return [_CODEC.request(row, approvals[row["id"]]) for row in rows]

    async def add(self, request: AccessRequest) -> None:
        async with self._db.writing(f"save request {request.id}") as conn:
            try:
                await conn.execute(_INSERT_REQUEST, _CODEC.request_values(request))
            except sqlite3.IntegrityError as exc:
                if not _is_duplicate(exc):
                    raise
                raise StorageError(f"Could not save request {request.id}: that id is already taken.") from exc
            await conn.executemany(
                _INSERT_APPROVAL, [(request.id, a.approver_email, iso(a.at)) for a in request.approvals]
            )

    async def get(self, request_id: str) -> AccessRequest | None:
        async with self._db.reading(f"read request {request_id}") as conn:
            found = await self._complete(conn, await _rows(conn, "SELECT * FROM requests WHERE id = ?", [request_id]))
        return found[0] if found else None

    async def list_for(self, requester_email: str, *, limit: int = 20) -> list[AccessRequest]:
        sql = "SELECT * FROM requests WHERE requester_email = ? ORDER BY created_at DESC, id DESC LIMIT ?"
        async with self._db.reading(f"list the requests of {requester_email}") as conn:
            return await self._complete(conn, await _rows(conn, sql, [requester_email, limit]))

    async def add_approval(self, request_id: str, *, approver_email: str, at: datetime) -> AccessRequest:
        async with self._db.writing(f"record an approval of request {request_id}") as conn:
            # BEGIN IMMEDIATE holds the write lock, so nothing can decide the request between
            # this check and the insert.
            row = await _row(conn, "SELECT status, decided_by FROM requests WHERE id = ?", [request_id])
            if row is None or row["status"] != RequestStatus.PENDING.value:
                raise request_conflict(request_id, row)
            await conn.execute(_INSERT_APPROVAL, (request_id, approver_email, iso(at)))
            found = await _rows(conn, "SELECT * FROM requests WHERE id = ?", [request_id])
            return (await self._complete(conn, found))[0]

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
            return (await self._complete(conn, updated))[0]

    async def pending_created_before(self, cutoff: datetime) -> list[AccessRequest]:
        sql = "SELECT * FROM requests WHERE status = ? AND created_at < ? ORDER BY created_at, id"
        async with self._db.reading("list pending requests") as conn:
            return await self._complete(conn, await _rows(conn, sql, [RequestStatus.PENDING.value, iso(cutoff)]))


class _Grants:
    def __init__(self, db: _Db) -> None:
        self._db = db

    async def _cas(
        self, grant_id: str, doing: str, sql: str, params: Sequence[object], *, checks_expiry: bool = False
    ) -> Grant:
        """Run a ``... RETURNING *`` update; no row back means the compare-and-set lost."""
        async with self._db.writing(doing) as conn:
            updated = await _row(conn, sql, params)
            if updated is not None:
                return _CODEC.grant(updated)
            current = await _row(conn, "SELECT status, ended_by, expires_at FROM grants WHERE id = ?", [grant_id])
            if checks_expiry and current is not None and current["status"] == _ACTIVE:
                raise expiry_moved()
            raise grant_conflict(grant_id, current)

    async def _select(self, doing: str, sql: str, params: Sequence[object]) -> list[Grant]:
        async with self._db.reading(doing) as conn:
            return [_CODEC.grant(row) for row in await _rows(conn, sql, params)]

    async def add(self, grant: Grant) -> None:
        async with self._db.writing(f"save grant {grant.id}") as conn:
            try:
                await conn.execute(_INSERT_GRANT, _CODEC.grant_values(grant))
            except sqlite3.IntegrityError as exc:
                if not _is_duplicate(exc):
                    raise
                raise StorageError(f"Could not save grant {grant.id}: that id is already taken.") from exc

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
    ) -> Grant:
        sql = (
            "UPDATE grants SET status = ?, end_reason = COALESCE(?, end_reason),"
            " ended_by = COALESCE(?, ended_by), expires_at = COALESCE(?, expires_at),"
            " last_error = COALESCE(?, last_error), next_attempt_at = COALESCE(?, next_attempt_at),"
            " ended_at = COALESCE(?, ended_at) WHERE id = ? AND status = ? RETURNING *"
        )
        params = (
            new.value,
            None if end_reason is None else end_reason.value,
            ended_by,
            None if expires_at is None else iso(expires_at),
            last_error,
            iso(at) if new is GrantStatus.REVOKING else None,  # the first revoke attempt is due now
            iso(at) if new is GrantStatus.ENDED else None,
            grant_id,
            expected.value,
        )
        return await self._cas(grant_id, f"move grant {grant_id} to {new.value}", sql, params)

    async def extend(self, grant_id: str, *, expected_expires_at: datetime, new_expires_at: datetime) -> Grant:
        sql = "UPDATE grants SET expires_at = ? WHERE id = ? AND status = ? AND expires_at = ? RETURNING *"
        params = (iso(new_expires_at), grant_id, _ACTIVE, iso(expected_expires_at))
        return await self._cas(grant_id, f"extend grant {grant_id}", sql, params, checks_expiry=True)

    async def due_to_expire(self, now: datetime, *, limit: int = 100) -> list[Grant]:
        return await self._select("list grants due to expire", DUE_TO_EXPIRE_SQL, [_ACTIVE, iso(now), limit])

    async def next_expiry(self) -> datetime | None:
        async with self._db.reading("find the next grant expiry") as conn:
            row = await _row(conn, "SELECT min(expires_at) AS at FROM grants WHERE status = ?", [_ACTIVE])
        return None if row is None or row["at"] is None else from_iso(row["at"])

    async def revokes_due(self, now: datetime, *, limit: int = 100) -> list[Grant]:
        return await self._select("list revokes due", REVOKES_DUE_SQL, [_REVOKING, iso(now), limit])

    async def schedule_revoke_retry(self, grant_id: str, *, at: datetime, error: str) -> Grant:
        sql = (
            "UPDATE grants SET revoke_attempts = revoke_attempts + 1, next_attempt_at = ?, last_error = ?"
            " WHERE id = ? AND status = ? RETURNING *"
        )
        params = (iso(at), error, grant_id, _REVOKING)
        return await self._cas(grant_id, f"schedule a revoke retry of grant {grant_id}", sql, params)

    async def active_for_incident(self, incident_id: str) -> list[Grant]:
        doing = f"list the grants of incident {incident_id}"
        return await self._select(doing, ACTIVE_FOR_INCIDENT_SQL, [incident_id, _ACTIVE])

    async def count_active(self) -> int:
        async with self._db.reading("count active grants") as conn:
            row = await _row(conn, "SELECT count(*) AS n FROM grants WHERE status = ?", [_ACTIVE])
        return 0 if row is None else int(row["n"])


class _Audit:
    def __init__(self, db: _Db) -> None:
        self._db = db

    async def append(self, event: AuditEvent) -> None:
        async with self._db.writing(f"append audit event {event.kind}") as conn:
            await conn.execute(_INSERT_AUDIT, _CODEC.audit_values(event))

    async def since(self, at: datetime, *, limit: int = 100_000) -> list[AuditEvent]:
        sql = "SELECT * FROM audit WHERE at >= ? ORDER BY seq LIMIT ?"
        async with self._db.reading("read the audit log") as conn:
            return [_CODEC.audit(row) for row in await _rows(conn, sql, [iso(at), limit])]


class _Settings:
    def __init__(self, db: _Db) -> None:
        self._db = db

    async def get(self, key: str) -> str | None:
        async with self._db.reading(f"read setting {key}") as conn:
            row = await _row(conn, "SELECT value FROM settings WHERE key = ?", [key])
        return None if row is None else str(row["value"])

    async def set(self, key: str, value: str) -> str | None:
        async with self._db.writing(f"save setting {key}") as conn:
            row = await _row(conn, "SELECT value FROM settings WHERE key = ?", [key])
            await conn.execute(
                "INSERT INTO settings (key, value) VALUES (?, ?) ON CONFLICT (key) DO UPDATE SET value = excluded.value",
                (key, value),
            )
        return None if row is None else str(row["value"])


class _Messages:
    def __init__(self, db: _Db) -> None:
        self._db = db

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


class _Transactions:
    def __init__(self, db: _Db) -> None:
        self._db = db

    async def _one(self, doing: str, sql: str, params: Sequence[object]) -> AuthTransaction | None:
        async with self._db.reading(doing) as conn:
            row = await _row(conn, sql, params)
        return None if row is None else _CODEC.transaction(row)

    async def add(self, transaction: AuthTransaction) -> None:
        async with self._db.writing(f"save authentication request {transaction.id}") as conn:
            try:
                await conn.execute(_INSERT_TRANSACTION, _CODEC.transaction_values(transaction))
            except sqlite3.IntegrityError as exc:
                if not _is_duplicate(exc):
                    raise
                taken = "its link token is already in use" if "token_hash" in str(exc) else "that id is already taken"
                raise StorageError(f"Could not save authentication request {transaction.id}: {taken}.") from exc

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
        self, transaction_id: str, *, expected: AuthStatus, new: AuthStatus, at: datetime, note: str | None = None
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
        return _CODEC.transaction(updated)

    async def update_delivery(
        self, transaction_id: str, *, channels: tuple[str, ...], dedup_key: str | None, note: str
    ) -> AuthTransaction:
        sql = "UPDATE auth_transactions SET channels = ?, dedup_key = ?, note = ? WHERE id = ? RETURNING *"
        params = (dump_json(list(channels)), dedup_key, note, transaction_id)
        async with self._db.writing(f"record how authentication request {transaction_id} was sent") as conn:
            updated = await _row(conn, sql, params)
        if updated is None:
            raise transaction_missing(transaction_id)
        return _CODEC.transaction(updated)

    async def pending_expired(self, now: datetime, *, limit: int = 100) -> list[AuthTransaction]:
        params = (AuthStatus.PENDING.value, iso(now), limit)
        async with self._db.reading("list expired authentication requests") as conn:
            return [_CODEC.transaction(row) for row in await _rows(conn, PENDING_EXPIRED_SQL, params)]


class _Mirrors:
    def __init__(self, db: _Db) -> None:
        self._db = db

    async def get(self, incident_id: str) -> IncidentMirror | None:
        async with self._db.reading(f"read the mirror of incident {incident_id}") as conn:
            row = await _row(conn, "SELECT * FROM incident_mirrors WHERE incident_id = ?", [incident_id])
        return None if row is None else _CODEC.mirror(row)

    async def put_if_newer(self, mirror: IncidentMirror) -> bool:
        async with self._db.writing(f"save the mirror of incident {mirror.incident_id}") as conn:
            return await _row(conn, _PUT_MIRROR, _CODEC.mirror_values(mirror)) is not None

    async def by_transaction(self, transaction_id: str) -> IncidentMirror | None:
        async with self._db.reading(f"find the incident of authentication request {transaction_id}") as conn:
            row = await _row(conn, BY_TRANSACTION_SQL, [transaction_id])
        return None if row is None else _CODEC.mirror(row)


class _Seen:
    """Deliveries already processed, as rows of ``webhook_seen``."""

    def __init__(self, db: _Db) -> None:
        self._db = db

    async def first_time(self, key: str, *, at: datetime) -> bool:
        sql = "INSERT INTO webhook_seen (key, at) VALUES (?, ?) ON CONFLICT (key) DO NOTHING RETURNING key"
        async with self._db.writing("record a webhook delivery") as conn:
            return await _row(conn, sql, (key, iso(at))) is not None

    async def prune(self, before: datetime) -> int:
        async with self._db.writing("forget old webhook deliveries") as conn:
            return len(await _rows(conn, "DELETE FROM webhook_seen WHERE at < ? RETURNING key", [iso(before)]))


class SqliteStore:
    """Every role port over one SQLite file (or ``:memory:``)."""

    def __init__(self, path: str) -> None:
        self._db = _Db(path)
        self.requests: RequestStore = _Requests(self._db)
        self.grants: GrantStore = _Grants(self._db)
        self.audit: AuditLog = _Audit(self._db)
        self.settings: SettingsStore = _Settings(self._db)
        self.messages: MessageStore = _Messages(self._db)
        self.transactions: TransactionStore = _Transactions(self._db)
        self.mirrors: MirrorStore = _Mirrors(self._db)
        self._seen = _Seen(self._db)
        self.seen: SeenStore = self._seen

    @property
    def path(self) -> str:
        return self._db.path

    async def open(self, *, migrate_up_to: int | None = None) -> None:
        """Connect and apply pending migrations: all of them, or only up to ``migrate_up_to``
        (a version number; for tests of upgrades from an older schema)."""
        await self._db.open()
        try:
            await self._migrate(up_to=migrate_up_to)
        except BaseException:
            await self._db.close()
            raise

    async def _migrate(self, *, up_to: int | None) -> None:
        async with self._db.writing("apply database migrations") as conn:
            await conn.execute(
                "CREATE TABLE IF NOT EXISTS schema_version (version INTEGER PRIMARY KEY,"
                " name TEXT NOT NULL, applied_at TEXT NOT NULL DEFAULT CURRENT_TIMESTAMP)"
            )
            row = await _row(conn, "SELECT coalesce(max(version), 0) AS v FROM schema_version")
            current = 0 if row is None else int(row["v"])
            for migration in migrations.load("sqlite"):
                if migration.version <= current or (up_to is not None and migration.version > up_to):
                    continue
                for statement in split_statements(migration.sql):
                    await conn.execute(statement)
                await conn.execute(
                    "INSERT INTO schema_version (version, name) VALUES (?, ?)", (migration.version, migration.name)
                )

    async def prune_seen(self, before: datetime) -> int:
        """Forget delivery keys recorded before ``before`` and return how many were dropped.

        Not part of the ``Store`` port (see :class:`storage.PrunesSeen`): PagerDuty redelivers for
        up to 48 hours, so a periodic job drops keys older than that to keep ``webhook_seen`` small.
        """
        return await self._seen.prune(before)

    async def schema_version(self) -> int:
        """The highest migration applied to this database."""
        async with self._db.reading("read the schema version") as conn:
            row = await _row(conn, "SELECT coalesce(max(version), 0) AS v FROM schema_version")
        return 0 if row is None else int(row["v"])

    async def close(self) -> None:
        await self._db.close()

    async def ping(self) -> None:
        async with self._db.reading("answer a health check") as conn:
            await _row(conn, "SELECT 1")

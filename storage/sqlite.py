"""The SQLite backend: one aiosqlite connection in WAL mode, under the statements of
:mod:`storage.roles` (written once for both backends).

One connection is shared by every coroutine, so a lock keeps their statements from interleaving,
and each write runs in ``BEGIN IMMEDIATE`` so a second process on the same file waits
(``busy_timeout``) instead of racing: compare-and-set stays atomic. The lock serves urgent writes
first (:class:`storage.priority_lock.PriorityLock`): recording a chat command, which Slack's
acknowledgement waits for, never queues behind the background's writes.
"""

from __future__ import annotations

import asyncio
import sqlite3
from collections.abc import AsyncIterator
from contextlib import AbstractAsyncContextManager, asynccontextmanager

import aiosqlite

from bot.core.errors import StorageError
from storage.codec import Row
from storage.common import RoleStore
from storage.priority_lock import PriorityLock
from storage.sql import SQLITE, DriverSession

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

    dialect = SQLITE

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
    async def statement(self, doing: str, *, urgent: bool = False) -> AsyncIterator[aiosqlite.Connection]:
        """The connection for one statement, outside any transaction: a write commits as the
        statement ends, atomically, in one call to the driver's thread instead of three."""
        async with self._lock.held(urgent=urgent):
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

    def read(self, doing: str) -> AbstractAsyncContextManager[_Session]:
        return _Session.over(self.statement(doing), doing)

    def write(self, doing: str, *, urgent: bool = False) -> AbstractAsyncContextManager[_Session]:
        return _Session.over(self.statement(doing, urgent=urgent), doing)

    def transaction(self, doing: str) -> AbstractAsyncContextManager[_Session]:
        return _Session.over(self.writing(doing), doing)

    def migrating(self) -> AbstractAsyncContextManager[_Session]:
        return self.transaction("apply database migrations")


class _Session(DriverSession[aiosqlite.Connection]):
    """The statements' session on the shared connection; a UNIQUE failure's message names the column."""

    dialect = SQLITE

    async def _fetch(self, text: str, values: tuple[object, ...]) -> list[Row]:
        return list(await self._conn.execute_fetchall(text, values))

    async def _run(self, text: str, values: tuple[object, ...]) -> None:
        # Fetched to the end, so the statement is finished (and, outside a transaction, committed)
        # within the same call even when it has a RETURNING clause.
        await self._conn.execute_fetchall(text, values)

    async def _run_many(self, text: str, values: list[tuple[object, ...]]) -> None:
        await self._conn.executemany(text, values)

    def _unique_key(self, exc: Exception) -> str | None:
        return str(exc) if isinstance(exc, sqlite3.IntegrityError) and "UNIQUE" in str(exc) else None

    async def execute_script(self, script: str, /) -> None:
        for statement in split_statements(script):
            await self._conn.execute(statement)


class SqliteStore(RoleStore[_Db]):
    """Every role port over one SQLite file (or ``:memory:``)."""

    def __init__(self, path: str) -> None:
        super().__init__(_Db(path))

    @property
    def path(self) -> str:
        return self._db.path

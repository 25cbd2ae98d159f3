"""The PostgreSQL backend: an asyncpg pool shared by several replicas, under the statements of
:mod:`storage.roles` (written once for both backends).

Compare-and-set is one ``UPDATE ... WHERE status = $expected RETURNING *``: under READ COMMITTED a
second writer waits for the first row lock, re-checks the condition and updates nothing, so two
replicas racing resolve exactly once. Migrations run under a transaction-scoped advisory lock so
replicas starting together apply them once.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from typing import Any
from urllib.parse import urlsplit

import asyncpg

from bot.core import messages
from bot.core.errors import ConfigError, StorageError
from storage.codec import Row
from storage.common import RoleStore
from storage.sql import POSTGRES, DriverSession

# Any bigint works; every Ackgate replica must use the same one. These are the bytes "ackgate!".
MIGRATION_LOCK = int.from_bytes(b"ackgate!", "big")
ACQUIRE_TIMEOUT_SECONDS = 10.0
POOL_SIZE = 10  # connections for everything but urgent writes, which have one of their own
COMMAND_TIMEOUT_SECONDS = 30.0
_DRIVER_ERRORS = (asyncpg.PostgresError, asyncpg.InterfaceError, asyncpg.InternalClientError, OSError, TimeoutError)


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

    dialect = POSTGRES

    def __init__(self, dsn: str) -> None:
        self.dsn = dsn
        self.where = describe(dsn)
        self._pool: Any = None
        self._reserved: Any = None  # one connection for urgent writes, never taken by the background

    async def open(self) -> None:
        if self._pool is not None:
            return
        try:
            self._pool = await asyncpg.create_pool(
                self.dsn, min_size=1, max_size=POOL_SIZE, command_timeout=COMMAND_TIMEOUT_SECONDS
            )
            self._reserved = await asyncpg.create_pool(
                self.dsn, min_size=1, max_size=1, command_timeout=COMMAND_TIMEOUT_SECONDS
            )
        except ValueError as exc:  # asyncpg's ClientConfigurationError is one too
            await self.close()
            raise ConfigError(messages.POSTGRES_BAD_URL) from exc
        except _DRIVER_ERRORS as exc:
            await self.close()
            raise StorageError(messages.postgres_cannot_connect(self.where, exc)) from exc

    async def close(self) -> None:
        pools = [pool for pool in (self._reserved, self._pool) if pool is not None]
        self._reserved = self._pool = None
        for pool in pools:
            await pool.close()

    @asynccontextmanager
    async def connection(self, doing: str, *, transaction: bool = False, urgent: bool = False) -> AsyncIterator[Any]:
        """A pooled connection, inside a transaction when asked; any exception rolls it back.
        ``urgent``: the reserved connection, free even when the background holds the whole pool."""
        pool = self._reserved if urgent else self._pool
        if pool is None:
            raise StorageError(messages.store_not_open("PostgreSQL"))
        try:
            async with pool.acquire(timeout=ACQUIRE_TIMEOUT_SECONDS) as conn:
                if not transaction:
                    yield conn
                    return
                async with conn.transaction():
                    yield conn
        except _DRIVER_ERRORS as exc:
            raise StorageError(messages.postgres_failed(doing, self.where, exc)) from exc

    def read(self, doing: str) -> AbstractAsyncContextManager[_Session]:
        return _Session.over(self.connection(doing), doing)

    def write(self, doing: str, *, urgent: bool = False) -> AbstractAsyncContextManager[_Session]:
        # Urgent writes (recording a chat command, which an ack waits for; group-committed, so one
        # at a time) have a connection of their own: a background holding every pooled connection,
        # e.g. while PagerDuty is slow, never makes an acknowledgement wait for one.
        return _Session.over(self.connection(doing, urgent=urgent), doing)

    def transaction(self, doing: str) -> AbstractAsyncContextManager[_Session]:
        return _Session.over(self.connection(doing, transaction=True), doing)

    @asynccontextmanager
    async def migrating(self) -> AsyncIterator[_Session]:
        async with self.transaction("apply database migrations") as s:
            # Held until commit: a replica that starts meanwhile waits, then finds nothing to do.
            await s.execute("SELECT pg_advisory_xact_lock($1)", MIGRATION_LOCK)
            yield s


class _Session(DriverSession[Any]):
    """The statements' session on one pooled connection; a unique violation names its constraint."""

    dialect = POSTGRES

    async def _fetch(self, text: str, values: tuple[object, ...]) -> list[Row]:
        return list(await self._conn.fetch(text, *values))

    async def _run(self, text: str, values: tuple[object, ...]) -> None:
        await self._conn.execute(text, *values)

    async def _run_many(self, text: str, values: list[tuple[object, ...]]) -> None:
        await self._conn.executemany(text, values)

    def _unique_key(self, exc: Exception) -> str | None:
        if not isinstance(exc, asyncpg.UniqueViolationError):
            return None
        return str(exc.constraint_name or exc)

    async def execute_script(self, script: str, /) -> None:
        await self._conn.execute(script)  # no arguments: the simple protocol runs many statements


class PostgresStore(RoleStore[_Pool]):
    """Every role port over one PostgreSQL database.

    Extra query parameters in the URL are sent as server settings, so
    ``postgresql://ackgate@db/ackgate?search_path=ackgate`` keeps Ackgate's tables in their own schema.
    """

    def __init__(self, dsn: str) -> None:
        super().__init__(_Pool(dsn))

"""The store both backends share: every role port over one connection holder, opened (connect, then
migrate), pruned and closed the same way.

What differs between SQLite and PostgreSQL (the driver calls, how a connection is held, what a
transaction is, how migrations are applied) stays in :mod:`storage.sqlite` and :mod:`storage.postgres`;
the statements are written once, in :mod:`storage.roles`, :mod:`storage.deliveries` and
:mod:`storage.address_book`.
"""

from __future__ import annotations

from contextlib import AbstractAsyncContextManager
from datetime import datetime
from typing import Generic, Protocol, TypeVar

from bot.core.ports import AddressBook as AddressBookPort
from bot.core.ports import (
    AuditLog,
    ChatOutbox,
    CommandInbox,
    GrantStore,
    MessageStore,
    MirrorStore,
    RequestStore,
    SeenStore,
    SettingsStore,
    TransactionStore,
    WebhookInbox,
)
from storage import migrations
from storage.address_book import AddressBook
from storage.deliveries import Inbox, Outbox
from storage.roles import Audit, Commands, Grants, Messages, Mirrors, Requests, Seen, Settings, Transactions
from storage.sql import Database, Session, Sql


class Backend(Database, Protocol):
    """A backend's connection holder: the statements' :class:`~storage.sql.Database`, opened and closed."""

    async def open(self) -> None: ...

    async def close(self) -> None: ...

    def migrating(self) -> AbstractAsyncContextManager[Session]:
        """The transaction migrations run in, held by one process at a time."""
        ...


_SCHEMA_VERSION = Sql("SELECT coalesce(max(version), 0) AS v FROM schema_version")
_RECORD_VERSION = Sql("INSERT INTO schema_version (version, name) VALUES (:version, :name)")
_PING = Sql("SELECT 1 AS one")


DbT = TypeVar("DbT", bound=Backend)


class RoleStore(Generic[DbT]):
    """Every role port over one connection holder, with the store's own life: open, migrate, close."""

    def __init__(self, db: DbT) -> None:
        self._db = db
        # Typed as the ports, so mypy checks each role against its port.
        self.requests: RequestStore = Requests(db)
        self.grants: GrantStore = Grants(db)
        self.audit: AuditLog = Audit(db)
        self.settings: SettingsStore = Settings(db)
        self.messages: MessageStore = Messages(db)
        self.transactions: TransactionStore = Transactions(db)
        self.mirrors: MirrorStore = Mirrors(db)
        self._seen = Seen(db)
        self.seen: SeenStore = self._seen
        self.commands: CommandInbox = Commands(db)
        self.inbox: WebhookInbox = Inbox(db)
        self.outbox: ChatOutbox = Outbox(db)
        self.address_book: AddressBookPort = AddressBook(db)

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
        """Apply, in one transaction, the migrations :func:`pending` names for this database."""
        dialect = self._db.dialect.name
        async with self._db.migrating() as s:
            await s.execute_script(migrations.schema_version_table(dialect))
            row = await s.row(_SCHEMA_VERSION)
            for migration in pending(dialect, current=0 if row is None else int(row["v"]), up_to=up_to):
                await s.execute_script(migration.sql)
                await s.execute(_RECORD_VERSION, version=migration.version, name=migration.name)

    async def schema_version(self) -> int:
        """The highest migration applied to this database."""
        async with self._db.read("read the schema version") as s:
            row = await s.row(_SCHEMA_VERSION)
        return 0 if row is None else int(row["v"])

    async def ping(self) -> None:
        async with self._db.read("answer a health check") as s:
            await s.row(_PING)

    async def prune_seen(self, before: datetime) -> int:
        """Forget delivery keys recorded before ``before`` and return how many were dropped.

        Not part of the ``Store`` port (see :class:`storage.PrunesSeen`): PagerDuty redelivers for
        up to 48 hours, so a periodic job drops keys older than that to keep ``webhook_seen`` small.
        """
        return await self._seen.prune(before)

    async def close(self) -> None:
        await self._db.close()


def pending(dialect: str, *, current: int, up_to: int | None) -> list[migrations.Migration]:
    """The dialect's migrations after version ``current`` (and not past ``up_to`` when given), in order."""
    return [m for m in migrations.load(dialect) if m.version > current and (up_to is None or m.version <= up_to)]

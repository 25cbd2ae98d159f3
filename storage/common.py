"""The frame both backends share: role objects over one connection holder, and a store that builds
them, opens (connect, then migrate), prunes delivery keys and closes the same way.

What differs between SQLite and PostgreSQL (the SQL, the driver calls, how a connection is held and
how migrations are applied) stays in :mod:`storage.sqlite` and :mod:`storage.postgres`.
"""

from __future__ import annotations

import abc
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from typing import Generic, Protocol, TypeVar

from bot.core.ports import (
    AddressBook,
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


class Connector(Protocol):
    """A backend's connection holder, as far as the store's lifecycle needs it."""

    async def open(self) -> None: ...

    async def close(self) -> None: ...


DbT = TypeVar("DbT", bound=Connector)


class Role(Generic[DbT]):
    """One role port of a backend, working through the backend's connection holder."""

    def __init__(self, db: DbT) -> None:
        self._db = db


class PrunableSeen(SeenStore, Protocol):
    async def prune(self, before: datetime) -> int:
        """Delete the keys recorded strictly before ``before``; return how many went."""
        ...


@dataclass(frozen=True)
class Roles(Generic[DbT]):
    """A backend's role classes, each built with its connection holder."""

    requests: Callable[[DbT], RequestStore]
    grants: Callable[[DbT], GrantStore]
    audit: Callable[[DbT], AuditLog]
    settings: Callable[[DbT], SettingsStore]
    messages: Callable[[DbT], MessageStore]
    transactions: Callable[[DbT], TransactionStore]
    mirrors: Callable[[DbT], MirrorStore]
    seen: Callable[[DbT], PrunableSeen]
    commands: Callable[[DbT], CommandInbox]
    inbox: Callable[[DbT], WebhookInbox]
    outbox: Callable[[DbT], ChatOutbox]
    address_book: Callable[[DbT], AddressBook]


class RoleStore(abc.ABC, Generic[DbT]):
    """Every role port over one connection holder; a backend supplies :meth:`_migrate`."""

    def __init__(self, db: DbT, *, roles: Roles[DbT]) -> None:
        self._db = db
        self.requests = roles.requests(db)
        self.grants = roles.grants(db)
        self.audit = roles.audit(db)
        self.settings = roles.settings(db)
        self.messages = roles.messages(db)
        self.transactions = roles.transactions(db)
        self.mirrors = roles.mirrors(db)
        self._seen = roles.seen(db)
        self.seen: SeenStore = self._seen
        self.commands = roles.commands(db)
        self.inbox = roles.inbox(db)
        self.outbox = roles.outbox(db)
        self.address_book = roles.address_book(db)

    async def open(self, *, migrate_up_to: int | None = None) -> None:
        """Connect and apply pending migrations: all of them, or only up to ``migrate_up_to``
        (a version number; for tests of upgrades from an older schema)."""
        await self._db.open()
        try:
            await self._migrate(up_to=migrate_up_to)
        except BaseException:
            await self._db.close()
            raise

    @abc.abstractmethod
    async def _migrate(self, *, up_to: int | None) -> None:
        """Apply, in one transaction, the migrations :func:`pending` names for this database."""

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

"""Storage backends for Ackgate's ports: SQLite for one replica, PostgreSQL for several.

store = open_store(settings.database_url)
await store.open()   # connect and migrate

Both backends also offer ``prune_seen(before)`` beyond the ``Store`` port (:class:`PrunesSeen`),
to drop webhook delivery keys once PagerDuty can no longer redeliver them (48 hours).
"""

from __future__ import annotations

from datetime import datetime
from typing import Protocol, runtime_checkable

from bot.core import messages
from bot.core.errors import ConfigError
from bot.core.ports import Store
from storage.sqlite import SqliteStore

__all__ = ["PrunesSeen", "SqliteStore", "open_store"]


@runtime_checkable
class PrunesSeen(Protocol):
    """A store that can forget old delivery keys: ``isinstance(store, PrunesSeen)`` tells."""

    async def prune_seen(self, before: datetime) -> int:
        """Delete the ``seen`` keys recorded strictly before ``before``; return how many went."""
        ...


_SQLITE = "sqlite:///"


def open_store(url: str) -> Store:
    """The store for ``url``, not yet connected: call ``await store.open()``.

    ``sqlite:///relative.db``, ``sqlite:////absolute.db`` and ``sqlite:///:memory:`` open SQLite;
    ``postgresql://`` and ``postgres://`` URLs open a PostgreSQL pool.
    """
    scheme, sep, _ = url.partition("://")
    scheme = scheme.lower()
    if scheme == "sqlite" and url.startswith(_SQLITE) and len(url) > len(_SQLITE):
        return SqliteStore(url[len(_SQLITE) :])
    if scheme in ("postgresql", "postgres"):
        from storage.postgres import PostgresStore  # asyncpg only where PostgreSQL is configured

        return PostgresStore(url)
    # Only the scheme is echoed: the rest of the URL may carry a password.
    shown = f"{scheme}://" if sep else "a value without a scheme"
    raise ConfigError(messages.unknown_database_url(shown))

"""The chat address book (migration 0005) for both backends: the statements are written once,
with the dialect's placeholders, and each backend runs them through its own connection holder.

An upsert keeps the stored conversation data and display name when the new row has none, so a
lookup that only learnt an email (Slack's users.lookupByEmail) does not erase what a Teams
``conversationUpdate`` stored.
"""

# ruff: noqa: S608 - every statement is built from constant text and the dialect's placeholders only

from __future__ import annotations

from collections.abc import Callable, Mapping
from datetime import datetime
from typing import Any

from bot.core.ports import ChatAddress
from storage.codec import from_iso, iso, utc

_COLUMNS = "platform, user_id, email, display_name, conversation, updated_at"


def _upsert(mark: Callable[[int], str]) -> str:
    values = ", ".join(mark(i) for i in range(1, 7))
    return (
        f"INSERT INTO chat_address_book ({_COLUMNS}) VALUES ({values})"
        " ON CONFLICT (platform, user_id) DO UPDATE SET email = excluded.email,"
        " display_name = CASE WHEN excluded.display_name = '' THEN chat_address_book.display_name"
        " ELSE excluded.display_name END,"
        " conversation = CASE WHEN excluded.conversation = '' THEN chat_address_book.conversation"
        " ELSE excluded.conversation END,"
        " updated_at = excluded.updated_at"
    )


def _by_user(mark: Callable[[int], str]) -> str:
    return f"SELECT {_COLUMNS} FROM chat_address_book WHERE platform = {mark(1)} AND user_id = {mark(2)}"


def _by_email(mark: Callable[[int], str], *, platform: bool) -> str:
    where = f"email = {mark(1)}" + (f" AND platform = {mark(2)}" if platform else "")
    return f"SELECT {_COLUMNS} FROM chat_address_book WHERE {where} ORDER BY updated_at DESC, platform, user_id"


def _address(row: Mapping[str, Any]) -> ChatAddress:
    at = row["updated_at"]
    return ChatAddress(
        platform=str(row["platform"]),
        user_id=str(row["user_id"]),
        email=str(row["email"]),
        display_name=str(row["display_name"]),
        conversation=str(row["conversation"]),
        updated_at=from_iso(at) if isinstance(at, str) else utc(at),
    )


def _qmark(_: int) -> str:
    return "?"


def _dollar(i: int) -> str:
    return f"${i}"


class SqliteAddressBook:
    """Over :class:`storage.sqlite._Db` (its ``reading``/``writing`` connections)."""

    def __init__(self, db: Any) -> None:
        self._db = db

    async def upsert(self, address: ChatAddress, *, at: datetime) -> None:
        params = (address.platform, address.user_id, address.email.lower(), address.display_name, address.conversation)
        async with self._db.writing(f"remember the {address.platform} user {address.user_id}") as conn:
            await conn.execute(_upsert(_qmark), (*params, iso(at)))

    async def by_user(self, platform: str, user_id: str) -> ChatAddress | None:
        async with self._db.reading(f"look up the {platform} user {user_id}") as conn:
            rows = list(await conn.execute_fetchall(_by_user(_qmark), (platform, user_id)))
        return _address(rows[0]) if rows else None

    async def by_email(self, email: str, *, platform: str | None = None) -> list[ChatAddress]:
        params = (email.lower(),) if platform is None else (email.lower(), platform)
        async with self._db.reading("look up a chat user by email") as conn:
            rows = await conn.execute_fetchall(_by_email(_qmark, platform=platform is not None), params)
        return [_address(row) for row in rows]


class PostgresAddressBook:
    """Over :class:`storage.postgres._Pool` (its ``connection``)."""

    def __init__(self, db: Any) -> None:
        self._db = db

    async def upsert(self, address: ChatAddress, *, at: datetime) -> None:
        params = (address.platform, address.user_id, address.email.lower(), address.display_name, address.conversation)
        async with self._db.connection(f"remember the {address.platform} user {address.user_id}") as conn:
            await conn.execute(_upsert(_dollar), *params, utc(at))

    async def by_user(self, platform: str, user_id: str) -> ChatAddress | None:
        async with self._db.connection(f"look up the {platform} user {user_id}") as conn:
            row = await conn.fetchrow(_by_user(_dollar), platform, user_id)
        return None if row is None else _address(row)

    async def by_email(self, email: str, *, platform: str | None = None) -> list[ChatAddress]:
        params = (email.lower(),) if platform is None else (email.lower(), platform)
        async with self._db.connection("look up a chat user by email") as conn:
            rows = await conn.fetch(_by_email(_dollar, platform=platform is not None), *params)
        return [_address(row) for row in rows]

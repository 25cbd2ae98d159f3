"""The chat address book (migration 0006), written once for both backends.

An upsert keeps the stored conversation data and display name when the new row has none, so a
lookup that only learnt an email (Slack's users.lookupByEmail) does not erase what a Teams
``conversationUpdate`` stored.
"""

# ruff: noqa: S608 - every statement is built from constant text and the dialect's placeholders only

from __future__ import annotations

from datetime import datetime

from bot.core.ports import ChatAddress
from storage.codec import Row
from storage.roles import Role
from storage.sql import Sql

_COLUMNS = "platform, user_id, email, display_name, conversation, updated_at"

_UPSERT = Sql(
    f"INSERT INTO chat_address_book ({_COLUMNS})"
    " VALUES (:platform, :user_id, :email, :display_name, :conversation, :updated_at)"
    " ON CONFLICT (platform, user_id) DO UPDATE SET email = excluded.email,"
    " display_name = CASE WHEN excluded.display_name = '' THEN chat_address_book.display_name"
    " ELSE excluded.display_name END,"
    " conversation = CASE WHEN excluded.conversation = '' THEN chat_address_book.conversation"
    " ELSE excluded.conversation END,"
    " updated_at = excluded.updated_at"
)
_BY_USER = Sql(f"SELECT {_COLUMNS} FROM chat_address_book WHERE platform = :platform AND user_id = :user_id")
_ORDER = " ORDER BY updated_at DESC, platform, user_id"
_BY_EMAIL = Sql(f"SELECT {_COLUMNS} FROM chat_address_book WHERE email = :email{_ORDER}")
_BY_EMAIL_ON = Sql(f"SELECT {_COLUMNS} FROM chat_address_book WHERE email = :email AND platform = :platform{_ORDER}")


class AddressBook(Role):
    """Chat users by platform and id, or by email, as rows of ``chat_address_book``."""

    def _address(self, row: Row) -> ChatAddress:
        return ChatAddress(
            platform=str(row["platform"]),
            user_id=str(row["user_id"]),
            email=str(row["email"]),
            display_name=str(row["display_name"]),
            conversation=str(row["conversation"]),
            updated_at=self._db.dialect.load_time(row["updated_at"]),
        )

    async def upsert(self, address: ChatAddress, *, at: datetime) -> None:
        a = address
        async with self._db.write(f"remember the {a.platform} user {a.user_id}") as s:
            await s.execute(_UPSERT, a.platform, a.user_id, a.email.lower(), a.display_name, a.conversation, at)

    async def by_user(self, platform: str, user_id: str) -> ChatAddress | None:
        async with self._db.read(f"look up the {platform} user {user_id}") as s:
            row = await s.row(_BY_USER, platform=platform, user_id=user_id)
        return None if row is None else self._address(row)

    async def by_email(self, email: str, *, platform: str | None = None) -> list[ChatAddress]:
        async with self._db.read("look up a chat user by email") as s:
            if platform is None:
                rows = await s.rows(_BY_EMAIL, email=email.lower())
            else:
                rows = await s.rows(_BY_EMAIL_ON, email=email.lower(), platform=platform)
        return [self._address(row) for row in rows]

"""The webhook inbox and the chat outbox (migration 0004), written once for both backends.

Every claim is one ``UPDATE ... WHERE <claimable> RETURNING *``: under PostgreSQL's READ COMMITTED
a second writer waits on the row lock and re-checks the condition, and SQLite writes one at a
time, so exactly one claimant wins. A claim held by a token (``:token``) is finished, retried or
given up only by that token's holder.
"""

# ruff: noqa: S608 - every statement is constant text with named parameters

from __future__ import annotations

from collections.abc import Callable
from datetime import datetime
from typing import Any

from bot.core.domain import MessageRef, claim_prefix
from bot.core.ports import InboxDelivery, OutboxDelivery
from storage.codec import Row
from storage.roles import OWNED, Role
from storage.sql import Sql

_CLAIMABLE = "state = 'pending' AND next_attempt_at <= :now AND (lease_until IS NULL OR lease_until <= :now)"
_HELD = "state = 'pending' AND claim = :token"

_INBOX_ADD = Sql(
    "INSERT INTO webhook_inbox (event_id, event_type, body, received_at, next_attempt_at)"
    " VALUES (:id, :event_type, :body, :at, :at) ON CONFLICT (event_id) DO NOTHING RETURNING event_id"
)
_INBOX_CLAIM = Sql(
    "UPDATE webhook_inbox SET claim = :token, lease_until = :until, attempts = attempts + 1"
    f" WHERE event_id = :id AND {_CLAIMABLE} RETURNING *"
)
_INBOX_FINISH = Sql(
    "UPDATE webhook_inbox SET state = 'done', finished_at = :at, lease_until = NULL"
    f" WHERE event_id = :id AND {_HELD} RETURNING event_id"
)
_INBOX_RETRY = Sql(
    "UPDATE webhook_inbox SET next_attempt_at = :at, lease_until = NULL, last_error = :error"
    f" WHERE event_id = :id AND {_HELD} RETURNING event_id"
)
_INBOX_PARK = Sql(
    "UPDATE webhook_inbox SET state = 'parked', finished_at = :at, lease_until = NULL, last_error = :error"
    f" WHERE event_id = :id AND {_HELD} RETURNING event_id"
)
_INBOX_DUE = Sql(
    f"SELECT * FROM webhook_inbox WHERE {_CLAIMABLE} ORDER BY next_attempt_at, received_at, event_id LIMIT :limit"
)
_INBOX_COUNT_PARKED = Sql("SELECT count(*) AS n FROM webhook_inbox WHERE state = 'parked'")
_INBOX_PRUNE = Sql("DELETE FROM webhook_inbox WHERE state = 'done' AND finished_at < :before RETURNING event_id")
_INBOX_RELEASE = Sql(
    f"UPDATE webhook_inbox SET lease_until = NULL WHERE state = 'pending' AND lease_until IS NOT NULL AND {OWNED}"
    " RETURNING event_id"
)

# Queuing a message again (same id) starts it afresh with the new card.
_OUTBOX_ADD = Sql(
    "INSERT INTO chat_outbox (id, platform, kind, recipient, card, created_at, next_attempt_at)"
    " VALUES (:id, :platform, :kind, :recipient, :card, :created_at, :due_at) ON CONFLICT (id) DO UPDATE SET"
    " card = excluded.card, state = 'pending', attempts = 0, claim = NULL, lease_until = NULL,"
    " next_attempt_at = excluded.next_attempt_at, created_at = excluded.created_at, finished_at = NULL,"
    " last_error = ''"
)
_OUTBOX_GET = Sql("SELECT * FROM chat_outbox WHERE id = :id")
_OUTBOX_REVISE = Sql("UPDATE chat_outbox SET card = :card WHERE id = :id AND state = 'pending' RETURNING *")
_OUTBOX_DROP = Sql("DELETE FROM chat_outbox WHERE id = :id AND state = 'pending' AND lease_until IS NULL RETURNING id")
_OUTBOX_CLAIM = Sql(
    "UPDATE chat_outbox SET claim = :token, lease_until = :until, attempts = attempts + 1"
    f" WHERE id = :id AND {_CLAIMABLE} RETURNING *"
)
_OUTBOX_DELIVERED = Sql(
    "UPDATE chat_outbox SET state = 'done', finished_at = :at, lease_until = NULL,"
    f" ref_channel = :channel, ref_message_id = :message_id WHERE id = :id AND {_HELD} RETURNING id"
)
# The placeholder message a card was first shown in becomes the real message everywhere it is referenced.
_OUTBOX_SWAP_REFS = Sql(
    "UPDATE message_refs SET channel = :channel, message_id = :message_id"
    " WHERE platform = :platform AND channel = :old_channel AND message_id = :old_message_id"
)
_OUTBOX_RETRY = Sql(
    "UPDATE chat_outbox SET next_attempt_at = :at, lease_until = NULL, last_error = :error"
    f" WHERE id = :id AND {_HELD} RETURNING id"
)
_OUTBOX_EXPIRE = Sql(
    "UPDATE chat_outbox SET state = 'expired', finished_at = :at, lease_until = NULL, last_error = :error"
    f" WHERE id = :id AND {_HELD} RETURNING id"
)
_OUTBOX_DUE = Sql(f"SELECT * FROM chat_outbox WHERE {_CLAIMABLE} ORDER BY next_attempt_at, created_at, id LIMIT :limit")
_OUTBOX_COUNT_PENDING = Sql("SELECT count(*) AS n FROM chat_outbox WHERE state = 'pending'")
_OUTBOX_PRUNE = Sql("DELETE FROM chat_outbox WHERE state <> 'pending' AND finished_at < :before RETURNING id")
_OUTBOX_RELEASE = Sql(
    f"UPDATE chat_outbox SET lease_until = NULL WHERE state = 'pending' AND lease_until IS NOT NULL AND {OWNED}"
    " RETURNING id"
)


def inbox_delivery(row: Row, load_time: Callable[[Any], datetime]) -> InboxDelivery:
    return InboxDelivery(
        event_id=row["event_id"],
        event_type=row["event_type"],
        body=row["body"],
        received_at=load_time(row["received_at"]),
        state=row["state"],
        attempts=int(row["attempts"]),
        claim=row["claim"],
    )


def outbox_delivery(row: Row, load_time: Callable[[Any], datetime]) -> OutboxDelivery:
    ref = None
    if row["ref_message_id"] is not None:
        ref = MessageRef(platform=row["platform"], channel=row["ref_channel"] or "", message_id=row["ref_message_id"])
    return OutboxDelivery(
        id=row["id"],
        platform=row["platform"],
        kind=row["kind"],
        recipient=row["recipient"],
        card=row["card"],
        created_at=load_time(row["created_at"]),
        state=row["state"],
        attempts=int(row["attempts"]),
        claim=row["claim"],
        ref=ref,
    )


class _Queue(Role):
    async def _changed(self, doing: str, sql: Sql, **params: object) -> bool:
        """Run a ``RETURNING`` write alone; whether it changed a row."""
        async with self._db.write(doing) as s:
            return await s.row(sql, **params) is not None

    async def _count(self, doing: str, sql: Sql, **params: object) -> int:
        async with self._db.write(doing) as s:
            return len(await s.rows(sql, **params))

    async def _counted(self, doing: str, sql: Sql) -> int:
        async with self._db.read(doing) as s:
            row = await s.row(sql)
        return 0 if row is None else int(row["n"])


class Inbox(_Queue):
    """Webhook deliveries, as rows of ``webhook_inbox``."""

    async def add(self, event_id: str, *, event_type: str, body: str, at: datetime) -> bool:
        return await self._changed(
            "store a webhook delivery", _INBOX_ADD, id=event_id, event_type=event_type, body=body, at=at
        )

    async def claim(self, event_id: str, *, token: str, now: datetime, until: datetime) -> InboxDelivery | None:
        async with self._db.write(f"claim webhook event {event_id}") as s:
            row = await s.row(_INBOX_CLAIM, id=event_id, now=now, token=token, until=until)
        return None if row is None else inbox_delivery(row, self._db.dialect.load_time)

    async def finish(self, event_id: str, *, token: str, at: datetime) -> bool:
        return await self._changed(f"finish webhook event {event_id}", _INBOX_FINISH, id=event_id, token=token, at=at)

    async def retry(self, event_id: str, *, token: str, at: datetime, error: str) -> bool:
        doing = f"reschedule webhook event {event_id}"
        return await self._changed(doing, _INBOX_RETRY, id=event_id, token=token, at=at, error=error)

    async def park(self, event_id: str, *, token: str, at: datetime, error: str) -> bool:
        doing = f"park webhook event {event_id}"
        return await self._changed(doing, _INBOX_PARK, id=event_id, token=token, at=at, error=error)

    async def due(self, now: datetime, *, limit: int = 100) -> list[InboxDelivery]:
        async with self._db.read("list webhook deliveries to process") as s:
            rows = await s.rows(_INBOX_DUE, limit=limit, now=now)
        return [inbox_delivery(row, self._db.dialect.load_time) for row in rows]

    async def count_parked(self) -> int:
        return await self._counted("count parked webhook deliveries", _INBOX_COUNT_PARKED)

    async def prune(self, before: datetime) -> int:
        return await self._count("forget processed webhook deliveries", _INBOX_PRUNE, before=before)

    async def release_claims(self, owner: str) -> int:
        return await self._count(f"release the webhook claims of {owner}", _INBOX_RELEASE, prefix=claim_prefix(owner))


class Outbox(_Queue):
    """Chat messages waiting for the platform, as rows of ``chat_outbox``."""

    async def _one(self, doing: str, sql: Sql, **params: object) -> OutboxDelivery | None:
        async with self._db.write(doing) as s:
            row = await s.row(sql, **params)
        return None if row is None else outbox_delivery(row, self._db.dialect.load_time)

    async def add(self, delivery: OutboxDelivery, *, at: datetime) -> None:
        d = delivery
        async with self._db.write(f"queue chat message {d.id}") as s:
            await s.execute(
                _OUTBOX_ADD,
                id=d.id,
                platform=d.platform,
                kind=d.kind,
                recipient=d.recipient,
                card=d.card,
                created_at=d.created_at,
                due_at=at,
            )

    async def get(self, delivery_id: str) -> OutboxDelivery | None:
        async with self._db.read(f"read chat message {delivery_id}") as s:
            row = await s.row(_OUTBOX_GET, id=delivery_id)
        return None if row is None else outbox_delivery(row, self._db.dialect.load_time)

    async def revise(self, delivery_id: str, *, card: str) -> OutboxDelivery | None:
        revised = await self._one(f"revise chat message {delivery_id}", _OUTBOX_REVISE, id=delivery_id, card=card)
        return revised if revised is not None else await self.get(delivery_id)

    async def drop_pending(self, delivery_id: str) -> bool:
        return await self._changed(f"drop chat message {delivery_id}", _OUTBOX_DROP, id=delivery_id)

    async def claim(self, delivery_id: str, *, token: str, now: datetime, until: datetime) -> OutboxDelivery | None:
        doing = f"claim chat message {delivery_id}"
        return await self._one(doing, _OUTBOX_CLAIM, id=delivery_id, now=now, token=token, until=until)

    async def delivered(
        self, delivery_id: str, *, token: str, at: datetime, ref: MessageRef | None, placeholder: MessageRef | None
    ) -> bool:
        channel, message_id = (ref.channel, ref.message_id) if ref is not None else (None, None)
        async with self._db.transaction(f"record chat message {delivery_id} as sent") as s:
            done = await s.row(
                _OUTBOX_DELIVERED, id=delivery_id, token=token, at=at, channel=channel, message_id=message_id
            )
            if done is not None and ref is not None and placeholder is not None:
                await s.execute(
                    _OUTBOX_SWAP_REFS,
                    channel=ref.channel,
                    message_id=ref.message_id,
                    platform=placeholder.platform,
                    old_channel=placeholder.channel,
                    old_message_id=placeholder.message_id,
                )
        return done is not None

    async def retry(self, delivery_id: str, *, token: str, at: datetime, error: str) -> bool:
        doing = f"reschedule chat message {delivery_id}"
        return await self._changed(doing, _OUTBOX_RETRY, id=delivery_id, token=token, at=at, error=error)

    async def expire(self, delivery_id: str, *, token: str, at: datetime, error: str) -> bool:
        doing = f"give up chat message {delivery_id}"
        return await self._changed(doing, _OUTBOX_EXPIRE, id=delivery_id, token=token, at=at, error=error)

    async def due(self, now: datetime, *, limit: int = 100) -> list[OutboxDelivery]:
        async with self._db.read("list chat messages to send") as s:
            rows = await s.rows(_OUTBOX_DUE, limit=limit, now=now)
        return [outbox_delivery(row, self._db.dialect.load_time) for row in rows]

    async def count_pending(self) -> int:
        return await self._counted("count queued chat messages", _OUTBOX_COUNT_PENDING)

    async def prune(self, before: datetime) -> int:
        return await self._count("forget sent chat messages", _OUTBOX_PRUNE, before=before)

    async def release_claims(self, owner: str) -> int:
        doing = f"release the chat message claims of {owner}"
        return await self._count(doing, _OUTBOX_RELEASE, prefix=claim_prefix(owner))

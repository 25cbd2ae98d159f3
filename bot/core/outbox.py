"""Chat messages are never dropped: what the platform would not take is kept and sent later.

:class:`OutboxNotifier` wraps a platform's :class:`bot.core.ports.ChatNotifier`. When a send still fails
after the client's own bounded retries (429 ``Retry-After``, 5xx, connection errors), the message
is stored in the :class:`bot.core.ports.ChatOutbox` and the caller gets a *placeholder* ref
(``message_id`` ``outbox:<id>``) instead of an error, so it records the ref under its subject
(the request id of an approval card, say) exactly as it would a real one. Updating a placeholder
revises the queued card, so the message goes out showing the latest state. A failed update is
queued too, one row per message, keeping only the newest card.

:class:`OutboxWorker` runs on the expiry scheduler: it claims due deliveries by compare-and-set
with a lease (safe with several replicas), sends them through the unwrapped notifier, and on
success marks them done and, in the same transaction, swaps the placeholder for the real ref in
the message store, so later updates edit the real message. Failures back off exponentially; a
delivery older than ``max_age`` is given up, logged once and counted.
"""

from __future__ import annotations

import json
import logging
import secrets
from collections.abc import Callable, Mapping
from dataclasses import asdict
from datetime import timedelta
from typing import Any, Final

from bot.core.clock import Clock
from bot.core.domain import MessageRef, Principal, claim_token
from bot.core.errors import ChatError, StorageError
from bot.core.ports import ChatNotifier, ChatOutbox, OutboxDelivery
from bot.core.views import Action, Card, Fact, Link, Tone

log = logging.getLogger("ackgate.outbox")

PLACEHOLDER: Final = "outbox:"
DEFAULT_LEASE: Final = timedelta(seconds=60)
DEFAULT_BACKOFF: Final = timedelta(seconds=2)
MAX_BACKOFF: Final = timedelta(minutes=5)
DEFAULT_MAX_AGE: Final = timedelta(hours=6)
_ERROR_CHARS: Final = 500


# --- the neutral card as JSON -------------------------------------------------------------------


def card_to_json(card: Card) -> str:
    return json.dumps(asdict(card), separators=(",", ":"), sort_keys=True)


def card_from_json(text: str) -> Card:
    """The card :func:`card_to_json` wrote (our own rows, so a bad one is a programming error)."""
    raw: dict[str, Any] = json.loads(text)
    return Card(
        title=raw["title"],
        text=raw.get("text", ""),
        facts=tuple(Fact(**f) for f in raw.get("facts", ())),
        actions=tuple(Action(**a) for a in raw.get("actions", ())),
        links=tuple(Link(**link) for link in raw.get("links", ())),
        footnote=raw.get("footnote", ""),
        tone=Tone(raw.get("tone", Tone.INFO.value)),
    )


def _principal_json(user: Principal) -> str:
    return json.dumps(asdict(user), separators=(",", ":"), sort_keys=True)


def _principal(text: str) -> Principal:
    return Principal(**json.loads(text))


def _ref_json(ref: MessageRef) -> str:
    return json.dumps(asdict(ref), separators=(",", ":"), sort_keys=True)


def _ref(text: str) -> MessageRef:
    return MessageRef(**json.loads(text))


def placeholder_of(delivery: OutboxDelivery) -> MessageRef | None:
    """The ref handed to the caller when ``delivery`` was queued (None for updates)."""
    if delivery.kind == "channel":
        return MessageRef(delivery.platform, delivery.recipient, PLACEHOLDER + delivery.id)
    if delivery.kind == "user":
        return MessageRef(delivery.platform, _principal(delivery.recipient).user_id, PLACEHOLDER + delivery.id)
    return None


def is_placeholder(ref: MessageRef) -> bool:
    return ref.message_id.startswith(PLACEHOLDER)


def _update_id(ref: MessageRef) -> str:
    return f"u:{ref.platform}:{ref.channel}:{ref.message_id}"


# --- the wrapper --------------------------------------------------------------------------------


class OutboxNotifier:
    """A :class:`ChatNotifier` that queues what ``inner`` could not send (see the module docstring).

    If the outbox itself cannot store the message, the original ``ChatError`` is raised, so the
    caller's own handling still applies.
    """

    def __init__(
        self,
        inner: ChatNotifier,
        *,
        outbox: ChatOutbox,
        clock: Clock,
        platform: str,
        first_retry: timedelta = DEFAULT_BACKOFF,
        on_queued: Callable[[], None] = lambda: None,
    ) -> None:
        self.inner = inner
        self.first_retry = first_retry  # the client has just retried: give the platform a moment
        self.outbox = outbox
        self.clock = clock
        self.platform = platform
        self.on_queued = on_queued

    async def send_to_user(self, user: Principal, card: Card) -> MessageRef:
        try:
            return await self.inner.send_to_user(user, card)
        except ChatError as exc:
            return await self._queue("user", _principal_json(user), card, exc, channel=user.user_id)

    async def send_to_channel(self, channel: str, card: Card) -> MessageRef:
        try:
            return await self.inner.send_to_channel(channel, card)
        except ChatError as exc:
            return await self._queue("channel", channel, card, exc, channel=channel)

    async def update(self, ref: MessageRef, card: Card) -> None:
        if is_placeholder(ref):
            revised = await self._revise(ref, card)
            if revised is None:
                return
            ref = revised
        try:
            await self.inner.update(ref, card)
        except ChatError as exc:
            await self._queue("update", _ref_json(ref), card, exc, channel=ref.channel, delivery_id=_update_id(ref))
            return
        try:
            # A direct update got through: an older queued one must not overwrite it later.
            await self.outbox.drop_pending(_update_id(ref))
        except StorageError as exc:
            log.warning("could not drop a queued update of message %s: %s", ref.message_id, exc.message)

    async def _revise(self, ref: MessageRef, card: Card) -> MessageRef | None:
        """Put ``card`` on the queued message; the real ref when it was sent meanwhile, else None."""
        delivery_id = ref.message_id.removeprefix(PLACEHOLDER)
        try:
            revised = await self.outbox.revise(delivery_id, card=card_to_json(card))
        except StorageError as exc:
            raise ChatError(exc.message) from exc  # what callers of update() handle
        if revised is None:
            log.warning("queued chat message %s is gone; its update is dropped", delivery_id)
            return None
        if revised.state == "pending":
            return None  # it will be sent showing this card (the worker re-checks after sending)
        return revised.ref  # delivered (update the real message) or expired (None: nothing to update)

    async def _queue(
        self, kind: str, recipient: str, card: Card, exc: ChatError, *, channel: str, delivery_id: str | None = None
    ) -> MessageRef:
        delivery = OutboxDelivery(
            id=delivery_id or "o-" + secrets.token_hex(8),
            platform=self.platform,
            kind=kind,
            recipient=recipient,
            card=card_to_json(card),
            created_at=self.clock.now(),
            state="pending",
        )
        try:
            await self.outbox.add(delivery, at=self.clock.now() + self.first_retry)
        except StorageError as stored:
            log.warning("chat message could not be queued either: %s", stored.message)
            raise exc from None
        self.on_queued()
        log.info("chat %s to %s failed (%s); queued as %s to be sent again", kind, channel, exc.message, delivery.id)
        return MessageRef(self.platform, channel, PLACEHOLDER + delivery.id)

    async def user_by_email(self, email: str) -> Principal | None:
        return await self.inner.user_by_email(email)

    async def user_by_id(self, user_id: str) -> Principal | None:
        return await self.inner.user_by_id(user_id)


# --- the worker ---------------------------------------------------------------------------------


class OutboxWorker:
    """Sends queued chat messages through the *unwrapped* notifiers, one claim at a time."""

    def __init__(
        self,
        outbox: ChatOutbox,
        *,
        notifiers: Mapping[str, ChatNotifier],
        clock: Clock,
        lease: timedelta = DEFAULT_LEASE,
        backoff: timedelta = DEFAULT_BACKOFF,
        max_age: timedelta = DEFAULT_MAX_AGE,
        on_expired: Callable[[], None] = lambda: None,
        instance: str = "",
    ) -> None:
        self.outbox = outbox
        self.instance = instance  # named in its claims, so a restart takes back its dead ones at once
        self.notifiers = notifiers
        self.clock = clock
        self.lease = lease
        self.backoff = backoff
        self.max_age = max_age
        self.on_expired = on_expired

    async def run_once(self, *, limit: int = 50) -> int:
        """Try every delivery due now; returns how many were delivered. For the scheduler's ``jobs``."""
        sent = 0
        try:
            for due in await self.outbox.due(self.clock.now(), limit=limit):
                if await self._attempt(due.id):
                    sent += 1
        except StorageError as exc:
            # Claimed rows stay claimed until their lease lapses, then the next pass retries them.
            log.warning("the chat outbox pass stopped: %s", exc.message)
        if sent:
            log.info("sent %d queued chat messages", sent)
        return sent

    async def _attempt(self, delivery_id: str) -> bool:
        token = claim_token(self.instance)
        now = self.clock.now()
        delivery = await self.outbox.claim(delivery_id, token=token, now=now, until=now + self.lease)
        if delivery is None:
            return False  # another replica's worker has it
        notifier = self.notifiers.get(delivery.platform)
        if notifier is None:
            await self._give_up(delivery, token, f"no {delivery.platform} connection is configured")
            return False
        try:
            ref = await self._send(notifier, delivery)
        except ChatError as exc:
            await self._failed(delivery, token, exc.message)
            return False
        done = await self.outbox.delivered(
            delivery.id, token=token, at=self.clock.now(), ref=ref, placeholder=placeholder_of(delivery)
        )
        if done and ref is not None:
            await self._catch_up(notifier, delivery, ref)
        return done

    async def _send(self, notifier: ChatNotifier, delivery: OutboxDelivery) -> MessageRef | None:
        card = card_from_json(delivery.card)
        if delivery.kind == "user":
            return await notifier.send_to_user(_principal(delivery.recipient), card)
        if delivery.kind == "channel":
            return await notifier.send_to_channel(delivery.recipient, card)
        await notifier.update(_ref(delivery.recipient), card)
        return None

    async def _catch_up(self, notifier: ChatNotifier, sent: OutboxDelivery, ref: MessageRef) -> None:
        """The card may have been revised while it was being sent: show the newest one."""
        latest = await self.outbox.get(sent.id)
        if latest is None or latest.card == sent.card:
            return
        try:
            await notifier.update(ref, card_from_json(latest.card))
        except ChatError as exc:
            log.warning("could not bring queued chat message %s up to date: %s", sent.id, exc.message)

    async def _failed(self, delivery: OutboxDelivery, token: str, error: str) -> None:
        now = self.clock.now()
        if now - delivery.created_at >= self.max_age:
            await self._give_up(delivery, token, error)
            return
        delay = min(self.backoff * 2 ** max(delivery.attempts - 1, 0), MAX_BACKOFF)
        await self.outbox.retry(delivery.id, token=token, at=now + delay, error=error[:_ERROR_CHARS])
        log.info(
            "queued chat message %s still not sent (%s); next try in %ds", delivery.id, error, delay.total_seconds()
        )

    async def _give_up(self, delivery: OutboxDelivery, token: str, error: str) -> None:
        await self.outbox.expire(delivery.id, token=token, at=self.clock.now(), error=error[:_ERROR_CHARS])
        self.on_expired()
        log.warning(
            "gave up on chat message %s (%s to %s) after %d attempts over %s: %s",
            delivery.id,
            delivery.kind,
            delivery.recipient if delivery.kind == "channel" else "a user",
            delivery.attempts,
            self.clock.now() - delivery.created_at,
            error,
        )

    async def prune(self, *, kept: timedelta) -> int:
        return await self.outbox.prune(self.clock.now() - kept)

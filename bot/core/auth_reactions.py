"""What follows an authentication request's end, besides its audit line: every message showing it is
updated in place, the PagerDuty incident is resolved when the organisation asks for it, and whoever
else shows the transaction (the incident mirror) is told. :func:`auth_registry` is the map the
composition root merges into the bus's.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable, Mapping

from bot.core import auth_cards
from bot.core.auth import EventsSender, target_subject
from bot.core.auth_events import AuthDecided, AuthExpired
from bot.core.bus import Reaction
from bot.core.clock import Clock
from bot.core.domain import AuthTransaction, MessageRef
from bot.core.errors import ChatError, ConfigError, PagerDutyError
from bot.core.events import Event
from bot.core.org_settings import EVENTS_STATUS, OrgSettings
from bot.core.pagerduty_event_bodies import resolve_body, status_after
from bot.core.ports import ChatNotifier, MessageStore
from bot.core.views import Card

log = logging.getLogger("ackgate.auth")

TransactionChanged = Callable[[str], Awaitable[None]]


class AuthReactions:
    def __init__(
        self,
        *,
        notifiers: Mapping[str, ChatNotifier],
        messages: MessageStore,
        org: OrgSettings,
        events: EventsSender,
        clock: Clock,
    ) -> None:
        self.notifiers = notifiers
        self.messages = messages
        self.org = org
        self.events = events
        self.clock = clock

    async def _update_all(self, refs: list[MessageRef], card: Card, tx: AuthTransaction) -> int:
        updated = 0
        for ref in refs:
            notifier = self.notifiers.get(ref.platform)
            if notifier is None:
                log.warning("no chat notifier for platform %s; message of %s not updated", ref.platform, tx.id)
                continue
            try:
                await notifier.update(ref, card)
                updated += 1
            except ChatError:
                log.warning("could not update message %s of %s", ref.message_id, tx.id, exc_info=True)
        return updated

    async def update_messages(self, event: AuthDecided | AuthExpired) -> None:
        """Show the outcome in the requester's message and take the link out of the target's.

        When none of the requester's messages could be updated they get a new one, unless the
        target was never reached: then the command's own reply already told them.
        """
        tx = event.transaction
        await self._update_all(await self.messages.refs(target_subject(tx.id)), auth_cards.target_done_card(tx), tx)
        card = auth_cards.requester_card(tx)
        if await self._update_all(await self.messages.refs(tx.id), card, tx) or not tx.channels:
            return
        notifier = self.notifiers.get(tx.requester.platform)
        if notifier is not None:
            await self.messages.add(tx.id, await notifier.send_to_user(tx.requester, card))

    async def resolve_incident(self, event: AuthDecided | AuthExpired) -> None:
        """With ``resolve_on_complete``, resolve the transaction's incident (same dedup key and routing key)."""
        tx = event.transaction
        if tx.dedup_key is None or not await self.org.resolve_on_complete():
            return
        try:
            key = await self.org.integration_key()
        except ConfigError as exc:
            log.warning("incident of %s not resolved: %s", tx.id, exc.message)
            return
        if key is None:
            log.warning("incident of %s not resolved: no integration key is set any more", tx.id)
            return
        try:
            # the stored key is the one PagerDuty acknowledged for the trigger
            result = await self.events.send({**resolve_body(tx.id, routing_key=key), "dedup_key": tx.dedup_key})
        except PagerDutyError as exc:
            log.warning("incident of %s not resolved: %s", tx.id, exc.message)
            await self.org.record_status(EVENTS_STATUS, status_after(exc, self.clock.now()))
            return
        await self.org.record_status(EVENTS_STATUS, status_after(result, self.clock.now()))


def auth_registry(
    reactions: AuthReactions, *, transaction_changed: TransactionChanged | None = None
) -> dict[type[Event], list[Reaction]]:
    """The side effects of authentication events. ``transaction_changed`` (e.g. the incident mirror's
    :meth:`bot.core.mirror.MirrorService.transaction_changed`) is called with the transaction id after each."""
    after: list[Reaction] = []
    if transaction_changed is not None:
        changed = transaction_changed

        async def tell_mirror(event: AuthDecided | AuthExpired) -> None:
            await changed(event.transaction.id)

        after.append(tell_mirror)
    ended: list[Reaction] = [reactions.update_messages, reactions.resolve_incident, *after]
    return {AuthDecided: ended, AuthExpired: list(ended)}

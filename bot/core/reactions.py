"""What follows each event besides its audit line: chat messages, in-place updates, metrics and
waking the expiry scheduler. :func:`registry` is the one explicit map from event to side effects.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping
from datetime import datetime

from bot.core import cards
from bot.core.approval_cards import ApprovalCards
from bot.core.bus import Reaction
from bot.core.domain import AccessRequest, EndReason, Principal, split_channel
from bot.core.errors import ChatError
from bot.core.events import (
    SYSTEM,
    AccessGranted,
    AccessRefused,
    ApprovalRecorded,
    ApprovalRequested,
    Event,
    GrantEnded,
    GrantExtended,
    MissingGrantCreated,
    ProvisioningFailed,
    ProvisioningResumed,
    RequestApproved,
    RequestDenied,
    RequestTimedOut,
    RevokeFailed,
)
from bot.core.ports import AddressBook, ChatNotifier, MessageStore
from bot.core.views import Card

log = logging.getLogger("ackgate.reactions")


class Metrics:
    """The counters the reactions feed; the app binds them to Prometheus."""

    def outcome(self, outcome: str) -> None:
        """A request reached ``outcome`` (granted, pending, refused, denied, timed_out, failed)."""

    def revoke_lag(self, seconds: float) -> None:
        """A grant ended ``seconds`` after its expiry."""

    def revoke_failure(self) -> None:
        """A provisioner revoke attempt failed and will be retried."""


_UNREACHED_KEPT = 1000


class Reactions:
    def __init__(
        self,
        *,
        notifiers: Mapping[str, ChatNotifier],
        messages: MessageStore,
        metrics: Metrics | None = None,
        wake_scheduler: Callable[[datetime], None] = lambda at: None,
        address_book: AddressBook | None = None,
        card_claims: ApprovalCards | None = None,
    ) -> None:
        self.card_claims = card_claims  # the claim that posts each request's approval cards once
        self.notifiers = notifiers
        self.messages = messages
        self.metrics = metrics or Metrics()
        self.wake_scheduler = wake_scheduler
        self.address_book = address_book
        self.unreached: dict[str, tuple[str, ...]] = {}
        """Approvers no chat platform could reach, by request id, for the requester's answer (in-process,
        read once by :class:`bot.core.access.AccessService` right after the cards are posted)."""

    def _notifier(self, platform: str) -> ChatNotifier | None:
        notifier = self.notifiers.get(platform)
        if notifier is None:
            log.warning("no chat notifier for platform %s", platform)
        return notifier

    async def _approver(self, email: str, *, fallback: str) -> Principal | None:
        """A named approver on the platform the address book knows them on (newest first, when several
        platforms are configured), else looked up by email on ``fallback`` (the requester's), then on
        the other configured platforms in turn."""
        if self.address_book is not None and len(self.notifiers) > 1:
            for address in await self.address_book.by_email(email):
                if address.platform in self.notifiers:
                    return Principal(address.platform, address.user_id, address.email, address.display_name)
        platforms = [fallback, *(name for name in self.notifiers if name != fallback)]
        for platform in platforms:
            notifier = self._notifier(platform)
            if notifier is None:
                continue
            approver = await notifier.user_by_email(email)
            if approver is not None:
                return approver
        log.warning("approver %s has no chat account Ackgate can reach; not notified", email)
        return None

    async def _tell(self, who: Principal, card: Card) -> None:
        notifier = self._notifier(who.platform)
        if notifier is not None:
            await notifier.send_to_user(who, card)

    # --- approvals ------------------------------------------------------------------------

    async def post_approval_request(self, event: ApprovalRequested) -> None:
        await self.show_approvers(event.request)

    async def show_approvers(self, request: AccessRequest) -> bool:
        """Post the Approve/Deny card to the flow's channel, or DM each eligible approver, once:
        only the holder of the request's card claim posts (see :mod:`bot.core.approval_cards`).
        Returns whether this caller posted."""
        if self.card_claims is not None and not await self.card_claims.claim(request.id):
            return False
        await self._post_approval_cards(request)
        if self.card_claims is not None:
            await self.card_claims.posted(request.id)
        return True

    async def _post_approval_cards(self, request: AccessRequest) -> None:
        if request.approval_channel:
            # The channel names its platform (a bare id is Slack's): not necessarily the requester's.
            platform, channel = split_channel(request.approval_channel)
            notifier = self._notifier(platform)
            if notifier is not None:
                card = cards.approval_card(request)
                await self.messages.add(request.id, await notifier.send_to_channel(channel, card))
            return
        reachable: list[tuple[Principal, ChatNotifier]] = []
        unreached: list[str] = []
        for email in request.approvers:
            try:
                approver = await self._approver(email, fallback=request.requester.platform)
            except ChatError:
                log.exception("could not look up approver %s of %s", email, request.id)
                approver = None
            notifier = None if approver is None else self._notifier(approver.platform)
            if approver is None or notifier is None:
                unreached.append(email)
            else:
                reachable.append((approver, notifier))
        # Whoever cannot be reached is named on the card (and, through ``unreached``, to the requester).
        card = cards.approval_card(request, unreached=unreached)
        if unreached:
            self.unreached[request.id] = tuple(unreached)
            while len(self.unreached) > _UNREACHED_KEPT:
                self.unreached.pop(next(iter(self.unreached)))
        for approver, notifier in reachable:
            try:
                await self.messages.add(request.id, await notifier.send_to_user(approver, card))
            except ChatError:
                log.exception("could not notify approver %s of %s", approver.email, request.id)

    async def update_approval_messages(
        self, event: ApprovalRecorded | RequestApproved | RequestDenied | RequestTimedOut | ProvisioningFailed
    ) -> None:
        """Redraw every approver's card: the count, the decision, or (after a failed provisioning)
        that the approved access could not be given, so no card still says "Approved"."""
        if isinstance(event, RequestApproved) and event.by == SYSTEM:
            return  # approved as it was made (automatic access): no approver was ever shown a card
        request = event.request
        refs = await self.messages.refs(request.id)
        if not refs:
            return
        failed = event.grant if isinstance(event, ProvisioningFailed) else None
        card = cards.approval_card(request, failed=failed)
        for ref in refs:
            notifier = self._notifier(ref.platform)  # where the message is, whoever asked
            if notifier is None:
                continue
            try:
                await notifier.update(ref, card)
            except ChatError:
                log.exception("could not update approval message %s for %s", ref.message_id, request.id)

    # --- the requester and the holder -----------------------------------------------------

    async def tell_requester_decision(self, event: RequestDenied | RequestTimedOut) -> None:
        await self._tell(event.request.requester, cards.decision_card(event.request))

    async def tell_holder_granted(self, event: AccessGranted) -> None:
        # Automatic grants are answered in the command's own reply; approved and recovered ones arrive later.
        if event.grant.approved_by or event.recovered:
            await self._tell(event.grant.holder, cards.granted_card(event.grant))

    async def tell_provisioning_failed(self, event: ProvisioningFailed) -> None:
        card = cards.failed_card(event.grant, event.error)
        if event.grant.approved_by or event.recovered:
            await self._tell(event.grant.holder, card)
        for email in event.grant.approved_by:
            approver = await self._approver(email, fallback=event.request.requester.platform)
            notifier = None if approver is None else self._notifier(approver.platform)
            if approver is not None and notifier is not None:
                await notifier.send_to_user(approver, card)

    async def tell_holder_ended(self, event: GrantEnded) -> None:
        if event.grant.end_reason is EndReason.PROVISIONING_FAILED:
            return  # the roll-back of a failed provisioning: the holder was told it failed
        # Whoever revoked their own grant was answered already.
        if event.grant.ended_by in (SYSTEM, None) or event.grant.ended_by != event.grant.holder.email.lower():
            await self._tell(event.grant.holder, cards.ended_card(event.grant))

    # --- scheduler and metrics ------------------------------------------------------------

    async def wake(self, event: AccessGranted | GrantExtended) -> None:
        self.wake_scheduler(event.grant.expires_at)

    def count(self, outcome: str) -> Reaction:
        async def counted(event: Event) -> None:
            self.metrics.outcome(outcome)

        counted.__name__ = f"count_{outcome}"
        return counted

    async def record_lag(self, event: GrantEnded) -> None:
        if str(event.grant.end_reason) == "expired":
            self.metrics.revoke_lag(max((event.at - event.grant.expires_at).total_seconds(), 0.0))

    async def record_revoke_failure(self, event: RevokeFailed) -> None:
        self.metrics.revoke_failure()


def registry(r: Reactions) -> dict[type[Event], list[Reaction]]:
    """The one map from events to side effects (each event's audit is written before these, in the
    state change's own transaction)."""
    return {
        ApprovalRequested: [r.post_approval_request, r.count("pending")],
        ApprovalRecorded: [r.update_approval_messages],
        RequestApproved: [r.update_approval_messages],
        RequestDenied: [r.update_approval_messages, r.tell_requester_decision, r.count("denied")],
        RequestTimedOut: [r.update_approval_messages, r.tell_requester_decision, r.count("timed_out")],
        AccessRefused: [r.count("refused")],
        AccessGranted: [r.tell_holder_granted, r.wake, r.count("granted")],
        ProvisioningFailed: [r.update_approval_messages, r.tell_provisioning_failed, r.count("failed")],
        ProvisioningResumed: [],
        MissingGrantCreated: [],
        GrantExtended: [r.wake],
        GrantEnded: [r.tell_holder_ended, r.record_lag],
        RevokeFailed: [r.record_revoke_failure],
    }

"""Each pending request's approval cards are posted once, even across a crash and across replicas.

The path that stores a request posts its cards right after the commit (the ``ApprovalRequested``
reaction). A kill between the two would leave the request PENDING with no approver ever shown it,
until it times out. So posting is claimed, by compare-and-set with a lease, in
:meth:`bot.core.ports.MessageStore.claim_cards`: the live path claims before it posts and marks the
request posted after; the reconciler (:meth:`ApprovalCards.post_missing`) posts for PENDING requests
that nobody posted for and nobody is posting for. Whoever loses the claim posts nothing, so the
reconciler never doubles a card the live path is posting. A claim names its instance, so an
instance that restarts releases its own dead claims at once (:meth:`bot.core.ports.MessageStore.release_card_claims`);
a rival replica's dead claim waits for its lease.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from datetime import timedelta
from typing import Final

from bot.core.clock import Clock
from bot.core.domain import AccessRequest
from bot.core.grants import isolated
from bot.core.ports import MessageStore, RequestStore

log = logging.getLogger("ackgate.approval_cards")

CARD_LEASE: Final = timedelta(seconds=60)  # far above the time to DM a few approvers
# The live path claims a few milliseconds after its commit; the reconciler leaves it this long.
GRACE: Final = timedelta(seconds=3)

Post = Callable[[AccessRequest], Awaitable[bool]]  # True when this caller claimed and posted


class ApprovalCards:
    def __init__(
        self,
        *,
        messages: MessageStore,
        requests: RequestStore,
        clock: Clock,
        instance: str = "",
        lease: timedelta = CARD_LEASE,
    ) -> None:
        self.messages = messages
        self.requests = requests
        self.clock = clock
        self.instance = instance
        self.lease = lease
        self.post: Post | None = None  # what shows approvers the card (the reactions), set at composition

    async def claim(self, request_id: str) -> bool:
        now = self.clock.now()
        won = await self.messages.claim_cards(request_id, owner=self.instance, now=now, until=now + self.lease)
        if not won:
            log.debug("request %s: its approval cards are posted (or being posted) elsewhere", request_id)
        return won

    async def posted(self, request_id: str) -> None:
        await self.messages.cards_posted(request_id, owner=self.instance, at=self.clock.now())

    async def post_missing(self, *, limit: int = 50) -> int:
        """Post the cards of PENDING requests no approver was shown (a crash before the post)."""
        if self.post is None:
            return 0
        now = self.clock.now()
        posted = 0
        for request in await self.requests.pending_without_cards(now, created_before=now - GRACE, limit=limit):
            if await isolated("posting approval cards", request.id, self.post(request)):
                posted += 1
        if posted:
            log.info("posted the approval cards of %d pending request(s) no approver was shown", posted)
        return posted

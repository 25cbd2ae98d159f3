"""The reconciler: drives side effects from durable state, so a crash never leaves a grant half-done.

It finds, in small pages:

- grants left PROVISIONING with no live claim (the process that was provisioning them died):
  claimed by compare-and-set, then the provisioner is asked again (its idempotency key makes a
  repeat harmless); the grant goes ACTIVE, or is rolled back, revoked and the holder told;
- APPROVED requests without a grant (left by an older version): the grant is created and provisioned;
- PENDING requests that already have all their approvals (an older version crashed between the
  last approval and the decision): approved by their last approver, then granted as above.
- PENDING requests no approver was shown (a kill between storing the request and posting its
  cards): the cards are posted, under the request's card claim (:mod:`bot.core.approval_cards`).

Each action commits with its audit rows. It runs once at start-up (bounded: the app waits for it
only briefly, see :func:`start_up`), first taking back the claims this instance held before it
restarted, and then on every pass of the expiry scheduler. Safe on several
replicas: every take-over is a compare-and-set, and losing one is a normal outcome (DEBUG).
"""

from __future__ import annotations

import asyncio
import logging

from bot.core import lanes
from bot.core.approval_cards import ApprovalCards
from bot.core.clock import Clock
from bot.core.domain import GrantStatus
from bot.core.grants import GrantLifecycle, isolated
from bot.core.ports import Store

log = logging.getLogger("ackgate.reconciler")

PAGE = 50  # items of each kind per pass, so one pass stays short; the next pass takes the rest
START_UP_WAIT_SECONDS = 5.0


class Reconciler:
    def __init__(
        self,
        lifecycle: GrantLifecycle,
        *,
        store: Store,
        clock: Clock,
        page: int = PAGE,
        cards: ApprovalCards | None = None,
    ) -> None:
        self.lifecycle = lifecycle
        self.store = store
        self.clock = clock
        self.page = page
        self.cards = cards

    async def release_own_claims(self) -> int:
        """This instance (re)started: the claims its previous run held died with it, so they are
        taken over now rather than when their leases run out."""
        owner = self.lifecycle.instance
        if not owner:
            return 0
        released = await self.store.grants.release_claims(owner, now=self.clock.now())
        if released:
            ids = ", ".join(g.id for g in released)
            log.info("took back %d claim(s) of this instance's previous run: %s", len(released), ids)
        # The other work it held: commands owed an answer, webhook events, queued chat messages,
        # mirror posts and approval cards; their recovery passes take them at once now.
        others = {
            "chat command": await self.store.commands.release_claims(owner, now=self.clock.now()),
            "webhook event": await self.store.inbox.release_claims(owner),
            "chat message": await self.store.outbox.release_claims(owner),
            "mirror post": await self.store.mirrors.release_posts(owner, now=self.clock.now()),
            "approval card": await self.store.messages.release_card_claims(owner, now=self.clock.now()),
        }
        for what, count in others.items():
            if count:
                log.info("took back %d %s claim(s) of this instance's previous run", count, what)
        return len(released) + sum(others.values())

    async def run_once(self) -> int:
        """One bounded pass; returns how many grants it finished, rolled back or created."""
        repaired = await self.finish_provisioning() + await self.grant_approved() + await self.approve_stranded()
        if self.cards is not None:
            repaired += await isolated("posting missing approval cards", "the store", self.cards.post_missing()) or 0
        if repaired:
            log.info("reconciler repaired %d grant(s) left by a crash", repaired)
        return repaired

    async def finish_provisioning(self) -> int:
        count = 0
        for grant in await self.store.grants.provisioning_due(self.clock.now(), limit=self.page):
            done = await isolated("finishing provisioning", grant.id, self.lifecycle.resume_provisioning(grant))
            if done is not None:
                log.info("grant %s, left provisioning, is now %s", grant.id, _outcome(done.status))
                count += 1
        return count

    async def grant_approved(self) -> int:
        count = 0
        for request in await self.store.requests.approved_without_grant(limit=self.page):
            done = await isolated("granting approved request", request.id, self.lifecycle.provision_approved(request))
            if done is not None:
                log.info("approved request %s had no grant; grant %s is now %s", request.id, done.id, done.status.value)
                count += 1
        return count

    async def approve_stranded(self) -> int:
        count = 0
        # The database picks them (an index of pending requests): no pending request is read otherwise.
        for request in await self.store.requests.stranded_pending(self.clock.now(), limit=self.page):
            done = await isolated(
                "approving fully approved request", request.id, self.lifecycle.approve_stranded(request)
            )
            if done is not None:
                log.info(
                    "request %s had all its approvals but was pending; grant %s is now %s",
                    request.id,
                    done.id,
                    done.status.value,
                )
                count += 1
        return count


def _outcome(status: GrantStatus) -> str:
    return "rolled back" if status in (GrantStatus.REVOKING, GrantStatus.FAILED) else status.value


async def start_up(reconciler: Reconciler, *, wait: float = START_UP_WAIT_SECONDS) -> asyncio.Task[int] | None:
    """Run a first pass before serving, waiting at most ``wait`` seconds for it; a longer pass (a
    slow provisioner) carries on in the background and its task is returned, for the caller to
    cancel at shutdown. None when it finished in time."""
    task = lanes.spawn(_first_pass(reconciler), name="ackgate-reconcile-start-up")
    done, _ = await asyncio.wait({task}, timeout=wait)
    if task in done:
        return None
    log.info("start-up reconciliation is still running; serving meanwhile")
    return task


async def _first_pass(reconciler: Reconciler) -> int:
    await isolated("releasing dead claims", reconciler.lifecycle.instance, reconciler.release_own_claims())
    repaired = await isolated("start-up reconciliation", "the store", reconciler.run_once())
    return repaired or 0

"""The life of a grant once access is decided: provisioning, listing, revoking, extending and
expiring, with the provisioner's failures retried until they are not.

Every state change commits with its audit rows (:meth:`bot.core.bus.MessageBus.commit`); side effects
hang off its events after the commit. Each provisioner call is made by whoever holds the claim on
it: a lease, stored as the grant's ``next_attempt_at`` and taken by compare-and-set, so two passes
or two replicas never both call the provisioner for the same attempt. A claim outlives the longest
call the provisioner can make (:func:`provisioner_lease`); after a crash the lease runs out and the
reconciler (:mod:`bot.core.reconciler`) or the next revoke pass takes over.
"""

from __future__ import annotations

import asyncio
import difflib
import logging
from collections.abc import Awaitable, Mapping
from datetime import datetime, timedelta
from typing import TypeVar

from bot.core import cards, gates, messages
from bot.core.bus import MessageBus
from bot.core.clock import Clock
from bot.core.domain import AccessRequest, EndReason, Grant, GrantStatus, Principal, RequestStatus, new_id
from bot.core.durations import parse_duration
from bot.core.errors import (
    AckgateError,
    AlreadyDecided,
    GateRefused,
    NotAuthorized,
    NotFound,
    ProvisioningError,
    UsageError,
)
from bot.core.events import (
    SYSTEM,
    AccessGranted,
    ActionRefused,
    Event,
    GateEvaluated,
    GrantEnded,
    GrantExpired,
    GrantExtended,
    GrantRevoked,
    MissingGrantCreated,
    ProvisioningFailed,
    ProvisioningResumed,
    RequestApproved,
    RevokeFailed,
)
from bot.core.policy import Flow, Policy, ProvisionerSpec, Resource
from bot.core.ports import PagerDutyDirectory, Provisioner, Store
from bot.core.views import Card

log = logging.getLogger("ackgate.grants")

REVOKE_BACKOFF_MAX = timedelta(minutes=10)
EXPIRY_CONCURRENCY = 32  # provisioner revoke calls in flight at once while a page of expired grants ends
EXPIRY_PAGE = 250  # expired grants ended per pair of transactions (REVOKING, then ENDED)
EXPIRY_PAGES_PER_PASS = 20  # then the scheduler's other work gets its turn (it comes back at once)
# Messages about ended grants are sent behind the revokes: at most TELL_CONCURRENCY pages' worth at
# a time, and ending more grants waits only once TELL_BACKLOG messages are waiting (about 2 KB each).
TELL_CONCURRENCY = 8
TELL_BACKLOG = 10_000
# The longest wait between two attempts of a webhook provisioner (bot.adapters.provisioners.MAX_BACKOFF_SECONDS;
# a test keeps the two equal: the core may not import the HTTP adapter).
PROVISIONER_BACKOFF_CAP_SECONDS = 30.0
# Room for clock skew between replicas and a busy event loop; also the whole lease of ``noop``.
LEASE_MARGIN = timedelta(seconds=30)

T = TypeVar("T")


def provisioner_lease(spec: ProvisionerSpec | None) -> timedelta:
    """How long a claim on one provisioner call lasts: longer than the call can take, with every
    attempt timing out and every wait between attempts at its cap, plus :data:`LEASE_MARGIN`.
    With the defaults (10 s timeout, 5 attempts) that is 50 + 120 + 30 = 200 s. Longer would only
    delay the take-over after a crash; shorter would let a slow call be taken over and repeated."""
    if spec is None or spec.type == "noop":
        return LEASE_MARGIN
    worst = spec.timeout_seconds * spec.max_attempts + PROVISIONER_BACKOFF_CAP_SECONDS * (spec.max_attempts - 1)
    return timedelta(seconds=worst) + LEASE_MARGIN


async def isolated(what: str, subject: str, work: Awaitable[T]) -> T | None:
    """Run one item of a pass so that its failure cannot abort the others; None when it failed.

    A lost race is the normal outcome of several replicas sharing the work (DEBUG); an expected
    error is one WARNING line; anything else is a WARNING with its traceback, once.
    """
    try:
        return await work
    except AlreadyDecided as exc:
        log.debug("%s of %s: someone else got there first (%s)", what, subject, exc.message)
    except AckgateError as exc:
        log.warning("%s of %s failed: %s", what, subject, exc.message)
    except Exception:
        log.warning("%s of %s failed unexpectedly", what, subject, exc_info=True)
    return None


class GrantLifecycle:
    def __init__(
        self,
        *,
        policy: Policy,
        store: Store,
        pagerduty: PagerDutyDirectory,
        provisioners: Mapping[str, Provisioner],
        bus: MessageBus,
        clock: Clock,
        admins: frozenset[str] = frozenset(),
        lease: timedelta | None = None,
        instance: str = "",
    ) -> None:
        self.policy = policy
        self.store = store
        self.pagerduty = pagerduty
        self.provisioners = provisioners
        self.bus = bus
        self.clock = clock
        self.admins = admins
        self.lease = lease  # one lease for every provisioner (tests); None: :func:`provisioner_lease`
        # Who this process is in the claims it takes: stable across its restarts, unique among live ones.
        self.instance = instance
        # Chat messages about expired grants, sent behind the revokes (see :meth:`expire_due`).
        self._telling: set[asyncio.Task[None]] = set()
        self._untold = 0  # events waiting in those tasks
        self._tell_slots: asyncio.Semaphore | None = None
        self._not_revoking: asyncio.Event | None = None  # cleared while expire_due ends grants

    def resource_named(self, name: str) -> Resource:
        resource = self.policy.resource(name)
        if resource is None:
            known = [r.name for r in self.policy.resources]
            close = difflib.get_close_matches(name, known, n=3, cutoff=0.5)
            raise UsageError(messages.unknown_resource(name, close, known))
        return resource

    def flow_named(self, name: str) -> Flow | None:
        return next((f for f in self.policy.flows if f.name == name), None)

    async def refuse_action(self, actor: Principal, action: str, subject: str, error: NotAuthorized) -> NotAuthorized:
        await self.bus.publish(ActionRefused(self.clock.now(), actor.email, action, subject, error.message))
        return error

    # --- provisioning ---------------------------------------------------------------------

    def _provisioner_key(self, resource_name: str) -> str:
        resource = self.policy.resource(resource_name)
        return resource.provisioner if resource is not None else "noop"

    def _provisioner(self, resource_name: str) -> Provisioner:
        return self.provisioners[self._provisioner_key(resource_name)]

    def lease_for(self, resource_name: str) -> timedelta:
        """How long a claim on a provisioner call for this resource lasts."""
        if self.lease is not None:
            return self.lease
        return provisioner_lease(self.policy.provisioners.get(self._provisioner_key(resource_name)))

    async def shift_end(self, request: AccessRequest, flow: Flow | None) -> datetime | None:
        """For flows capped at the shift: when the requester's current on-call shift ends."""
        if flow is None or not flow.cap_at_shift_end:
            return None
        verdict = await gates.evaluate(flow, gates.GateContext(self.pagerduty, request.requester))
        return verdict.shift_end

    def new_grant(
        self, request: AccessRequest, *, approved_by: tuple[str, ...], shift_end: datetime | None, now: datetime
    ) -> Grant:
        """A PROVISIONING grant for ``request``, claimed (its lease set) by whoever stores it."""
        return Grant(
            id=new_id("g"),
            request_id=request.id,
            resource=request.resource,
            holder=request.requester,
            flow=request.flow,
            status=GrantStatus.PROVISIONING,
            created_at=now,
            expires_at=capped(now + timedelta(seconds=request.duration_seconds), shift_end),
            justification=request.justification,
            incident=request.incident,
            approved_by=approved_by,
            next_attempt_at=now + self.lease_for(request.resource),
            claimed_by=self.instance,
        )

    async def activate(
        self,
        grant: Grant,
        request: AccessRequest,
        *,
        cap: datetime | None,
        later: list[Event],
        recovered: bool = False,
    ) -> Grant:
        """Call the provisioner for a PROVISIONING grant this caller has claimed: the grant goes
        ACTIVE (its clock starts now, capped at ``cap``), or is rolled back when the call fails.
        Events go to ``later`` (:meth:`MessageBus.reacting_after`), so they are reacted to in order."""
        try:
            await self._provisioner(grant.resource).grant(grant)
        except ProvisioningError as exc:
            return await self._roll_back(grant, request, exc.message, recovered=recovered, later=later)
        except Exception as exc:  # a provisioner's bug must not leave the grant half-done
            log.warning("provisioner grant of %s raised unexpectedly", grant.id, exc_info=True)
            error = messages.provisioner_crashed(exc)
            return await self._roll_back(grant, request, error, recovered=recovered, later=later)
        # The clock starts when access is real, not when it was asked for.
        activated = self.clock.now()
        length = timedelta(seconds=request.duration_seconds)
        return await self.bus.commit(
            lambda audit: self.store.grants.transition(
                grant.id,
                expected=GrantStatus.PROVISIONING,
                new=GrantStatus.ACTIVE,
                at=activated,
                expires_at=capped(activated + length, cap),
                audit=audit,
            ),
            lambda active: [AccessGranted(activated, active, request, recovered=recovered)],
            defer_to=later,
        )

    async def _roll_back(
        self, grant: Grant, request: AccessRequest, error: str, *, recovered: bool, later: list[Event]
    ) -> Grant:
        """Provisioning failed: mark the grant so (REVOKING, reason PROVISIONING_FAILED; FAILED once
        the revoke is confirmed) and revoke, since the provisioner may have done part of it."""
        now = self.clock.now()
        failing = await self.bus.commit(
            lambda audit: self.store.grants.transition(
                grant.id,
                expected=GrantStatus.PROVISIONING,
                new=GrantStatus.REVOKING,
                at=now,
                end_reason=EndReason.PROVISIONING_FAILED,
                ended_by=SYSTEM,
                last_error=error,
                next_attempt_at=now + self.lease_for(grant.resource),
                claimed_by=self.instance,
                audit=audit,
            ),
            lambda g: [ProvisioningFailed(now, g, request, error, recovered=recovered)],
            defer_to=later,
        )
        return await self._finish_revoke(failing, later=later)

    # --- recovery (the reconciler calls these) ---------------------------------------------

    async def resume_provisioning(self, grant: Grant) -> Grant:
        """Finish a grant a crash left PROVISIONING: claim it (``AlreadyDecided`` if someone holds
        a live claim), then call the provisioner again (its idempotency key makes a repeat
        harmless): ACTIVE, or rolled back and revoked. The holder is told either way."""
        # Its request says how long access lasts; a grant without one (never written by Ackgate)
        # still gets finished, for as long as it was first given.
        request = await self.store.requests.get(grant.request_id) or _stand_in_request(grant)
        now = self.clock.now()
        async with self.bus.reacting_after() as later:
            claimed = await self.bus.commit(
                lambda audit: self.store.grants.claim_provisioning(
                    grant.id,
                    now=now,
                    lease_until=now + self.lease_for(grant.resource),
                    owner=self.instance,
                    audit=audit,
                ),
                lambda g: [ProvisioningResumed(now, g)],
                defer_to=later,
            )
            flow = self.flow_named(claimed.flow)
            # The shift end is not stored; the expiry stored at creation was capped by it (and is earlier).
            cap = claimed.expires_at if flow is None or flow.cap_at_shift_end else None
            return await self.activate(claimed, request, cap=cap, recovered=True, later=later)

    async def provision_approved(self, request: AccessRequest) -> Grant:
        """Give an APPROVED request that has no grant its grant (``AlreadyDecided`` if another
        replica did first), then provision it; the holder is told the outcome."""
        flow = self.flow_named(request.flow)
        shift_end = await self.shift_end(request, flow)
        now = self.clock.now()
        grant = self.new_grant(
            request, approved_by=tuple(a.approver_email for a in request.approvals), shift_end=shift_end, now=now
        )
        async with self.bus.reacting_after() as later:
            stored = await self.bus.commit(
                lambda audit: self.store.grants.add_for_request(grant, audit=audit),
                lambda g: [MissingGrantCreated(now, g, request)],
                defer_to=later,
            )
            return await self.activate(stored, request, cap=shift_end, recovered=True, later=later)

    async def approve_stranded(self, request: AccessRequest) -> Grant:
        """Decide a PENDING request that already has all its approvals (left by an older version
        crashing between the last approval and the decision): APPROVED by its last approver,
        audited, then given its grant as :meth:`provision_approved` does (a crash in between
        leaves an approved request without a grant, which the reconciler also repairs).
        ``AlreadyDecided`` when someone else decided it first."""
        last = request.approvals[-1]
        now = self.clock.now()
        approved = await self.bus.commit(
            lambda audit: self.store.requests.decide(
                request.id,
                expected=RequestStatus.PENDING,
                new=RequestStatus.APPROVED,
                by=last.approver_email,
                at=now,
                audit=audit,
            ),
            lambda r: [RequestApproved(now, r, last.approver_email)],
        )
        return await self.provision_approved(approved)

    # --- grants: list, revoke, extend ------------------------------------------------------

    async def list_for(self, actor: Principal) -> Card:
        requests = await self.store.requests.list_for(actor.email)
        grants = await self.store.grants.list_for(actor.email)
        return cards.list_card(requests, grants)

    async def _get_grant(self, grant_id: str) -> Grant:
        grant = await self.store.grants.get(grant_id)
        if grant is None:
            raise NotFound(messages.unknown_grant(grant_id))
        return grant

    async def revoke(self, grant_id: str, *, actor: Principal) -> Card:
        grant = await self._get_grant(grant_id)
        email = actor.email.lower()
        if email != grant.holder.email.lower() and email not in self.admins:
            raise await self.refuse_action(actor, "revoke", grant.id, NotAuthorized(messages.not_your_grant(grant.id)))
        if grant.status is not GrantStatus.ACTIVE:
            raise AlreadyDecided(messages.grant_not_active(grant), status=grant.status.value, by=grant.ended_by)
        ended = await self.end_grant(grant, reason=EndReason.REVOKED, by=email)
        return cards.revoking_card(ended, done=ended.status is GrantStatus.ENDED)

    async def extend(self, grant_id: str, duration: str, *, actor: Principal) -> Card:
        extra = parse_duration(duration)
        grant = await self._get_grant(grant_id)
        if actor.email.lower() != grant.holder.email.lower():
            raise await self.refuse_action(actor, "extend", grant.id, NotAuthorized(messages.not_your_grant(grant.id)))
        if grant.status is not GrantStatus.ACTIVE:
            raise AlreadyDecided(messages.grant_not_active(grant), status=grant.status.value, by=grant.ended_by)
        flow = self.flow_named(grant.flow)
        resource = self.resource_named(grant.resource)
        if flow is None:
            raise UsageError(messages.flow_gone(grant.flow))
        maximum = min(flow.max_duration, resource.max_duration)
        new_expiry = grant.expires_at + extra
        if new_expiry - grant.created_at > maximum:
            room = max(maximum - (grant.expires_at - grant.created_at), timedelta())
            raise UsageError(messages.extension_too_long(extra, maximum, room))
        ctx = gates.GateContext(self.pagerduty, actor, fresh=True)  # prolonging access: ask PagerDuty now
        verdict = await gates.evaluate(flow, ctx)
        now = self.clock.now()
        await self.bus.publish(
            GateEvaluated(now, actor.email, grant.resource, flow.name, verdict.passed, verdict.reason, verdict.facts)
        )
        if not verdict.passed:
            raise GateRefused(
                messages.extension_refused(grant.resource, verdict.reason),
                reasons={flow.name: verdict.reason},
            )
        if flow.cap_at_shift_end:
            new_expiry = capped(new_expiry, verdict.shift_end)
        extended = await self.bus.commit(
            lambda audit: self.store.grants.extend(
                grant.id, expected_expires_at=grant.expires_at, new_expires_at=new_expiry, audit=audit
            ),
            lambda g: [GrantExtended(now, g, grant.expires_at, actor.email.lower())],
        )
        return cards.granted_card(extended)

    async def end_grant(self, grant: Grant, *, reason: EndReason, by: str) -> Grant:
        """Move an ACTIVE grant to REVOKING (compare-and-set), claiming the first revoke attempt,
        then try the provisioner once.

        If the provisioner fails, the grant stays REVOKING and :meth:`retry_revokes` keeps trying.
        Raises ``AlreadyDecided`` when another replica or click ended it first.
        """
        now = self.clock.now()
        async with self.bus.reacting_after() as later:
            revoking = await self.bus.commit(
                lambda audit: self.store.grants.transition(
                    grant.id,
                    expected=GrantStatus.ACTIVE,
                    new=GrantStatus.REVOKING,
                    at=now,
                    end_reason=reason,
                    ended_by=by,
                    next_attempt_at=now + self.lease_for(grant.resource),
                    claimed_by=self.instance,
                    audit=audit,
                ),
                lambda g: [GrantExpired(now, g) if reason is EndReason.EXPIRED else GrantRevoked(now, g, by)],
                defer_to=later,
            )
            return await self._finish_revoke(revoking, later=later)

    async def _finish_revoke(self, grant: Grant, *, later: list[Event]) -> Grant:
        """One revoke attempt, by the holder of its claim: ENDED (FAILED for a rolled-back
        provisioning) when the provisioner confirms, else the next attempt is scheduled."""
        error = await self._provisioner_revoke(grant)
        if error is not None:
            return await self._revoke_failed(grant, error, later=later)
        final = GrantStatus.FAILED if grant.end_reason is EndReason.PROVISIONING_FAILED else GrantStatus.ENDED
        now = self.clock.now()
        return await self.bus.commit(
            lambda audit: self.store.grants.transition(
                grant.id, expected=GrantStatus.REVOKING, new=final, at=now, audit=audit
            ),
            lambda ended: [GrantEnded(ended.ended_at or now, ended)],
            defer_to=later,
        )

    async def _provisioner_revoke(self, grant: Grant) -> str | None:
        """One revoke call by the holder of its claim: None when the provisioner confirmed it, else
        the error the retry is scheduled with."""
        try:
            await self._provisioner(grant.resource).revoke(grant)
        except ProvisioningError as exc:
            return exc.message
        except Exception as exc:  # a provisioner's bug is a failed attempt: retried, never dropped
            log.warning("provisioner revoke of %s raised unexpectedly", grant.id, exc_info=True)
            return messages.provisioner_crashed(exc)
        return None

    async def _revoke_failed(self, grant: Grant, error: str, *, later: list[Event]) -> Grant:
        backoff = min(timedelta(seconds=10 * 2 ** min(grant.revoke_attempts, 10)), REVOKE_BACKOFF_MAX)
        now = self.clock.now()
        retry_at = now + backoff
        log.warning(
            "revoke of %s failed (attempt %d), retrying at %s: %s",
            grant.id,
            grant.revoke_attempts + 1,
            retry_at,
            error,
        )
        return await self.bus.commit(
            lambda audit: self.store.grants.schedule_revoke_retry(grant.id, at=retry_at, error=error, audit=audit),
            lambda pending: [RevokeFailed(now, pending, error, retry_at)],
            defer_to=later,
        )

    # --- timed work (the expiry scheduler calls these) ------------------------------------

    async def expire_due(self) -> int:
        """End every ACTIVE grant whose time is up, a page at a time. Safe on several replicas at once.

        Each page costs two transactions whatever its size: one moves the page to REVOKING with its
        audit rows, each grant claiming its first revoke attempt (:meth:`GrantStore.begin_expiry`,
        compare-and-set per grant, so a grant another replica or click ended is left out); then the
        provisioner is called for each (at most ``EXPIRY_CONCURRENCY`` at a time) and one transaction
        moves the confirmed ones to ENDED with theirs. A failed revoke stays REVOKING and is retried
        (:meth:`retry_revokes`); a crash in between leaves claims whose leases run out, as before.
        The holders are told afterwards, in the background, so chat calls never delay the next
        revoke (at most ``TELL_BACKLOG`` pages of messages wait; :meth:`told` waits for them).
        Returns how many grants this call moved out of ACTIVE.
        """
        ended = 0
        quiet = self._quiet()
        for _ in range(EXPIRY_PAGES_PER_PASS):
            due = await self.store.grants.due_to_expire(self.clock.now(), limit=EXPIRY_PAGE)
            if not due:
                break
            quiet.clear()  # the revokes go first: messages wait between two sends while this page ends
            later: list[Event] = []
            try:
                ended += await self._expire_page(due, later=later)
            finally:
                quiet.set()
                await self._tell_later(later)  # what was committed stays committed: tell it
            if len(due) < EXPIRY_PAGE:
                break
        return ended

    def _quiet(self) -> asyncio.Event:
        if self._not_revoking is None:
            self._not_revoking = asyncio.Event()
            self._not_revoking.set()
        return self._not_revoking

    async def _expire_page(self, due: list[Grant], *, later: list[Event]) -> int:
        now = self.clock.now()
        by_lease: dict[timedelta, list[str]] = {}
        for grant in due:
            by_lease.setdefault(self.lease_for(grant.resource), []).append(grant.id)
        revoking: list[Grant] = []
        for lease, ids in by_lease.items():
            revoking += await self._begin_expiry(ids, now=now, lease_until=now + lease, later=later)
        limit = asyncio.Semaphore(EXPIRY_CONCURRENCY)

        async def revoke(grant: Grant) -> Grant | None:
            async with limit:
                error = await self._provisioner_revoke(grant)
                if error is None:
                    return grant
                await isolated("revoke retry scheduling", grant.id, self._revoke_failed(grant, error, later=later))
                return None

        confirmed = [g.id for g in await asyncio.gather(*(revoke(g) for g in revoking)) if g is not None]
        if confirmed:
            at = self.clock.now()
            await self.bus.commit(
                lambda audit: self.store.grants.finish_revokes(confirmed, at=at, audit=audit),
                lambda grants: [GrantEnded(g.ended_at or at, g) for g in grants],
                defer_to=later,
            )
        return len(revoking)

    async def _begin_expiry(
        self, ids: list[str], *, now: datetime, lease_until: datetime, later: list[Event]
    ) -> list[Grant]:
        return await self.bus.commit(
            lambda audit: self.store.grants.begin_expiry(
                ids, now=now, lease_until=lease_until, owner=self.instance, ended_by=SYSTEM, audit=audit
            ),
            lambda grants: [GrantExpired(now, g) for g in grants],
            defer_to=later,
        )

    async def _tell_later(self, events: list[Event]) -> None:
        """React to ``events`` in a task of its own (at most ``TELL_CONCURRENCY`` such tasks send at
        once); first wait while ``TELL_BACKLOG`` events are waiting already, so memory stays bounded."""
        events = [e for e in events if self.bus.reacts_to(e)]  # only those waiting cost memory
        if not events:
            return
        while self._telling and self._untold >= TELL_BACKLOG:
            await asyncio.wait(set(self._telling), return_when=asyncio.FIRST_COMPLETED)
        if self._tell_slots is None:
            self._tell_slots = asyncio.Semaphore(TELL_CONCURRENCY)
        slots, quiet = self._tell_slots, self._quiet()
        self._untold += len(events)

        async def tell() -> None:
            try:
                async with slots:
                    for event in events:
                        await quiet.wait()
                        await self.bus.react(event)
            finally:
                self._untold -= len(events)

        task = asyncio.create_task(tell(), name="ackgate-tell-expired")
        self._telling.add(task)
        task.add_done_callback(self._telling.discard)

    async def told(self, *, within: float | None = None) -> None:
        """Wait until the messages about expired grants are sent (they fail on their own, logged);
        after ``within`` seconds the rest are cancelled."""
        while self._telling:
            waiting = set(self._telling)
            _, pending = await asyncio.wait(waiting, timeout=within)
            if pending:
                for task in pending:
                    task.cancel()
                await asyncio.gather(*pending, return_exceptions=True)
                return

    async def retry_revokes(self) -> int:
        """Retry every revoke that is due, each attempt claimed first so only one pass makes it."""
        count = 0
        for grant in await self.store.grants.revokes_due(self.clock.now()):
            done = await isolated("revoke retry", grant.id, self._retry_revoke(grant))
            if done is not None and done.status in (GrantStatus.ENDED, GrantStatus.FAILED):
                count += 1
        return count

    async def _retry_revoke(self, grant: Grant) -> Grant:
        now = self.clock.now()
        claimed = await self.store.grants.claim_revoke(
            grant.id, now=now, lease_until=now + self.lease_for(grant.resource), owner=self.instance
        )
        async with self.bus.reacting_after() as later:
            return await self._finish_revoke(claimed, later=later)


def _stand_in_request(grant: Grant) -> AccessRequest:
    return AccessRequest(
        id=grant.request_id,
        requester=grant.holder,
        resource=grant.resource,
        duration_seconds=max(int((grant.expires_at - grant.created_at).total_seconds()), 0),
        reason=grant.justification,
        flow=grant.flow,
        status=RequestStatus.APPROVED,
        created_at=grant.created_at,
        incident=grant.incident,
    )


def capped(expires: datetime, cap: datetime | None) -> datetime:
    return expires if cap is None else min(expires, cap)

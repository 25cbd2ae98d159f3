"""The life of a grant once access is decided: provisioning, listing, revoking, extending and
expiring, with the provisioner's failures retried until they are not.

State is written (compare-and-set) before any side effect; side effects hang off the events
published on the bus.
"""

from __future__ import annotations

import asyncio
import difflib
import logging
from collections.abc import Mapping
from datetime import datetime, timedelta

from bot import cards, gates, messages
from bot.bus import MessageBus
from bot.clock import Clock
from bot.domain import AccessRequest, EndReason, Grant, GrantStatus, Principal, new_id
from bot.durations import parse_duration
from bot.errors import AlreadyDecided, GateRefused, NotAuthorized, NotFound, ProvisioningError, UsageError
from bot.events import (
    SYSTEM,
    AccessGranted,
    ActionRefused,
    GateEvaluated,
    GrantEnded,
    GrantExpired,
    GrantExtended,
    GrantRevoked,
    ProvisioningFailed,
    RevokeFailed,
)
from bot.policy import Flow, Policy, Resource
from bot.ports import PagerDutyDirectory, Provisioner, Store
from bot.views import Card

log = logging.getLogger("ackgate.grants")

REVOKE_BACKOFF_MAX = timedelta(minutes=10)
EXPIRY_CONCURRENCY = 10


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
        approval_timeout: timedelta = timedelta(hours=1),
    ) -> None:
        self.policy = policy
        self.store = store
        self.pagerduty = pagerduty
        self.provisioners = provisioners
        self.bus = bus
        self.clock = clock
        self.admins = admins
        self.approval_timeout = approval_timeout

    def _resource(self, name: str) -> Resource:
        resource = self.policy.resource(name)
        if resource is None:
            known = [r.name for r in self.policy.resources]
            close = difflib.get_close_matches(name, known, n=3, cutoff=0.5)
            raise UsageError(messages.unknown_resource(name, close, known))
        return resource

    def _flow(self, name: str) -> Flow | None:
        return next((f for f in self.policy.flows if f.name == name), None)

    async def _refuse_action(self, actor: Principal, action: str, subject: str, error: NotAuthorized) -> NotAuthorized:
        await self.bus.publish(ActionRefused(self.clock.now(), actor.email, action, subject, error.message))
        return error

    # --- provisioning ---------------------------------------------------------------------

    def _provisioner(self, resource_name: str) -> Provisioner:
        resource = self.policy.resource(resource_name)
        key = resource.provisioner if resource is not None else "noop"
        return self.provisioners[key]

    async def _provision(
        self, request: AccessRequest, *, approved_by: tuple[str, ...], shift_end: datetime | None
    ) -> Grant:
        now = self.clock.now()
        length = timedelta(seconds=request.duration_seconds)
        grant = Grant(
            id=new_id("g"),
            request_id=request.id,
            resource=request.resource,
            holder=request.requester,
            flow=request.flow,
            status=GrantStatus.PROVISIONING,
            created_at=now,
            expires_at=capped(now + length, shift_end),
            justification=request.justification,
            incident=request.incident,
            approved_by=approved_by,
        )
        await self.store.grants.add(grant)
        try:
            await self._provisioner(grant.resource).grant(grant)
        except ProvisioningError as exc:
            failed = await self.store.grants.transition(
                grant.id,
                expected=GrantStatus.PROVISIONING,
                new=GrantStatus.FAILED,
                at=self.clock.now(),
                last_error=exc.message,
            )
            await self.bus.publish(ProvisioningFailed(self.clock.now(), failed, request, exc.message))
            return failed
        # The clock starts when access is real, not when it was asked for.
        activated = self.clock.now()
        active = await self.store.grants.transition(
            grant.id,
            expected=GrantStatus.PROVISIONING,
            new=GrantStatus.ACTIVE,
            at=activated,
            expires_at=capped(activated + length, shift_end),
        )
        await self.bus.publish(AccessGranted(activated, active, request))
        return active

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
            raise await self._refuse_action(actor, "revoke", grant.id, NotAuthorized(messages.not_your_grant(grant.id)))
        if grant.status is not GrantStatus.ACTIVE:
            raise AlreadyDecided(messages.grant_not_active(grant), status=grant.status.value, by=grant.ended_by)
        ended = await self.end_grant(grant, reason=EndReason.REVOKED, by=email)
        return cards.revoking_card(ended, done=ended.status is GrantStatus.ENDED)

    async def extend(self, grant_id: str, duration: str, *, actor: Principal) -> Card:
        extra = parse_duration(duration)
        grant = await self._get_grant(grant_id)
        if actor.email.lower() != grant.holder.email.lower():
            raise await self._refuse_action(actor, "extend", grant.id, NotAuthorized(messages.not_your_grant(grant.id)))
        if grant.status is not GrantStatus.ACTIVE:
            raise AlreadyDecided(messages.grant_not_active(grant), status=grant.status.value, by=grant.ended_by)
        flow = self._flow(grant.flow)
        resource = self._resource(grant.resource)
        if flow is None:
            raise UsageError(messages.flow_gone(grant.flow))
        maximum = min(flow.max_duration, resource.max_duration)
        new_expiry = grant.expires_at + extra
        if new_expiry - grant.created_at > maximum:
            room = max(maximum - (grant.expires_at - grant.created_at), timedelta())
            raise UsageError(messages.extension_too_long(extra, maximum, room))
        ctx = gates.GateContext(self.pagerduty, actor)
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
        extended = await self.store.grants.extend(
            grant.id, expected_expires_at=grant.expires_at, new_expires_at=new_expiry
        )
        await self.bus.publish(GrantExtended(now, extended, grant.expires_at, actor.email.lower()))
        return cards.granted_card(extended)

    async def end_grant(self, grant: Grant, *, reason: EndReason, by: str) -> Grant:
        """Move an ACTIVE grant to REVOKING (compare-and-set), then try the provisioner once.

        If the provisioner fails, the grant stays REVOKING and :meth:`retry_revokes` keeps trying.
        Raises ``AlreadyDecided`` when another replica or click ended it first.
        """
        now = self.clock.now()
        revoking = await self.store.grants.transition(
            grant.id,
            expected=GrantStatus.ACTIVE,
            new=GrantStatus.REVOKING,
            at=now,
            end_reason=reason,
            ended_by=by,
        )
        event = GrantExpired(now, revoking) if reason is EndReason.EXPIRED else GrantRevoked(now, revoking, by)
        await self.bus.publish(event)
        return await self._finish_revoke(revoking)

    async def _finish_revoke(self, grant: Grant) -> Grant:
        try:
            await self._provisioner(grant.resource).revoke(grant)
        except ProvisioningError as exc:
            backoff = min(timedelta(seconds=10 * 2 ** min(grant.revoke_attempts, 10)), REVOKE_BACKOFF_MAX)
            retry_at = self.clock.now() + backoff
            log.warning(
                "revoke of %s failed (attempt %d), retrying at %s: %s",
                grant.id,
                grant.revoke_attempts + 1,
                retry_at,
                exc.message,
            )
            pending = await self.store.grants.schedule_revoke_retry(grant.id, at=retry_at, error=exc.message)
            await self.bus.publish(RevokeFailed(self.clock.now(), pending, exc.message, retry_at))
            return pending
        ended = await self.store.grants.transition(
            grant.id, expected=GrantStatus.REVOKING, new=GrantStatus.ENDED, at=self.clock.now()
        )
        await self.bus.publish(GrantEnded(ended.ended_at or self.clock.now(), ended))
        return ended

    # --- timed work (the expiry scheduler calls these) ------------------------------------

    async def expire_due(self) -> int:
        """End every ACTIVE grant whose time is up. Safe to run on several replicas at once.

        Grants expiring together are revoked concurrently (at most ``EXPIRY_CONCURRENCY`` at a
        time), so one slow provisioner or chat call does not delay the others' revokes.
        """
        limit = asyncio.Semaphore(EXPIRY_CONCURRENCY)

        async def expire(grant: Grant) -> bool:
            async with limit:
                try:
                    await self.end_grant(grant, reason=EndReason.EXPIRED, by=SYSTEM)
                except AlreadyDecided:
                    return False  # another replica, or the holder, got there first
                return True

        due = await self.store.grants.due_to_expire(self.clock.now())
        return sum(await asyncio.gather(*(expire(grant) for grant in due)))

    async def retry_revokes(self) -> int:
        count = 0
        for grant in await self.store.grants.revokes_due(self.clock.now()):
            if (await self._finish_revoke(grant)).status is GrantStatus.ENDED:
                count += 1
        return count


def capped(expires: datetime, cap: datetime | None) -> datetime:
    return expires if cap is None else min(expires, cap)

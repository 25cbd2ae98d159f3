"""The access use cases: request, decide, revoke, extend, list, and the timed work of expiry.

State is written (compare-and-set) before any side effect; side effects hang off the events
published on the bus. PagerDuty errors propagate as the fail-closed errors of bot.errors.
"""

from __future__ import annotations

import asyncio
import difflib
import logging
from collections.abc import Mapping
from dataclasses import replace
from datetime import datetime, timedelta

from bot import cards, gates, messages
from bot.bus import MessageBus
from bot.clock import Clock
from bot.commands import Command, Extend, Help, ListMine, OpenForm, RequestAccess, Revoke, check_reason
from bot.domain import (
    AccessRequest,
    EndReason,
    Grant,
    GrantStatus,
    Principal,
    RequestStatus,
    new_id,
)
from bot.durations import format_duration, parse_duration
from bot.errors import (
    AlreadyDecided,
    GateRefused,
    NotAuthorized,
    NotFound,
    ProvisioningError,
    UsageError,
)
from bot.events import (
    SYSTEM,
    AccessGranted,
    AccessRefused,
    AccessRequested,
    ActionRefused,
    ApprovalRecorded,
    ApprovalRequested,
    GateEvaluated,
    GrantEnded,
    GrantExpired,
    GrantExtended,
    GrantRevoked,
    ProvisioningFailed,
    RequestApproved,
    RequestDenied,
    RequestTimedOut,
    RevokeFailed,
)
from bot.policy import ApproversApproval, AutoApproval, Flow, OnCallApproval, Policy, Resource
from bot.ports import PagerDutyDirectory, Provisioner, Store
from bot.views import Card, Choice, RequestForm, Tone

log = logging.getLogger("ackgate.access")

MIN_DURATION = timedelta(minutes=1)
REVOKE_BACKOFF_MAX = timedelta(minutes=10)
EXPIRY_CONCURRENCY = 10


class AccessService:
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

    # --- commands -------------------------------------------------------------------------

    async def execute(self, actor: Principal, command: Command) -> Card:
        if isinstance(command, RequestAccess):
            return await self.request_access(actor, command)
        if isinstance(command, Revoke):
            return await self.revoke(command.grant_id, actor=actor)
        if isinstance(command, Extend):
            return await self.extend(command.grant_id, command.duration, actor=actor)
        if isinstance(command, ListMine):
            return await self.list_for(actor)
        if isinstance(command, Help | OpenForm):
            return self.help()
        raise UsageError(messages.usage_for("help"))

    def help(self) -> Card:
        names = ", ".join(r.name for r in self.policy.resources)
        return Card(
            title="Ackgate: just-in-time access",
            text="\n".join(messages.help_lines()),
            footnote=f"Resources: {names}",
        )

    def request_form(self) -> RequestForm:
        choices = tuple(
            Choice(r.name, f"{r.name}: {r.description}" if r.description else r.name) for r in self.policy.resources
        )
        return RequestForm(resources=choices)

    async def prefilled_form(self, actor: Principal) -> RequestForm:
        """The form with the requester's acknowledged incident as the suggested reason."""
        form = self.request_form()
        ctx = gates.GateContext(self.pagerduty, actor)
        incidents = await ctx.acknowledged((), ())
        if not incidents:
            return replace(form, hint="You have no acknowledged PagerDuty incident right now.")
        incident = incidents[0]
        return replace(
            form,
            reason=f"PagerDuty incident #{incident.number} {incident.title}"[:500],
            hint=f"Found your acknowledged incident #{incident.number}: {incident.title}",
        )

    # --- requesting ------------------------------------------------------------------------

    def _resource(self, name: str) -> Resource:
        resource = self.policy.resource(name)
        if resource is None:
            known = [r.name for r in self.policy.resources]
            close = difflib.get_close_matches(name, known, n=3, cutoff=0.5)
            raise UsageError(messages.unknown_resource(name, close, known))
        return resource

    async def request_access(self, actor: Principal, command: RequestAccess) -> Card:
        now = self.clock.now()
        resource = self._resource(command.resource)
        reason = check_reason(command.reason)
        flows = self.policy.flows_for(resource.name)
        ceiling = max((min(f.max_duration, resource.max_duration) for f in flows), default=resource.max_duration)
        asked = _asked_duration(command.duration, ceiling)
        ctx = gates.GateContext(self.pagerduty, actor, reason=reason)
        reasons: dict[str, str] = {}
        chosen: tuple[Flow, gates.Verdict] | None = None
        for flow in flows:
            if not await gates.requester_allowed(flow, self.policy, ctx):
                reasons[flow.name] = "you are not among the requesters of this flow"
                continue
            if asked is not None and asked > min(flow.max_duration, resource.max_duration):
                reasons[flow.name] = f"allows at most {format_duration(min(flow.max_duration, resource.max_duration))}"
                continue
            verdict = await gates.evaluate(flow, ctx)
            await self.bus.publish(
                GateEvaluated(now, actor.email, resource.name, flow.name, verdict.passed, verdict.reason, verdict.facts)
            )
            if verdict.passed:
                chosen = (flow, verdict)
                break
            reasons[flow.name] = verdict.reason
        if chosen is None:
            return await self._refuse(actor, resource, asked, reason, reasons)
        flow, verdict = chosen
        duration = asked or min(flow.default_duration, flow.max_duration, resource.max_duration)
        if duration < MIN_DURATION:
            raise UsageError(messages.duration_out_of_range(duration, min(flow.max_duration, resource.max_duration)))
        request = AccessRequest(
            id=new_id("r"),
            requester=actor,
            resource=resource.name,
            duration_seconds=int(duration.total_seconds()),
            reason=reason,
            flow=flow.name,
            status=RequestStatus.PENDING,
            created_at=now,
            incident=verdict.incident,
            note=verdict.evidence,
        )
        if isinstance(flow.approval, AutoApproval):
            return await self._auto_grant(request, flow, verdict)
        return await self._ask_approvers(request, flow)

    async def _refuse(
        self,
        actor: Principal,
        resource: Resource,
        asked: timedelta | None,
        reason: str,
        reasons: dict[str, str],
    ) -> Card:
        if not reasons:
            raise UsageError(messages.not_requester_flow(resource.name))
        request = AccessRequest(
            id=new_id("r"),
            requester=actor,
            resource=resource.name,
            duration_seconds=int((asked or timedelta()).total_seconds()),
            reason=reason,
            flow=", ".join(reasons),
            status=RequestStatus.REFUSED,
            created_at=self.clock.now(),
            note="; ".join(f"{name}: {why}" for name, why in reasons.items()),
        )
        await self.store.requests.add(request)
        await self.bus.publish(AccessRefused(request.created_at, request, reasons))
        raise GateRefused(messages.refused(resource.name, reasons), reasons=reasons)

    async def _auto_grant(self, request: AccessRequest, flow: Flow, verdict: gates.Verdict) -> Card:
        now = self.clock.now()
        request = replace(request, status=RequestStatus.APPROVED, decided_by=SYSTEM, decided_at=now)
        await self.store.requests.add(request)
        await self.bus.publish(AccessRequested(now, request), RequestApproved(now, request, SYSTEM))
        grant = await self._provision(
            request, approved_by=(), shift_end=verdict.shift_end if flow.cap_at_shift_end else None
        )
        if grant.status is GrantStatus.ACTIVE:
            return cards.granted_card(grant)
        return cards.failed_card(grant, grant.last_error)

    async def _eligible_approvers(self, request: AccessRequest, flow: Flow) -> tuple[str, ...]:
        approval = flow.approval
        emails: list[str] = []
        if isinstance(approval, ApproversApproval):
            emails = list(approval.approvers)
            for group in approval.groups:
                emails += self.policy.group_members(group)
        elif isinstance(approval, OnCallApproval):
            entries = await self.pagerduty.oncalls(
                escalation_policy_ids=[approval.escalation_policy] if approval.escalation_policy else [],
                schedule_ids=[approval.schedule] if approval.schedule else [],
            )
            if approval.max_escalation_level is not None:
                entries = [e for e in entries if e.escalation_level <= approval.max_escalation_level]
            emails = [e.user_email for e in sorted(entries, key=lambda e: e.escalation_level) if e.user_email]
        me = request.requester.email.lower()
        seen: dict[str, None] = {}
        for e in emails:
            if e.lower() != me:
                seen.setdefault(e.lower(), None)
        return tuple(seen)

    async def _ask_approvers(self, request: AccessRequest, flow: Flow) -> Card:
        approval = flow.approval
        assert isinstance(approval, ApproversApproval | OnCallApproval)
        approvers = await self._eligible_approvers(request, flow)
        if len(approvers) < approval.required:
            reasons = {flow.name: messages.not_enough_approvers(len(approvers), approval.required)}
            return await self._refuse(
                request.requester,
                self._resource(request.resource),
                timedelta(seconds=request.duration_seconds),
                request.reason,
                reasons,
            )
        request = replace(
            request,
            approvers=approvers,
            required_approvals=approval.required,
            approval_channel=approval.channel,
        )
        await self.store.requests.add(request)
        await self.bus.publish(
            AccessRequested(request.created_at, request), ApprovalRequested(request.created_at, request)
        )
        refs = await self.store.messages.refs(request.id)
        return cards.pending_card(request, reached=len(refs))

    # --- deciding -------------------------------------------------------------------------

    async def _get_request(self, request_id: str) -> AccessRequest:
        request = await self.store.requests.get(request_id)
        if request is None:
            raise NotFound(messages.unknown_request(request_id))
        return request

    async def _close_pending(
        self, request: AccessRequest, new: RequestStatus, *, by: str, at: datetime
    ) -> AccessRequest:
        """Compare-and-set a PENDING request to ``new``, keeping its note; ``AlreadyDecided`` if it moved."""
        return await self.store.requests.decide(
            request.id, expected=RequestStatus.PENDING, new=new, by=by, at=at, note=request.note
        )

    async def _refuse_action(self, actor: Principal, action: str, subject: str, error: NotAuthorized) -> NotAuthorized:
        await self.bus.publish(ActionRefused(self.clock.now(), actor.email, action, subject, error.message))
        return error

    async def decide(self, request_id: str, *, actor: Principal, approve: bool) -> Card:
        action = "approve" if approve else "deny"
        request = await self._get_request(request_id)
        email = actor.email.lower()
        if email == request.requester.email.lower():
            raise await self._refuse_action(actor, action, request.id, NotAuthorized(messages.OWN_REQUEST))
        if email not in request.approvers:
            raise await self._refuse_action(actor, action, request.id, NotAuthorized(messages.not_an_approver(request)))
        if request.status is not RequestStatus.PENDING:
            raise AlreadyDecided(messages.already_decided(request), status=request.status.value, by=request.decided_by)
        now = self.clock.now()
        if not approve:
            denied = await self._close_pending(request, RequestStatus.DENIED, by=email, at=now)
            await self.bus.publish(RequestDenied(now, denied, email))
            return Card(
                title=f"You denied {request.requester.email}'s request for {request.resource}",
                tone=Tone.DANGER,
            )
        updated = await self.store.requests.add_approval(request.id, approver_email=email, at=now)
        if len(updated.approvals) < updated.required_approvals:
            await self.bus.publish(ApprovalRecorded(now, updated, email))
            left = updated.required_approvals - len(updated.approvals)
            return Card(title=f"Approval recorded; {left} more needed", tone=Tone.INFO)
        approved = await self._close_pending(request, RequestStatus.APPROVED, by=email, at=now)
        await self.bus.publish(RequestApproved(now, approved, email))
        flow = self._flow(approved.flow)
        grant = await self._provision(
            approved,
            approved_by=tuple(a.approver_email for a in approved.approvals),
            shift_end=await self._shift_end(approved, flow),
        )
        if grant.status is GrantStatus.ACTIVE:
            return Card(
                title=f"You approved {approved.requester.email}'s access to {approved.resource}",
                tone=Tone.SUCCESS,
            )
        return cards.failed_card(grant, grant.last_error)

    async def _shift_end(self, request: AccessRequest, flow: Flow | None) -> datetime | None:
        """For flows capped at the shift: when the requester's current on-call shift ends."""
        if flow is None or not flow.cap_at_shift_end:
            return None
        verdict = await gates.evaluate(flow, gates.GateContext(self.pagerduty, request.requester))
        return verdict.shift_end

    def _flow(self, name: str) -> Flow | None:
        return next((f for f in self.policy.flows if f.name == name), None)

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
            expires_at=_capped(now + length, shift_end),
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
            expires_at=_capped(activated + length, shift_end),
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
            new_expiry = _capped(new_expiry, verdict.shift_end)
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

    async def time_out_pending(self) -> int:
        now = self.clock.now()
        count = 0
        for request in await self.store.requests.pending_created_before(now - self.approval_timeout):
            try:
                timed_out = await self._close_pending(request, RequestStatus.TIMED_OUT, by=SYSTEM, at=now)
            except AlreadyDecided:
                continue
            await self.bus.publish(RequestTimedOut(now, timed_out))
            count += 1
        return count


def _asked_duration(text: str | None, ceiling: timedelta) -> timedelta | None:
    """The duration asked for, checked before PagerDuty is asked anything: out of range (too
    short or too long for every flow) is refused with the range that is allowed."""
    if not text:
        return None
    try:
        asked = parse_duration(text)
    except UsageError as exc:  # zero: say what would be accepted
        raise UsageError(f"{exc.message} {messages.allowed_durations(MIN_DURATION, ceiling)}") from exc
    if not MIN_DURATION <= asked <= ceiling:
        raise UsageError(messages.duration_out_of_range(asked, ceiling, minimum=MIN_DURATION))
    return asked


def _capped(expires: datetime, cap: datetime | None) -> datetime:
    return expires if cap is None else min(expires, cap)

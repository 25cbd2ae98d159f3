"""The access use cases: request, decide, revoke, extend, list, and the timed work of expiry.

State is written (compare-and-set) with its audit rows in one transaction before any side effect;
side effects hang off the events after the commit (:meth:`bot.core.bus.MessageBus.commit`). An approval
and its grant are stored together, so an approved request always has its grant. PagerDuty errors
propagate as the fail-closed errors of bot.core.errors.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import replace
from datetime import datetime, timedelta

from bot.core import cards, gates, messages
from bot.core.commands import RequestAccess, check_reason
from bot.core.domain import (
    AccessRequest,
    Grant,
    GrantStatus,
    Principal,
    RequestStatus,
    new_id,
)
from bot.core.durations import format_duration, parse_duration
from bot.core.errors import (
    AlreadyDecided,
    GateRefused,
    NotAuthorized,
    NotFound,
    UsageError,
)
from bot.core.events import (
    SYSTEM,
    AccessRefused,
    AccessRequested,
    ApprovalRecorded,
    ApprovalRequested,
    Event,
    GateEvaluated,
    RequestApproved,
    RequestDenied,
    RequestTimedOut,
)
from bot.core.grants import GrantLifecycle, isolated
from bot.core.policy import ApproversApproval, AutoApproval, Flow, OnCallApproval, Resource
from bot.core.views import Card, Choice, RequestForm, Tone

log = logging.getLogger("ackgate.access")

MIN_DURATION = timedelta(minutes=1)


class AccessService:
    """Requesting and deciding. What happens to a grant once it is made (provisioning, revoke,
    extend, expiry) belongs to the :class:`GrantLifecycle` this service is given."""

    def __init__(self, grants: GrantLifecycle, *, approval_timeout: timedelta = timedelta(hours=1)) -> None:
        self.grants = grants
        self.policy = grants.policy
        self.store = grants.store
        self.pagerduty = grants.pagerduty
        self.bus = grants.bus
        self.clock = grants.clock
        self.approval_timeout = approval_timeout

    unreached: dict[str, tuple[str, ...]] = {}  # noqa: RUF012 - replaced by the reactions' own (bot.runtime.app)
    """Approvers the approval reactions could not reach, by request id (read once, for the pending card)."""

    # --- commands -------------------------------------------------------------------------

    def help(self) -> Card:
        names = ", ".join(r.name for r in self.policy.resources)
        return Card(
            title=messages.HELP_TITLE,
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
            return replace(form, hint=messages.FORM_NO_INCIDENT)
        incident = incidents[0]
        return replace(
            form,
            reason=messages.incident_reason(incident.number, incident.title)[:500],
            hint=messages.form_found_incident(incident.number, incident.title),
        )

    # --- requesting ------------------------------------------------------------------------

    async def request_access(self, actor: Principal, command: RequestAccess) -> Card:
        now = self.clock.now()
        resource = self.grants.resource_named(command.resource)
        reason = check_reason(command.reason)
        flows = self.policy.flows_for(resource.name)
        ceiling = max((min(f.max_duration, resource.max_duration) for f in flows), default=resource.max_duration)
        asked = _asked_duration(command.duration, ceiling)
        ctx = gates.GateContext(self.pagerduty, actor, reason=reason)
        reasons: dict[str, str] = {}
        chosen: tuple[Flow, gates.Verdict, GateEvaluated] | None = None
        for flow in flows:
            if not await gates.requester_allowed(flow, self.policy, ctx):
                reasons[flow.name] = "you are not among the requesters of this flow"
                continue
            if asked is not None and asked > min(flow.max_duration, resource.max_duration):
                reasons[flow.name] = f"allows at most {format_duration(min(flow.max_duration, resource.max_duration))}"
                continue
            verdict = await gates.evaluate(flow, ctx)
            evaluated = GateEvaluated(
                now, actor.email, resource.name, flow.name, verdict.passed, verdict.reason, verdict.facts
            )
            if verdict.passed:
                # audited in the transaction that stores the request (bus.commit's ``before``)
                chosen = (flow, verdict, evaluated)
                break
            await self.bus.publish(evaluated)
            reasons[flow.name] = verdict.reason
        if chosen is None:
            return await self._refuse(actor, resource, asked, reason, reasons)
        flow, verdict, evaluated = chosen
        duration = asked or min(flow.default_duration, flow.max_duration, resource.max_duration)
        if duration < MIN_DURATION:
            await self.bus.publish(evaluated)
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
            return await self._auto_grant(request, flow, verdict, evaluated)
        return await self._ask_approvers(request, flow, evaluated)

    async def _refuse(
        self,
        actor: Principal,
        resource: Resource,
        asked: timedelta | None,
        reason: str,
        reasons: dict[str, str],
        before: Sequence[Event] = (),
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
        await self.bus.commit(
            lambda audit: self.store.requests.add(request, audit=audit),
            lambda _: [AccessRefused(request.created_at, request, reasons)],
            before=before,
        )
        raise GateRefused(messages.refused(resource.name, reasons), reasons=reasons)

    async def _auto_grant(
        self, request: AccessRequest, flow: Flow, verdict: gates.Verdict, evaluated: GateEvaluated
    ) -> Card:
        now = self.clock.now()
        shift_end = verdict.shift_end if flow.cap_at_shift_end else None
        approved = replace(request, status=RequestStatus.APPROVED, decided_by=SYSTEM, decided_at=now)
        new_grant = self.grants.new_grant(approved, approved_by=(), shift_end=shift_end, now=now)
        # Chat messages wait until the provisioner was called: the grant's claim is not held up by them.
        async with self.bus.reacting_after() as later:
            stored, grant = await self.bus.commit(
                lambda audit: self.store.requests.add_with_grant(approved, new_grant, audit=audit),
                lambda pair: [AccessRequested(now, pair[0]), RequestApproved(now, pair[0], SYSTEM)],
                defer_to=later,
                before=[evaluated],
            )
            grant = await self.grants.activate(grant, stored, cap=shift_end, later=later)
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

    async def _ask_approvers(self, request: AccessRequest, flow: Flow, evaluated: GateEvaluated) -> Card:
        approval = flow.approval
        assert isinstance(approval, ApproversApproval | OnCallApproval)
        try:
            approvers = await self._eligible_approvers(request, flow)
        except Exception:
            await self.bus.publish(evaluated)  # PagerDuty's on-call lookup failed: the gate still ran
            raise
        if len(approvers) < approval.required:
            reasons = {flow.name: messages.not_enough_approvers(len(approvers), approval.required)}
            return await self._refuse(
                request.requester,
                self.grants.resource_named(request.resource),
                timedelta(seconds=request.duration_seconds),
                request.reason,
                reasons,
                before=[evaluated],
            )
        request = replace(
            request,
            approvers=approvers,
            required_approvals=approval.required,
            approval_channel=approval.channel,
        )
        await self.bus.commit(
            lambda audit: self.store.requests.add(request, audit=audit),
            lambda _: [AccessRequested(request.created_at, request), ApprovalRequested(request.created_at, request)],
            before=[evaluated],
        )
        refs = await self.store.messages.refs(request.id)
        return cards.pending_card(request, reached=len(refs), unreached=self.unreached.pop(request.id, ()))

    # --- deciding -------------------------------------------------------------------------

    async def _get_request(self, request_id: str) -> AccessRequest:
        request = await self.store.requests.get(request_id)
        if request is None:
            raise NotFound(messages.unknown_request(request_id))
        return request

    async def _close_pending(
        self, request: AccessRequest, new: RequestStatus, *, by: str, at: datetime
    ) -> AccessRequest:
        """Compare-and-set a PENDING request to DENIED or TIMED_OUT, keeping its note, with its audit;
        ``AlreadyDecided`` if it moved."""

        def closed(r: AccessRequest) -> list[Event]:
            return [RequestDenied(at, r, by) if new is RequestStatus.DENIED else RequestTimedOut(at, r)]

        return await self.bus.commit(
            lambda audit: self.store.requests.decide(
                request.id, expected=RequestStatus.PENDING, new=new, by=by, at=at, note=request.note, audit=audit
            ),
            closed,
        )

    async def decide(self, request_id: str, *, actor: Principal, approve: bool) -> Card:
        action = "approve" if approve else "deny"
        request = await self._get_request(request_id)
        email = actor.email.lower()
        if email == request.requester.email.lower():
            raise await self.grants.refuse_action(actor, action, request.id, NotAuthorized(messages.OWN_REQUEST))
        if email not in request.approvers:
            raise await self.grants.refuse_action(
                actor, action, request.id, NotAuthorized(messages.not_an_approver(request))
            )
        if request.status is not RequestStatus.PENDING:
            raise AlreadyDecided(messages.already_decided(request), status=request.status.value, by=request.decided_by)
        if not approve:
            await self._close_pending(request, RequestStatus.DENIED, by=email, at=self.clock.now())
            return Card(
                title=messages.you_denied(request.requester.email, request.resource),
                tone=Tone.DANGER,
            )
        # Asked before the transaction, in case this approval is the last one needed.
        shift_end = await self.grants.shift_end(request, self.grants.flow_named(request.flow))
        now = self.clock.now()

        def grant_for(r: AccessRequest) -> Grant:
            return self.grants.new_grant(
                r, approved_by=tuple(a.approver_email for a in r.approvals), shift_end=shift_end, now=now
            )

        def approval_events(outcome: tuple[AccessRequest, Grant | None]) -> list[Event]:
            updated, made = outcome
            return [ApprovalRecorded(now, updated, email) if made is None else RequestApproved(now, updated, email)]

        async with self.bus.reacting_after() as later:
            approved, grant = await self.bus.commit(
                lambda audit: self.store.requests.approve(
                    request.id, approver_email=email, at=now, grant=grant_for, audit=audit
                ),
                approval_events,
                defer_to=later,
            )
            if grant is not None:
                grant = await self.grants.activate(grant, approved, cap=shift_end, later=later)
        if grant is None:
            left = approved.required_approvals - len(approved.approvals)
            return Card(title=messages.approval_recorded(left), tone=Tone.INFO)
        if grant.status is GrantStatus.ACTIVE:
            return Card(
                title=messages.you_approved(approved.requester.email, approved.resource),
                tone=Tone.SUCCESS,
            )
        return cards.failed_card(grant, grant.last_error)

    async def time_out_pending(self) -> int:
        """Time out every request nobody decided in time; one failure never stops the others."""
        now = self.clock.now()
        count = 0
        for request in await self.store.requests.pending_created_before(now - self.approval_timeout):
            closing = self._close_pending(request, RequestStatus.TIMED_OUT, by=SYSTEM, at=now)
            if await isolated("approval time-out", request.id, closing) is not None:
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

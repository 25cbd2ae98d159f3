"""Checking a flow's gate, and who may request, against PagerDuty.

One :class:`GateContext` lives for one request: it asks PagerDuty for each fact at most once,
however many flows look at it, so a warm request costs one REST call at most. A user's
acknowledged incidents may come from the PagerDuty client's short cache; when the reason names an
incident that list lacks (acknowledged a moment ago), PagerDuty is asked again, and an extension's
check (``fresh``) always asks.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from datetime import datetime

from bot.core import messages
from bot.core.domain import Incident, OnCall, PagerDutyUser, Principal
from bot.core.errors import IdentityError
from bot.core.policy import AcknowledgedIncidentGate, Flow, NoGate, OnCallGate, Policy
from bot.core.ports import PagerDutyDirectory

_INCIDENT_NUMBER = re.compile(r"(?:#|\binc-?|\bincident\s*)(\d+)\b", re.IGNORECASE)


@dataclass(frozen=True)
class Verdict:
    passed: bool
    reason: str
    facts: dict[str, object] = field(default_factory=dict)
    incident: Incident | None = None
    shift_end: datetime | None = None
    evidence: str = ""  # one line for approvers: the PagerDuty fact the pass rests on


class GateContext:
    def __init__(
        self, pagerduty: PagerDutyDirectory, principal: Principal, *, reason: str = "", fresh: bool = False
    ) -> None:
        self._pd = pagerduty
        self.principal = principal
        self.reason = reason
        self.fresh = fresh  # acknowledgements straight from PagerDuty, never the client's cache
        self._user: PagerDutyUser | None = None
        self._memo: dict[tuple[object, ...], object] = {}

    async def pd_user(self) -> PagerDutyUser:
        if self._user is None:
            user = await self._pd.user_by_email(self.principal.email)
            if user is None:
                raise IdentityError(messages.no_pagerduty_user(self.principal.email))
            self._user = user
        return self._user

    async def acknowledged(self, services: tuple[str, ...], urgencies: tuple[str, ...]) -> list[Incident]:
        key = ("ack", services, urgencies)
        if key not in self._memo:
            user = await self.pd_user()
            found = await self._pd.acknowledged_incidents(
                user.id, service_ids=services, urgencies=urgencies, fresh=self.fresh
            )
            if found and not self.fresh and _names_other_incident(found, self.reason):
                found = await self._pd.acknowledged_incidents(
                    user.id, service_ids=services, urgencies=urgencies, fresh=True
                )
            self._memo[key] = found
        result = self._memo[key]
        assert isinstance(result, list)
        return result

    async def my_oncalls(self, *, schedules: tuple[str, ...], policies: tuple[str, ...]) -> list[OnCall]:
        key = ("oncall", schedules, policies)
        if key not in self._memo:
            user = await self.pd_user()
            self._memo[key] = await self._pd.oncalls(
                user_ids=[user.id], schedule_ids=schedules, escalation_policy_ids=policies
            )
        result = self._memo[key]
        assert isinstance(result, list)
        return result


def _named(incidents: list[Incident], reason: str) -> Incident | None:
    """The incident the requester named in their reason (``#42``, ``INC-42``, or its id), if listed."""
    named = {int(n) for n in _INCIDENT_NUMBER.findall(reason)}
    for incident in incidents:
        if incident.number in named or (incident.id and incident.id in reason):
            return incident
    return None


def _names_other_incident(incidents: list[Incident], reason: str) -> bool:
    return bool(_INCIDENT_NUMBER.search(reason)) and _named(incidents, reason) is None


def pick_incident(incidents: list[Incident], reason: str) -> Incident:
    """The incident the requester named in their reason (``#42``, ``INC-42``), else the newest."""
    return _named(incidents, reason) or incidents[0]


async def requester_allowed(flow: Flow, policy: Policy, ctx: GateContext) -> bool:
    who = flow.requesters
    email = ctx.principal.email.lower()
    if who.anyone or email in who.emails:
        return True
    if any(email in policy.group_members(g) for g in who.groups):
        return True
    if who.pagerduty_schedules:
        return bool(await ctx.my_oncalls(schedules=who.pagerduty_schedules, policies=()))
    return False


async def evaluate(flow: Flow, ctx: GateContext) -> Verdict:
    gate = flow.gate
    if isinstance(gate, NoGate):
        return Verdict(True, "no gate", evidence="")
    if isinstance(gate, AcknowledgedIncidentGate):
        return await _acknowledged(gate, ctx)
    assert isinstance(gate, OnCallGate)
    return await _on_call(gate, ctx)


async def _acknowledged(gate: AcknowledgedIncidentGate, ctx: GateContext) -> Verdict:
    services = tuple(s.id for s in gate.services)
    incidents = await ctx.acknowledged(services, gate.urgencies)
    facts: dict[str, object] = {
        "pagerduty_user": (await ctx.pd_user()).id,
        "acknowledged_incidents": [{"id": i.id, "number": i.number, "title": i.title} for i in incidents],
        "services": list(services),
        "urgencies": list(gate.urgencies),
    }
    if not incidents:
        where = ""
        if gate.services:
            where = " on service " + " or ".join(s.label for s in gate.services)
        if gate.urgencies:
            where += " with " + " or ".join(gate.urgencies) + " urgency"
        return Verdict(False, f"no acknowledged PagerDuty incident assigned to you{where}", facts)
    incident = pick_incident(incidents, ctx.reason)
    facts["incident"] = incident.id
    service = f" on {incident.service_name}" if incident.service_name else ""
    evidence = f"{ctx.principal.email} acknowledged incident #{incident.number}{service}"
    return Verdict(True, "acknowledged incident", facts, incident=incident, evidence=evidence)


async def _on_call(gate: OnCallGate, ctx: GateContext) -> Verdict:
    entries = await ctx.my_oncalls(schedules=gate.schedules, policies=gate.escalation_policies)
    if gate.max_escalation_level is not None:
        entries = [e for e in entries if e.escalation_level <= gate.max_escalation_level]
    facts: dict[str, object] = {
        "pagerduty_user": (await ctx.pd_user()).id,
        "oncalls": [
            {
                "escalation_policy": e.escalation_policy_id,
                "level": e.escalation_level,
                "schedule": e.schedule_id,
            }
            for e in entries
        ],
    }
    if not entries:
        targets = list(gate.schedules) + list(gate.escalation_policies)
        level = f" at escalation level {gate.max_escalation_level} or lower" if gate.max_escalation_level else ""
        return Verdict(False, f"you are not on call now for {', '.join(targets)}{level}", facts)
    best = min(entries, key=lambda e: e.escalation_level)
    ends = [e.end for e in entries if e.end is not None]
    # The shift that lasts longest is the one the requester is really on; permanent beats all.
    shift_end = None if len(ends) < len(entries) else max(ends)
    where = best.schedule_id or best.escalation_policy_id
    evidence = f"{ctx.principal.email} is on call ({where}, level {best.escalation_level})"
    return Verdict(True, "on call", facts, shift_end=shift_end, evidence=evidence)

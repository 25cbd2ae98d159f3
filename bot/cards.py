"""Cards for requests and grants: what the approvers, the requester and the holder see."""

from __future__ import annotations

from datetime import timedelta

from bot.domain import AccessRequest, Grant, GrantStatus, RequestStatus
from bot.durations import format_duration
from bot.messages import when
from bot.views import Action, Card, Fact, Tone


def _request_facts(r: AccessRequest) -> tuple[Fact, ...]:
    facts = [
        Fact("Requester", r.requester.email),
        Fact("Resource", r.resource),
        Fact("Duration", format_duration(timedelta(seconds=r.duration_seconds))),
    ]
    if r.justification:
        facts.append(Fact("Justification", r.justification))
    if r.incident is not None:
        facts.append(Fact("Incident", r.incident.label, url=r.incident.html_url))
    if r.note and r.status in (RequestStatus.PENDING, RequestStatus.APPROVED):
        facts.append(Fact("PagerDuty", r.note))
    facts.append(Fact("Flow", r.flow))
    return tuple(facts)


def approval_card(r: AccessRequest) -> Card:
    """The message approvers see; buttons only while the request is pending."""
    approvals = f"{len(r.approvals)} of {r.required_approvals}"
    facts = (*_request_facts(r), Fact("Approvals", approvals))
    footnote = f"Request {r.id}. Only eligible approvers' clicks count, and never the requester's."
    if r.status is RequestStatus.PENDING:
        return Card(
            title=f"{r.requester.email} requests {r.resource}",
            facts=facts,
            actions=(
                Action("approve", "Approve", r.id, style="primary"),
                Action("deny", "Deny", r.id, style="danger"),
            ),
            footnote=footnote,
        )
    outcome = {
        RequestStatus.APPROVED: (f"Approved by {r.decided_by}", Tone.SUCCESS),
        RequestStatus.DENIED: (f"Denied by {r.decided_by}", Tone.DANGER),
        RequestStatus.TIMED_OUT: ("Timed out: nobody decided in time", Tone.WARNING),
        RequestStatus.CANCELLED: ("Cancelled", Tone.WARNING),
        RequestStatus.REFUSED: ("Refused", Tone.DANGER),
    }[r.status]
    decided = f" at {when(r.decided_at)}" if r.decided_at else ""
    return Card(
        title=f"{r.requester.email} requested {r.resource}: {outcome[0]}{decided}",
        facts=facts,
        footnote=footnote,
        tone=outcome[1],
    )


def pending_card(r: AccessRequest, *, reached: int) -> Card:
    who = ", ".join(r.approvers)
    text = f"Your request {r.id} needs {r.required_approvals} approval(s) from: {who}."
    if reached == 0:
        text += " None of them could be reached in chat; ask one of them to run /access list, or try again later."
    return Card(title=f"Waiting for approval: {r.resource}", text=text, facts=_request_facts(r), tone=Tone.INFO)


def granted_card(g: Grant) -> Card:
    facts = [
        Fact("Grant", g.id),
        Fact("Resource", g.resource),
        Fact("Until", when(g.expires_at)),
    ]
    if g.justification:
        facts.append(Fact("Justification", g.justification))
    if g.incident is not None:
        facts.append(Fact("Incident", g.incident.label, url=g.incident.html_url))
    if g.approved_by:
        facts.append(Fact("Approved by", ", ".join(g.approved_by)))
    return Card(
        title=f"Access granted: {g.resource} until {when(g.expires_at)}",
        facts=tuple(facts),
        footnote=f"Done early? /access revoke {g.id}   Need longer? /access extend {g.id} 30m",
        tone=Tone.SUCCESS,
    )


def failed_card(g: Grant, error: str) -> Card:
    return Card(
        title=f"Access to {g.resource} could not be provisioned",
        text=f"{error} Nothing was granted. Try again, or tell your Ackgate admins if it keeps failing.",
        facts=(Fact("Grant", g.id), Fact("Holder", g.holder.email)),
        tone=Tone.DANGER,
    )


def decision_card(r: AccessRequest) -> Card:
    """What the requester is told once approvers decide (denied or timed out)."""
    if r.status is RequestStatus.DENIED:
        return Card(
            title=f"Your request for {r.resource} was denied by {r.decided_by}",
            facts=_request_facts(r),
            tone=Tone.DANGER,
        )
    return Card(
        title=f"Your request for {r.resource} timed out",
        text="Nobody approved it in time. Ask again, or reach an approver directly.",
        facts=_request_facts(r),
        tone=Tone.WARNING,
    )


def ended_card(g: Grant) -> Card:
    reason = {
        "expired": "expired",
        "revoked": f"was revoked by {g.ended_by}",
        "incident_resolved": "was revoked because its PagerDuty incident was resolved",
    }.get(str(g.end_reason), "ended")
    return Card(
        title=f"Your access to {g.resource} {reason}",
        text=f"Need it again? /access {g.resource}",
        facts=(Fact("Grant", g.id),),
        tone=Tone.INFO,
    )


def revoking_card(g: Grant, *, done: bool) -> Card:
    if done:
        return Card(title=f"Access to {g.resource} revoked", facts=(Fact("Grant", g.id),), tone=Tone.SUCCESS)
    return Card(
        title=f"Revoking access to {g.resource}",
        text="The provisioner did not confirm yet; Ackgate keeps retrying until it does.",
        facts=(Fact("Grant", g.id),),
        tone=Tone.WARNING,
    )


def list_card(requests: list[AccessRequest], grants: list[Grant]) -> Card:
    facts: list[Fact] = []
    for g in grants:
        if g.status in (GrantStatus.ACTIVE, GrantStatus.PROVISIONING):
            facts.append(Fact(f"Grant {g.id}", f"{g.resource} until {when(g.expires_at)} ({g.status.value})"))
    for r in requests[:10]:
        facts.append(Fact(f"Request {r.id}", f"{r.resource}: {r.status.value.replace('_', ' ')}"))
    if not facts:
        return Card(
            title="You have no requests or active grants",
            text="Ask with /access <resource> [duration] [reason].",
        )
    return Card(title="Your access", facts=tuple(facts[:10]))

"""Cards for requests and grants: what the approvers, the requester and the holder see."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import timedelta

from bot.core import messages
from bot.core.domain import AccessRequest, Grant, GrantStatus, RequestStatus
from bot.core.durations import format_duration
from bot.core.messages import when
from bot.core.views import Action, Card, Fact, Tone


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


def _approvers(r: AccessRequest) -> str | None:
    """Everyone who approved (a two-person approval names both), else whoever decided."""
    if r.approvals:
        return messages.approvers_label([a.approver_email for a in r.approvals])
    return r.decided_by


def approval_card(r: AccessRequest, *, failed: Grant | None = None, unreached: Sequence[str] = ()) -> Card:
    """The message approvers see; buttons only while the request is pending. With ``failed`` (the
    approved request's grant, whose provisioning failed) it says so instead of "Approved"; ``unreached``
    names the approvers Ackgate could not message."""
    approvals = f"{len(r.approvals)} of {r.required_approvals}"
    facts = (*_request_facts(r), Fact("Approvals", approvals))
    footnote = messages.approval_footnote(r.id)
    if r.status is RequestStatus.PENDING:
        return Card(
            title=messages.approval_title(r.requester.email, r.resource),
            text=messages.unreached_approvers(unreached).strip() if unreached else "",
            facts=facts,
            actions=(
                Action("approve", messages.APPROVE, r.id, style="primary"),
                Action("deny", messages.DENY, r.id, style="danger"),
            ),
            footnote=footnote,
        )
    if failed is not None:
        decided = f" at {when(r.decided_at)}" if r.decided_at else ""
        return Card(
            title=messages.decided_title(
                r.requester.email, r.resource, messages.approved_not_provisioned(_approvers(r) or ""), decided
            ),
            text=messages.failed_text(failed.last_error),
            facts=(*facts, Fact("Grant", failed.id)),
            footnote=footnote,
            tone=Tone.DANGER,
        )
    outcome = {
        RequestStatus.APPROVED: (messages.approved_by(_approvers(r)), Tone.SUCCESS),
        RequestStatus.DENIED: (messages.denied_by(r.decided_by), Tone.DANGER),
        RequestStatus.TIMED_OUT: (messages.TIMED_OUT, Tone.WARNING),
        RequestStatus.CANCELLED: (messages.CANCELLED, Tone.WARNING),
        RequestStatus.REFUSED: (messages.REFUSED, Tone.DANGER),
    }[r.status]
    decided = f" at {when(r.decided_at)}" if r.decided_at else ""
    return Card(
        title=messages.decided_title(r.requester.email, r.resource, outcome[0], decided),
        facts=facts,
        footnote=footnote,
        tone=outcome[1],
    )


def pending_card(r: AccessRequest, *, reached: int, unreached: Sequence[str] = ()) -> Card:
    who = ", ".join(r.approvers)
    text = messages.pending_text(r.id, r.required_approvals, who)
    if reached == 0:
        text += messages.NO_APPROVER_REACHED
    elif unreached:
        text += messages.unreached_approvers(unreached)
    return Card(title=messages.pending_title(r.resource), text=text, facts=_request_facts(r), tone=Tone.INFO)


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
        title=messages.granted_title(g.resource, g.expires_at),
        facts=tuple(facts),
        footnote=messages.granted_footnote(g.id),
        tone=Tone.SUCCESS,
    )


def failed_card(g: Grant, error: str) -> Card:
    return Card(
        title=messages.failed_title(g.resource),
        text=messages.failed_text(error),
        facts=(Fact("Grant", g.id), Fact("Holder", g.holder.email)),
        tone=Tone.DANGER,
    )


def decision_card(r: AccessRequest) -> Card:
    """What the requester is told once approvers decide (denied or timed out)."""
    if r.status is RequestStatus.DENIED:
        return Card(
            title=messages.your_request_denied(r.resource, r.decided_by),
            facts=_request_facts(r),
            tone=Tone.DANGER,
        )
    return Card(
        title=messages.your_request_timed_out(r.resource),
        text=messages.TIMED_OUT_TEXT,
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
        title=messages.ended_title(g.resource, reason),
        text=messages.ask_again(g.resource),
        facts=(Fact("Grant", g.id),),
        tone=Tone.INFO,
    )


def revoking_card(g: Grant, *, done: bool) -> Card:
    if done:
        return Card(title=messages.revoked_title(g.resource), facts=(Fact("Grant", g.id),), tone=Tone.SUCCESS)
    return Card(
        title=messages.revoking_title(g.resource),
        text=messages.REVOKING_TEXT,
        facts=(Fact("Grant", g.id),),
        tone=Tone.WARNING,
    )


MAX_LISTED_GRANTS = 200  # well within what a chat message holds; beyond it the card says how many more
MAX_LISTED_REQUESTS = 10


def list_card(requests: list[AccessRequest], grants: list[Grant]) -> Card:
    """Every live grant (the ones that matter), then the most recent requests."""
    live = [g for g in grants if g.status in (GrantStatus.ACTIVE, GrantStatus.PROVISIONING)]
    facts = [
        Fact(f"Grant {g.id}", f"{g.resource} until {when(g.expires_at)} ({g.status.value})")
        for g in live[:MAX_LISTED_GRANTS]
    ]
    for r in requests[:MAX_LISTED_REQUESTS]:
        facts.append(Fact(f"Request {r.id}", f"{r.resource}: {r.status.value.replace('_', ' ')}"))
    if not facts:
        return Card(
            title=messages.NOTHING_TO_LIST,
            text=messages.NOTHING_TO_LIST_TEXT,
        )
    hidden = len(live) - MAX_LISTED_GRANTS
    return Card(title=messages.LIST_TITLE, text=messages.more_grants(hidden) if hidden > 0 else "", facts=tuple(facts))

"""What must hold after a run, read from the database (through ``storage.open_store``), the
provisioner's history and what Slack showed people. Each violation is counted with examples.

The promises checked (issue 6):

- every approved request has exactly one grant, provisioned exactly once at the provisioner;
- every grant whose access was real is revoked, within 5 s of its expiry (or of the restart, when
  the cluster was down at its expiry), and a live sender never repeats a provisioner call;
- nothing is left in a non-terminal state (``provisioning``, ``revoking``, ``approved`` without a
  grant, ``pending`` without any approver having been shown the card);
- every state reached has its audit row;
- every acknowledged command and click is answered;
- every PagerDuty webhook answered 2xx takes effect (the mirror shows the incident resolved, and the
  incident-bound grant ends), and each incident has exactly one mirror message: a second one only
  when the first was posted by a sender killed before it could record it (the documented limit of a
  death during a chat call), which Ackgate has no record of.
"""

from __future__ import annotations

import itertools
import json
import re
import time
from collections import Counter
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import TYPE_CHECKING

from bot.core.domain import AccessRequest, AuditEvent, EndReason, Grant, GrantStatus, IncidentMirror, RequestStatus
from bot.core.mirror import POST_CLAIM_LEASE
from bot.core.mirror import subject as mirror_subject
from bot.core.ports import Store
from bot.runtime.app import INBOX_RECOVERY_SECONDS
from storage import open_store
from tests.reliability.harness import APPROVERS, PROVISIONER_TIMEOUT, Interaction, poll

if TYPE_CHECKING:
    from tests.reliability.workload import IncidentPlan, Run

_GRANT_ID = re.compile(r"\bg-[a-z0-9]{8}\b")
REVOKE_BOUND = 5.0  # seconds from expiry (or restart) to the provisioner's revoke
# The documented bound of an incident's first mirror message whose sender was killed in its chat
# call: owed until the claim's lease ends, then posted by the next recovery pass (every 10 s, on a
# scheduler pass at most 5 s apart). Waited for, after the settle, only while a message is missing.
MIRROR_BOUND = POST_CLAIM_LEASE.total_seconds() + INBOX_RECOVERY_SECONDS + 5.0 + 5.0

VIOLATIONS = (
    ("stuck_provisioning", "grants left in provisioning"),
    ("stuck_revoking", "grants left in revoking"),
    ("approved_without_grant", "approved requests without a grant"),
    ("double_grants", "requests with more than one grant"),
    ("stuck_pending", "pending requests no approver was shown"),
    ("leaked_access", "access real at the provisioner, grant not active"),
    ("active_not_provisioned", "active grants never provisioned"),
    ("expired_still_active", "grants past expiry still active"),
    ("never_revoked", "ended grants never revoked at the provisioner"),
    ("late_revokes", f"expiries revoked later than {REVOKE_BOUND:g} s"),
    ("duplicate_grant_calls", "grant calls repeated by a live sender"),
    ("duplicate_revoke_calls", "revoke calls repeated by a live sender"),
    ("missing_audit", "missing audit rows"),
    ("unanswered_commands", "acknowledged commands never answered"),
    ("unanswered_clicks", "acknowledged clicks never answered"),
    ("lost_webhooks", "incidents whose resolve (202) never took effect"),
    ("active_after_resolve", "incident-bound grants active after resolve"),
    ("double_mirror_messages", "incidents with more than one mirror message"),
    ("missing_mirror_messages", "incidents with no mirror message"),
    ("unclean_stops", "serve processes that died or ignored SIGTERM"),
    ("tracebacks", "tracebacks in serve's logs"),
)


@dataclass
class Figures:
    violations: dict[str, list[str]] = field(default_factory=lambda: {name: [] for name, _ in VIOLATIONS})
    info: dict[str, object] = field(default_factory=dict)

    def add(self, name: str, example: str) -> None:
        self.violations[name].append(example)

    def counts(self) -> dict[str, int]:
        return {name: len(items) for name, items in self.violations.items()}

    def failed(self) -> dict[str, int]:
        return {name: n for name, n in self.counts().items() if n}

    def table(self, title: str = "") -> str:
        labels = dict(VIOLATIONS)
        width = max(len(v) for v in labels.values())
        lines = [title] if title else []
        for name, count in self.counts().items():
            lines.append(f"  {labels[name]:<{width}}  {count:>5}")
        lines.append("  " + ", ".join(f"{k}: {v}" for k, v in self.info.items()))
        return "\n".join(lines)

    def report(self, title: str = "", examples: int = 3) -> str:
        out = [self.table(title)]
        for name, items in self.violations.items():
            if items:
                out.append(f"  {name}: " + "; ".join(items[:examples]))
        return "\n".join(out)


@dataclass
class Snapshot:
    at: float
    requests: list[AccessRequest]
    grants: list[Grant]
    audit: list[AuditEvent]
    mirrors: dict[str, IncidentMirror | None]
    mirror_refs: dict[str, set[str]]  # incident id -> the ids of the messages Ackgate recorded for it


async def read(store: Store, run: Run) -> Snapshot:
    at = time.time()
    requests: list[AccessRequest] = []
    grants: list[Grant] = []
    for person in run.client.people.values():
        requests += await store.requests.list_for(person.email, limit=1_000_000)
        grants += await store.grants.list_for(person.email, include_ended=True)
    audit = await store.audit.since(datetime(2000, 1, 1, tzinfo=UTC), limit=10_000_000)
    mirrors = {plan.incident_id: await store.mirrors.get(plan.incident_id) for plan in run.incidents}
    refs = {
        p.incident_id: {r.message_id for r in await store.messages.refs(mirror_subject(p.incident_id))}
        for p in run.incidents
    }
    return Snapshot(at, requests, grants, audit, mirrors, refs)


def answered(run: Run, snap: Snapshot, interaction: Interaction) -> bool:
    """Whether the user saw an answer: on the response_url, or by DM. A DM counts when it names the
    request's marker, or the id of the request or grant the command was about (an answer sent
    after a restart may be worded differently from the original card)."""
    client = run.client
    if client.answered(interaction):
        return True
    if interaction.kind != "command":
        return False
    ids = set(_GRANT_ID.findall(interaction.text))
    if interaction.marker:
        for r in snap.requests:
            if interaction.marker in r.reason:
                ids.add(r.id)
                ids.update(g.id for g in snap.grants if g.request_id == r.id)
    return any(i in text for text in client.dms(interaction.who) for i in ids)


def _settled(run: Run, snap: Snapshot) -> bool:
    """Nothing is still in motion: no half-done grant, every acknowledged interaction answered, no
    expiry owed and no approved request waiting for its grant."""
    now = snap.at
    if any(g.status in (GrantStatus.PROVISIONING, GrantStatus.REVOKING) for g in snap.grants):
        return False
    if any(g.status is GrantStatus.ACTIVE and g.expires_at.timestamp() < now for g in snap.grants):
        return False
    with_grant = {g.request_id for g in snap.grants}
    if any(r.status is RequestStatus.APPROVED and r.id not in with_grant for r in snap.requests):
        return False
    if max((max(pair) for pair in run.retimed.values()), default=0.0) + REVOKE_BOUND + 1 > now:
        return False
    client = run.client
    shown = "\n".join(t for a in APPROVERS for t in client.dms(client.people[a]))
    if any(r.status is RequestStatus.PENDING and r.id not in shown for r in snap.requests):
        return False
    for plan in run.incidents:
        if any(
            d.incident_id == plan.incident_id and d.event_type == "incident.resolved" and d.delivered
            for d in client.webhooks
        ):
            mirror = snap.mirrors.get(plan.incident_id)
            if mirror is None or mirror.status != "resolved":
                return False
    return all(answered(run, snap, i) for i in client.interactions if i.acked)


async def settle_and_check(run: Run) -> Figures:
    """Wait (bounded) until the cluster has nothing left in motion, then check everything."""
    store = open_store(run.cluster.database.url)
    await store.open()
    try:
        latest: list[Snapshot] = []

        async def settled() -> bool:
            latest[:] = [await read(store, run)]
            return _settled(run, latest[0])

        await poll(settled, within=run.sizes.settle_seconds, every=1.0)
        await poll(lambda: not _unmirrored(run), within=MIRROR_BOUND, every=1.0)
        snap = await read(store, run)
    finally:
        await store.close()
    return check(run, snap)


def _mirror_posts(run: Run, plan: IncidentPlan) -> list[str]:
    """The ts of each mirror channel message showing the incident."""
    return [ts for ts, text in run.client.mirror_messages() if plan.title in text]


def _unmirrored(run: Run) -> list[str]:
    """Incidents a webhook reached (answered 2xx) that have no mirror message yet."""
    return [
        plan.incident_id
        for plan in run.incidents
        if not _mirror_posts(run, plan)
        and any(d.incident_id == plan.incident_id and d.delivered for d in run.client.webhooks)
    ]


def _deadline(expires_at: float, intervals: list[tuple[float, float]]) -> float | None:
    """When a revoke of a grant expiring at ``expires_at`` is owed: its expiry, or, when the cluster
    was not fully up then (or went down within the bound), the start of the next uninterrupted
    stretch in which every replica served. None: the cluster was never up long enough after it."""
    due = expires_at
    for start, end in intervals:
        if end <= due:
            continue
        due = max(due, start)
        if end - due >= REVOKE_BOUND or end == float("inf"):
            return due
    return None


def check(run: Run, snap: Snapshot) -> Figures:
    figures = Figures()
    receiver = run.cluster.fakes.receiver
    client = run.client
    grants = {g.id: g for g in snap.grants}
    requests = {r.id: r for r in snap.requests}
    by_request: dict[str, list[Grant]] = {}
    for g in snap.grants:
        by_request.setdefault(g.request_id, []).append(g)
    audited = {(e.kind, e.subject) for e in snap.audit}

    # --- states ---------------------------------------------------------------------------
    for g in snap.grants:
        if g.status is GrantStatus.PROVISIONING:
            real = "real at the provisioner" if g.id in receiver.granted else "not provisioned"
            figures.add("stuck_provisioning", f"{g.id} ({real})")
        if g.status is GrantStatus.REVOKING:
            figures.add("stuck_revoking", g.id)
    for r in snap.requests:
        mine = by_request.get(r.id, [])
        if r.status is RequestStatus.APPROVED and not mine:
            figures.add("approved_without_grant", r.id)
        if len(mine) > 1:
            figures.add("double_grants", f"{r.id}: {', '.join(g.id for g in mine)}")
        if r.status is RequestStatus.PENDING:
            shown = any(r.id in text for a in APPROVERS for text in client.dms(client.people[a]))
            if not shown:
                figures.add("stuck_pending", r.id)

    # --- the provisioner ------------------------------------------------------------------
    for grant_id in sorted(receiver.granted):
        g = grants.get(grant_id)
        if g is None or g.status is not GrantStatus.ACTIVE:
            figures.add("leaked_access", f"{grant_id} ({g.status.value if g else 'no such grant'})")
    for g in snap.grants:
        if g.status is GrantStatus.ACTIVE and g.id not in receiver.granted:
            figures.add("active_not_provisioned", g.id)
        if g.status is GrantStatus.ACTIVE and g.expires_at.timestamp() < snap.at - REVOKE_BOUND:
            figures.add("expired_still_active", g.id)
        if g.status is GrantStatus.ENDED and not receiver.successful(g.id, "revoke"):
            figures.add("never_revoked", g.id)
    intervals = run.cluster.all_up_intervals()
    expired = 0
    for g in snap.grants:
        if g.status is not GrantStatus.ENDED or g.end_reason is not EndReason.EXPIRED:
            continue
        revokes = receiver.successful(g.id, "revoke")
        if not revokes:
            continue
        expired += 1
        # A grant whose expiry was moved into the past is owed from the moment it was moved.
        due = max(g.expires_at.timestamp(), run.retimed.get(g.id, (0.0, 0.0))[1])
        deadline = _deadline(due, intervals)
        lag = revokes[0].at - (deadline if deadline is not None else due)
        if deadline is not None and lag > REVOKE_BOUND:
            how = "moved" if g.id in run.retimed else "asked"
            figures.add(
                "late_revokes",
                f"{g.id} {lag:.1f}s after {deadline - run.started:.1f}s ({how}; revoked by {revokes[0].sender})",
            )
    for action in ("grant", "revoke"):
        ids = sorted({c.grant_id for c in receiver.calls if c.action == action})
        for grant_id in ids:
            calls = receiver.successful(grant_id, action)
            for earlier, later in itertools.pairwise(calls):
                sender = run.cluster.generation(earlier.sender)
                ended = sender.ended_at if sender is not None and sender.ended_at is not None else float("inf")
                gap = later.at - earlier.at
                # A repeat is a duplicate when the first caller was still alive, and so knew (or was
                # about to know) the answer, and had not yet given up waiting for it.
                if ended > later.at and gap < PROVISIONER_TIMEOUT:
                    figures.add(f"duplicate_{action}_calls", f"{grant_id} {earlier.sender}→{later.sender} +{gap:.2f}s")

    # --- the audit log --------------------------------------------------------------------
    needed: list[tuple[str, str]] = []
    for r in snap.requests:
        if r.status is not RequestStatus.REFUSED:
            needed.append(("access.requested", r.id))
        kind = {
            RequestStatus.APPROVED: "access.approved",
            RequestStatus.DENIED: "access.denied",
            RequestStatus.TIMED_OUT: "access.timed_out",
            RequestStatus.REFUSED: "access.refused",
        }.get(r.status)
        if kind:
            needed.append((kind, r.id))
    applied = {c.grant_id for c in receiver.calls if c.applied and c.action == "grant"}
    kinds_of: dict[str, set[str]] = {}
    for e in snap.audit:
        kinds_of.setdefault(e.subject, set()).add(e.kind)
    for g in snap.grants:
        if g.status is GrantStatus.ACTIVE:
            needed.append(("grant.provisioned", g.id))
        elif g.id in applied and not any(
            k in ("grant.provisioned", "grant.failed") or "roll" in k for k in kinds_of.get(g.id, ())
        ):
            # Access was real at some point: the audit must say so, or say it was rolled back.
            needed.append(("grant.provisioned", g.id))
        if g.status is GrantStatus.FAILED:
            needed.append(("grant.failed", g.id))
        if g.status in (GrantStatus.REVOKING, GrantStatus.ENDED) and g.end_reason is not None:
            needed.append(("grant.expired" if g.end_reason is EndReason.EXPIRED else "grant.revoked", g.id))
        if g.status is GrantStatus.ENDED:
            needed.append(("grant.ended", g.id))
    for kind, subject in needed:
        if (kind, subject) not in audited:
            figures.add("missing_audit", f"{kind} {subject}")

    # --- what people were shown -----------------------------------------------------------
    for i in client.interactions:
        if i.acked and not answered(run, snap, i):
            figures.add("unanswered_commands" if i.kind == "command" else "unanswered_clicks", f"{i.text!r}")

    # --- PagerDuty webhooks and the mirror ------------------------------------------------
    unrecorded_repeats = 0
    missing = set(_unmirrored(run))
    for plan in run.incidents:
        deliveries = [d for d in client.webhooks if d.incident_id == plan.incident_id]
        resolved = [d for d in deliveries if d.event_type == "incident.resolved" and d.delivered]
        mirror = snap.mirrors.get(plan.incident_id)
        if resolved and (mirror is None or mirror.status != "resolved"):
            figures.add("lost_webhooks", f"{plan.incident_id} ({mirror.status if mirror else 'never mirrored'})")
        bound = [g for g in snap.grants if g.incident is not None and g.incident.id == plan.incident_id]
        if resolved:
            for g in bound:
                if g.status is GrantStatus.ACTIVE:
                    figures.add("active_after_resolve", g.id)
        posts = _mirror_posts(run, plan)
        unrecorded = [ts for ts in posts if ts not in snap.mirror_refs.get(plan.incident_id, set())]
        if len(posts) > 1 and len(posts) - len(unrecorded) == 1 and len(unrecorded) <= run.cluster.kills:
            unrecorded_repeats += 1  # its first sender died between the post and recording it
        elif len(posts) > 1:
            figures.add("double_mirror_messages", f"{plan.incident_id} ×{len(posts)}")
        if plan.incident_id in missing:
            figures.add("missing_mirror_messages", plan.incident_id)

    # --- the processes themselves ---------------------------------------------------------
    for gen in run.cluster.generations():
        if gen.how in ("died", "term-timeout"):
            figures.add("unclean_stops", f"{gen.sender} {gen.how}")

    # --- the logs: a kill or a lost race is an expected condition, never a traceback ------
    lines = run.cluster.log_lines()
    for line in lines:
        if "Traceback" in line:
            figures.add("tracebacks", _message(line))

    # --- context ---------------------------------------------------------------------------
    levels = Counter(_level(line) for line in lines)
    statuses = Counter(g.status.value for g in snap.grants)
    figures.info.update(
        {
            "commands": sum(1 for i in client.interactions if i.kind == "command" and i.acked),
            "clicks": sum(1 for i in client.interactions if i.kind == "click" and i.acked),
            "requests": len(requests),
            "grants": dict(sorted(statuses.items())),
            "expiries": expired,
            "expiries moved": sum(1 for g in snap.grants if g.id in run.retimed and g.end_reason is EndReason.EXPIRED),
            "revoke calls": sum(1 for c in receiver.calls if c.action == "revoke"),
            "incidents": len(run.incidents),
            "webhook copies": sum(len(d.copies) for d in client.webhooks),
            "kills": run.cluster.kills,
            "mirror messages repeated after a killed sender's": unrecorded_repeats,
            "SIGTERMs": run.cluster.terms,
            "ERROR lines": levels.get("error", 0) + levels.get("critical", 0),
        }
    )
    return figures


def _message(line: str) -> str:
    """A log line's message and the exception's last line, which is what names the failure."""
    try:
        entry = json.loads(line)
        last = str(entry.get("exc", "")).strip().splitlines()[-1:]
        return f"{entry.get('msg', '')} [{last[0] if last else ''}]"
    except (ValueError, AttributeError):
        return line[:200]


def _level(line: str) -> str:
    try:
        return str(json.loads(line).get("level", ""))
    except (ValueError, AttributeError):
        return ""

"""The state behind :class:`bot.runtime.simulators.pagerduty.PagerDutySimulator`, and how PagerDuty renders it.

Plain data plus the helpers tests and the demo use to set up a scene (users, services, incidents,
acknowledgements, on-call entries), and the JSON shapes of PagerDuty's REST API v2: reference
objects with ``type``/``summary``/``self``/``html_url``, incidents, users and on-call entries.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from bot.core.clock import Clock

Json = dict[str, Any]


@dataclass
class SimUser:
    id: str
    email: str
    name: str


@dataclass
class SimIncident:
    id: str
    number: int
    title: str
    status: str
    service_id: str
    urgency: str
    created_at: datetime
    assigned_to: list[str] = field(default_factory=list)
    acknowledged_by: list[str] = field(default_factory=list)
    notes: list[Json] = field(default_factory=list)


@dataclass
class SimOnCall:
    user_id: str
    escalation_policy_id: str
    level: int
    schedule_id: str | None
    start: datetime | None
    end: datetime | None


def iso(when: datetime) -> str:
    """RFC 3339 in UTC; a naive time is taken to be UTC already."""
    aware = when.astimezone(UTC) if when.tzinfo else when.replace(tzinfo=UTC)
    return aware.isoformat().replace("+00:00", "Z")


class PagerDutyState:
    """Users, services, incidents and on-call entries, changed only through these helpers."""

    def __init__(self, *, clock: Clock, web_url: str) -> None:
        self.clock = clock
        self.web_url = web_url.rstrip("/")
        self.api_url = "https://api.pagerduty.com"  # the simulator sets its own address on start
        self.users: dict[str, SimUser] = {}
        self.incidents: dict[str, SimIncident] = {}
        self.oncall_entries: list[SimOnCall] = []
        self.services: dict[str, tuple[str, str]] = {}  # id -> (name, escalation policy id)
        self.names: dict[str, str] = {}  # escalation policy and schedule summaries
        self._seq = 0

    def _next_id(self, prefix: str) -> str:
        self._seq += 1
        return f"{prefix}{self._seq:05d}"

    def add_user(self, email: str, name: str = "") -> str:
        user = SimUser(self._next_id("PU"), email, name or email.split("@")[0])
        self.users[user.id] = user
        return user.id

    def add_service(self, name: str, *, escalation_policy_id: str | None = None, service_id: str | None = None) -> str:
        service_id = service_id or self._next_id("PS")
        policy = escalation_policy_id or self._next_id("PE")
        self.names.setdefault(policy, f"{name} escalation policy")
        self.services[service_id] = (name, policy)
        return service_id

    def add_incident(
        self,
        title: str,
        *,
        service: str | None = None,
        urgency: str = "high",
        assigned_to: Iterable[str] = (),
        acknowledged_by: Iterable[str] = (),
        status: str | None = None,
    ) -> SimIncident:
        """``service`` is a service id (see :meth:`add_service`); None uses a default "Production"."""
        if service is None:
            service = next((k for k, v in self.services.items() if v[0] == "Production"), None)
            service = service or self.add_service("Production")
        elif service not in self.services:
            self.add_service(service, service_id=service)
        acks = list(acknowledged_by)
        status = status or ("acknowledged" if acks else "triggered")
        number = len(self.incidents) + 1
        incident = SimIncident(
            self._next_id("PI"),
            number,
            title,
            status,
            service,
            urgency,
            self.clock.now(),
            assigned_to=list(dict.fromkeys([*assigned_to, *acks])),
            acknowledged_by=acks,
        )
        if status == "resolved":
            incident.assigned_to, incident.acknowledged_by = [], []
        self.incidents[incident.id] = incident
        return incident

    def acknowledge(self, incident_id: str, user_id: str) -> None:
        incident = self.incidents[incident_id]
        incident.status = "acknowledged"
        for people in (incident.acknowledged_by, incident.assigned_to):
            if user_id not in people:
                people.append(user_id)

    def unacknowledge(self, incident_id: str) -> None:
        incident = self.incidents[incident_id]
        incident.status, incident.acknowledged_by = "triggered", []

    def resolve(self, incident_id: str) -> None:
        # PagerDuty empties assignments and acknowledgements on resolve
        incident = self.incidents[incident_id]
        incident.status, incident.assigned_to, incident.acknowledged_by = "resolved", [], []

    def add_oncall(
        self,
        user_id: str,
        *,
        escalation_policy_id: str,
        level: int = 1,
        schedule_id: str | None = None,
        start: datetime | None = None,
        end: datetime | None = None,
    ) -> SimOnCall:
        """``schedule_id`` None: a direct escalation target; ``start``/``end`` None: permanent."""
        entry = SimOnCall(user_id, escalation_policy_id, level, schedule_id, start, end)
        self.oncall_entries.append(entry)
        return entry

    def _find_incident(self, key: str) -> SimIncident | None:
        # PagerDuty accepts the id or the incident number
        return self.incidents.get(key) or next((i for i in self.incidents.values() if str(i.number) == key), None)

    # --- rendering in PagerDuty's shapes ----------------------------------------------------

    def _ref(self, kind: str, obj_id: str, summary: str) -> Json:
        plural = {"escalation_policy": "escalation_policies"}.get(kind, kind + "s")
        web_path = "service-directory" if kind == "service" else plural
        return {
            "id": obj_id,
            "type": f"{kind}_reference",
            "summary": summary,
            "self": f"{self.api_url}/{plural}/{obj_id}",
            "html_url": f"{self.web_url}/{web_path}/{obj_id}",
        }

    def _user_ref(self, user_id: str) -> Json:
        user = self.users.get(user_id)
        return self._ref("user", user_id, user.name if user else user_id)

    def _user(self, user: SimUser) -> Json:
        ref = self._ref("user", user.id, user.name)
        return {**ref, "type": "user", "name": user.name, "email": user.email, "time_zone": "Etc/UTC", "role": "user"}

    def _incident(self, i: SimIncident) -> Json:
        service_name, policy = self.services[i.service_id]
        at = iso(i.created_at)
        body: Json = {
            **self._ref("incident", i.id, f"[#{i.number}] {i.title}"),
            "type": "incident",
            "incident_number": i.number,
            "title": i.title,
            "created_at": at,
            "updated_at": at,
            "status": i.status,
            "incident_key": f"ackgate-sim-{i.id}",
            "service": self._ref("service", i.service_id, service_name),
            "assignments": [{"at": at, "assignee": self._user_ref(u)} for u in i.assigned_to],
            "assigned_via": "escalation_policy",
            "last_status_change_at": at,
            "acknowledgements": [{"at": at, "acknowledger": self._user_ref(u)} for u in i.acknowledged_by],
            "escalation_policy": self._ref("escalation_policy", policy, self.names.get(policy, policy)),
            "teams": [],
            "pending_actions": [],
            "is_mergeable": True,
            "incident_type": {"name": "incident_default"},
            "urgency": i.urgency,
        }
        if i.status == "resolved":
            body["resolved_at"] = at
        return body

    def _oncall(self, o: SimOnCall, *, expand_users: bool) -> Json:
        user = self.users.get(o.user_id)
        shown = self._user(user) if expand_users and user else self._user_ref(o.user_id)
        policy, schedule = o.escalation_policy_id, o.schedule_id
        return {
            "escalation_policy": self._ref("escalation_policy", policy, self.names.get(policy, policy)),
            "user": shown,
            # null schedule: a direct escalation target; null start/end: permanent on call
            "schedule": self._ref("schedule", schedule, self.names.get(schedule, schedule)) if schedule else None,
            "escalation_level": o.level,
            "start": iso(o.start) if o.start else None,
            "end": iso(o.end) if o.end else None,
        }

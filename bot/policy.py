"""The policy file: resources, approver groups and ordered access flows, as frozen models.

Loading (YAML with line numbers, errors that name file, line and fix) lives in
:mod:`bot.policy_file`; this module is the schema and the matching rules.
"""

from __future__ import annotations

from datetime import timedelta
from typing import Annotated, Literal

from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, field_validator, model_validator

from bot.durations import parse_duration
from bot.errors import UsageError


def _duration(value: object) -> object:
    if isinstance(value, str):
        try:
            return parse_duration(value)
        except UsageError as exc:
            raise ValueError(exc.message) from exc
    return value


Duration = Annotated[timedelta, BeforeValidator(_duration)]


class _Frozen(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


class ProvisionerSpec(_Frozen):
    """How a resource is provisioned. ``webhook`` POSTs signed JSON to ``url``; ``noop`` records only."""

    type: Literal["webhook", "noop"]
    url: str | None = None
    timeout_seconds: float = 10.0
    max_attempts: int = Field(default=5, ge=1, le=20)

    @model_validator(mode="after")
    def _url_for_webhook(self) -> ProvisionerSpec:
        if self.type == "webhook" and not self.url:
            raise ValueError("a webhook provisioner needs a url, such as https://provisioner.internal/ackgate")
        return self


class Resource(_Frozen):
    name: str
    description: str = ""
    provisioner: str = "noop"  # a key of Policy.provisioners, or "noop"
    settings: dict[str, str | int | bool] = Field(default_factory=dict)  # passed to the provisioner
    max_duration: Duration = timedelta(hours=8)


class ServiceRef(_Frozen):
    id: str
    name: str = ""

    @property
    def label(self) -> str:
        return self.name or self.id


def _service(value: object) -> object:
    return {"id": value} if isinstance(value, str) else value


class Requesters(_Frozen):
    """Who may ask. Empty lists everywhere with ``anyone: false`` matches nobody."""

    anyone: bool = False
    emails: tuple[str, ...] = ()
    groups: tuple[str, ...] = ()
    pagerduty_schedules: tuple[str, ...] = ()

    @field_validator("emails")
    @classmethod
    def _lower(cls, v: tuple[str, ...]) -> tuple[str, ...]:
        return tuple(e.lower() for e in v)


class NoGate(_Frozen):
    type: Literal["none"]


class AcknowledgedIncidentGate(_Frozen):
    """The requester must have acknowledged an open incident (optionally on these services and urgencies)."""

    type: Literal["acknowledged_incident"]
    services: tuple[Annotated[ServiceRef, BeforeValidator(_service)], ...] = ()
    urgencies: tuple[Literal["high", "low"], ...] = ()


class OnCallGate(_Frozen):
    """The requester must be on call now for one of these schedules or escalation policies."""

    type: Literal["on_call"]
    schedules: tuple[str, ...] = ()
    escalation_policies: tuple[str, ...] = ()
    max_escalation_level: int | None = Field(default=None, ge=1)


Gate = Annotated[NoGate | AcknowledgedIncidentGate | OnCallGate, Field(discriminator="type")]


class AutoApproval(_Frozen):
    type: Literal["auto"]


class ApproversApproval(_Frozen):
    """Named approvers and/or approver groups; ``required`` of them must approve."""

    type: Literal["approvers"]
    approvers: tuple[str, ...] = ()
    groups: tuple[str, ...] = ()
    required: int = Field(default=1, ge=1)
    channel: str | None = None

    @field_validator("approvers")
    @classmethod
    def _lower(cls, v: tuple[str, ...]) -> tuple[str, ...]:
        return tuple(e.lower() for e in v)


class OnCallApproval(_Frozen):
    """Delegated approval: whoever is on call now for the policy or schedule approves."""

    type: Literal["on_call"]
    escalation_policy: str | None = None
    schedule: str | None = None
    max_escalation_level: int | None = Field(default=None, ge=1)
    required: int = Field(default=1, ge=1)
    channel: str | None = None

    @model_validator(mode="after")
    def _one_target(self) -> OnCallApproval:
        if not (self.escalation_policy or self.schedule):
            raise ValueError("on_call approval needs an escalation_policy or a schedule id")
        return self


Approval = Annotated[AutoApproval | ApproversApproval | OnCallApproval, Field(discriminator="type")]


class Flow(_Frozen):
    name: str
    resources: tuple[str, ...]
    requesters: Requesters = Requesters(anyone=True)
    gate: Gate = NoGate(type="none")
    approval: Approval = AutoApproval(type="auto")
    default_duration: Duration = timedelta(hours=1)
    max_duration: Duration = timedelta(hours=4)
    revoke_on_resolve: bool = False
    cap_at_shift_end: bool = False
    incident_notes: bool = True

    def covers(self, resource: str) -> bool:
        return "*" in self.resources or resource in self.resources


class Policy(_Frozen):
    version: Literal[1] = 1
    provisioners: dict[str, ProvisionerSpec] = Field(default_factory=dict)
    resources: tuple[Resource, ...]
    groups: dict[str, tuple[str, ...]] = Field(default_factory=dict)
    flows: tuple[Flow, ...]

    @field_validator("groups")
    @classmethod
    def _lower_groups(cls, v: dict[str, tuple[str, ...]]) -> dict[str, tuple[str, ...]]:
        return {k: tuple(e.lower() for e in members) for k, members in v.items()}

    @model_validator(mode="after")
    def _references(self) -> Policy:
        names = [r.name for r in self.resources]
        dupes = sorted({n for n in names if names.count(n) > 1})
        if dupes:
            raise ValueError(f"resource names must be unique; repeated: {', '.join(dupes)}")
        known = set(names)
        for r in self.resources:
            if r.provisioner != "noop" and r.provisioner not in self.provisioners:
                raise ValueError(
                    f"resource {r.name!r} names provisioner {r.provisioner!r}, which is not defined "
                    f"under provisioners: (defined: {', '.join(sorted(self.provisioners)) or 'none'})"
                )
        flow_names = [f.name for f in self.flows]
        if len(set(flow_names)) != len(flow_names):
            raise ValueError("flow names must be unique")
        for f in self.flows:
            for res in f.resources:
                if res != "*" and res not in known:
                    raise ValueError(f"flow {f.name!r} names resource {res!r}, which is not defined under resources:")
            groups = list(f.requesters.groups)
            if isinstance(f.approval, ApproversApproval):
                groups += list(f.approval.groups)
                if not (f.approval.approvers or f.approval.groups):
                    raise ValueError(f"flow {f.name!r}: approvers approval needs approvers or groups")
            for g in groups:
                if g not in self.groups:
                    raise ValueError(f"flow {f.name!r} names group {g!r}, which is not defined under groups:")
            if f.default_duration > f.max_duration:
                raise ValueError(f"flow {f.name!r}: default_duration is longer than max_duration")
        return self

    def resource(self, name: str) -> Resource | None:
        for r in self.resources:
            if r.name == name:
                return r
        return None

    def flows_for(self, resource: str) -> list[Flow]:
        return [f for f in self.flows if f.covers(resource)]

    def group_members(self, group: str) -> tuple[str, ...]:
        return self.groups.get(group, ())

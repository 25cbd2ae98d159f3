"""The policy file: resources, approver groups and ordered access flows, as frozen models.

Loading (YAML with line numbers, errors that name file, line and fix) lives in
:mod:`bot.core.policy_file`; this module is the schema and the matching rules.
"""

from __future__ import annotations

import difflib
from datetime import timedelta
from typing import Annotated, Literal

from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, ValidationInfo, field_validator, model_validator

from bot.core import messages
from bot.core.domain import split_channel
from bot.core.durations import format_duration, parse_duration
from bot.core.errors import ConfigError, UsageError

Loc = tuple[str | int, ...]


def _duration(value: object) -> object:
    # YAML turns ``8`` into an int and ``1:30`` into 90 (base 60); pydantic would read both as
    # seconds, so a policy meaning "8 hours" would silently grant 8 seconds. Demand a unit.
    if isinstance(value, int | float):
        raise ValueError(
            f"{value!r} has no unit; write a duration such as 30m, 8h or 1h30m (in quotes if it has a colon)"
        )
    if isinstance(value, str):
        try:
            return parse_duration(value)
        except UsageError as exc:
            raise ValueError(exc.message) from exc
    return value


Duration = Annotated[timedelta, BeforeValidator(_duration)]

CHAT_PLATFORMS = ("slack", "teams")  # the platforms a policy may name; settings say which are configured


def _channel(value: object, info: ValidationInfo) -> object:
    """``platform:channel``, stored in that canonical form; a bare id is Slack's (as before issue 7).
    When validated with ``context={"platforms": [...]}``, a platform not configured is refused."""
    if not isinstance(value, str):
        return value
    text = value.strip()
    platform, channel = split_channel(text)
    if platform not in CHAT_PLATFORMS or not channel:
        raise ValueError(messages.policy_channel_unknown(text, CHAT_PLATFORMS))
    if ":" in channel and text == channel:  # e.g. a bare Teams id 19:…@thread.tacv2
        raise ValueError(messages.policy_channel_unknown(text, CHAT_PLATFORMS))
    configured = (info.context or {}).get("platforms")
    if configured is not None and platform not in configured:
        raise ValueError(messages.policy_channel_unconfigured(platform, tuple(configured)))
    return f"{platform}:{channel}"


ChatChannel = Annotated[str, BeforeValidator(_channel)]


class _Frozen(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


class ProvisionerSpec(_Frozen):
    """How a resource is provisioned. ``webhook`` POSTs signed JSON to ``url``; ``noop`` records only."""

    type: Literal["webhook", "noop"]
    url: str | None = None
    timeout_seconds: float = Field(default=10.0, gt=0)
    max_attempts: int = Field(default=5, ge=1, le=20)

    @model_validator(mode="after")
    def _url_for_webhook(self) -> ProvisionerSpec:
        if self.type == "webhook" and not self.url:
            raise ValueError("a webhook provisioner needs a url, such as https://provisioner.internal/ackgate")
        if self.url and not self.url.startswith(("https://", "http://")):
            raise ValueError(f"url {self.url!r} must start with https:// (or http:// inside a private network)")
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
    channel: ChatChannel | None = None

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
    channel: ChatChannel | None = None

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
        problems = reference_problems(self)
        if problems:
            raise PolicyReferenceError(problems)
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

    def require_platforms(self, configured: tuple[str, ...]) -> None:
        """Raise :class:`ConfigError` naming each flow whose approval channel is on a platform that is
        not configured (a policy file is checked with line numbers by :func:`bot.core.policy_file.load_policy`)."""
        problems = [
            f"flows[{i}] ({flow.name}).approval.channel: {messages.policy_channel_unconfigured(platform, configured)}"
            for i, flow in enumerate(self.flows)
            if isinstance(flow.approval, ApproversApproval | OnCallApproval) and flow.approval.channel
            for platform in [split_channel(flow.approval.channel)[0]]
            if platform not in configured
        ]
        if problems:
            raise ConfigError("\n".join(problems))


class PolicyReferenceError(ValueError):
    """Every cross-reference problem of a policy at once, each with the field path it is about,
    so :mod:`bot.core.policy_file` can point at the right line. Pydantic keeps it in the error's ctx."""

    def __init__(self, problems: list[tuple[Loc, str]]) -> None:
        super().__init__("; ".join(message for _, message in problems))
        self.problems = tuple(problems)


def _unknown(kind: str, name: str, known: list[str]) -> str:
    """``which is not defined under groups: (defined: a, b). Did you mean 'a'?``"""
    close = difflib.get_close_matches(name, known, n=1)
    hint = f" Did you mean {close[0]!r}?" if close else ""
    return f"which is not defined under {kind}: (defined: {', '.join(sorted(known)) or 'none'}).{hint}"


def reference_problems(policy: Policy) -> list[tuple[Loc, str]]:
    """Names that do not resolve, repeats and contradictions, in file order, with their field paths."""
    problems: list[tuple[Loc, str]] = []
    add = problems.append
    names = [r.name for r in policy.resources]
    provisioners = [*policy.provisioners, "noop"]
    if "noop" in policy.provisioners and policy.provisioners["noop"].type != "noop":
        add(
            (
                ("provisioners", "noop"),
                "the name 'noop' is reserved for the built-in noop provisioner; rename it",
            )
        )
    for i, r in enumerate(policy.resources):
        if names.index(r.name) != i:
            add((("resources", i, "name"), f"resource name {r.name!r} is used twice; names must be unique"))
        if r.provisioner not in provisioners:
            unknown = _unknown("provisioners", r.provisioner, provisioners)
            add(
                (
                    ("resources", i, "provisioner"),
                    f"resource {r.name!r} names provisioner {r.provisioner!r}, {unknown}",
                )
            )
    flow_names = [f.name for f in policy.flows]
    groups = list(policy.groups)
    for i, f in enumerate(policy.flows):
        if flow_names.index(f.name) != i:
            add((("flows", i, "name"), f"flow name {f.name!r} is used twice; names must be unique"))
        for j, res in enumerate(f.resources):
            if res != "*" and res not in names:
                unknown = _unknown("resources", res, names)
                add((("flows", i, "resources", j), f"flow {f.name!r} names resource {res!r}, {unknown}"))
        named: list[tuple[Loc, str]] = [
            (("flows", i, "requesters", "groups", j), g) for j, g in enumerate(f.requesters.groups)
        ]
        if isinstance(f.approval, ApproversApproval):
            named += [(("flows", i, "approval", "groups", j), g) for j, g in enumerate(f.approval.groups)]
            if not (f.approval.approvers or f.approval.groups):
                add(
                    (
                        ("flows", i, "approval"),
                        f"flow {f.name!r}: approvers approval needs approvers or groups",
                    )
                )
        for loc, g in named:
            if g not in policy.groups:
                add((loc, f"flow {f.name!r} names group {g!r}, {_unknown('groups', g, groups)}"))
        if f.default_duration > f.max_duration:
            default, longest = format_duration(f.default_duration), format_duration(f.max_duration)
            add(
                (
                    ("flows", i, "default_duration"),
                    f"flow {f.name!r}: default_duration ({default}) is longer than max_duration ({longest}); "
                    "shorten it or raise max_duration",
                )
            )
    return problems

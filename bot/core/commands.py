"""The `/access` command grammar, parsed into imperative commands. Platform-neutral: adapters
pass the text the user typed (Slack's slash-command text, a Teams message minus the mention).

    /access <resource> [duration] [reason…]    request access
    /access                                    open the request form
    /access list                               your requests and active grants
    /access revoke <grant-id>                  end a grant early ("I'm done")
    /access extend <grant-id> <duration>       extend within the flow's maximum
    /access help                               usage
    /access auth <@user|email> [message]       ask Ackgate to verify someone's identity
    /access prefs [pagerduty on|off] [chat on|off]   how authentication requests reach you
    /access admin severity|pagerduty|key|status|test …   administration (admins only)

Adapters normalise their platform's mention markup to ``@<user id>`` before parsing.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from bot.core import messages
from bot.core.durations import looks_like_duration, not_a_duration
from bot.core.errors import UsageError

MAX_REASON = 500
_DURATION_LIKE = re.compile(r"^\d+[a-z]*$", re.IGNORECASE)


@dataclass(frozen=True)
class RequestAccess:
    resource: str
    duration: str | None
    reason: str


@dataclass(frozen=True)
class Revoke:
    grant_id: str


@dataclass(frozen=True)
class Extend:
    grant_id: str
    duration: str


@dataclass(frozen=True)
class ListMine:
    pass


@dataclass(frozen=True)
class Help:
    pass


@dataclass(frozen=True)
class OpenForm:
    pass


@dataclass(frozen=True)
class RequestAuth:
    target: str  # "@<user id>" or an email
    message: str


@dataclass(frozen=True)
class SetPrefs:
    pagerduty: bool | None = None
    chat: bool | None = None


@dataclass(frozen=True)
class Admin:
    action: str  # severity | pagerduty | key | status | test
    argument: str = ""


Command = RequestAccess | Revoke | Extend | ListMine | Help | OpenForm | RequestAuth | SetPrefs | Admin

ADMIN_ACTIONS = ("severity", "pagerduty", "resolve", "key", "status", "test")
SEVERITIES = ("critical", "error", "warning", "info")


def _on_off(word: str, usage: str) -> bool:
    if word.lower() in {"on", "yes", "true", "enable"}:
        return True
    if word.lower() in {"off", "no", "false", "disable"}:
        return False
    raise UsageError(messages.usage_for(usage))


def _parse_admin(rest: list[str]) -> Admin:
    if not rest or rest[0].lower() not in ADMIN_ACTIONS:
        raise UsageError(messages.usage_for("admin"))
    action, args = rest[0].lower(), rest[1:]
    if action == "severity":
        if len(args) != 1 or args[0].lower() not in SEVERITIES:
            raise UsageError(messages.usage_for("admin"))
        return Admin("severity", args[0].lower())
    if action in ("pagerduty", "resolve"):
        if len(args) != 1:
            raise UsageError(messages.usage_for("admin"))
        return Admin(action, "on" if _on_off(args[0], "admin") else "off")
    if args:
        raise UsageError(messages.usage_for("admin"))
    return Admin(action)


def _parse_prefs(rest: list[str]) -> SetPrefs:
    if len(rest) % 2:
        raise UsageError(messages.usage_for("prefs"))
    values: dict[str, bool] = {}
    for key, value in zip(rest[::2], rest[1::2], strict=True):
        if key.lower() not in {"pagerduty", "chat"}:
            raise UsageError(messages.usage_for("prefs"))
        values[key.lower()] = _on_off(value, "prefs")
    return SetPrefs(pagerduty=values.get("pagerduty"), chat=values.get("chat"))


def check_reason(reason: str) -> str:
    reason = " ".join(reason.split())
    if len(reason) > MAX_REASON:
        raise UsageError(messages.reason_too_long(len(reason), MAX_REASON))
    return reason


def parse_command(text: str) -> Command:
    """Parse what followed ``/access``. Raises :class:`UsageError` with the usage line to follow."""
    words = text.split()
    if not words:
        return OpenForm()
    head, rest = words[0].lower(), words[1:]
    if head in {"help", "-h", "--help", "?"}:
        return Help()
    if head == "list":
        if rest:
            raise UsageError(messages.usage_for("list"))
        return ListMine()
    if head == "revoke":
        if len(rest) != 1:
            raise UsageError(messages.usage_for("revoke"))
        return Revoke(grant_id=rest[0].lower())
    if head == "auth":
        if not rest:
            raise UsageError(messages.usage_for("auth"))
        return RequestAuth(target=rest[0], message=check_reason(" ".join(rest[1:])))
    if head == "prefs":
        return _parse_prefs(rest)
    if head == "admin":
        return _parse_admin(rest)
    if head == "extend":
        if len(rest) != 2:
            raise UsageError(messages.usage_for("extend"))
        return Extend(grant_id=rest[0].lower(), duration=rest[1])
    duration: str | None = None
    if rest and looks_like_duration(rest[0]):
        duration, rest = rest[0], rest[1:]
    elif rest and _DURATION_LIKE.match(rest[0]):
        raise not_a_duration(rest[0])  # "2x", "90": meant as a duration; say how to write one
    return RequestAccess(resource=words[0], duration=duration, reason=check_reason(" ".join(rest)))


def form_text(command: RequestAccess) -> str:
    """A request form's answers as the command text that parses back to ``command`` (what an inbox
    row keeps of a form submission)."""
    return " ".join(part for part in (command.resource, command.duration or "", command.reason) if part)

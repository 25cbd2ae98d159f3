"""The `/access` command grammar, parsed into imperative commands. Platform-neutral: adapters
pass the text the user typed (Slack's slash-command text, a Teams message minus the mention).

    /access <resource> [duration] [reason…]    request access
    /access                                    open the request form
    /access list                               your requests and active grants
    /access revoke <grant-id>                  end a grant early ("I'm done")
    /access extend <grant-id> <duration>       extend within the flow's maximum
    /access help                               usage
"""

from __future__ import annotations

from dataclasses import dataclass

from bot import messages
from bot.durations import looks_like_duration
from bot.errors import UsageError

MAX_REASON = 500


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


Command = RequestAccess | Revoke | Extend | ListMine | Help | OpenForm

_KEYWORDS = {"list", "revoke", "extend", "help"}


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
    if head == "extend":
        if len(rest) != 2:
            raise UsageError(messages.usage_for("extend"))
        return Extend(grant_id=rest[0].lower(), duration=rest[1])
    duration: str | None = None
    if rest and looks_like_duration(rest[0]):
        duration, rest = rest[0], rest[1:]
    return RequestAccess(resource=words[0], duration=duration, reason=check_reason(" ".join(rest)))

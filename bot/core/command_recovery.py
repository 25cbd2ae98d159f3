"""What to tell someone whose command was acknowledged and then left unanswered by a crash.

A recovery pass finds the command (its text and when it arrived) and asks :func:`recover` for the
answer. Commands that change nothing, or whose change is a compare-and-set that cannot apply
twice, are simply run again. A request for access is first looked for among the requester's own
requests made since the command arrived: if the first run got that far, the answer is its state,
and a second request is never made. Anything else (an authentication request, an extension, an
admin test) is not repeated: the person is told it may or may not have happened, and how to check.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from datetime import datetime

from bot.core import messages
from bot.core.commands import Admin, Command, Help, ListMine, RequestAccess, Revoke, SetPrefs
from bot.core.domain import Principal
from bot.core.ports import RequestStore
from bot.core.views import Card

# Re-running these is harmless: they read, set a value, or end a grant by compare-and-set.
_IDEMPOTENT_ADMIN = frozenset({"severity", "pagerduty", "resolve", "status"})

Execute = Callable[[Principal, Command], Awaitable[Card]]


def rerun_is_safe(command: Command) -> bool:
    if isinstance(command, Admin):
        return command.action in _IDEMPOTENT_ADMIN
    return isinstance(command, Help | ListMine | Revoke | SetPrefs)


async def recover(
    actor: Principal,
    command: Command,
    *,
    text: str,
    received_at: datetime,
    requests: RequestStore,
    execute: Execute,
) -> Card:
    """The answer for ``command`` (typed as ``text`` at ``received_at``), without doing it twice."""
    if isinstance(command, RequestAccess):
        made = [
            r
            for r in await requests.list_for(actor.email)
            if r.resource == command.resource and r.created_at >= received_at
        ]
        if made:
            first = min(made, key=lambda r: r.created_at)
            return Card(title="", text=messages.request_found_after_restart(first.resource, first.id, first.status))
        return await execute(actor, command)
    if rerun_is_safe(command):
        return await execute(actor, command)
    return Card(title="", text=messages.command_interrupted(text))

"""What to tell someone whose command was acknowledged and then left unanswered by a crash.

A recovery pass finds the command (its text and when it arrived) and asks :func:`recover` for the
answer. Commands that change nothing, or whose change is a compare-and-set that cannot apply
twice, are simply run again. A request for access is first looked for among the requester's own
requests made since the command arrived: if the first run got that far, the answer is its state,
and a second request is never made. Anything else (an authentication request, an extension, an
admin test) is not repeated: the person is told it may or may not have happened, and how to check.

:class:`RecoveryPass` is the pass itself, shared by the chat platforms: it takes over one platform's
unanswered commands from the :class:`~bot.core.ports.CommandInbox` and hands each to that platform's
answer (which asks :func:`recover` and delivers the result its own way).
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable, Sequence
from datetime import datetime, timedelta

from bot.core import messages
from bot.core.clock import Clock
from bot.core.commands import Admin, Command, Help, ListMine, RequestAccess, Revoke, SetPrefs
from bot.core.domain import Principal, ReceivedCommand
from bot.core.ports import CommandInbox, RequestStore
from bot.core.views import Card

# Re-running these is harmless: they read, set a value, or end a grant by compare-and-set.
_IDEMPOTENT_ADMIN = frozenset({"severity", "pagerduty", "resolve", "status"})

Execute = Callable[[Principal, Command], Awaitable[Card]]


def rerun_is_safe(command: Command) -> bool:
    if isinstance(command, Admin):
        return command.action in _IDEMPOTENT_ADMIN
    return isinstance(command, Help | ListMine | Revoke | SetPrefs)


async def recover(
    actor: Principal, command: Command, received: ReceivedCommand, *, requests: RequestStore, execute: Execute
) -> Card:
    """The answer for ``command`` (the parsed text of ``received``), without doing it twice."""
    text, received_at = received.text, received.received_at
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


Answer = Callable[[ReceivedCommand], Awaitable[bool]]

COMMAND_LEASE = timedelta(seconds=60)  # how long a command is left to its first handler
MAX_ATTEMPTS = 3
GIVE_UP_AFTER = timedelta(hours=24)  # nobody waits a day for an answer
KEPT = timedelta(days=3)  # far beyond any platform's redelivery window
PRUNE_EVERY = timedelta(hours=1)


class RecoveryPass:
    """One platform's pass over the :class:`~bot.core.ports.CommandInbox`: each run takes over, by
    compare-and-set, that platform's commands (``kinds``) whose lease lapsed (their first handler
    crashed or was stopped), so on several replicas each is taken once, and hands each to ``answer``
    (which delivers an answer from :func:`recover` and marks the row answered, returning whether it
    was delivered). A command is given up after :data:`MAX_ATTEMPTS` take-overs; every platform's
    rows older than :data:`KEPT` are pruned."""

    def __init__(
        self,
        *,
        inbox: CommandInbox,
        clock: Clock,
        kinds: Sequence[str],
        answer: Answer,
        log: logging.Logger,
        instance: str = "",
    ) -> None:
        self._inbox, self._clock, self._kinds = inbox, clock, tuple(kinds)
        self._answer, self._log, self._instance = answer, log, instance
        self._pruned_at: datetime | None = None

    async def run_once(self) -> int:
        """One pass: returns how many commands it answered."""
        now = self._clock.now()
        await self._prune(now)
        taken = await self._inbox.claim_unanswered(
            now,
            lease_until=now + COMMAND_LEASE,
            received_after=now - GIVE_UP_AFTER,
            max_attempts=MAX_ATTEMPTS,
            owner=self._instance,
            kinds=self._kinds,
        )
        answered = 0
        for command in taken:
            self._log.info("answering command %s, left unanswered (attempt %d)", command.key, command.attempts)
            if await self._answer(command):
                answered += 1
        return answered

    async def _prune(self, now: datetime) -> None:
        if self._pruned_at is not None and now - self._pruned_at < PRUNE_EVERY:
            return
        self._pruned_at = now
        gone = await self._inbox.prune(now - KEPT)
        if gone:
            self._log.info("forgot %d chat commands older than %s", gone, KEPT)

"""The recovery pass for Slack commands: answers what was acknowledged and never answered.

It runs on the expiry scheduler's loop (at start-up, then every :data:`PASS_SECONDS`). Each pass
takes over, by compare-and-set in the :class:`bot.core.ports.CommandInbox`, the commands whose lease
lapsed (their first handler crashed or was stopped), so on several replicas each is taken once.
For each it asks :func:`bot.core.command_recovery.recover` for an answer that repeats nothing, and sends
it on the command's response_url while Slack still takes it (30 minutes), else by DM. A command is
given up after :data:`MAX_ATTEMPTS` take-overs; rows older than :data:`KEPT` are pruned.
"""

from __future__ import annotations

import logging
from datetime import datetime, timedelta

from bot.core import messages
from bot.core.clock import Clock
from bot.core.command_recovery import recover
from bot.core.commands import RequestAccess, parse_command
from bot.core.domain import ReceivedCommand
from bot.core.errors import UsageError
from bot.core.ports import CommandInbox, RequestStore
from bot.core.views import Card
from handlers.slack.answers import COMMAND_LEASE, Answerer
from handlers.slack.app import AccessUseCases, click, normalise_mentions, outcome
from handlers.slack.notifier import SlackIdentity

log = logging.getLogger("ackgate.slack.recovery")

PASS_SECONDS = 15.0
MAX_ATTEMPTS = 3
GIVE_UP_AFTER = timedelta(hours=24)  # nobody waits a day for an answer
KEPT = timedelta(days=3)  # far beyond Slack's five-minute replay window and its retries
PRUNE_EVERY = timedelta(hours=1)


class SlackRecovery:
    def __init__(
        self,
        *,
        inbox: CommandInbox,
        requests: RequestStore,
        service: AccessUseCases,
        identity: SlackIdentity,
        answerer: Answerer,
        clock: Clock,
        instance: str = "",
    ) -> None:
        self._instance = instance
        self._inbox = inbox
        self._requests = requests
        self._service = service
        self._identity = identity
        self._answerer = answerer
        self._clock = clock
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
        )
        answered = 0
        for command in taken:
            log.info("answering Slack command %s, left unanswered (attempt %d)", command.key, command.attempts)
            card = await outcome(self._answer_for(command), log)
            if await self._answerer.answer(command, card, replace_original=command.kind == "command"):
                answered += 1
        return answered

    async def _answer_for(self, command: ReceivedCommand) -> Card:
        if command.kind == "key_form":
            return Card(title="", text=messages.KEY_FORM_INTERRUPTED)
        if command.kind == "click":  # clicked again: a decision or a revoke counts once
            kind, _, target = command.text.partition(" ")
            return await click(self._service, self._identity, command.user_id, kind, target, log)
        try:
            parsed = parse_command(normalise_mentions(command.text))
        except UsageError as exc:  # cannot happen for a recorded command, but answers anyway
            return Card(title="", text=exc.message)
        if command.kind == "form" and not isinstance(parsed, RequestAccess):
            return Card(title="", text=messages.command_interrupted(command.text))
        actor = await self._identity.principal(command.user_id)
        return await recover(
            actor,
            parsed,
            text=command.text,
            received_at=command.received_at,
            requests=self._requests,
            execute=self._service.execute,
        )

    async def _prune(self, now: datetime) -> None:
        if self._pruned_at is not None and now - self._pruned_at < PRUNE_EVERY:
            return
        self._pruned_at = now
        gone = await self._inbox.prune(now - KEPT)
        if gone:
            log.info("forgot %d Slack commands older than %s", gone, KEPT)

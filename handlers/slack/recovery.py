"""The recovery pass for Slack commands: answers what was acknowledged and never answered.

It runs on the expiry scheduler's loop (at start-up, then every :data:`PASS_SECONDS`). Each pass
takes over, through :class:`bot.core.command_recovery.RecoveryPass`, the Slack commands whose lease
lapsed (their first handler crashed or was stopped), so on several replicas each is taken once.
For each it asks :func:`bot.core.command_recovery.recover` for an answer that repeats nothing, and sends
it on the command's response_url while Slack still takes it (30 minutes), else by DM. The pass's
attempts and pruning are the core's.
"""

from __future__ import annotations

import logging

from bot.core import messages
from bot.core.clock import Clock
from bot.core.command_recovery import RecoveryPass, recover
from bot.core.commands import RequestAccess, parse_command
from bot.core.domain import ReceivedCommand
from bot.core.errors import UsageError
from bot.core.ports import CommandInbox, RequestStore
from bot.core.views import Card
from handlers.slack.answers import Answerer
from handlers.slack.app import AccessUseCases, click, normalise_mentions, outcome
from handlers.slack.notifier import SlackIdentity

log = logging.getLogger("ackgate.slack.recovery")

PASS_SECONDS = 15.0
KINDS = ("command", "form", "key_form", "click")  # the kinds of row the Slack listeners record


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
        self._requests = requests
        self._service = service
        self._identity = identity
        self._answerer = answerer
        self._pass = RecoveryPass(
            inbox=inbox, clock=clock, kinds=KINDS, answer=self._answer, log=log, instance=instance
        )

    async def run_once(self) -> int:
        """One pass: returns how many commands it answered."""
        return await self._pass.run_once()

    async def _answer(self, command: ReceivedCommand) -> bool:
        card = await outcome(self._answer_for(command), log)
        return await self._answerer.answer(command, card, replace_original=command.kind == "command")

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
        return await recover(actor, parsed, command, requests=self._requests, execute=self._service.execute)

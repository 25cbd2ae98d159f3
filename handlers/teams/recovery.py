"""Teams messages kept in the command inbox until answered, and the recovery pass that answers what a
crash left.

A message activity (a typed command, or an ``Action.Submit`` click from an older client) is recorded
in the :class:`bot.core.ports.CommandInbox` *before* the 202, under its ``dedup_key``
(``teams:<conversation id>:<activity id>``): one insert-if-absent shared by replicas, so a redelivered
copy is acknowledged and not run again (:meth:`TeamsAnswers.record`). The row keeps what the answer
needs without the activity: the sender's MRI, the conversation id (``channel_id``), the serviceUrl
(``response_url``; it came in an authenticated activity, and the connector still checks it against the
allowlist) and the command text. It is marked answered once the reply was posted.

:class:`TeamsRecovery` runs on the scheduler (at start-up, after the instance took back its own claims,
then every :data:`PASS_SECONDS`) through the core's :class:`bot.core.command_recovery.RecoveryPass`.
For each Teams row whose lease lapsed it asks :func:`bot.core.command_recovery.recover` (the same
decisions as Slack's: state of a request already made, safe commands run again, anything else "may or
may not have been done") and answers proactively: a reply to the original message in its
conversation, else a 1:1 message from the address book.
"""

from __future__ import annotations

import logging
from typing import Any

from bot.core import messages
from bot.core.admin import opens_key_form
from bot.core.clock import Clock
from bot.core.command_recovery import COMMAND_LEASE, RecoveryPass, recover
from bot.core.commands import OpenForm, RequestAccess, Revoke, form_text, parse_command
from bot.core.domain import Principal, ReceivedCommand
from bot.core.errors import ChatError, StorageError, UsageError
from bot.core.ports import ChatNotifier, CommandInbox, RequestStore
from bot.core.router import CommandRouter, shown
from bot.core.views import Card
from handlers.teams.activity import TeamsTurn, command_text
from handlers.teams.cards import (
    FORM_VERB,
    KEY_FORM_VERB,
    CardSigner,
    InvalidAction,
    card_activity,
    read_action,
    read_form,
    render_card,
    render_form,
    render_key_form,
)
from handlers.teams.connector import TeamsConnector, TeamsConnectorError
from handlers.teams.notifier import PLATFORM, TeamsIdentity

log = logging.getLogger("ackgate.teams.recovery")

PASS_SECONDS = 15.0
COMMAND = "teams_command"  # typed text, kept as command_text(turn)
CLICK = "teams_click"  # an Action.Submit Approve/Deny/Revoke, kept as "<verb> <target>"
FORM = "teams_form"  # the request form's answers, kept as the command text they parse back to
KEY_FORM = "teams_key_form"  # the admin key form: nothing of the key is kept
KINDS = (COMMAND, CLICK, FORM, KEY_FORM)
_DECISIONS = frozenset({"approve", "deny", "revoke"})


def recorded_as(turn: TeamsTurn, signer: CardSigner | None, verbs: frozenset[str]) -> tuple[str, str]:
    """The inbox row's kind and text for a message activity (pure: no I/O before the ack)."""
    if not turn.is_card_submit:
        return COMMAND, command_text(turn)
    try:
        click = read_action(turn.value, verbs=verbs, signer=signer)
    except InvalidAction:
        return CLICK, ""  # answered with an error card; nothing to redo
    if click.verb in _DECISIONS:
        return CLICK, f"{click.verb} {click.target}"
    if click.verb == KEY_FORM_VERB:
        return KEY_FORM, ""
    if click.verb == FORM_VERB:
        parsed = read_form(click.inputs)
        return FORM, form_text(parsed) if isinstance(parsed, RequestAccess) else ""
    return CLICK, ""


def activity_id_of(command: ReceivedCommand) -> str:
    """The original message's id, from the row's key (``teams:<conversation id>:<activity id>``)."""
    return command.key.removeprefix(f"teams:{command.channel_id}:")


class TeamsAnswers:
    """The inbox rows of Teams messages: recorded before the ack, marked answered after the reply."""

    def __init__(self, *, inbox: CommandInbox, clock: Clock, instance: str = "") -> None:
        self._inbox, self._clock, self._instance = inbox, clock, instance

    def received(self, turn: TeamsTurn, kind: str, text: str) -> ReceivedCommand:
        now = self._clock.now()
        return ReceivedCommand(
            key=turn.dedup_key,
            kind=kind,
            user_id=turn.user.id,
            channel_id=turn.conversation_id,
            text=text,
            response_url=turn.service_url,
            received_at=now,
            lease_until=now + COMMAND_LEASE,
            claimed_by=self._instance,  # a restart of this instance takes it back at once
        )

    async def record(self, command: ReceivedCommand) -> bool | None:
        """True for a new message, False for a redelivered one, None when the database did not answer."""
        try:
            return await self._inbox.record(command)
        except StorageError:
            log.warning("Could not record Teams activity %s; the database did not answer", command.key)
            return None

    async def done(self, turn: TeamsTurn) -> None:
        try:
            await self._inbox.answered(turn.dedup_key, at=self._clock.now())
        except StorageError:
            # Harmless but for a second answer: the recovery pass will find it unanswered.
            log.warning("Could not mark Teams activity %s answered", turn.activity_id, exc_info=True)


class TeamsRecovery:
    """The Teams recovery pass: see the module docstring."""

    def __init__(
        self,
        *,
        inbox: CommandInbox,
        requests: RequestStore,
        service: CommandRouter,
        identity: TeamsIdentity,
        connector: TeamsConnector,
        notifier: ChatNotifier,
        signer: CardSigner | None,
        clock: Clock,
        instance: str = "",
    ) -> None:
        self._inbox, self._requests, self._service, self._identity = inbox, requests, service, identity
        self._connector, self._notifier, self._signer, self._clock = connector, notifier, signer, clock
        self._pass = RecoveryPass(
            inbox=inbox, clock=clock, kinds=KINDS, answer=self._answer, log=log, instance=instance
        )

    async def run_once(self) -> int:
        """One pass: returns how many messages it answered."""
        return await self._pass.run_once()

    async def _answer(self, command: ReceivedCommand) -> bool:
        rendered, card = await shown(self._answer_for(command), instead=self._notice, log=log, platform="Teams")
        delivered = await self._reply(command, rendered)
        if not delivered and card is not None:
            delivered = await self._direct(command, card)
        if delivered:
            try:
                await self._inbox.answered(command.key, at=self._clock.now())
            except StorageError:
                log.warning("Could not mark Teams activity %s answered", command.key, exc_info=True)
        return delivered

    def _notice(self, text: str) -> tuple[dict[str, Any], Card | None]:
        card = Card(title="", text=text)
        return render_card(card, signer=self._signer), card

    def _rendered(self, card: Card) -> tuple[dict[str, Any], Card | None]:
        if opens_key_form(card):
            return render_key_form(signer=self._signer), None
        return render_card(card, signer=self._signer), card

    async def _answer_for(self, command: ReceivedCommand) -> tuple[dict[str, Any], Card | None]:
        if command.kind == KEY_FORM:
            return self._notice(messages.KEY_FORM_INTERRUPTED)
        if not command.text:
            return self._notice(messages.command_interrupted(""))
        actor = await self._identity.principal(
            service_url=command.response_url, conversation_id=command.channel_id, user_id=command.user_id
        )
        if command.kind == CLICK:  # clicked again: a decision or a revoke counts once (compare-and-set)
            verb, _, target = command.text.partition(" ")
            if verb == "revoke":
                return self._rendered(await self._service.execute(actor, Revoke(grant_id=target)))
            return self._rendered(await self._service.decide(target, actor=actor, approve=verb == "approve"))
        try:
            parsed = parse_command(command.text)
        except UsageError as exc:
            return self._notice(exc.message)
        if isinstance(parsed, OpenForm):  # nothing was done: the form again
            return render_form(self._service.request_form(), signer=self._signer), None
        card = await recover(actor, parsed, command, requests=self._requests, execute=self._service.execute)
        return self._rendered(card)

    async def _reply(self, command: ReceivedCommand, rendered: dict[str, Any]) -> bool:
        try:
            await self._connector.reply(
                command.response_url, command.channel_id, activity_id_of(command), card_activity(rendered)
            )
        except TeamsConnectorError as exc:
            log.warning("Could not answer Teams activity %s in its conversation: %s", command.key, exc.message)
            return False
        return True

    async def _direct(self, command: ReceivedCommand, card: Card) -> bool:
        try:
            await self._notifier.send_to_user(Principal(platform=PLATFORM, user_id=command.user_id, email=""), card)
        except ChatError as exc:
            log.warning("Could not message %s in Teams: %s", command.user_id, exc.message)
            return False
        return True

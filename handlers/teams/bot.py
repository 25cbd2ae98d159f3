"""Teams' translator: botbuilder's ``TeamsActivityHandler`` routes each authenticated activity, and
this bot turns it into the same core calls the Slack listeners make (``CommandRouter.execute``,
``decide``, ``set_key``, the request form), then answers with an Adaptive Card.

* **Messages** (a 1:1 chat, a channel @mention, a leading ``/access``): :func:`command_text` (the bot's
  own mention stripped by us, other mentions as ``@29:…``), :func:`bot.core.commands.parse_command`, the
  actor from ``get_member`` (:class:`TeamsIdentity`), the router, and a reply in the conversation.
  The address book learns the sender, the conversation and the team on every message.
* **Card clicks** arrive as an ``adaptiveCard/action`` invoke (``Action.Execute``) or, from older
  clients, a message with a ``value`` (``Action.Submit``). :func:`read_action` refuses data Ackgate did
  not render (unknown verb, tampered target, bad signature): an error card, nothing done. An
  Approve/Deny runs as its own task; the invoke is answered with its card when it finishes within
  the budget, else with an interim card, and the core's PUT of every approval message delivers the
  outcome. A late refusal (say, not an approver) is sent to the clicker as a reply.
* A message's answer, once posted, marks its command inbox row answered (``on_answered``, see
  :mod:`handlers.teams.recovery`), so only what a crash left is answered again.
* ``installationUpdate`` (add) and ``conversationUpdate`` (members added) record addresses, so Ackgate
  can message people proactively.

The SDK's own ``on_invoke_activity`` answers a non-Execute ``adaptiveCard/action`` with a body that
cannot be serialised (SDK-NOTES §9), and its members-added dispatch calls ``TeamsInfo.get_member``
through its synchronous connector; both are overridden. Users see ``UserError``/``UpstreamError``
messages; anything unexpected becomes the generic sentence and a logged traceback.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from contextvars import ContextVar
from dataclasses import dataclass, replace
from typing import Any

from botbuilder.core import InvokeResponse, TurnContext
from botbuilder.core.teams import TeamsActivityHandler
from botbuilder.schema import ChannelAccount
from botbuilder.schema.teams import TeamInfo

from bot.core import messages
from bot.core.admin import opens_key_form
from bot.core.commands import OpenForm, RequestAccess, Revoke, parse_command
from bot.core.domain import Principal
from bot.core.errors import UpstreamError, UsageError, UserError
from bot.core.router import CommandRouter, shown
from bot.core.views import Card, Tone
from handlers.teams.activity import TeamsTurn, command_text
from handlers.teams.cards import (
    FORM_VERB,
    KEY_FORM_VERB,
    ActionClick,
    CardSigner,
    InvalidAction,
    card_activity,
    invoke_card_response,
    invoke_error_response,
    read_action,
    read_form,
    read_key_form,
    render_card,
    render_form,
    render_key_form,
    render_notice,
)
from handlers.teams.connector import TeamsConnector, TeamsConnectorError
from handlers.teams.notifier import Seen, TeamsDirectory, TeamsIdentity, base_conversation

log = logging.getLogger(__name__)

ADAPTIVE_CARD_ACTION = "adaptiveCard/action"
OPEN_KEY_FORM = "open_key_form"
VERBS = frozenset({"approve", "deny", "revoke", OPEN_KEY_FORM, FORM_VERB, KEY_FORM_VERB})

CURRENT_TURN: ContextVar[TeamsTurn] = ContextVar("ackgate_teams_turn")
"""The parsed activity of the turn being handled (set by the endpoint around ``process_activity``)."""


@dataclass(frozen=True)
class Answer:
    """What the bot shows: an Adaptive Card, and whether it is the use case's own (not an error)."""

    card: dict[str, Any]
    ok: bool = True


def _notice(text: str, *, tone: Tone = Tone.INFO) -> Answer:
    return Answer(render_notice(text, tone=tone), ok=False)


def seen_in(turn: TeamsTurn) -> Seen:
    return Seen(
        service_url=turn.service_url,
        tenant_id=turn.tenant_id,
        conversation_id=base_conversation(turn.conversation_id),
        personal=turn.is_personal,
        team_id=turn.team_id,
    )


class AckgateTeamsBot(TeamsActivityHandler):  # type: ignore[misc]
    def __init__(
        self,
        *,
        service: CommandRouter,
        identity: TeamsIdentity,
        directory: TeamsDirectory,
        connector: TeamsConnector,
        signer: CardSigner | None,
        budget_seconds: float,
        on_error: Callable[[TeamsConnectorError], None] = lambda exc: None,
        on_answered: Callable[[TeamsTurn], Awaitable[None]] | None = None,
    ) -> None:
        super().__init__()
        self._on_error = on_error
        self._on_answered = on_answered  # marks the message's inbox row answered
        self._service, self._identity, self._directory = service, identity, directory
        self._connector, self._signer, self._budget = connector, signer, budget_seconds
        self._late: set[asyncio.Task[Answer]] = set()

    # --- botbuilder's routing ------------------------------------------------------------------

    async def on_message_activity(self, turn_context: TurnContext) -> None:
        turn = CURRENT_TURN.get()
        await self._learn(turn)
        if turn.is_card_submit:
            answer = await self._click(turn, read_click(turn.value, self._signer), execute=False)
        else:
            answer = await self._message(turn)
        if await self._reply(turn, answer) and self._on_answered is not None:
            await self._on_answered(turn)

    async def on_invoke_activity(self, turn_context: TurnContext) -> InvokeResponse:
        turn = CURRENT_TURN.get()
        if turn.name != ADAPTIVE_CARD_ACTION:
            return InvokeResponse(status=200, body=invoke_error_response(messages.TEAMS_INVOKE_UNKNOWN, status=501))
        await self._learn(turn)
        answer = await self._click(turn, read_click(turn.value, self._signer), execute=True)
        return InvokeResponse(status=200, body=invoke_card_response(answer.card))

    async def on_installation_update_add(self, turn_context: TurnContext) -> None:
        turn = CURRENT_TURN.get()
        await self._learn(turn)
        if turn.is_personal and turn.user.id:
            await self._learn_member(turn, turn.user.id)

    async def on_teams_members_added_dispatch(
        self, members_added: list[ChannelAccount], team_info: TeamInfo | None, turn_context: TurnContext
    ) -> None:
        # The SDK's dispatch asks TeamsInfo.get_member through its synchronous connector; ours is async.
        turn = CURRENT_TURN.get()
        await self._learn(turn)
        for member in members_added or []:
            if member.id and member.id != turn.bot_id and member.id.startswith("29:"):
                await self._learn_member(turn, member.id)

    # --- addresses ---------------------------------------------------------------------------

    async def _learn(self, turn: TeamsTurn) -> None:
        seen = seen_in(turn)
        await self._directory.remember_conversation(seen)
        if turn.team_id:
            self._directory.note_team(turn.team_id, turn.service_url)

    async def _learn_member(self, turn: TeamsTurn, user_id: str) -> None:
        try:
            principal = await self._actor_for(turn, user_id)
        except (UserError, UpstreamError):
            log.info("Could not learn the Teams member %s", user_id, exc_info=True)
            return
        await self._directory.remember_user(principal, replace(seen_in(turn), personal=turn.is_personal))

    async def _actor_for(self, turn: TeamsTurn, user_id: str) -> Principal:
        return await self._identity.principal(
            service_url=turn.service_url, conversation_id=turn.conversation_id, user_id=user_id
        )

    async def _actor(self, turn: TeamsTurn) -> Principal:
        principal = await self._actor_for(turn, turn.user.id)
        await self._directory.remember_user(principal, seen_in(turn))
        return principal

    # --- messages ----------------------------------------------------------------------------

    async def _message(self, turn: TeamsTurn) -> Answer:
        try:
            command = parse_command(command_text(turn))
        except UsageError as exc:
            return _notice(exc.message)
        if isinstance(command, OpenForm):
            return await self._form(turn)

        async def run() -> Answer:
            actor = await self._actor(turn)
            card = await self._service.execute(actor, command)
            if opens_key_form(card):
                return Answer(render_key_form(signer=self._signer))
            return Answer(render_card(card, signer=self._signer))

        return await outcome(run())

    async def _form(self, turn: TeamsTurn) -> Answer:
        plain = self._service.request_form()
        try:
            actor = await self._actor(turn)
            form = await self._service.prefilled_form(actor)
        except (UserError, UpstreamError) as exc:
            form = replace(plain, hint=exc.message)
        except Exception:
            log.exception("Could not prefill the Teams request form")
            form = plain
        return Answer(render_form(form, signer=self._signer))

    # --- clicks ------------------------------------------------------------------------------

    async def _click(self, turn: TeamsTurn, click: ActionClick | InvalidAction, *, execute: bool) -> Answer:
        if isinstance(click, InvalidAction):
            log.info("Refused a Teams card click: %s", click.detail)
            return _notice(click.message, tone=Tone.DANGER)
        if click.verb == OPEN_KEY_FORM:
            return Answer(render_key_form(signer=self._signer))
        if click.verb in ("approve", "deny"):
            return await self._decide(turn, click, budgeted=execute)

        async def run() -> Answer:
            actor = await self._actor(turn)
            if click.verb == "revoke":
                return self._card(await self._service.execute(actor, Revoke(grant_id=click.target)))
            if click.verb == KEY_FORM_VERB:
                return self._card(await self._service.set_key(actor, read_key_form(click.inputs)))
            parsed = read_form(click.inputs)  # the request form
            if isinstance(parsed, dict):
                return Answer(render_form(self._service.request_form(), errors=parsed, signer=self._signer), ok=False)
            assert isinstance(parsed, RequestAccess)
            return self._card(await self._service.execute(actor, parsed))

        return await outcome(run())

    def _card(self, card: Card) -> Answer:
        return Answer(render_card(card, signer=self._signer))

    async def _decide(self, turn: TeamsTurn, click: ActionClick, *, budgeted: bool) -> Answer:
        async def run() -> Answer:
            actor = await self._actor(turn)
            return self._card(await self._service.decide(click.target, actor=actor, approve=click.verb == "approve"))

        task = asyncio.ensure_future(outcome(run()))
        if not budgeted:
            return await task
        done, _ = await asyncio.wait({task}, timeout=self._budget)
        if done:
            return task.result()
        # Teams gives up on an invoke after a few seconds: answer now, the PUT brings the outcome.
        self._late.add(task)
        task.add_done_callback(lambda t: asyncio.ensure_future(self._finish_late(turn, t)))
        return Answer(render_notice(messages.TEAMS_DECISION_RECORDING))

    async def _finish_late(self, turn: TeamsTurn, task: asyncio.Task[Answer]) -> None:
        self._late.discard(task)
        if task.cancelled():
            return
        answer = task.result()
        if not answer.ok:  # a refusal the clicker must see; a decision shows on the PUT card
            await self._reply(turn, answer)

    # --- answering ---------------------------------------------------------------------------

    async def _reply(self, turn: TeamsTurn, answer: Answer) -> bool:
        try:
            await self._connector.reply(
                turn.service_url, turn.conversation_id, turn.activity_id, card_activity(answer.card)
            )
        except TeamsConnectorError as exc:
            self._on_error(exc)
            log.warning("Could not answer a Teams %s: %s", turn.kind, exc.message)
            return False
        return True


def read_click(value: object, signer: CardSigner | None) -> ActionClick | InvalidAction:
    try:
        return read_action(value, verbs=VERBS, signer=signer)
    except InvalidAction as exc:
        return exc


async def outcome(work: Awaitable[Answer]) -> Answer:
    """Run a use case: its answer, or a notice with the sentence the user should see instead."""
    return await shown(work, instead=_notice, log=log, platform="Teams")

"""Slack's entry point: a thin translator from slash commands, button clicks and modal
submissions to the use cases, mounted on Ackgate's own aiohttp app.

Every listener acknowledges first and only then talks to Slack or PagerDuty, so Slack's
3-second deadline never depends on PagerDuty. (bolt itself calls auth.test once, on the first
request after start, to learn the bot's ids; it caches the answer for the process's life.) Users see ``UserError``/``UpstreamError``
messages; anything unexpected becomes the generic sentence and a logged traceback.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Awaitable
from dataclasses import replace
from typing import Any, Protocol
from urllib.parse import parse_qsl

from aiohttp import web
from pydantic import SecretStr
from slack_bolt.adapter.aiohttp import to_aiohttp_response, to_bolt_request
from slack_bolt.async_app import AsyncApp, AsyncBoltContext
from slack_bolt.context.ack.async_ack import AsyncAck
from slack_bolt.context.respond.async_respond import AsyncRespond
from slack_bolt.logger.messages import warning_client_prioritized_and_token_skipped
from slack_bolt.request.async_internals import build_async_context
from slack_bolt.request.async_request import AsyncBoltRequest
from slack_sdk.web.async_client import AsyncWebClient

from bot import messages
from bot.commands import Command, OpenForm, RequestAccess, Revoke, parse_command
from bot.domain import Principal
from bot.errors import ChatError, StorageError, UpstreamError, UsageError, UserError
from bot.ports import ChatNotifier
from bot.views import Card, RequestForm
from handlers.slack_blocks import (
    ACTION_PREFIX,
    FORM_CALLBACK_ID,
    KEY_BLOCK_ID,
    KEY_FORM_CALLBACK_ID,
    OPEN_KEY_FORM,
    read_form,
    read_key_form,
    render_card,
    render_form,
    render_key_form,
    render_notice,
)
from handlers.slack_notifier import PLATFORM, SlackIdentity, SlackNotifier, call_slack

_log = logging.getLogger(__name__)

Body = dict[str, Any]


class AccessUseCases(Protocol):
    """The core's use cases as the Slack listeners need them (implemented by ``bot.access``)."""

    async def execute(self, actor: Principal, command: Command) -> Card:
        """Carry out any command except ``OpenForm``. Raises ``UserError``/``UpstreamError``."""
        ...

    async def decide(self, request_id: str, *, actor: Principal, approve: bool) -> Card:
        """An approve/deny click; the returned card is for the clicker only."""
        ...

    async def set_key(self, actor: Principal, text: str) -> Card:
        """The integration key an admin pasted into the key form."""
        ...

    def request_form(self) -> RequestForm:
        """The empty request form (no I/O)."""
        ...

    async def prefilled_form(self, actor: Principal) -> RequestForm:
        """The form with the actor's acknowledged incident as hint and reason (asks PagerDuty)."""
        ...


def _notice(text: str) -> Card:
    """A one-paragraph card with no title: an error or a short answer."""
    return Card(title="", text=text)


class _Listeners:
    def __init__(
        self,
        *,
        service: AccessUseCases,
        identity: SlackIdentity,
        notifier: ChatNotifier,
        logger: logging.Logger,
    ) -> None:
        self._service = service
        self._identity = identity
        self._notifier = notifier
        self._log = logger

    # --- /access --------------------------------------------------------------------------

    async def command(self, ack: AsyncAck, command: Body, respond: AsyncRespond, client: AsyncWebClient) -> None:
        try:
            parsed = parse_command(normalise_mentions(str(command.get("text") or "")))
        except UsageError as exc:  # parsing is pure, so the usage line can be the ack itself
            await ack(**render_notice(exc.message), response_type="ephemeral")
            return
        user_id = str(command.get("user_id") or "")
        if isinstance(parsed, OpenForm):
            await ack()
            await self._open_form(client, trigger_id=str(command.get("trigger_id") or ""), user_id=user_id)
            return
        if isinstance(parsed, RequestAccess):
            await ack(text=messages.WORKING, response_type="ephemeral")
        else:
            await ack()
        card = await self._outcome(self._execute(user_id, parsed))
        if any(action.kind == OPEN_KEY_FORM for action in card.actions):
            await self._open_key_form(client, trigger_id=str(command.get("trigger_id") or ""), user_id=user_id)
            return
        await self._respond(respond, card, replace_original=isinstance(parsed, RequestAccess))

    async def _open_key_form(self, client: AsyncWebClient, *, trigger_id: str, user_id: str) -> None:
        try:
            await call_slack("views.open", client.views_open(trigger_id=trigger_id, view=render_key_form()))
        except ChatError:
            self._log.warning("Slack did not open the key form for %s", user_id, exc_info=True)
            await self._dm(user_id, _notice(messages.SLACK_FORM_NOT_OPENED))

    async def key_submission(self, ack: AsyncAck, body: Body, view: Body) -> None:
        # Validating before the ack lets a malformed key be shown beside the field; it is a
        # storage write, not a PagerDuty call, so it stays well inside Slack's 3 seconds.
        user_id = str((body.get("user") or {}).get("id") or "")
        text = read_key_form((view.get("state") or {}).get("values") or {})
        try:
            actor = await self._identity.principal(user_id)
            card = await self._service.set_key(actor, text)
        except UsageError as exc:
            await ack(response_action="errors", errors={KEY_BLOCK_ID: whole_sentences(exc.message)})
            return
        except Exception as exc:
            await ack()
            await self._dm(user_id, await self._outcome(_raise(exc)))
            return
        await ack()
        await self._dm(user_id, card)

    async def _execute(self, user_id: str, command: Command) -> Card:
        actor = await self._identity.principal(user_id)
        return await self._service.execute(actor, command)

    async def _open_form(self, client: AsyncWebClient, *, trigger_id: str, user_id: str) -> None:
        # The trigger id dies 3 s after Slack sent it: open the plain form now, fill it in later.
        try:
            plain = self._service.request_form()
            opened = await call_slack("views.open", client.views_open(trigger_id=trigger_id, view=render_form(plain)))
        except ChatError:
            self._log.warning("Slack did not open the request form for %s", user_id, exc_info=True)
            await self._dm(user_id, _notice(messages.SLACK_FORM_NOT_OPENED))
            return
        try:
            actor = await self._identity.principal(user_id)
            form = await self._service.prefilled_form(actor)
        except (UserError, UpstreamError) as exc:
            form = replace(plain, hint=exc.message)
        except Exception:
            self._log.exception("Could not prefill the request form for %s", user_id)
            return
        view = opened["view"]
        try:
            await call_slack(
                "views.update",
                client.views_update(view_id=view["id"], hash=view["hash"], view=render_form(form)),
            )
        except ChatError:
            # Usually hash_conflict or not_found: the user already submitted or closed the form.
            self._log.info("Did not prefill the request form for %s", user_id, exc_info=True)

    # --- buttons ----------------------------------------------------------------------------

    async def button(self, ack: AsyncAck, body: Body, action: Body, respond: AsyncRespond) -> None:
        await ack()
        kind = str(action.get("action_id") or "").removeprefix(ACTION_PREFIX)
        target = str(action.get("value") or "")
        user_id = str((body.get("user") or {}).get("id") or "")
        if not target or not user_id:
            card = _notice(messages.SLACK_BUTTON_WITHOUT_TARGET)
        elif kind in ("approve", "deny"):
            card = await self._outcome(self._decide(user_id, target, approve=kind == "approve"))
        elif kind == "revoke":
            card = await self._outcome(self._execute(user_id, Revoke(grant_id=target)))
        else:
            card = _notice(messages.SLACK_BUTTON_UNKNOWN)
        # Ephemeral, beside the shared message: the core updates that one for everyone.
        await self._respond(respond, card, replace_original=False)

    async def _decide(self, user_id: str, request_id: str, *, approve: bool) -> Card:
        actor = await self._identity.principal(user_id)
        return await self._service.decide(request_id, actor=actor, approve=approve)

    # --- the request form -------------------------------------------------------------------

    async def submission(self, ack: AsyncAck, body: Body, view: Body) -> None:
        parsed = read_form((view.get("state") or {}).get("values") or {})
        if isinstance(parsed, dict):
            await ack(response_action="errors", errors=parsed)
            return
        await ack()
        user_id = str((body.get("user") or {}).get("id") or "")
        await self._dm(user_id, await self._outcome(self._execute(user_id, parsed)))

    async def _dm(self, user_id: str, card: Card) -> None:
        # Only the user id matters to a DM; the email may be exactly what could not be found.
        recipient = Principal(platform=PLATFORM, user_id=user_id, email="")
        try:
            await self._notifier.send_to_user(recipient, card)
        except Exception:
            self._log.exception("Could not send a direct message to %s", user_id)

    # --- shared -----------------------------------------------------------------------------

    async def _outcome(self, work: Awaitable[Card]) -> Card:
        """Run a use case: its card, or the card with the sentence the user should see instead."""
        try:
            return await work
        except (UserError, UpstreamError) as exc:
            return _notice(exc.message)
        except StorageError:
            self._log.exception("Storage failed while handling a Slack request")
            return _notice(messages.STORAGE_DOWN)
        except Exception:
            self._log.exception("Unexpected failure while handling a Slack request")
            return _notice(messages.GENERIC_FAILURE)

    async def _respond(self, respond: AsyncRespond, card: Card, *, replace_original: bool) -> None:
        try:
            sent = await respond(**render_card(card), response_type="ephemeral", replace_original=replace_original)
        except Exception:
            self._log.exception("Could not answer on Slack's response_url")
            return
        if sent.status_code != 200:
            self._log.warning("Slack's response_url answered %s: %s", sent.status_code, sent.body)

    async def unexpected(self, error: Exception, body: Body) -> None:
        """bolt's last resort, for a failure outside the guarded use-case calls."""
        self._log.error("Unhandled error in a Slack listener (%s)", body.get("type"), exc_info=error)


def build_bolt_app(
    *,
    signing_secret: SecretStr,
    client: AsyncWebClient,
    service: AccessUseCases,
    identity: SlackIdentity,
    notifier: ChatNotifier | None = None,
    logger: logging.Logger | None = None,
) -> AsyncApp:
    """A bolt app verifying Slack's signatures (401 otherwise) with Ackgate's listeners:
    the ``/access`` command, ``ackgate.*`` buttons and the ``ackgate.request`` form.

    ``notifier`` sends the outcome of a submitted form as a DM (default: a SlackNotifier on
    ``client``); ``logger`` receives unexpected failures with their tracebacks."""
    _quiet_token_warning()
    app = AsyncApp(
        signing_secret=signing_secret.get_secret_value(),
        client=client,
        request_verification_enabled=True,
        # Listeners run after the HTTP response is sent; ack() is what Slack waits for.
        process_before_response=False,
    )
    listeners = _Listeners(
        service=service, identity=identity, notifier=notifier or SlackNotifier(client), logger=logger or _log
    )

    # bolt injects arguments by parameter name, so it is given plain functions, not bound methods.
    async def on_command(ack: AsyncAck, command: Body, respond: AsyncRespond, client: AsyncWebClient) -> None:
        await listeners.command(ack, command, respond, client)

    async def on_button(ack: AsyncAck, body: Body, action: Body, respond: AsyncRespond) -> None:
        await listeners.button(ack, body, action, respond)

    async def on_submission(ack: AsyncAck, body: Body, view: Body) -> None:
        await listeners.submission(ack, body, view)

    async def on_key_submission(ack: AsyncAck, body: Body, view: Body) -> None:
        await listeners.key_submission(ack, body, view)

    async def on_error(error: Exception, body: Body) -> None:
        await listeners.unexpected(error, body)

    app.command(messages.COMMAND)(on_command)
    app.action(re.compile("^" + re.escape(ACTION_PREFIX)))(on_button)
    app.view(FORM_CALLBACK_ID)(on_submission)
    app.view(KEY_FORM_CALLBACK_ID)(on_key_submission)
    app.error(on_error)
    return app


def mount_slack(web_app: web.Application, *, bolt_app: AsyncApp, path: str = "/slack/events") -> None:
    """Serve Slack's commands and interactivity at ``path`` on our aiohttp app."""

    async def slack_events(request: web.Request) -> web.Response:
        try:
            bolt_request = await _bolt_request(request)
        except (ValueError, AttributeError, TypeError):
            # Unparseable JSON in payload=, or JSON that is not an object: nothing to dispatch.
            _log.warning("Rejected a Slack request whose body could not be parsed")
            return web.Response(status=400, text=messages.SLACK_BAD_REQUEST)
        if not _well_formed(bolt_request.body):
            _log.warning("Rejected a Slack %s payload missing the fields bolt needs", bolt_request.body.get("type"))
            return web.Response(status=400, text=messages.SLACK_BAD_REQUEST)
        try:
            bolt_response = await bolt_app.async_dispatch(bolt_request)
        except Exception:
            # bolt's own matching failed; Slack (and whoever sent this) gets no traceback.
            _log.exception("bolt could not dispatch a Slack request")
            return web.Response(status=500, text=messages.GENERIC_FAILURE)
        return await to_aiohttp_response(bolt_response)

    web_app.router.add_post(path, slack_events)


_USER_MENTION = re.compile(r"<@([UW][A-Z0-9]+)(?:\|[^>]*)?>")
_MAILTO = re.compile(r"<mailto:([^|>]+)(?:\|[^>]*)?>")


def normalise_mentions(text: str) -> str:
    """Slack's escaped markup to the core's neutral forms: ``<@U123|bob>`` → ``@U123``,
    ``<mailto:bob@example.com|bob@example.com>`` → ``bob@example.com``."""
    return _MAILTO.sub(r"\1", _USER_MENTION.sub(r"@\1", text))


_SENTENCE_END = re.compile(r"(?<=[.!?])\s+")


def whole_sentences(text: str, limit: int = 150) -> str:
    """As many whole sentences of ``text`` as fit in ``limit`` characters (a field error is kept
    short); a first sentence too long on its own is cut at a word and ends in an ellipsis."""
    if len(text) <= limit:
        return text
    kept = ""
    for sentence in _SENTENCE_END.split(text):
        longer = f"{kept} {sentence}".strip()
        if len(longer) > limit:
            break
        kept = longer
    return kept or text[: limit - 1].rsplit(" ", 1)[0] + "…"


async def _raise(exc: Exception) -> Card:
    raise exc


def _well_formed(body: Body) -> bool:
    """Whether an interaction payload has the parts bolt indexes without checking: it builds
    every listener argument (``actions[0]``, ``view.callback_id``) for every request, so one
    empty list would otherwise crash the dispatch."""
    kind = body.get("type")
    if kind == "block_actions":
        actions = body.get("actions")
        return (
            isinstance(actions, list)
            and bool(actions)
            and all(isinstance(a, dict) and isinstance(a.get("action_id"), str) for a in actions)
        )
    if kind in ("view_submission", "view_closed"):
        view = body.get("view")
        return isinstance(view, dict) and isinstance(view.get("callback_id"), str)
    return True


async def _bolt_request(request: web.Request) -> AsyncBoltRequest:
    bolt_request = await to_bolt_request(request)
    raw = bolt_request.raw_body
    if raw.startswith("{"):
        return bolt_request
    # bolt takes any form body containing the substring "payload" for an interactivity
    # payload, so "/access prod-db 1h payload errors" would arrive empty. A slash command has
    # no payload field: read it as the plain form it is. (The raw body, which the signature
    # covers, is left untouched.)
    form = dict(parse_qsl(raw, keep_blank_values=True))
    if "payload" not in form and form != bolt_request.body:
        bolt_request.body = form
        bolt_request.context = build_async_context(AsyncBoltContext(), form)
    return bolt_request


class _DropTokenSkipped(logging.Filter):
    """bolt reads SLACK_BOT_TOKEN from the environment even when given a client built with it, then
    warns that the token "will be unused": true, and no use to an operator."""

    def filter(self, record: logging.LogRecord) -> bool:
        return record.getMessage() != warning_client_prioritized_and_token_skipped()


def _quiet_token_warning() -> None:
    bolt_logger = logging.getLogger("slack_bolt.AsyncApp")
    if not any(isinstance(f, _DropTokenSkipped) for f in bolt_logger.filters):
        bolt_logger.addFilter(_DropTokenSkipped())

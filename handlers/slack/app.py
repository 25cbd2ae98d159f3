"""Slack's entry point: a thin translator from slash commands, button clicks and modal
submissions to the use cases, mounted on Ackgate's own aiohttp app.

:func:`mount_slack` checks each request's signature headers and validates the body into the typed
models of :mod:`handlers.slack.inbound` (4xx, one log line, no body echoed, for anything else), then
hands it to its listener itself. (bolt's ``AsyncApp`` used to dispatch: it checked the signature a
second time, ran its middleware chain and polled every 10 ms for the ack, which set an 11 ms floor
under every acknowledgement. Only bolt's ``AsyncAck`` is kept, for its response bodies.) The
request waits on the ack alone: a future, set the moment the listener acks. The listener starts at
once in the request's own task (:func:`bot.core.eager.start_eagerly`), so an ack that needs no real
wait goes out in the loop iteration that read the request.

Each slash command and form submission is then recorded once, under Slack's ``trigger_id``, in the
:class:`bot.core.ports.CommandInbox` (one insert, shared by replicas): a retry or a replay of the same
signed request is acknowledged and not run again. The row is marked answered when the answer was
posted; :class:`handlers.slack.recovery.SlackRecovery` answers what a crash left.

Every listener acknowledges first and only then talks to Slack or PagerDuty, so Slack's 3-second
deadline never depends on either. What a listener does after its ack is handed to one of a bounded
number of background turns (:class:`Background`); a backlog waits as data, not as coroutines, so
slow work queues instead of crowding the event loop that answers acks. A job that gets no turn
within :data:`TURN_WAIT` is answered with :data:`bot.core.messages.SLACK_BUSY` (and the row marked
answered), well inside the command's lease; a slash command that finds no turn free and the
backlog full is answered "busy" in its ack and recorded nothing. A request that could not even be recorded within
:data:`ACK_BUDGET` is answered "busy" at once instead of failing past Slack's deadline.
Users see ``UserError``/``UpstreamError`` messages; anything unexpected becomes the generic
sentence and a logged traceback.
"""

from __future__ import annotations

import asyncio
import logging
import re
import time
from collections import deque
from collections.abc import Awaitable, Callable
from dataclasses import replace
from typing import Any, Protocol

from aiohttp import web
from pydantic import SecretStr
from slack_bolt.adapter.aiohttp import to_aiohttp_response
from slack_bolt.context.ack.async_ack import AsyncAck
from slack_sdk.web.async_client import AsyncWebClient

from bot.adapters.throttling import notify_when_queued
from bot.core import lanes, messages
from bot.core.clock import Clock, SystemClock
from bot.core.command_recovery import COMMAND_LEASE
from bot.core.commands import Command, OpenForm, RequestAccess, RequestAuth, Revoke, form_text, parse_command
from bot.core.domain import Principal, ReceivedCommand
from bot.core.eager import start_eagerly
from bot.core.errors import ChatError, UpstreamError, UsageError, UserError
from bot.core.ports import ChatNotifier, CommandInbox
from bot.core.router import shown
from bot.core.secrets import validate_integration_key
from bot.core.views import Card, RequestForm
from handlers.slack.answers import Answerer, click_key, command_key, submission_key
from handlers.slack.blocks import (
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
from handlers.slack.inbound import (
    BlockActions,
    Inbound,
    Refused,
    SlashCommand,
    check_signature,
    listener_body,
    parse_inbound,
)
from handlers.slack.notifier import SlackIdentity, SlackNotifier, call_slack

_log = logging.getLogger(__name__)

Body = dict[str, Any]

MAX_BODY_BYTES = 512 * 1024  # Slack's largest interaction payloads are well under this
ACK_BUDGET = 2.5  # Slack gives up after 3 s: past this, "busy" is answered instead of waiting on
BACKGROUND_TURNS = 128  # listeners working after their ack at once, per process
TURN_WAIT = 20.0  # seconds a job waits for a turn before answering "busy" (the lease is 60 s)
BACKLOG = 5000  # jobs waiting for a turn, per process, beyond which "busy" is answered at once
TICK = 1.0  # how often the backlog is checked for jobs that waited too long


Job = Callable[..., Awaitable[None]]


class Background:
    """The bounded turns of work done after an ack, and the backlog waiting for one.

    A listener acks, hands its work to :meth:`submit` and returns. At most ``turns`` jobs run at
    once, each in a task of its own in the loop's background lane (:mod:`bot.core.lanes`: never ahead
    of an ack; created in a request's context, so a graceful stop waits for
    it); the others wait in a first-in-first-out backlog as plain data: the job's function, its
    "busy" answer (both shared, bound once per process) and the arguments, rather than as suspended
    coroutines with closures and a timer each. A backlog of thousands then costs the garbage
    collector, whose full passes walk every live object, a few objects apiece. A job that waited
    longer than ``wait`` seconds, or that finds ``backlog`` jobs already waiting, is given its busy
    answer instead. During a graceful stop the backlog goes on being served until the stop's time is
    up; once a running job is cancelled, nothing more is started, and what still waits is left to
    the recovery pass, which finds those commands unanswered."""

    def __init__(
        self,
        turns: int = BACKGROUND_TURNS,
        *,
        wait: float = TURN_WAIT,
        backlog: int = BACKLOG,
        now: Callable[[], float] = time.monotonic,
    ) -> None:
        self._free = turns
        self._wait = wait
        self._backlog = backlog
        self._now = now
        self._queue: deque[tuple[float, Job, Job, tuple[Any, ...]]] = deque()
        self._ticking: asyncio.TimerHandle | None = None

    def __len__(self) -> int:
        """Jobs waiting for a turn."""
        return len(self._queue)

    def full(self) -> bool:
        """Whether a job submitted now would be given its busy answer at once (no free turn, the
        backlog full): a listener can then answer "busy" in its ack and record nothing."""
        return self._free <= 0 and len(self._queue) >= self._backlog

    def submit(self, job: Job, busy: Job, *args: Any) -> None:
        """Run ``job(*args)`` in a turn when one is free; ``busy(*args)`` instead when none comes in time."""
        if self._free > 0:
            self._free -= 1
            self._start(job, args, turn=True)
        elif self.full():
            self._start(busy, args, turn=False)
        else:
            self._queue.append((self._now(), job, busy, args))
            if self._ticking is None:
                self._ticking = asyncio.get_running_loop().call_later(TICK, self._tick)

    def _start(self, job: Job, args: tuple[Any, ...], *, turn: bool) -> None:
        task = lanes.spawn(_guarded(job, args))  # the background lane: never ahead of an ack
        if turn:
            task.add_done_callback(self._finished)

    def _finished(self, task: asyncio.Task[None]) -> None:
        self._free += 1
        if task.cancelled():  # a stop ran out of time: what still waits is the recovery pass's
            return
        self._expire()
        while self._free > 0 and self._queue:
            _, job, _, args = self._queue.popleft()
            self._free -= 1
            self._start(job, args, turn=True)

    def _expire(self) -> None:
        oldest = self._now() - self._wait
        while self._queue and self._queue[0][0] <= oldest:
            _, _, busy, args = self._queue.popleft()
            self._start(busy, args, turn=False)

    def _tick(self) -> None:
        self._ticking = None
        self._expire()
        if self._queue:
            self._ticking = asyncio.get_running_loop().call_later(TICK, self._tick)


async def _guarded(job: Job, args: tuple[Any, ...]) -> None:
    try:
        await job(*args)
    except Exception:
        _log.exception("A Slack listener failed after its acknowledgement")


class Ack:
    """What a listener calls to acknowledge: bolt's ``AsyncAck`` bodies, and the future the
    waiting request is woken by. ``late`` once the request gave up waiting (:data:`ACK_BUDGET`):
    Slack has been answered "busy" by then, so the listener must not start the work."""

    def __init__(self) -> None:
        self._bolt = AsyncAck()  # type: ignore[no-untyped-call]
        self.acked: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self.late = False

    @property
    def response(self) -> Any:
        return self._bolt.response

    async def __call__(self, **fields: Any) -> None:
        if self.late:
            return
        await self._bolt(**fields)
        if not self.acked.done():
            self.acked.set_result(None)

    def expire(self) -> None:
        """The budget for the ack is spent: wake the request, which answers "busy"."""
        if not self.acked.done():
            self.late = True
            self.acked.set_result(None)

    def ended(self, _: object) -> None:
        """The listener's task ended: wake the request even if it never acked (it answers 500)."""
        if not self.acked.done():
            self.acked.set_result(None)


class AccessUseCases(Protocol):
    """The core's use cases as the Slack listeners need them (implemented by ``bot.core.router``)."""

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
        answerer: Answerer,
        clock: Clock,
        logger: logging.Logger,
        background: Background,
        instance: str = "",
    ) -> None:
        self._background = background
        self._service = service
        self._identity = identity
        self._answerer = answerer
        self._clock = clock
        self._log = logger
        self._instance = instance  # named on each inbox row: a restart takes back what it owed at once
        # Each job and its busy answer, bound once: a waiting job refers to these instead of
        # holding two new bound methods of its own.
        self._command_jobs: tuple[Job, Job] = (self._run_command, self._command_busy)
        self._click_jobs: tuple[Job, Job] = (self._click_work, self._click_busy)
        self._submission_jobs: tuple[Job, Job] = (self._submission_work, self._submission_busy)

    def _received(
        self, key: str, kind: str, *, user_id: str, channel_id: str = "", text: str = "", response_url: str = ""
    ) -> ReceivedCommand:
        now = self._clock.now()
        return ReceivedCommand(
            key=key,
            kind=kind,
            user_id=user_id,
            channel_id=channel_id,
            text=text,
            response_url=response_url,
            received_at=now,
            lease_until=now + COMMAND_LEASE,
            claimed_by=self._instance,
        )

    # --- /access --------------------------------------------------------------------------

    async def command(self, ack: Ack, command: Body, client: AsyncWebClient) -> None:
        text = str(command.get("text") or "")
        try:
            parsed = parse_command(normalise_mentions(text))
        except UsageError as exc:  # parsing is pure, so the usage line can be the ack itself
            await ack(**render_notice(exc.message), response_type="ephemeral")
            return
        if self._background.full():
            # Shed at the edge: "busy" in the ack itself, with no record, no follow-up post and no
            # answered mark, the cheapest answer while overloaded (nothing was started, so a
            # retry of the same command is a new try, not a duplicate).
            await ack(text=messages.SLACK_BUSY, response_type="ephemeral")
            return
        user_id = str(command.get("user_id") or "")
        trigger_id = str(command.get("trigger_id") or "")
        received = self._received(
            command_key(trigger_id),
            "command",
            user_id=user_id,
            channel_id=str(command.get("channel_id") or ""),
            text=text,
            response_url=str(command.get("response_url") or ""),
        )
        new = await self._answerer.record(received)
        if new is None:
            await ack(**render_notice(messages.STORAGE_DOWN), response_type="ephemeral")
            return
        if not new:
            self._log.info("Slack sent command %s again (a retry or a replay); it runs once", received.key)
            await ack()
            return
        if isinstance(parsed, OpenForm):
            await ack()
            if ack.late:  # Slack was answered "busy" and the trigger id is spent
                await self._answerer.done(received.key)
                return
            await self._open_form(client, trigger_id=trigger_id, user_id=user_id)
            await self._answerer.done(received.key)  # the form is the answer (or the DM saying it failed)
            return
        if isinstance(parsed, RequestAccess):
            await ack(text=messages.WORKING, response_type="ephemeral")
        elif isinstance(parsed, RequestAuth):
            await ack(text=messages.AUTH_SENDING, response_type="ephemeral")
        else:
            await ack()
        self._hand_over(ack, *self._command_jobs, received, parsed, trigger_id, client)

    async def _run_command(
        self, received: ReceivedCommand, parsed: Command, trigger_id: str, client: AsyncWebClient
    ) -> None:
        if isinstance(parsed, RequestAccess):
            # A wait in PagerDuty's queue (its request budget) is told on the response_url, replacing "Checking…".
            notify_when_queued(lambda: self._answerer.post_soon(received.response_url, messages.PAGERDUTY_QUEUED))
        card = await self._outcome(self._execute(received.user_id, parsed))
        if any(action.kind == OPEN_KEY_FORM for action in card.actions):
            await self._open_key_form(client, trigger_id=trigger_id, user_id=received.user_id)
            await self._answerer.done(received.key)
            return
        await self._answerer.answer(received, card, replace_original=isinstance(parsed, RequestAccess | RequestAuth))

    async def _command_busy(self, received: ReceivedCommand, *_: object) -> None:
        await self._answerer.answer(received, _notice(messages.SLACK_BUSY), replace_original=True)

    async def _open_key_form(self, client: AsyncWebClient, *, trigger_id: str, user_id: str) -> None:
        try:
            await call_slack("views.open", client.views_open(trigger_id=trigger_id, view=render_key_form()))
        except ChatError:
            self._log.warning("Slack did not open the key form for %s", user_id, exc_info=True)
            await self._answerer.dm(user_id, _notice(messages.SLACK_FORM_NOT_OPENED))

    async def key_submission(self, ack: Ack, body: Body, view: Body) -> None:
        # Only the key's shape is checked before the ack (pure, no I/O), so a malformed key is still
        # shown beside the field; who is asking and whether they are an admin are Slack calls, after.
        user_id = str((body.get("user") or {}).get("id") or "")
        text = read_key_form((view.get("state") or {}).get("values") or {})
        try:
            validate_integration_key(text)
        except UsageError as exc:
            await ack(response_action="errors", errors={KEY_BLOCK_ID: whole_sentences(exc.message)})
            return
        # The row keeps nothing of the key: it is a secret, and the recovery pass only says to retry.
        received = self._received(submission_key(view, str(body.get("trigger_id") or "")), "key_form", user_id=user_id)
        new = await self._answerer.record(received)
        await ack()
        if new is False:
            return
        self._hand_over(ack, *self._submission_jobs, received, new, self._set_key, text)

    async def _set_key(self, user_id: str, text: str) -> Card:
        actor = await self._identity.principal(user_id)
        return await self._service.set_key(actor, text)

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
            await self._answerer.dm(user_id, _notice(messages.SLACK_FORM_NOT_OPENED))
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

    async def button(self, ack: Ack, body: Body, action: Body) -> None:
        # The click gets an inbox row under its trigger id, so one acknowledged and then lost to a
        # crash is answered by the recovery pass (which clicks again: a decision is a compare-and-set
        # in the core, so it counts once); a retry of the same click runs once.
        kind = str(action.get("action_id") or "").removeprefix(ACTION_PREFIX)
        target = str(action.get("value") or "")
        user_id = str((body.get("user") or {}).get("id") or "")
        url = str(body.get("response_url") or "")
        trigger_id = str(body.get("trigger_id") or "")
        new: bool | None = None
        received = self._received(
            click_key(trigger_id), "click", user_id=user_id, text=f"{kind} {target}", response_url=url
        )
        if trigger_id and target and user_id:
            new = await self._answerer.record(received)
        await ack()
        if new is False:
            self._log.info("Slack sent click %s again (a retry or a replay); it runs once", received.key)
            return

        self._hand_over(ack, *self._click_jobs, received, new, kind, target)

    async def _click_work(self, received: ReceivedCommand, new: bool | None, kind: str, target: str) -> None:
        card = await click(self._service, self._identity, received.user_id, kind, target, self._log)
        await self._deliver_click(received, new, card)

    async def _click_busy(self, received: ReceivedCommand, new: bool | None, *_: object) -> None:
        await self._deliver_click(received, new, _notice(messages.SLACK_BUSY))

    async def _deliver_click(self, received: ReceivedCommand, new: bool | None, card: Card) -> None:
        if new:
            await self._answerer.answer(received, card)
            return
        # Ephemeral, beside the shared message: the core updates that one for everyone.
        message = {**render_card(card), "response_type": "ephemeral", "replace_original": False}
        if not received.response_url or not await self._answerer.post(received.response_url, message):
            await self._answerer.dm(received.user_id, card)

    # --- the request form -------------------------------------------------------------------

    async def submission(self, ack: Ack, body: Body, view: Body) -> None:
        parsed = read_form((view.get("state") or {}).get("values") or {})
        if isinstance(parsed, dict):
            await ack(response_action="errors", errors=parsed)
            return
        user_id = str((body.get("user") or {}).get("id") or "")
        received = self._received(
            submission_key(view, str(body.get("trigger_id") or "")), "form", user_id=user_id, text=form_text(parsed)
        )
        new = await self._answerer.record(received)
        await ack()
        if new is False:
            self._log.info("Slack sent form submission %s again; it runs once", received.key)
            return
        self._hand_over(ack, *self._submission_jobs, received, new, self._execute, parsed)

    # --- shared -----------------------------------------------------------------------------

    async def _submission_work(
        self,
        received: ReceivedCommand,
        new: bool | None,
        use_case: Callable[[str, Any], Awaitable[Card]],
        argument: object,
    ) -> None:
        """A form submission's work: ``use_case(user id, argument)``, answered on the response URL
        when the submission was recorded, by DM when the inbox could not record it."""
        await self._deliver_submission(received, new, await self._outcome(use_case(received.user_id, argument)))

    async def _submission_busy(self, received: ReceivedCommand, new: bool | None, *_: object) -> None:
        await self._deliver_submission(received, new, _notice(messages.SLACK_BUSY))

    async def _deliver_submission(self, received: ReceivedCommand, new: bool | None, card: Card) -> None:
        if new is None:
            await self._answerer.dm(received.user_id, card)
        else:
            await self._answerer.answer(received, card)

    def _hand_over(self, ack: Ack, work: Job, busy: Job, *args: Any) -> None:
        """After the ack, ``work(*args)`` goes to a background turn; when the ack came too late for
        Slack (which was answered "busy"), only ``busy(*args)``, which also marks the command answered."""
        self._background.submit(busy if ack.late else work, busy, *args)

    async def _outcome(self, work: Awaitable[Card]) -> Card:
        return await outcome(work, self._log)

    def unexpected(self, error: Exception, body: Body) -> None:
        """The last resort, for a failure outside the guarded use-case calls."""
        self._log.error("Unhandled error in a Slack listener (%s)", body.get("type", "command"), exc_info=error)


async def click(
    service: AccessUseCases, identity: SlackIdentity, user_id: str, kind: str, target: str, log: logging.Logger
) -> Card:
    """The answer to a click on an ``ackgate.<kind>`` button for ``target``; the recovery pass runs
    it again for a click a crash left unanswered (deciding twice counts once: compare-and-set)."""
    if not target or not user_id:
        return _notice(messages.SLACK_BUTTON_WITHOUT_TARGET)
    if kind not in ("approve", "deny", "revoke"):
        return _notice(messages.SLACK_BUTTON_UNKNOWN)

    async def run() -> Card:
        actor = await identity.principal(user_id)
        if kind == "revoke":
            return await service.execute(actor, Revoke(grant_id=target))
        return await service.decide(target, actor=actor, approve=kind == "approve")

    return await outcome(run(), log)


async def outcome(work: Awaitable[Card], log: logging.Logger) -> Card:
    """Run a use case: its card, or the card with the sentence the user should see instead."""
    return await shown(work, instead=_notice, log=log, platform="Slack")


class SlackApp:
    """The listeners behind ``/slack/events``, with the dispatch :func:`mount_slack` calls."""

    def __init__(self, listeners: _Listeners, *, client: AsyncWebClient) -> None:
        self._listeners = listeners
        self._client = client

    async def dispatch(self, inbound: Inbound, body: Body) -> web.Response:
        """Run the listener for ``inbound`` and answer as soon as it acks. It starts at once, in this
        request's task (:func:`bot.core.eager.start_eagerly`): a listener acks before its first real
        wait, so the answer usually goes out in the same loop iteration; whatever it does after
        waiting continues in a task of its own."""
        ack = Ack()
        loop = asyncio.get_running_loop()
        task = start_eagerly(self._run(inbound, body, ack))
        task.add_done_callback(ack.ended)
        budget = loop.call_later(ACK_BUDGET, ack.expire)
        try:
            await ack.acked
        finally:
            budget.cancel()
        if ack.late:
            # Too busy to record the request in time: a clear "try again" well inside Slack's 3 s,
            # rather than Slack's own "dispatch_failed". The listener, when it gets there, does nothing.
            _log.warning("A Slack %s was not acknowledged within %g s; answered busy", _kind(inbound), ACK_BUDGET)
            return _busy(inbound)
        if ack.response is None:
            return web.Response(status=500, text=messages.GENERIC_FAILURE)
        return await to_aiohttp_response(ack.response)

    async def _run(self, inbound: Inbound, body: Body, ack: Ack) -> None:
        listeners = self._listeners
        try:
            if isinstance(inbound, SlashCommand):
                await listeners.command(ack, body, self._client)
            elif isinstance(inbound, BlockActions):
                await listeners.button(ack, body, body["actions"][0])
            elif inbound.view.callback_id == KEY_FORM_CALLBACK_ID:
                await listeners.key_submission(ack, body, body["view"])
            else:
                await listeners.submission(ack, body, body["view"])
        except Exception as exc:
            listeners.unexpected(exc, body)


def build_slack_app(
    *,
    client: AsyncWebClient,
    service: AccessUseCases,
    identity: SlackIdentity,
    inbox: CommandInbox,
    clock: Clock | None = None,
    notifier: ChatNotifier | None = None,
    logger: logging.Logger | None = None,
    instance: str = "",
    post: Callable[[str, Body], Awaitable[bool]] | None = None,
    background: Background | None = None,
) -> SlackApp:
    """Ackgate's listeners: the ``/access`` command, ``ackgate.*`` buttons and the ``ackgate.request``
    and key forms.

    ``inbox`` records each command once (see the module docstring); ``notifier`` sends answers
    that go by DM (default: a SlackNotifier on ``client``); ``post`` posts to a ``response_url``
    (default: :func:`handlers.slack.notifier.post_response`, a session per post; the platform
    passes its pooled one); ``logger`` receives unexpected failures with their tracebacks."""
    log = logger or _log
    clock = clock or SystemClock()
    background = background if background is not None else Background()  # an empty one has len() 0
    answerer = Answerer(
        inbox=inbox,
        notifier=notifier or SlackNotifier(client),
        clock=clock,
        logger=log,
        **({"post": post} if post else {}),
    )
    listeners = _Listeners(
        service=service,
        identity=identity,
        answerer=answerer,
        clock=clock,
        logger=log,
        background=background,
        instance=instance,
    )
    return SlackApp(listeners, client=client)


def mount_slack(
    web_app: web.Application,
    *,
    slack_app: SlackApp,
    signing_secret: SecretStr,
    path: str = "/slack/events",
    now: Callable[[], float] = time.time,
) -> None:
    """Serve Slack's commands and interactivity at ``path`` on our aiohttp app.

    Refusals, each with one sentence and one log line without the body: 401 for a missing, malformed
    or wrong signature or a timestamp more than five minutes off (``now``, wall-clock seconds, since
    Slack signs with its own clock); 413 for a body larger than :data:`MAX_BODY_BYTES`; 400 for a
    signed body that is not one of the payloads in :mod:`handlers.slack.inbound`."""
    secret = signing_secret.get_secret_value()

    async def slack_events(request: web.Request) -> web.Response:
        if request.content_length is not None and request.content_length > MAX_BODY_BYTES:
            _log.info("Refused a Slack request of %d bytes", request.content_length)
            return web.Response(status=413, text=messages.SLACK_TOO_LARGE)
        try:
            raw = await request.read()  # bounded by the app's client_max_size even without a length
        except web.HTTPRequestEntityTooLarge:
            raw = b"x" * (MAX_BODY_BYTES + 1)
        if len(raw) > MAX_BODY_BYTES:
            _log.info("Refused a Slack request larger than %d bytes", MAX_BODY_BYTES)
            return web.Response(status=413, text=messages.SLACK_TOO_LARGE)
        unsigned = check_signature(request.headers, raw, secret=secret, now=now())
        if unsigned is not None:
            _log.info("Refused an unsigned Slack request: %s", unsigned)
            return web.Response(status=401, text=messages.SLACK_UNSIGNED)
        if raw.startswith(b"ssl_check=1"):  # Slack checking the certificate when a command URL is saved
            return web.Response(status=200)
        try:
            inbound = parse_inbound(raw)
        except Refused as refused:
            _log.info("Refused a signed Slack request: %s", refused.reason)
            return web.Response(status=refused.status, text=messages.SLACK_BAD_REQUEST)
        if not handled(inbound):
            # bolt would answer 404 too, but only after logging the whole payload at WARNING.
            _log.info("Refused a Slack %s that no Ackgate listener handles", _kind(inbound))
            return web.Response(status=404, text=messages.SLACK_NOT_HANDLED)
        try:
            return await slack_app.dispatch(inbound, listener_body(inbound))
        except Exception:
            # A defect of ours (the payload was validated): Slack, or whoever sent it, gets no traceback.
            _log.exception("Could not dispatch a Slack %s request", _kind(inbound))
            return web.Response(status=500, text=messages.GENERIC_FAILURE)

    web_app.router.add_post(path, slack_events)


def _kind(inbound: Inbound) -> str:
    """What a request is, for a log line: ``block_actions``, ``view_submission`` or ``command``."""
    return getattr(inbound, "type", "command")


def _busy(inbound: Inbound) -> web.Response:
    """Slack's answer when Ackgate could not take the request in time: the sentence for a slash
    command; an empty 200 for an interaction (the busy note follows on its response URL or by DM)."""
    if isinstance(inbound, SlashCommand):
        return web.json_response({"response_type": "ephemeral", "text": messages.SLACK_BUSY})
    return web.Response(status=200)


def handled(inbound: Inbound) -> bool:
    """Whether one of the listeners of :func:`build_slack_app` takes this request."""
    if isinstance(inbound, SlashCommand):
        return inbound.command == messages.COMMAND
    if isinstance(inbound, BlockActions):
        return inbound.actions[0].action_id.startswith(ACTION_PREFIX)
    return inbound.view.callback_id in (FORM_CALLBACK_ID, KEY_FORM_CALLBACK_ID)


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

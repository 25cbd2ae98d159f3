"""Teams' one mount function and its messaging endpoint, ``POST /api/messages``.

The composition root calls :func:`mount` when ``MICROSOFT_APP_ID`` is set (with its password and, for a
SingleTenant bot, its tenant). It builds, once: the httpx client, the signing keys
(:class:`~handlers.teams.auth.OpenIdKeys`, fetched asynchronously from ``TEAMS_OPENID_METADATA_URL``), the
serviceUrl policy (``TEAMS_SERVICE_URL_HOSTS``), the one shared token
(:class:`~handlers.teams.connector.TokenSource`, from ``TEAMS_LOGIN_URL``), the connector, the notifier
(also the health row), the identity lookup, botbuilder's ``CloudAdapter`` on those seams, and the bot.

The endpoint, in order, each refusal one log line without the token or the body:

1. no ``application/json`` content type: 415; a body over :data:`MAX_BODY_BYTES`: 413; not JSON or not
   an activity Ackgate can read (:func:`~handlers.teams.activity.parse_activity`): 400;
2. :meth:`TeamsAuthenticator.authenticate`: any failure is 401 (never 500), counted in
   ``ackgate_teams_auth_failures_total{reason}``; nothing is stored;
3. an **invoke** (a card click) is answered in the request: the bot's card, or an interim card when the
   decision takes longer than ``TEAMS_INVOKE_BUDGET_SECONDS`` (the PUT of the approval cards brings the
   outcome);
4. anything else is recorded once under its activity id (one insert-if-absent, shared by replicas),
   answered 202 at once, and processed in a task of its own. Teams redelivers what it thinks was lost;
   the second copy gets 202 and nothing runs. A **message** is owed an answer, so its record is a row
   of the command inbox (:mod:`handlers.teams.recovery`), marked answered once the reply is posted: a
   crash between the 202 and the reply leaves it to :class:`~handlers.teams.recovery.TeamsRecovery`,
   which answers it proactively after the restart. An installation or conversation update only needs
   its key in the store's ``seen`` keys (kept 72 hours).
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
from collections.abc import Awaitable, Callable
from typing import Any

import httpx
from aiohttp import web

from bot.core import lanes, messages
from bot.core.clock import Clock
from bot.core.errors import AckgateError, ConfigError, StorageError
from bot.core.expiry import every
from bot.core.json_limits import loads_bounded
from bot.core.platforms import ChatPlatform, PlatformParts
from bot.core.ports import SeenStore
from bot.runtime.config import Settings
from handlers.teams.activity import MalformedActivity, TeamsTurn, parse_activity
from handlers.teams.adapter import authenticated_turn, build_adapter, invoke_body
from handlers.teams.auth import OpenIdKeys, ServiceUrlPolicy, TeamsAuthenticator, TeamsAuthError
from handlers.teams.bot import CURRENT_TURN, VERBS, AckgateTeamsBot
from handlers.teams.cards import CardSigner, invoke_card_response, render_notice
from handlers.teams.connector import TeamsConnector, TeamsConnectorError, TokenSource
from handlers.teams.notifier import PLATFORM, TITLE, TeamsDirectory, TeamsIdentity, TeamsNotifier
from handlers.teams.recovery import PASS_SECONDS, TeamsAnswers, TeamsRecovery, recorded_as

log = logging.getLogger(__name__)

PATH = "/api/messages"
MAX_BODY_BYTES = 256 * 1024  # an activity is a few KB; a card submit with inputs well under this
WARM_SECONDS = 3600  # the keys and the token are checked hourly (each refreshes itself ahead of need)


def card_signer(settings: Settings) -> CardSigner:
    """The key that signs card buttons: from ACKGATE_SECRET_KEY, else the app password (both shared by
    replicas, so a click reaching another replica still verifies)."""
    secret = settings.secret_key or settings.microsoft_app_password
    assert secret is not None
    key = hashlib.sha256(b"ackgate-teams-cards\x00" + secret.get_secret_value().encode()).digest()
    return CardSigner(key)


class MessagesEndpoint:
    """``POST /api/messages``: see the module docstring."""

    def __init__(
        self,
        *,
        auth: TeamsAuthenticator,
        tokens: TokenSource,
        bot: AckgateTeamsBot,
        adapter: Any,
        seen: SeenStore,
        answers: TeamsAnswers,
        signer: CardSigner | None,
        clock: Clock,
        count_activity: Callable[[str], None],
        count_auth_failure: Callable[[str], None],
        on_connector_error: Callable[[TeamsConnectorError], None] = lambda exc: None,
    ) -> None:
        self._on_connector_error = on_connector_error
        self._auth, self._tokens, self._bot, self._adapter = auth, tokens, bot, adapter
        self._seen, self._answers, self._signer, self._clock = seen, answers, signer, clock
        self._count_activity, self._count_auth_failure = count_activity, count_auth_failure
        self._tasks: set[asyncio.Task[None]] = set()

    async def handle(self, request: web.Request) -> web.StreamResponse:
        if "application/json" not in request.headers.get("Content-Type", "").lower():
            log.info("Refused a Teams request without a JSON content type")
            return web.Response(status=415, text=messages.TEAMS_NEEDS_JSON)
        if request.content_length is not None and request.content_length > MAX_BODY_BYTES:
            return web.Response(status=413, text=messages.TEAMS_TOO_LARGE)
        try:
            raw = await request.read()
        except web.HTTPRequestEntityTooLarge:
            return web.Response(status=413, text=messages.TEAMS_TOO_LARGE)
        if len(raw) > MAX_BODY_BYTES:
            return web.Response(status=413, text=messages.TEAMS_TOO_LARGE)
        try:
            body = loads_bounded(raw)
            turn = parse_activity(body)
        except MalformedActivity as exc:
            log.info("Refused a Teams request: %s", exc.detail)
            return web.Response(status=400, text=messages.TEAMS_BAD_ACTIVITY)
        except ValueError:
            log.info("Refused a Teams request whose body is not JSON")
            return web.Response(status=400, text=messages.TEAMS_BAD_ACTIVITY)
        try:
            identity = await self._auth.authenticate(request.headers.get("Authorization"), body)
        except TeamsAuthError as exc:
            # The reason is a fixed label; neither the token nor the body is logged.
            log.info("Refused an unauthenticated Teams request: %s", exc.reason)
            self._count_auth_failure(exc.reason)
            return web.Response(status=401, text=messages.TEAMS_UNAUTHENTICATED)
        self._count_activity(turn.kind)
        if turn.kind == "invoke":
            return await self._invoke(turn, identity)
        if turn.activity_id:
            first = await self._first_time(turn)
            if first is None:
                log.warning("Could not record Teams activity %s; Teams will send it again", turn.activity_id)
                return web.Response(status=503, text=messages.STORAGE_DOWN)
            if not first:
                log.info("Teams sent activity %s again; it runs once", turn.activity_id)
                return web.Response(status=202)
        task = lanes.spawn(self._run(turn, identity))  # after the 202: background
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return web.Response(status=202)

    async def _first_time(self, turn: TeamsTurn) -> bool | None:
        """Record the activity once (None: the database did not answer). A message is owed an answer,
        so it goes to the command inbox, which the recovery pass reads after a crash; anything else
        (an installation or conversation update) only needs its dedup key."""
        if turn.kind == "message":
            kind, text = recorded_as(turn, self._signer, VERBS)
            return await self._answers.record(self._answers.received(turn, kind, text))
        try:
            return await self._seen.first_time(turn.dedup_key, at=self._clock.now())
        except StorageError:
            return None

    async def _process(self, turn: TeamsTurn, identity: Any) -> Any:
        result = await authenticated_turn(self._adapter, identity, tokens=self._tokens)
        token = CURRENT_TURN.set(turn)
        try:
            return await self._adapter.process_activity(result, turn.activity, self._bot.on_turn)
        finally:
            CURRENT_TURN.reset(token)

    async def _run(self, turn: TeamsTurn, identity: Any) -> None:
        try:
            await self._process(turn, identity)
        except TeamsConnectorError as exc:
            self._on_connector_error(exc)
            log.warning("Could not handle a Teams %s: %s", turn.kind, exc.message)
        except Exception:
            log.exception("Unexpected failure while handling a Teams %s", turn.kind)

    async def _invoke(self, turn: TeamsTurn, identity: Any) -> web.Response:
        try:
            response = await self._process(turn, identity)
        except AckgateError as exc:  # e.g. the token endpoint failing: a clear card, not a 500
            if isinstance(exc, TeamsConnectorError):
                self._on_connector_error(exc)
            log.warning("Could not handle a Teams invoke: %s", exc.message)
            return web.json_response(invoke_card_response(render_notice(exc.message)))
        except Exception:
            log.exception("Unexpected failure while handling a Teams invoke")
            return web.json_response(invoke_card_response(render_notice(messages.GENERIC_FAILURE)))
        body = invoke_body(response)
        status = response.status if response is not None else 200
        return web.json_response(body, status=status) if body is not None else web.Response(status=status)

    async def drain(self) -> None:
        if self._tasks:
            await asyncio.gather(*list(self._tasks), return_exceptions=True)


def _warm(keys: OpenIdKeys, tokens: TokenSource) -> Callable[[], Awaitable[int]]:
    """Fetch the signing keys (handing them to botbuilder's cache too) and the token ahead of need;
    a failure is one log line here and the Teams row of /access admin status."""

    async def warm() -> int:
        try:
            await keys.refresh()
            keys.prime_sdk_cache()
        except TeamsAuthError as exc:
            log.error("Teams: %s", exc)
        try:
            await tokens.token()
        except TeamsConnectorError as exc:
            log.error("Teams: %s", exc.message)
        return 0

    return warm


def mount(app: web.Application, settings: Settings, parts: PlatformParts) -> ChatPlatform:
    """Serve Teams on ``app`` at ``/api/messages``; returns the platform for the composition root."""
    app_id, password = settings.microsoft_app_id, settings.microsoft_app_password
    if not app_id or password is None:
        raise ConfigError(messages.TEAMS_BAD_APP_ID)
    tenant = settings.microsoft_app_tenant_id or ""
    http = httpx.AsyncClient(timeout=10.0)
    service_urls = ServiceUrlPolicy(settings.teams_service_url_hosts, trusted=[settings.teams_service_url])
    keys = OpenIdKeys(settings.teams_openid_metadata_url, http=http)
    tokens = TokenSource(
        app_id=app_id,
        app_password=password.get_secret_value(),
        tenant_id=tenant,
        login_url=settings.teams_login_url,
        http=http,
    )
    connector = TeamsConnector(tokens=tokens, service_urls=service_urls, http=http)
    counters = parts.counters

    def count(name: str, **labels: str) -> None:
        if counters is not None:
            counters.count(name, **labels)

    def connector_error(exc: TeamsConnectorError) -> None:
        count("teams_connector_errors", operation=exc.operation, status=str(exc.status))

    directory = TeamsDirectory(
        parts.store.address_book,
        service_urls=service_urls,
        default_service_url=settings.teams_service_url,
        now=parts.clock.now,
    )
    signer = card_signer(settings)
    direct = TeamsNotifier(
        connector,
        tokens=tokens,
        directory=directory,
        bot_id=f"28:{app_id}",
        tenant_id=tenant,
        signer=signer,
        on_error=connector_error,
    )
    notifier = parts.deliver(PLATFORM, direct)
    answers = TeamsAnswers(inbox=parts.store.commands, clock=parts.clock, instance=parts.instance)
    identity = TeamsIdentity(connector, directory=directory)
    bot = AckgateTeamsBot(
        service=parts.router,
        identity=identity,
        directory=directory,
        connector=connector,
        signer=signer,
        budget_seconds=settings.teams_invoke_budget_seconds,
        on_error=connector_error,
        on_answered=answers.done,
    )
    adapter = build_adapter(
        app_id=app_id,
        tenant_id=tenant or "botframework.com",
        tokens=tokens,
        openid_metadata_url=settings.teams_openid_metadata_url,
        login_url=settings.teams_login_url,
    )
    auth = TeamsAuthenticator(app_id=app_id, keys=keys, service_urls=service_urls)
    endpoint = MessagesEndpoint(
        auth=auth,
        tokens=tokens,
        bot=bot,
        adapter=adapter,
        seen=parts.store.seen,
        answers=answers,
        signer=signer,
        clock=parts.clock,
        count_activity=lambda kind: count("teams_activities", type=kind),
        count_auth_failure=lambda reason: count("teams_auth_failures", reason=reason),
        on_connector_error=connector_error,
    )
    app.router.add_post(PATH, endpoint.handle)
    parts.add_job(every(WARM_SECONDS, parts.clock, _warm(keys, tokens)))
    recovery = TeamsRecovery(
        inbox=parts.store.commands,
        requests=parts.store.requests,
        service=parts.router,
        identity=identity,
        connector=connector,
        notifier=notifier,
        signer=signer,
        clock=parts.clock,
        instance=parts.instance,
    )
    # At start-up (the scheduler's first pass), then every PASS_SECONDS: answer what a crash left.
    parts.add_job(every(PASS_SECONDS, parts.clock, recovery.run_once))

    async def close() -> None:
        await endpoint.drain()
        await http.aclose()

    return ChatPlatform(name=PLATFORM, title=TITLE, notifier=direct, health=direct, close=close)

"""Outbound Teams: one Bot Framework token shared by every send, and a small asynchronous Bot Connector
client over botbuilder's schema models.

* :class:`TokenSource` gets the app's token by client credentials (httpx, POST
  ``{login_url}/{tenant}/oauth2/v2.0/token``, scope ``https://api.botframework.com/.default``), caches it and
  refreshes it ``refresh_margin`` seconds before it expires, one request in flight at a time. botbuilder
  builds a new MSAL client and fetches a new token on every turn, synchronously on the event loop, and MSAL
  cannot be pointed at a loopback login (SDK-NOTES §3); this replaces it.
* :class:`TeamsConnector` sends, replies, updates (PUT), creates 1:1 conversations, gets one member and
  pages members, with botbuilder's ``Activity``, ``ConversationParameters``, ``ResourceResponse`` and
  ``TeamsChannelAccount`` models serialised by msrest. It uses httpx rather than botbuilder's
  ``ConnectorClient``: that client runs ``requests`` in a thread pool, asks for the token synchronously,
  and its errors would need mapping anyway. The token goes only to a serviceUrl the shared
  :class:`~handlers.teams.auth.ServiceUrlPolicy` trusts (seen in an authenticated activity, host
  allowlisted); anything else is :class:`UntrustedServiceUrl` and no request is made.
* Failures: 429 (honouring ``Retry-After``), 412 and 5xx are retried a bounded number of times with
  jittered backoff, as are connection failures; a read timeout is retried only for PUT and GET, because a
  POST may already have posted. A 401 drops the cached token and retries once with a new one. What is left
  is a :class:`TeamsConnectorError` (a ``ChatError`` whose message is a sentence from ``bot.core.messages``).
* :class:`SharedTokenCredentialsFactory` hands botbuilder's turn pipeline (``CloudAdapter`` via
  ``ConfigurationBotFrameworkAuthentication(credentials_factory=…)``) the same cached token.

Wiring: the Teams mount (:mod:`handlers.teams.platform`) builds one :class:`TokenSource` from ``MICROSOFT_APP_ID``,
``MICROSOFT_APP_PASSWORD``, ``MICROSOFT_APP_TENANT_ID`` and ``TEAMS_LOGIN_URL`` (default
:data:`PUBLIC_LOGIN_URL`), fetches the token in the scheduler's first pass (a logged error if it fails, and the
"Teams: token OK / Error" row of ``/access admin status``), and gives one :class:`TeamsConnector` to the
Teams notifier.
"""

from __future__ import annotations

import asyncio
import logging
import random
import time
from collections.abc import Awaitable, Callable, Mapping
from typing import Any
from urllib.parse import quote

import httpx
from botbuilder.schema import Activity, ChannelAccount, ConversationParameters, ResourceResponse
from botbuilder.schema.teams import TeamsChannelAccount, TeamsPagedMembersResult
from botframework.connector.auth import AppCredentials, ServiceClientCredentialsFactory

from bot.adapters.retrying import Backoff, Retryable, retry, wait_hint
from bot.core import messages
from bot.core.errors import ChatError
from bot.core.json_limits import loads_bounded
from handlers.teams.auth import ServiceUrlPolicy

log = logging.getLogger(__name__)

PUBLIC_LOGIN_URL = "https://login.microsoftonline.com"
BOT_FRAMEWORK_SCOPE = "https://api.botframework.com/.default"
LEGACY_MULTITENANT_TENANT = "botframework.com"
REFRESH_MARGIN_SECONDS = 300.0
REQUEST_TIMEOUT_SECONDS = 10.0
MAX_ATTEMPTS = 4
MAX_RETRY_AFTER_SECONDS = 30.0
_RETRY_STATUSES = {412, 429, 500, 502, 503, 504}
_IDEMPOTENT = {"GET", "PUT"}

Sleep = Callable[[float], Awaitable[None]]


# --- errors --------------------------------------------------------------------------------------


class TeamsConnectorError(ChatError):
    """The Bot Connector refused or could not be reached. ``status`` is the last HTTP status (0: none)."""

    def __init__(self, message: str, *, operation: str, status: int = 0, code: str = "") -> None:
        super().__init__(message)
        self.operation, self.status, self.code = operation, status, code


class TeamsBlocked(TeamsConnectorError):
    """403: the app is blocked or uninstalled there (``MessageWritesBlocked``) or may not do this."""


class TeamsNotFound(TeamsConnectorError):
    """404: no such conversation, activity or member."""


class TeamsRateLimited(TeamsConnectorError):
    """429 after the bounded retries (or a Retry-After longer than Ackgate waits)."""


class TeamsUnavailable(TeamsConnectorError):
    """5xx, timeouts or connection failures after the bounded retries."""


class TeamsTokenError(TeamsConnectorError):
    """The login endpoint refused the app's credentials or could not be reached."""


class UntrustedServiceUrl(TeamsConnectorError):
    """The serviceUrl did not come from an authenticated activity, or is outside the allowlist."""


# --- the token -----------------------------------------------------------------------------------


class TokenSource:
    """The app's Bot Framework access token, cached and refreshed ahead of expiry."""

    def __init__(
        self,
        *,
        app_id: str,
        app_password: str,
        tenant_id: str,
        http: httpx.AsyncClient,
        login_url: str = PUBLIC_LOGIN_URL,
        clock: Callable[[], float] = time.monotonic,
        refresh_margin: float = REFRESH_MARGIN_SECONDS,
    ) -> None:
        self._app_id, self._password = app_id, app_password
        self._url = (
            f"{login_url.rstrip('/')}/{quote(tenant_id or LEGACY_MULTITENANT_TENANT, safe='')}/oauth2/v2.0/token"
        )
        self._http, self._clock, self._margin = http, clock, refresh_margin
        self._token: str | None = None
        self._expires_at = 0.0
        self._lock = asyncio.Lock()
        self.requests = 0  # token requests made, for tests and metrics

    @property
    def current(self) -> str | None:
        """The cached token if it is still valid (for synchronous callers such as msrest); else None."""
        return self._token if self._token is not None and self._clock() < self._expires_at else None

    def _fresh(self) -> bool:
        return self._token is not None and self._clock() < self._expires_at - self._margin

    async def token(self) -> str:
        """A valid token; fetched only when none is cached or it is within the margin of expiry."""
        if self._fresh():
            assert self._token is not None
            return self._token
        async with self._lock:
            if not self._fresh():
                await self._fetch()
            assert self._token is not None
            return self._token

    def invalidate(self, token: str) -> None:
        """The connector said 401 with ``token``: forget it so the next call fetches a new one."""
        if self._token == token:
            self._token, self._expires_at = None, 0.0

    async def _fetch(self) -> None:
        self.requests += 1
        form = {
            "grant_type": "client_credentials",
            "client_id": self._app_id,
            "client_secret": self._password,
            "scope": BOT_FRAMEWORK_SCOPE,
        }
        try:
            response = await self._http.post(self._url, data=form, timeout=REQUEST_TIMEOUT_SECONDS)
        except httpx.HTTPError as exc:
            raise TeamsTokenError(
                messages.teams_token_failed(f"login unreachable: {type(exc).__name__}"), operation="token"
            ) from exc
        body = _json_object(response.content)
        if response.status_code != 200:
            code = str(body.get("error") or f"HTTP {response.status_code}")
            # error_description names the AADSTS code (e.g. 700016: wrong tenant); it holds no secret.
            detail = str(body.get("error_description") or "").split("\n")[0][:200]
            log.warning("Bot Framework login refused: %s %s", code, detail)
            raise TeamsTokenError(
                messages.teams_token_failed(f"{code}{': ' + detail if detail else ''}"),
                operation="token",
                status=response.status_code,
                code=code,
            )
        token, lifetime = body.get("access_token"), body.get("expires_in")
        try:
            seconds = float(lifetime)  # type: ignore[arg-type]
        except (TypeError, ValueError):
            seconds = -1.0
        if not isinstance(token, str) or not token or seconds <= 0:
            raise TeamsTokenError(messages.teams_token_failed("the login answer has no token"), operation="token")
        self._token, self._expires_at = token, self._clock() + seconds


class SharedTokenCredentials(AppCredentials):  # type: ignore[misc]
    """botbuilder credentials that return :class:`TokenSource`'s cached token, never fetching one
    (msrest asks synchronously, on the event loop). The adapter must ``await source.token()`` first."""

    def __init__(self, source: TokenSource, *, app_id: str, oauth_scope: str | None = None) -> None:
        super().__init__(app_id=app_id, oauth_scope=oauth_scope)
        self._source = source

    def get_access_token(self, force_refresh: bool = False) -> str:
        token = self._source.current
        if token is None:
            raise TeamsTokenError(messages.teams_token_failed("no valid token is cached"), operation="token")
        return token


class SharedTokenCredentialsFactory(ServiceClientCredentialsFactory):  # type: ignore[misc]
    """One :class:`SharedTokenCredentials` for every turn; authentication is never disabled."""

    def __init__(self, source: TokenSource, *, app_id: str) -> None:
        if not app_id:
            raise ValueError("A Teams app id is required")
        self._app_id = app_id
        self._credentials = SharedTokenCredentials(source, app_id=app_id)

    async def is_valid_app_id(self, app_id: str) -> bool:
        return app_id == self._app_id

    async def is_authentication_disabled(self) -> bool:
        return False

    async def create_credentials(
        self, app_id: str, oauth_scope: str, login_endpoint: str, validate_authority: bool
    ) -> AppCredentials:
        if app_id != self._app_id:
            raise PermissionError("Unknown app id")
        return self._credentials


# --- the connector -------------------------------------------------------------------------------


class TeamsConnector:
    """Bot Connector v3 calls against a conversation's serviceUrl."""

    def __init__(
        self,
        *,
        tokens: TokenSource,
        service_urls: ServiceUrlPolicy,
        http: httpx.AsyncClient,
        max_attempts: int = MAX_ATTEMPTS,
        timeout: float = REQUEST_TIMEOUT_SECONDS,
        sleep: Sleep = asyncio.sleep,
        backoff: float = 0.5,
    ) -> None:
        self._tokens, self._service_urls, self._http = tokens, service_urls, http
        self._timeout, self._sleep = timeout, sleep
        self._policy = Backoff(max_attempts=max_attempts, first=backoff, hint_replaces=True, jitter=_jitter)

    async def send(self, service_url: str, conversation_id: str, activity: Activity) -> str:
        """Post a new message in the conversation; returns its activity id."""
        path = f"v3/conversations/{_segment(conversation_id)}/activities"
        body = await self._call("send", "POST", service_url, path, activity.serialize())
        return _resource_id(body, "send")

    async def reply(self, service_url: str, conversation_id: str, reply_to_id: str, activity: Activity) -> str:
        path = f"v3/conversations/{_segment(conversation_id)}/activities/{_segment(reply_to_id)}"
        body = await self._call("reply", "POST", service_url, path, activity.serialize())
        return _resource_id(body, "reply")

    async def update(self, service_url: str, conversation_id: str, activity_id: str, activity: Activity) -> None:
        """Replace a posted message in place for everyone (PUT)."""
        activity.id = activity_id
        path = f"v3/conversations/{_segment(conversation_id)}/activities/{_segment(activity_id)}"
        await self._call("update", "PUT", service_url, path, activity.serialize())

    async def create_conversation(self, service_url: str, parameters: ConversationParameters) -> str:
        """Create (or find) a conversation; returns its id."""
        serialized = parameters.serialize()
        # botbuilder 4.17.1's model writes "tenantID"; the swagger (and Teams) says "tenantId".
        if "tenantID" in serialized:
            serialized["tenantId"] = serialized.pop("tenantID")
        body = await self._call("create conversation", "POST", service_url, "v3/conversations", serialized)
        return _resource_id(body, "create conversation")

    async def create_personal_conversation(self, service_url: str, *, user_id: str, tenant_id: str, bot_id: str) -> str:
        """The bot's 1:1 chat with the user ``user_id`` (an MRI), created if needed."""
        parameters = ConversationParameters(
            is_group=False,
            bot=ChannelAccount(id=bot_id),
            members=[ChannelAccount(id=user_id)],
            tenant_id=tenant_id,
            channel_data={"tenant": {"id": tenant_id}},
        )
        return await self.create_conversation(service_url, parameters)

    async def get_member(self, service_url: str, conversation_id: str, member_id: str) -> TeamsChannelAccount:
        """One member by MRI, UPN, email or AAD object id (the bot must be in the conversation)."""
        path = f"v3/conversations/{_segment(conversation_id)}/members/{_segment(member_id)}"
        body = await self._call("get member", "GET", service_url, path, None)
        return TeamsChannelAccount.deserialize(body)

    async def paged_members(
        self, service_url: str, conversation_id: str, *, page_size: int = 200, continuation_token: str | None = None
    ) -> TeamsPagedMembersResult:
        params = {"pageSize": str(page_size)}
        if continuation_token:
            params["continuationToken"] = continuation_token
        path = f"v3/conversations/{_segment(conversation_id)}/pagedmembers"
        body = await self._call("list members", "GET", service_url, path, None, params=params)
        return TeamsPagedMembersResult.deserialize(body)

    # --- the one HTTP path --------------------------------------------------------------------

    async def _call(
        self,
        operation: str,
        method: str,
        service_url: str,
        path: str,
        body: Mapping[str, Any] | None,
        *,
        params: Mapping[str, str] | None = None,
    ) -> dict[str, Any]:
        if not self._service_urls.trusted(service_url):
            log.warning("Refusing to send the Teams token to an untrusted serviceUrl for %s", operation)
            raise UntrustedServiceUrl(messages.TEAMS_UNTRUSTED_SERVICE_URL, operation=operation)
        url = service_url.rstrip("/") + "/" + path
        refreshed = False
        give_up: Callable[[], Exception] | None = None

        async def attempt() -> dict[str, Any]:
            nonlocal refreshed, give_up
            while True:
                token = await self._tokens.token()
                try:
                    response = await self._http.request(
                        method,
                        url,
                        json=body,
                        params=params,
                        headers={"Authorization": f"Bearer {token}"},
                        timeout=self._timeout,
                    )
                except httpx.TransportError as exc:

                    def unreachable(exc: httpx.TransportError = exc) -> Exception:
                        log.warning("Teams %s failed: %s", operation, type(exc).__name__)
                        return TeamsUnavailable(messages.teams_unreachable(operation), operation=operation)

                    if isinstance(exc, httpx.ReadTimeout) and method not in _IDEMPOTENT:
                        raise unreachable() from exc  # a POST may have landed: a second one would post twice
                    give_up = unreachable
                    raise Retryable(type(exc).__name__) from exc
                status = response.status_code
                if 200 <= status < 300:
                    return _json_object(response.content)
                if status == 401 and not refreshed:
                    refreshed = True  # once per call: a stale token, fetched again at once
                    self._tokens.invalidate(token)
                    continue
                answer = _json_object(response.content)

                def refused(status: int = status, answer: dict[str, Any] = answer) -> Exception:
                    return self._error(operation, status, answer)

                hint = wait_hint(response.headers, ("retry-after",))
                if status not in _RETRY_STATUSES or (hint is not None and hint > MAX_RETRY_AFTER_SECONDS):
                    raise refused()
                give_up = refused
                raise Retryable(f"HTTP {status}", wait=hint)

        try:
            return await retry(attempt, policy=self._policy, sleep=self._sleep)
        except Retryable as exc:
            assert give_up is not None
            raise give_up() from exc.__cause__

    def _error(self, operation: str, status: int, body: Mapping[str, Any]) -> TeamsConnectorError:
        error = body.get("error")
        code = str(error.get("code") or "") if isinstance(error, dict) else ""
        code = code or f"HTTP {status}"
        log.info("Teams refused %s: %s %s", operation, status, code)
        kwargs: dict[str, Any] = {"operation": operation, "status": status, "code": code}
        if status == 403:
            return TeamsBlocked(messages.teams_blocked(operation), **kwargs)
        if status == 404:
            return TeamsNotFound(messages.teams_not_found(operation), **kwargs)
        if status == 429:
            return TeamsRateLimited(messages.teams_unreachable(operation), **kwargs)
        if status >= 500:
            return TeamsUnavailable(messages.teams_unreachable(operation), **kwargs)
        return TeamsConnectorError(messages.teams_refused(operation, code), **kwargs)


def _segment(value: str) -> str:
    return quote(value, safe="")


def _jitter() -> float:
    return 0.5 + random.random()  # noqa: S311 - jitter, not security


def _json_object(content: bytes) -> dict[str, Any]:
    try:
        parsed = loads_bounded(content) if content else {}
    except ValueError:
        return {}
    return parsed if isinstance(parsed, dict) else {}


def _resource_id(body: Mapping[str, Any], operation: str) -> str:
    resource = ResourceResponse.deserialize(dict(body))
    if not resource.id:
        raise TeamsConnectorError(messages.teams_refused(operation, "no id in the answer"), operation=operation)
    return str(resource.id)

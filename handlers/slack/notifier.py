"""Slack's side of the chat ports: posting and updating cards, and who a Slack user is.

Every Web API failure becomes a :class:`bot.core.errors.ChatError` whose message says what to do;
the Slack SDK's exceptions never leave this module (or :func:`call_slack`, which the
listeners in :mod:`handlers.slack.app` share).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Awaitable, Callable, Mapping
from datetime import UTC, datetime, timedelta
from types import MappingProxyType
from typing import Any

import aiohttp
from slack_sdk.errors import SlackApiError, SlackClientError
from slack_sdk.web.async_client import AsyncWebClient
from slack_sdk.web.async_slack_response import AsyncSlackResponse
from slack_sdk.webhook.async_client import AsyncWebhookClient

from bot.adapters.cache import CoalescingCache
from bot.core import messages
from bot.core.domain import MessageRef, Principal
from bot.core.errors import ChatError, IdentityError, StorageError
from bot.core.ports import AddressBook, ChatAddress
from bot.core.views import Card
from handlers.slack.blocks import render_card
from handlers.slack.retry import ATTEMPT_TIMEOUT_SECONDS, retry_handlers

_log = logging.getLogger(__name__)
# The loggers handed to slack_sdk's clients, with a level of their own: the clients check the
# logger's own level (not the effective one) before formatting their debug lines, which name the
# response_url (a capability), the arguments and the bodies. With NOTSET they formatted them on
# every call for nothing; at WARNING they never do, whatever level the root is given.
_response_url_log = logging.getLogger("ackgate.slack.response_url")
_response_url_log.setLevel(logging.WARNING)
_web_api_log = logging.getLogger("ackgate.slack.web_api")
_web_api_log.setLevel(logging.WARNING)

PLATFORM = "slack"
TITLE = "Slack"  # its row in /access admin status
# How long the address book's email ↔ user id pair is trusted before users.lookupByEmail is asked again.
ADDRESS_FRESH = timedelta(hours=1)
# A user's DM conversation id does not change: conversations.open is asked once a day per user at
# most (of the most recent DM_CHANNELS_KEPT users), so a message to a user is one Web API call.
DM_CHANNEL_SECONDS = 24 * 3600.0
DM_CHANNELS_KEPT = 10_000

# Every Web API method Ackgate calls, with the bot scopes it needs. The manifest's scopes are
# derived from (and tested against) this table, so a new call cannot ship without its scope.
WEB_API_SCOPES: Mapping[str, frozenset[str]] = MappingProxyType(
    {
        "auth.test": frozenset(),  # the health check (/access admin status, /metrics)
        "users.info": frozenset({"users:read", "users:read.email"}),  # email needs the second
        "users.lookupByEmail": frozenset({"users:read.email"}),
        "conversations.open": frozenset({"im:write"}),
        "chat.postMessage": frozenset({"chat:write"}),
        "chat.update": frozenset({"chat:write"}),
        "views.open": frozenset(),  # a trigger id is the permission
        "views.update": frozenset(),
        "usergroups.users.list": frozenset({"usergroups:read"}),  # ACKGATE_ADMIN_USERGROUP
    }
)
SLASH_COMMAND_SCOPE = "commands"


def required_bot_scopes() -> frozenset[str]:
    """The bot scopes the app must be installed with: the Web API calls plus the slash command."""
    return frozenset({SLASH_COMMAND_SCOPE}).union(*WEB_API_SCOPES.values())


async def call_slack(method: str, call: Awaitable[AsyncSlackResponse]) -> AsyncSlackResponse:
    """Await one Web API call, turning Slack's refusals and network failures into ``ChatError``."""
    try:
        return await call
    except SlackApiError as exc:
        raise ChatError(messages.slack_refused(method, _error_code(exc))) from exc
    except (SlackClientError, aiohttp.ClientError, TimeoutError) as exc:
        raise ChatError(messages.slack_unreachable(method)) from exc


def web_client(*, token: str, base_url: str) -> AsyncWebClient:
    """The Web API client Ackgate uses: bounded retries on 429, 5xx and refused connections
    (:mod:`handlers.slack.retry`)."""
    return AsyncWebClient(
        token=token,
        base_url=base_url,
        timeout=ATTEMPT_TIMEOUT_SECONDS,
        retry_handlers=retry_handlers(),
        logger=_web_api_log,
    )


POOL_CONNECTIONS = 100  # to Slack, shared by the Web API and response_url posts


class SlackSession:
    """One pooled aiohttp session (keep-alive: one TLS handshake per connection, not per post) for
    the Web API client and every ``response_url`` post. Opened on the running loop: :meth:`open` at
    start-up gives it to the Web API client; :meth:`post` opens it too if a post comes first."""

    def __init__(self, client: AsyncWebClient) -> None:
        self._client = client
        self._session: aiohttp.ClientSession | None = None

    def _opened(self) -> aiohttp.ClientSession:
        if self._session is None or self._session.closed:
            self._session = aiohttp.ClientSession(
                connector=aiohttp.TCPConnector(limit=POOL_CONNECTIONS, ttl_dns_cache=300)
            )
            self._client.session = self._session
        return self._session

    async def open(self) -> None:
        self._opened()

    async def post(self, url: str, message: Mapping[str, Any]) -> bool:
        return await post_response(url, message, session=self._opened())

    async def close(self) -> None:
        if self._session is not None:
            session, self._session = self._session, None
            self._client.session = None
            await session.close()


async def post_response(url: str, message: Mapping[str, Any], *, session: aiohttp.ClientSession | None = None) -> bool:
    """Post ``message`` to a ``response_url`` with the same bounded retries; True when Slack took it.
    Without ``session``, a session of its own for this one post. The URL is a capability for 30
    minutes, so it never reaches a log line."""
    client = AsyncWebhookClient(
        url=url,
        session=session,
        timeout=ATTEMPT_TIMEOUT_SECONDS,
        retry_handlers=retry_handlers(),
        logger=_response_url_log,
    )
    try:
        sent = await client.send_dict(dict(message))
    except (SlackClientError, aiohttp.ClientError, TimeoutError):
        _log.warning("Could not post an answer to Slack's response_url (connection failed)")
        return False
    if sent.status_code != 200:
        _log.warning("Slack's response_url answered HTTP %s", sent.status_code)
        return False
    return True


def _error_code(exc: SlackApiError) -> str:
    return str(exc.response.get("error") or "unknown_error")


def principal_from_user(user: Mapping[str, Any]) -> Principal:
    """A Principal from a Web API user object. Raises ``IdentityError`` when no email is visible
    (a bot, or the app lacks ``users:read.email``): email is how Ackgate finds people in PagerDuty."""
    profile = user.get("profile") or {}
    email = str(profile.get("email") or "").strip().lower()
    if not email:
        raise IdentityError(messages.SLACK_NO_EMAIL)
    name = profile.get("real_name") or user.get("real_name") or user.get("name") or ""
    return Principal(platform=PLATFORM, user_id=str(user["id"]), email=email, name=str(name))


def _utc_now() -> datetime:
    return datetime.now(UTC)


async def remember(book: AddressBook | None, principal: Principal, *, at: datetime) -> None:
    """Keep a Slack user's email ↔ user id in the address book; a storage failure only costs a lookup."""
    if book is None or not principal.email:
        return
    try:
        await book.upsert(ChatAddress(PLATFORM, principal.user_id, principal.email, principal.name), at=at)
    except StorageError:
        _log.info("Could not record Slack user %s in the address book", principal.user_id, exc_info=True)


class SlackNotifier:
    """:class:`bot.core.ports.ChatNotifier` and :class:`bot.core.ports.ChatHealth` for Slack, through the Web API.

    With an ``address_book``, :meth:`user_by_email` answers from it while the stored pair is younger
    than :data:`ADDRESS_FRESH`, and records what users.lookupByEmail finds."""

    def __init__(
        self,
        client: AsyncWebClient,
        *,
        address_book: AddressBook | None = None,
        now: Callable[[], datetime] = _utc_now,
    ) -> None:
        self._client = client
        self._book = address_book
        self._now = now
        self._dm_channels = CoalescingCache(max_entries=DM_CHANNELS_KEPT)

    async def health(self) -> None:
        """auth.test: Slack answers and accepts the bot token. Raises ``ChatError`` otherwise."""
        await call_slack("auth.test", self._client.auth_test())

    async def send_to_user(self, user: Principal, card: Card) -> MessageRef:
        # chat.update needs the D… conversation id, not the user id, so open the DM first (once).
        channel = await self._dm_channels.get(user.user_id, lambda: self._open_dm(user.user_id), ttl=DM_CHANNEL_SECONDS)
        try:
            return await self.send_to_channel(channel, card)
        except ChatError:
            self._dm_channels.forget(user.user_id)  # the next message opens the conversation again
            raise

    async def _open_dm(self, user_id: str) -> str:
        opened = await call_slack("conversations.open", self._client.conversations_open(users=user_id))
        return str(opened["channel"]["id"])

    async def send_to_channel(self, channel: str, card: Card) -> MessageRef:
        posted = await call_slack(
            "chat.postMessage", self._client.chat_postMessage(channel=channel, **render_card(card))
        )
        return MessageRef(platform=PLATFORM, channel=str(posted["channel"]), message_id=str(posted["ts"]))

    async def update(self, ref: MessageRef, card: Card) -> None:
        await call_slack(
            "chat.update", self._client.chat_update(channel=ref.channel, ts=ref.message_id, **render_card(card))
        )

    async def user_by_email(self, email: str) -> Principal | None:
        known = await self._known(email)
        if known is not None:
            return known
        found_user = await self._lookup_by_email(email)
        if found_user is not None:
            await remember(self._book, found_user, at=self._now())
        return found_user

    async def _known(self, email: str) -> Principal | None:
        if self._book is None:
            return None
        try:
            rows = await self._book.by_email(email, platform=PLATFORM)
        except StorageError:
            _log.info("Could not read the address book; asking Slack", exc_info=True)
            return None
        fresh = [a for a in rows if a.updated_at is not None and self._now() - a.updated_at < ADDRESS_FRESH]
        if not fresh:
            return None
        return Principal(platform=PLATFORM, user_id=fresh[0].user_id, email=fresh[0].email, name=fresh[0].display_name)

    async def _lookup_by_email(self, email: str) -> Principal | None:
        try:
            found = await self._client.users_lookupByEmail(email=email)
        except SlackApiError as exc:
            if _error_code(exc) == "users_not_found":
                return None
            raise ChatError(messages.slack_refused("users.lookupByEmail", _error_code(exc))) from exc
        except (SlackClientError, aiohttp.ClientError, TimeoutError) as exc:
            raise ChatError(messages.slack_unreachable("users.lookupByEmail")) from exc
        user = dict(found["user"])
        if not (user.get("profile") or {}).get("email"):
            user["profile"] = {**(user.get("profile") or {}), "email": email}
        return principal_from_user(user)

    async def user_by_id(self, user_id: str) -> Principal | None:
        """The user, with an empty email when Slack hides it; None for an unknown id."""
        try:
            found = await self._client.users_info(user=user_id)
        except SlackApiError as exc:
            if _error_code(exc) in ("user_not_found", "users_not_found"):
                return None
            raise ChatError(messages.slack_refused("users.info", _error_code(exc))) from exc
        except (SlackClientError, aiohttp.ClientError, TimeoutError) as exc:
            raise ChatError(messages.slack_unreachable("users.info")) from exc
        user = found["user"]
        try:
            return principal_from_user(user)
        except IdentityError:
            return Principal(platform=PLATFORM, user_id=str(user["id"]), email="", name=str(user.get("name") or ""))


class SlackIdentity:
    """Who a Slack user id is, from users.info, cached for ``ttl_seconds``.

    Concurrent lookups of one user share a single users.info call (users.info is Tier 4, and a
    burst of clicks on one approval message should cost one call). Failures are not cached.
    """

    def __init__(
        self,
        client: AsyncWebClient,
        *,
        ttl_seconds: float = 600.0,
        monotonic: Callable[[], float] = time.monotonic,
        address_book: AddressBook | None = None,
        now: Callable[[], datetime] = _utc_now,
    ) -> None:
        self._client = client
        self._ttl = ttl_seconds
        self._cache = CoalescingCache(monotonic=monotonic)
        self._book = address_book
        self._now = now

    async def principal(self, user_id: str) -> Principal:
        """Raises ``IdentityError`` when the user has no visible email, ``ChatError`` when Slack fails."""
        return await self._cache.get(user_id, lambda: self._fetch(user_id), ttl=self._ttl)

    async def _fetch(self, user_id: str) -> Principal:
        found = await call_slack("users.info", self._client.users_info(user=user_id))
        principal = principal_from_user(found["user"])
        await remember(self._book, principal, at=self._now())  # so approvers are found by email later
        return principal


class SlackAdminGroup:
    """Whether someone belongs to the Slack user group whose members are Ackgate admins
    (``ACKGATE_ADMIN_USERGROUP``), from usergroups.users.list, cached for ``ttl_seconds``."""

    def __init__(
        self,
        client: AsyncWebClient,
        group_id: str,
        *,
        ttl_seconds: float = 60.0,
        monotonic: Callable[[], float] = time.monotonic,
    ) -> None:
        self._client = client
        self._group_id = group_id
        self._ttl = ttl_seconds
        self._cache = CoalescingCache(monotonic=monotonic, max_entries=1)

    async def __call__(self, principal: Principal) -> bool:
        if principal.platform != PLATFORM:
            return False
        members = await self._cache.get("members", self._members, ttl=self._ttl)
        return principal.user_id in members

    async def _members(self) -> frozenset[str]:
        found = await call_slack("usergroups.users.list", self._client.usergroups_users_list(usergroup=self._group_id))
        return frozenset(str(u) for u in found.get("users") or [])

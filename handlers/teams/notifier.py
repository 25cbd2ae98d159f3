"""Teams' side of the chat ports: posting and updating cards, proactive 1:1 messages from the address
book, who a Teams user is, and the health row of ``/access admin status``.

Where things are kept (the :class:`bot.core.ports.AddressBook`, shared by replicas):

* a **user** row per MRI (``29:…``): the email (from ``get_member``, else the UPN, lower-cased), the name
  and, as its conversation data, ``{"serviceUrl", "tenantId", "conversationId"?}``: the bot's 1:1 chat
  with them, once Ackgate has one;
* a **conversation** row per chat or channel Ackgate has heard from or posted in (the id as ``user_id``,
  no email): ``{"serviceUrl", "tenantId", "teamId"?}``, so an update (PUT) or a channel post later
  knows which Bot Connector to call.

A serviceUrl read back from the book came from an authenticated activity, so it is trusted again
(:meth:`ServiceUrlPolicy.remember` still refuses one outside the allowlist). ``TEAMS_SERVICE_URL``
(configured, so trusted) is used for a channel Ackgate never heard from.

Someone who never installed the app and shares no team with it has no row: :meth:`send_to_user` raises
:class:`TeamsUnreachable` (a ``ChatError``), and :meth:`user_by_email` finds them only through the
rosters of the teams Ackgate is in (``GET …/members/{email}``).
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from bot.adapters.cache import CoalescingCache
from bot.core import messages
from bot.core.domain import MessageRef, Principal
from bot.core.errors import ChatError, IdentityError, StorageError
from bot.core.ports import AddressBook, ChatAddress
from bot.core.views import Card
from handlers.teams.auth import ServiceUrlPolicy
from handlers.teams.cards import CardSigner, card_activity, render_card
from handlers.teams.connector import TeamsConnector, TeamsConnectorError, TeamsNotFound, TokenSource

log = logging.getLogger(__name__)

PLATFORM = "teams"
TITLE = "Teams"  # its row in /access admin status
IDENTITY_TTL_SECONDS = 300.0
MAX_TEAMS_SEARCHED = 10  # rosters asked for an email Ackgate has never seen


def _utc_now() -> datetime:
    return datetime.now(UTC)


def base_conversation(conversation_id: str) -> str:
    """A channel thread's id without its ``;messageid=…`` suffix: the channel."""
    return conversation_id.split(";messageid=")[0]


def _data(address: ChatAddress | None) -> dict[str, Any]:
    if address is None or not address.conversation:
        return {}
    try:
        parsed = json.loads(address.conversation)
    except ValueError:
        return {}
    return parsed if isinstance(parsed, dict) else {}


@dataclass(frozen=True)
class Seen:
    """What one authenticated activity says about where Ackgate can reach someone."""

    service_url: str
    tenant_id: str
    conversation_id: str  # the base conversation (a channel without ;messageid)
    personal: bool
    team_id: str | None = None
    name: str = ""


class TeamsDirectory:
    """The address book as Teams needs it: users, conversations and their serviceUrls."""

    def __init__(
        self,
        book: AddressBook,
        *,
        service_urls: ServiceUrlPolicy,
        default_service_url: str,
        now: Callable[[], datetime] = _utc_now,
    ) -> None:
        self._book, self._urls, self._default = book, service_urls, default_service_url
        self._now = now
        self._teams: dict[str, str] = {}

    async def _row(self, key: str) -> ChatAddress | None:
        try:
            return await self._book.by_user(PLATFORM, key)
        except StorageError:
            log.info("Could not read the address book for %s", key, exc_info=True)
            return None

    async def _put(self, address: ChatAddress) -> None:
        try:
            await self._book.upsert(address, at=self._now())
        except StorageError:
            log.info("Could not record %s in the address book", address.user_id, exc_info=True)

    def trusted_url(self, data: dict[str, Any]) -> str | None:
        url = data.get("serviceUrl")
        if not isinstance(url, str) or not self._urls.allowed(url):
            return None
        self._urls.remember(url)  # stored from an authenticated activity earlier
        return url

    async def remember_conversation(self, seen: Seen) -> None:
        data: dict[str, Any] = {"serviceUrl": seen.service_url, "tenantId": seen.tenant_id}
        if seen.team_id:
            data["teamId"] = seen.team_id
        await self._put(ChatAddress(PLATFORM, seen.conversation_id, "", seen.name, json.dumps(data)))

    async def remember_user(self, principal: Principal, seen: Seen) -> None:
        """Keep the user's email ↔ MRI, and their 1:1 chat when this activity came from it."""
        old = _data(await self._row(principal.user_id))
        data = {**old, "serviceUrl": seen.service_url, "tenantId": seen.tenant_id}
        if seen.personal:
            data["conversationId"] = seen.conversation_id
        await self._put(
            ChatAddress(PLATFORM, principal.user_id, principal.email, principal.name, json.dumps(data, sort_keys=True))
        )

    async def remember_personal_chat(self, user_id: str, conversation_id: str) -> None:
        row = await self._row(user_id)
        if row is None:
            return
        data = {**_data(row), "conversationId": conversation_id}
        await self._put(ChatAddress(PLATFORM, user_id, row.email, row.display_name, json.dumps(data, sort_keys=True)))

    async def user(self, user_id: str) -> tuple[ChatAddress, dict[str, Any]] | None:
        row = await self._row(user_id)
        return None if row is None or not row.email else (row, _data(row))

    async def by_email(self, email: str) -> ChatAddress | None:
        try:
            rows = await self._book.by_email(email, platform=PLATFORM)
        except StorageError:
            log.info("Could not read the address book; asking Teams", exc_info=True)
            return None
        return rows[0] if rows else None

    async def service_url_for(self, conversation_id: str, *, user_data: dict[str, Any] | None = None) -> str:
        """Where the conversation lives: its row, else the user's, else ``TEAMS_SERVICE_URL``."""
        for data in (_data(await self._row(base_conversation(conversation_id))), user_data or {}):
            url = self.trusted_url(data)
            if url is not None:
                return url
        return self._default

    def note_team(self, team_id: str, service_url: str) -> None:
        """A team this process heard from (the book has no listing by kind, so each replica keeps its own)."""
        self._teams[team_id] = service_url

    def teams(self) -> list[tuple[str, str]]:
        """(team id, serviceUrl) of the teams heard from, newest last, for roster lookups by email."""
        return list(self._teams.items())[-MAX_TEAMS_SEARCHED:]


class TeamsIdentity:
    """Who an MRI is, from ``GET …/members/{mri}`` in the conversation it wrote in, cached briefly.
    Concurrent lookups of one user share a call; failures are not cached."""

    def __init__(
        self,
        connector: TeamsConnector,
        *,
        directory: TeamsDirectory | None = None,
        ttl_seconds: float = IDENTITY_TTL_SECONDS,
        monotonic: Callable[[], float] = time.monotonic,
    ) -> None:
        self._connector, self._directory, self._ttl = connector, directory, ttl_seconds
        self._cache = CoalescingCache(monotonic=monotonic)

    async def principal(self, *, service_url: str, conversation_id: str, user_id: str) -> Principal:
        """Raises ``IdentityError`` when Teams shows neither an email nor a UPN, ``ChatError`` when it fails.
        Someone Teams does not list in that conversation (a card forwarded out of its chat) is looked up
        in the address book, which only holds what Teams' roster said earlier."""

        async def load() -> Principal:
            try:
                member = await self._connector.get_member(service_url, base_conversation(conversation_id), user_id)
            except TeamsNotFound:
                known = await self._directory.user(user_id) if self._directory is not None else None
                if known is None:
                    raise
                return Principal(PLATFORM, known[0].user_id, known[0].email, known[0].display_name)
            return principal_from_member(member, user_id)

        return await self._cache.get(user_id, load, ttl=self._ttl)


def principal_from_member(member: Any, user_id: str) -> Principal:
    email = str(getattr(member, "email", None) or getattr(member, "user_principal_name", None) or "")
    email = email.strip().lower()
    if not email or "@" not in email:
        raise IdentityError(messages.TEAMS_NO_EMAIL)
    return Principal(platform=PLATFORM, user_id=str(member.id or user_id), email=email, name=str(member.name or ""))


class TeamsNotifier:
    """:class:`bot.core.ports.ChatNotifier` and :class:`bot.core.ports.ChatHealth` for Teams, over the Bot Connector."""

    def __init__(
        self,
        connector: TeamsConnector,
        *,
        tokens: TokenSource,
        directory: TeamsDirectory,
        bot_id: str,
        tenant_id: str,
        signer: CardSigner | None = None,
        on_error: Callable[[TeamsConnectorError], None] = lambda exc: None,
    ) -> None:
        self._connector, self._tokens, self._directory = connector, tokens, directory
        self._bot_id, self._tenant_id, self._signer = bot_id, tenant_id, signer
        self._on_error = on_error

    def render(self, card: Card) -> dict[str, Any]:
        return render_card(card, signer=self._signer)

    async def health(self) -> None:
        """The app's token can be had (cached, or fetched now). Raises ``ChatError`` otherwise."""
        await self._counted(self._tokens.token())

    async def _counted(self, call: Any) -> Any:
        try:
            return await call
        except TeamsConnectorError as exc:
            self._on_error(exc)
            raise

    async def send_to_channel(self, channel: str, card: Card) -> MessageRef:
        conversation = base_conversation(channel)
        url = await self._directory.service_url_for(conversation)
        activity = card_activity(self.render(card), summary=card.fallback)
        message_id = await self._counted(self._connector.send(url, conversation, activity))
        return MessageRef(platform=PLATFORM, channel=conversation, message_id=message_id)

    async def send_to_user(self, user: Principal, card: Card) -> MessageRef:
        known = await self._directory.user(user.user_id)
        if known is None:
            raise TeamsUnreachable(messages.teams_not_reachable(user.email or user.user_id))
        row, data = known
        url = self._directory.trusted_url(data) or await self._directory.service_url_for("", user_data=data)
        conversation = data.get("conversationId")
        if not isinstance(conversation, str) or not conversation:
            tenant = str(data.get("tenantId") or self._tenant_id)
            conversation = await self._counted(
                self._connector.create_personal_conversation(
                    url, user_id=user.user_id, tenant_id=tenant, bot_id=self._bot_id
                )
            )
            await self._directory.remember_personal_chat(user.user_id, conversation)
            await self._directory.remember_conversation(Seen(url, tenant, conversation, personal=True))
        activity = card_activity(self.render(card), summary=card.fallback)
        try:
            message_id = await self._counted(self._connector.send(url, conversation, activity))
        except TeamsConnectorError as exc:
            if exc.status == 403:  # blocked or uninstalled: say who, as for someone never reached
                raise TeamsUnreachable(messages.teams_not_reachable(row.email)) from exc
            raise
        return MessageRef(platform=PLATFORM, channel=conversation, message_id=message_id)

    async def update(self, ref: MessageRef, card: Card) -> None:
        url = await self._directory.service_url_for(ref.channel)
        activity = card_activity(self.render(card), summary=card.fallback)
        await self._counted(self._connector.update(url, ref.channel, ref.message_id, activity))

    async def user_by_email(self, email: str) -> Principal | None:
        row = await self._directory.by_email(email)
        if row is not None:
            return Principal(PLATFORM, row.user_id, row.email, row.display_name)
        for team_id, url in self._directory.teams():
            try:
                member = await self._connector.get_member(url, team_id, email)
            except TeamsNotFound:
                continue
            except TeamsConnectorError as exc:
                self._on_error(exc)
                continue
            try:
                principal = principal_from_member(member, str(member.id))
            except IdentityError:
                continue
            await self._directory.remember_user(principal, Seen(url, self._tenant_id, team_id, personal=False))
            return principal
        return None

    async def user_by_id(self, user_id: str) -> Principal | None:
        known = await self._directory.user(user_id)
        if known is None:
            return None
        row, _ = known
        return Principal(PLATFORM, row.user_id, row.email, row.display_name)


class TeamsUnreachable(ChatError):
    """Ackgate has no way to message this person in Teams (the app is not installed for them)."""

"""Authentication requests: ask Ackgate to verify that a user is who they say they are.

A requester names a target; Ackgate opens a transaction and reaches the target through PagerDuty
(an Events API v2 incident) and/or a chat DM, each carrying a single-use, expiring link to a page
where the target verifies or denies. Only ``sha256(token)`` is stored: the token lives in the link
alone, so neither the database nor a log line can replay it.

The transaction is written before anyone is contacted (a fast click must find it), and every state
change is a compare-and-set in storage, which is what makes the link single-use. Each audited change
goes through :meth:`bot.core.bus.MessageBus.commit`: its audit row commits in the change's own
transaction, and its side effects (:mod:`bot.core.auth_reactions`) run after the commit.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
import re
import secrets
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime, timedelta
from enum import StrEnum
from typing import Any, Protocol, cast

from bot.core import auth_cards, messages
from bot.core.auth_events import AuthDecided, AuthExpired, AuthPagedLate, AuthRequested
from bot.core.bus import MessageBus
from bot.core.clock import Clock
from bot.core.commands import RequestAuth
from bot.core.domain import AuthStatus, AuthTransaction, Principal, new_id
from bot.core.errors import AlreadyDecided, ChatError, ConfigError, IdentityError, PagerDutyError, UsageError
from bot.core.org_settings import EVENTS_STATUS, OrgSettings
from bot.core.pagerduty_event_bodies import SEVERITIES, AuthIncident, EventResult, Severity, status_after, trigger_body
from bot.core.ports import ChatNotifier, PagerDutyDirectory, Store
from bot.core.views import Card

log = logging.getLogger("ackgate.auth")

# secrets.token_urlsafe(32): 32 random bytes, 43 base64url characters. Anything else was never issued.
_TOKEN = re.compile(r"[A-Za-z0-9_-]{43}")
_EMAIL = re.compile(r"[^@\s]+@[^@\s]+\.[^@\s]+")
PAGERDUTY, CHAT = "pagerduty", "chat"
# How long the requester's answer waits for PagerDuty (directory lookup and Events API, retries
# included) before falling back to chat: with the Slack calls around it, the answer comes within 5 s.
PAGE_WAIT_SECONDS = 3.0


def target_subject(transaction_id: str) -> str:
    """The :class:`bot.core.ports.MessageStore` subject of the target's DM (the requester's is the id itself)."""
    return f"{transaction_id}:target"


def token_hash(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


class EventsSender(Protocol):
    """Sends one Events API v2 event; :class:`bot.adapters.pagerduty_events.EventsClient` is the real one.

    Raises a :class:`bot.core.errors.PagerDutyUnavailable` (429, 5xx, network, after its own retries) or
    another :class:`bot.core.errors.PagerDutyError` (PagerDuty refused the event; no retry can help).
    """

    async def send(self, body: Mapping[str, Any]) -> EventResult: ...


class PageState(StrEnum):
    ASK = "ask"  # pending: show Verify and Deny
    DONE = "done"  # this visit's decision was recorded
    INVALID = "invalid"  # malformed or unknown token
    EXPIRED = "expired"
    USED = "used"  # already verified or denied


@dataclass(frozen=True)
class AuthPage:
    """What the verification page shows; neutral of HTML."""

    state: PageState
    transaction_id: str = ""
    requester: str = ""
    target: str = ""
    message: str = ""
    context: str = ""
    expires_at: datetime | None = None
    status: AuthStatus | None = None  # the transaction's state, when there is one
    decided_at: datetime | None = None

    @classmethod
    def of(cls, state: PageState, tx: AuthTransaction) -> AuthPage:
        return cls(
            state=state,
            transaction_id=tx.id,
            requester=tx.requester.email,
            target=tx.target.email,
            message=tx.message,
            context=tx.context,
            expires_at=tx.expires_at,
            status=tx.status,
            decided_at=tx.decided_at,
        )


INVALID_PAGE = AuthPage(PageState.INVALID)


@dataclass(frozen=True)
class _Delivery:
    channels: tuple[str, ...]
    dedup_key: str | None
    pagerduty_problem: str  # why PagerDuty was wanted and not used
    chat_error: str

    @property
    def note(self) -> str:
        """What the requester is told about the route taken."""
        return (
            messages.auth_sent_by_chat(self.pagerduty_problem)
            if self.pagerduty_problem and CHAT in self.channels
            else ""
        )

    @property
    def failure(self) -> str:
        return "; ".join(p for p in (self.pagerduty_problem, self.chat_error) if p)


class AuthService:
    def __init__(
        self,
        *,
        store: Store,
        org: OrgSettings,
        events: EventsSender,
        notifiers: Mapping[str, ChatNotifier],
        bus: MessageBus,
        clock: Clock,
        public_url: str,
        source: str,
        link_ttl: timedelta,
        directory: PagerDutyDirectory | None = None,
        page_wait: float = PAGE_WAIT_SECONDS,
    ) -> None:
        self.directory = directory  # to tell whether the target is in PagerDuty at all
        self.page_wait = page_wait
        self._late: set[asyncio.Future[Any]] = set()
        self.store = store
        self.org = org
        self.events = events
        self.notifiers = notifiers
        self.bus = bus
        self.clock = clock
        self.public_url = public_url.rstrip("/")
        self.source = source
        self.link_ttl = link_ttl

    # --- sending ----------------------------------------------------------------------------

    async def request(self, requester: Principal, command: RequestAuth) -> Card:
        """Open a transaction and reach its target. Returns the requester's card.

        Raises ``UsageError`` for an unknown target and ``IdentityError`` when the requester's or
        the target's email is hidden; nothing is written in either case.
        """
        if not requester.email:
            raise IdentityError(messages.NO_EMAIL)
        notifier = self._notifier(requester.platform)
        target = await self._resolve(notifier, command.target)
        now = self.clock.now()
        token = secrets.token_urlsafe(32)
        tx = AuthTransaction(
            id=new_id("t"),
            requester=requester,
            target=target,
            message=command.message,
            status=AuthStatus.PENDING,
            created_at=now,
            expires_at=now + self.link_ttl,
            token_hash=token_hash(token),
            context=messages.auth_context(requester.platform, now),
        )
        await self.store.transactions.add(tx)
        link = f"{self.public_url}/auth/{token}"
        delivery = await self._deliver(tx, notifier=notifier, link=link)
        if not delivery.channels:
            tx = await self.store.transactions.update_delivery(
                tx.id, channels=delivery.channels, dedup_key=delivery.dedup_key, note=delivery.note
            )
            return await self._unreachable(tx, delivery)
        tx = await self.bus.commit(
            lambda audit: self.store.transactions.update_delivery(
                tx.id, channels=delivery.channels, dedup_key=delivery.dedup_key, note=delivery.note, audit=audit
            ),
            lambda sent: [AuthRequested(self.clock.now(), sent)],
        )
        card = auth_cards.requester_card(tx)
        # The command's own reply cannot be edited later, so the requester also gets a DM that can.
        try:
            await self.store.messages.add(tx.id, await notifier.send_to_user(requester, card))
        except ChatError:
            log.warning("could not DM the status of %s to its requester", tx.id, exc_info=True)
        return card

    def _notifier(self, platform: str) -> ChatNotifier:
        notifier = self.notifiers.get(platform)
        if notifier is None:
            raise ConfigError(f"Ackgate has no chat connection for {platform}; authentication requests need one.")
        return notifier

    async def _resolve(self, notifier: ChatNotifier, target: str) -> Principal:
        text = target.strip()
        if text.startswith("@") and len(text) > 1:
            found = await notifier.user_by_id(text[1:])
        elif _EMAIL.fullmatch(text):
            found = await notifier.user_by_email(text.lower())
        else:
            found = None
        if found is None:
            raise UsageError(messages.auth_unknown_target(text))
        if not found.email:
            raise IdentityError(messages.auth_target_no_email(found.name or text, found.platform))
        return found

    async def _deliver(self, tx: AuthTransaction, *, notifier: ChatNotifier, link: str) -> _Delivery:
        prefs = await self.org.prefs(tx.target.email)
        channels: list[str] = []
        dedup_key: str | None = None
        problem = ""
        if prefs.pagerduty:
            dedup_key, problem = await self._page_within_wait(tx, link=link)
            if dedup_key is not None:
                channels.append(PAGERDUTY)
        chat_error = ""
        # Chat whenever PagerDuty was not wanted or failed, and besides it when the target asked for both.
        if not channels or prefs.chat:
            try:
                ref = await notifier.send_to_user(tx.target, auth_cards.target_card(tx, link=link))
                await self.store.messages.add(target_subject(tx.id), ref)
                channels.append(CHAT)
            except ChatError as exc:
                log.warning("could not DM authentication request %s to its target", tx.id)
                chat_error = exc.message
        return _Delivery(tuple(channels), dedup_key, problem, chat_error)

    async def _page_within_wait(self, tx: AuthTransaction, *, link: str) -> tuple[str | None, str]:
        """:meth:`_page`, waited for at most ``page_wait`` seconds. Past that the requester is not
        kept waiting: the target is reached by chat now, and the page goes on in the background;
        if PagerDuty takes it late, :meth:`_paged_late` records the incident on the transaction."""
        task = asyncio.ensure_future(self._page(tx, link=link))
        try:
            return await asyncio.wait_for(asyncio.shield(task), timeout=self.page_wait)
        except TimeoutError:
            log.warning("PagerDuty did not answer within %.1f s for %s; falling back to chat", self.page_wait, tx.id)
            self._late.add(task)
            task.add_done_callback(lambda done: self._paged_late(tx.id, done))
            return None, messages.auth_pagerduty_slow(self.page_wait)

    def _paged_late(self, transaction_id: str, done: asyncio.Task[tuple[str | None, str]]) -> None:
        self._late.discard(done)
        if done.cancelled():
            return
        if done.exception() is not None:
            log.warning("late page of %s failed", transaction_id, exc_info=done.exception())
            return
        dedup_key, _ = done.result()
        if dedup_key is not None:
            recording = asyncio.ensure_future(self._record_late_page(transaction_id, dedup_key))
            self._late.add(recording)
            recording.add_done_callback(self._late.discard)

    async def _record_late_page(self, transaction_id: str, dedup_key: str) -> None:
        current = await self.store.transactions.get(transaction_id)
        if current is None:
            return
        channels = (*current.channels, PAGERDUTY) if PAGERDUTY not in current.channels else current.channels
        await self.bus.commit(
            lambda audit: self.store.transactions.update_delivery(
                transaction_id, channels=channels, dedup_key=dedup_key, note=current.note, audit=audit
            ),
            lambda paged: [AuthPagedLate(self.clock.now(), paged)],
        )
        log.info("PagerDuty took the page of %s late; its incident is recorded", transaction_id)

    async def close(self) -> None:
        """Stop pages still going on in the background (at shutdown)."""
        for task in list(self._late):
            task.cancel()
        for task in list(self._late):
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task

    async def _page(self, tx: AuthTransaction, *, link: str) -> tuple[str | None, str]:
        """Trigger the PagerDuty incident: its dedup key, or None and why PagerDuty was not used."""
        if not await self.org.pagerduty_enabled():
            return None, messages.AUTH_PAGERDUTY_OFF
        try:
            key = await self.org.integration_key()
        except ConfigError as exc:
            await self.org.record_status(EVENTS_STATUS, status_after(exc, self.clock.now()))
            return None, messages.auth_pagerduty_failed(exc.message)
        if key is None:
            return None, messages.AUTH_PAGERDUTY_NO_KEY
        if not await self._in_pagerduty(tx.target.email):
            return None, messages.auth_not_in_pagerduty(tx.target.email)
        body = trigger_body(await self._incident(tx, link), routing_key=key, at=self.clock.now())
        try:
            result = await self.events.send(body)
        except PagerDutyError as exc:
            # 400 (no retry) and 429/5xx/network after the client's bounded retries alike: fall back to chat
            log.warning("authentication request %s was not paged: %s", tx.id, exc.message)
            await self.org.record_status(EVENTS_STATUS, status_after(exc, self.clock.now()))
            return None, messages.auth_pagerduty_failed(exc.message)
        await self.org.record_status(EVENTS_STATUS, status_after(result, self.clock.now()))
        return result.dedup_key, ""

    async def _in_pagerduty(self, email: str) -> bool:
        """Whether a PagerDuty user has ``email``. Unknown when the REST API fails: then page anyway,
        since the Events API does not need it and the incident still reaches the on-call."""
        if self.directory is None:
            return True
        try:
            return await self.directory.user_by_email(email) is not None
        except PagerDutyError as exc:
            log.warning("could not look %s up in PagerDuty before paging: %s", email, exc.message)
            return True

    async def _incident(self, tx: AuthTransaction, link: str) -> AuthIncident:
        severity = await self.org.severity()
        return AuthIncident(
            transaction_id=tx.id,
            requester=tx.requester.email,
            user=tx.target.email,
            message=tx.message,
            context=tx.context,
            link=link,
            source=self.source,
            severity=cast(Severity, severity) if severity in SEVERITIES else "critical",
        )

    async def _unreachable(self, tx: AuthTransaction, delivery: _Delivery) -> Card:
        # Nobody holds the link, so the transaction ends now rather than waiting out its expiry.
        now = self.clock.now()
        tx = await self.bus.commit(
            lambda audit: self.store.transactions.decide(
                tx.id, expected=AuthStatus.PENDING, new=AuthStatus.EXPIRED, at=now, note=delivery.failure, audit=audit
            ),
            lambda ended: [AuthRequested(now, ended), AuthExpired(now, ended)],
        )
        return auth_cards.unreachable_card(tx, delivery.failure)

    # --- the link -----------------------------------------------------------------------------

    async def page(self, token: str) -> AuthPage:
        """What the link shows. Changes nothing, except marking a pending transaction past its expiry EXPIRED."""
        tx = await self._by_token(token)
        if tx is None:
            return INVALID_PAGE
        tx = await self._expire_if_due(tx)
        return AuthPage.of(_state_of(tx), tx)

    async def decide(self, token: str, *, verify: bool) -> AuthPage:
        """Record the target's answer, once. A second answer, an expired link or a bad token changes nothing."""
        tx = await self._by_token(token)
        if tx is None:
            return INVALID_PAGE
        tx = await self._expire_if_due(tx)
        if tx.status is not AuthStatus.PENDING:
            return AuthPage.of(_state_of(tx), tx)
        new = AuthStatus.VERIFIED if verify else AuthStatus.DENIED
        now = self.clock.now()
        pending_id = tx.id
        try:
            tx = await self.bus.commit(
                lambda audit: self.store.transactions.decide(
                    pending_id, expected=AuthStatus.PENDING, new=new, at=now, audit=audit
                ),
                lambda decided: [AuthDecided(now, decided)],
            )
        except AlreadyDecided:
            # Another click (a double submit, a second device) got there first.
            current = await self.store.transactions.get(tx.id)
            return AuthPage.of(_state_of(current or tx), current or tx)
        return AuthPage.of(PageState.DONE, tx)

    async def _by_token(self, token: str) -> AuthTransaction | None:
        if not _TOKEN.fullmatch(token):
            return None
        return await self.store.transactions.by_token_hash(token_hash(token))

    async def _expire_if_due(self, tx: AuthTransaction) -> AuthTransaction:
        if tx.status is not AuthStatus.PENDING or self.clock.now() < tx.expires_at:
            return tx
        expired = await self._expire(tx)
        return expired or await self.store.transactions.get(tx.id) or tx

    async def _expire(self, tx: AuthTransaction) -> AuthTransaction | None:
        """Expire a pending transaction and publish it; None when someone else decided it first."""
        now = self.clock.now()
        try:
            return await self.bus.commit(
                lambda audit: self.store.transactions.decide(
                    tx.id, expected=AuthStatus.PENDING, new=AuthStatus.EXPIRED, at=now, audit=audit
                ),
                lambda expired: [AuthExpired(now, expired)],
            )
        except AlreadyDecided:
            return None

    # --- the scheduler ------------------------------------------------------------------------

    async def expire_due(self) -> int:
        """Expire every PENDING transaction past its link's expiry; returns how many this call expired."""
        count = 0
        # Each pass leaves none of its batch pending (expired here or decided elsewhere), so this ends.
        while batch := await self.store.transactions.pending_expired(self.clock.now()):
            for tx in batch:
                if await self._expire(tx) is not None:
                    count += 1
        return count


def _state_of(tx: AuthTransaction) -> PageState:
    return {
        AuthStatus.PENDING: PageState.ASK,
        AuthStatus.EXPIRED: PageState.EXPIRED,
    }.get(tx.status, PageState.USED)

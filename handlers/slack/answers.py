"""The answers to recorded Slack commands: the inbox row each command gets under its Slack id, and
the delivery of its answer (response_url while valid, else DM) that marks the row answered.

Shared by the listeners in :mod:`handlers.slack.app` and the recovery pass in :mod:`handlers.slack.recovery`.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from datetime import timedelta
from typing import Any

from bot.core.clock import Clock
from bot.core.domain import Principal, ReceivedCommand
from bot.core.errors import StorageError
from bot.core.ports import ChatNotifier, CommandInbox
from bot.core.views import Card
from handlers.slack.blocks import render_card, render_notice
from handlers.slack.notifier import PLATFORM, post_response

Body = dict[str, Any]

RESPONSE_URL_LIFETIME = timedelta(minutes=30)  # Slack's; after it, answers go by DM


def command_key(trigger_id: str) -> str:
    return f"command:{trigger_id}"


def click_key(trigger_id: str) -> str:
    return f"click:{trigger_id}"


def submission_key(view: Body, trigger_id: str) -> str:
    """A form submission's id: its trigger id (new for each press of Submit), else the view's version."""
    if trigger_id:
        return f"view:{trigger_id}"
    return f"view:{view.get('id')}:{view.get('hash')}"


class Answerer:
    """Delivers the answer to a recorded command: on its response_url while Slack still takes it,
    else (or when that fails) by DM; then marks the row answered. Shared with the recovery pass."""

    def __init__(
        self,
        *,
        inbox: CommandInbox,
        notifier: ChatNotifier,
        clock: Clock,
        logger: logging.Logger,
        post: Callable[[str, Body], Awaitable[bool]] = post_response,
    ) -> None:
        self._inbox = inbox
        self._notifier = notifier
        self._clock = clock
        self._log = logger
        self._post = post
        self._notes: set[asyncio.Future[bool]] = set()

    async def record(self, command: ReceivedCommand) -> bool | None:
        """True for a new command, False for a duplicate, None when the database did not answer."""
        try:
            return await self._inbox.record(command)
        except StorageError:
            self._log.warning("Could not record a Slack command; the database did not answer", exc_info=True)
            return None

    async def answer(self, command: ReceivedCommand, card: Card, *, replace_original: bool = False) -> bool:
        fresh = self._clock.now() - command.received_at < RESPONSE_URL_LIFETIME
        delivered = False
        if command.response_url and fresh:
            message = {**render_card(card), "response_type": "ephemeral", "replace_original": replace_original}
            delivered = await self._post(command.response_url, message)
        if not delivered:
            delivered = await self.dm(command.user_id, card)
        if delivered:
            await self.done(command.key)
        return delivered

    async def post(self, url: str, message: Body) -> bool:
        return await self._post(url, message)

    def post_soon(self, url: str, text: str) -> None:
        """Post a short note on ``url`` without waiting for it (replacing the ack's "Checking…")."""
        if not url:
            return
        message = {**render_notice(text), "response_type": "ephemeral", "replace_original": True}
        task = asyncio.ensure_future(self._post(url, message))
        self._notes.add(task)
        task.add_done_callback(self._notes.discard)

    async def done(self, key: str) -> None:
        try:
            await self._inbox.answered(key, at=self._clock.now())
        except StorageError:
            # Harmless but for a second answer: the recovery pass will find it unanswered.
            self._log.warning("Could not mark a Slack command answered", exc_info=True)

    async def dm(self, user_id: str, card: Card) -> bool:
        # Only the user id matters to a DM; the email may be exactly what could not be found.
        recipient = Principal(platform=PLATFORM, user_id=user_id, email="")
        try:
            await self._notifier.send_to_user(recipient, card)
        except Exception:
            self._log.warning("Could not send a direct message to %s", user_id, exc_info=True)
            return False
        return True

"""One entry point for chat adapters: routes each parsed command to the use case that owns it.

Adapters call :meth:`CommandRouter.execute` for everything typed after ``/access`` and
:meth:`CommandRouter.decide` for Approve/Deny clicks; they never choose a service themselves.
Commands are dispatched by one map of their type, as events are by :mod:`bot.core.reactions`.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

from bot.core import messages
from bot.core.access import AccessService
from bot.core.commands import (
    Admin,
    Command,
    Extend,
    Help,
    ListMine,
    OpenForm,
    RequestAccess,
    RequestAuth,
    Revoke,
    SetPrefs,
)
from bot.core.domain import Principal
from bot.core.errors import StorageError, UpstreamError, UsageError, UserError
from bot.core.views import Card, RequestForm

AuthHandler = Callable[[Principal, RequestAuth], Awaitable[Card]]
AdminHandler = Callable[[Principal, Admin], Awaitable[Card]]
PrefsHandler = Callable[[Principal, SetPrefs], Awaitable[Card]]
KeyHandler = Callable[[Principal, str], Awaitable[Card]]
T = TypeVar("T")
Handler = Callable[[Principal, Any], Awaitable[Card]]


async def _not_configured(_actor: Principal, _command: object) -> Card:
    raise UsageError(messages.NOT_CONFIGURED)


class CommandRouter:
    def __init__(
        self,
        access: AccessService,
        *,
        auth: AuthHandler | None = None,
        admin: AdminHandler | None = None,
        prefs: PrefsHandler | None = None,
        set_key: KeyHandler | None = None,
    ) -> None:
        self.access = access
        grants = access.grants

        async def help_card(_actor: Principal, _command: object) -> Card:
            return access.help()

        self._handlers: dict[type, Handler] = {
            RequestAccess: lambda actor, c: access.request_access(actor, c),
            Revoke: lambda actor, c: grants.revoke(c.grant_id, actor=actor),
            Extend: lambda actor, c: grants.extend(c.grant_id, c.duration, actor=actor),
            ListMine: lambda actor, _c: grants.list_for(actor),
            Help: help_card,
            OpenForm: help_card,
            RequestAuth: auth or _not_configured,
            Admin: admin or _not_configured,
            SetPrefs: prefs or _not_configured,
        }
        self._set_key = set_key

    async def execute(self, actor: Principal, command: Command) -> Card:
        handler = self._handlers.get(type(command))
        if handler is None:
            raise UsageError(messages.usage_for("help"))
        return await handler(actor, command)

    async def decide(self, request_id: str, *, actor: Principal, approve: bool) -> Card:
        return await self.access.decide(request_id, actor=actor, approve=approve)

    def request_form(self) -> RequestForm:
        return self.access.request_form()

    async def prefilled_form(self, actor: Principal) -> RequestForm:
        return await self.access.prefilled_form(actor)

    async def set_key(self, actor: Principal, text: str) -> Card:
        """The integration key pasted into the admin form."""
        if self._set_key is None:
            raise UsageError(messages.NOT_CONFIGURED)
        return await self._set_key(actor, text)


async def shown(work: Awaitable[T], *, instead: Callable[[str], T], log: logging.Logger, platform: str) -> T:
    """Run a use case for a chat adapter: its answer, or ``instead(sentence)`` with the sentence the user
    should see: a ``UserError``/``UpstreamError``'s own, else the storage or generic one (logged with its
    traceback; no stack trace ever reaches a user)."""
    try:
        return await work
    except (UserError, UpstreamError) as exc:
        return instead(exc.message)
    except StorageError:
        log.exception("Storage failed while handling a %s request", platform)
        return instead(messages.STORAGE_DOWN)
    except Exception:
        log.exception("Unexpected failure while handling a %s request", platform)
        return instead(messages.GENERIC_FAILURE)

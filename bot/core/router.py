"""One entry point for chat adapters: routes each parsed command to the use case that owns it.

Adapters call :meth:`CommandRouter.execute` for everything typed after ``/access`` and
:meth:`CommandRouter.decide` for Approve/Deny clicks; they never choose a service themselves.
Commands are dispatched by one map of their type, as events are by :mod:`bot.core.reactions`.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

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
from bot.core.errors import UsageError
from bot.core.views import Card, RequestForm

AuthHandler = Callable[[Principal, RequestAuth], Awaitable[Card]]
AdminHandler = Callable[[Principal, Admin], Awaitable[Card]]
PrefsHandler = Callable[[Principal, SetPrefs], Awaitable[Card]]
KeyHandler = Callable[[Principal, str], Awaitable[Card]]
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
            RequestAccess: access.request_access,
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

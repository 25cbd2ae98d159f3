"""One entry point for chat adapters: routes each parsed command to the use case that owns it.

Adapters call :meth:`CommandRouter.execute` for everything typed after ``/access`` and
:meth:`CommandRouter.decide` for Approve/Deny clicks; they never choose a service themselves.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable

from bot.access import AccessService
from bot.commands import Admin, Command, RequestAuth, SetPrefs
from bot.domain import Principal
from bot.errors import UsageError
from bot.views import Card, RequestForm

AuthHandler = Callable[[Principal, RequestAuth], Awaitable[Card]]
AdminHandler = Callable[[Principal, Admin | SetPrefs], Awaitable[Card]]
KeyHandler = Callable[[Principal, str], Awaitable[Card]]

NOT_CONFIGURED = "That feature is not set up on this Ackgate. Ask your Ackgate admins."


class CommandRouter:
    def __init__(
        self,
        access: AccessService,
        *,
        auth: AuthHandler | None = None,
        admin: AdminHandler | None = None,
        set_key: KeyHandler | None = None,
    ) -> None:
        self.access = access
        self._auth = auth
        self._admin = admin
        self._set_key = set_key

    async def execute(self, actor: Principal, command: Command) -> Card:
        if isinstance(command, RequestAuth):
            if self._auth is None:
                raise UsageError(NOT_CONFIGURED)
            return await self._auth(actor, command)
        if isinstance(command, Admin | SetPrefs):
            if self._admin is None:
                raise UsageError(NOT_CONFIGURED)
            return await self._admin(actor, command)
        return await self.access.execute(actor, command)

    async def decide(self, request_id: str, *, actor: Principal, approve: bool) -> Card:
        return await self.access.decide(request_id, actor=actor, approve=approve)

    def request_form(self) -> RequestForm:
        return self.access.request_form()

    async def prefilled_form(self, actor: Principal) -> RequestForm:
        return await self.access.prefilled_form(actor)

    async def set_key(self, actor: Principal, text: str) -> Card:
        """The integration key pasted into the admin form."""
        if self._set_key is None:
            raise UsageError(NOT_CONFIGURED)
        return await self._set_key(actor, text)

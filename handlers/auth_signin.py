"""Sign-in on the authentication pages: start an OpenID Connect attempt for one link, and finish it
at ``GET /auth/callback``. The pages (``handlers/web.py``) decide what the visitor may do with the
identity that comes out; this module only proves it.

An attempt is single-use across replicas: the callback claims ``sha256(state)`` in the store's
shared first-time keys before it redeems the code, so a replayed callback (the same cookie and
state, even on another replica) changes nothing.
"""

from __future__ import annotations

import hashlib
import hmac
import logging
from dataclasses import dataclass
from typing import Protocol

import httpx
from aiohttp import web

from bot.core import messages
from bot.core.clock import Clock
from bot.runtime.config import Settings
from handlers.auth_session import PendingSignIn, SessionCookies, SignedIn
from handlers.oidc import Authorization, OidcClient, OidcConfig, ProviderUnavailable, SignInFailed

log = logging.getLogger("ackgate.web.signin")

CALLBACK_PATH = "/auth/callback"
_MAX_PARAM = 4096  # a code or a state; providers send a few hundred characters at most


class FirstTime(Protocol):
    """A key shared by every replica: True the first time it is offered, False ever after."""

    async def first_time(self, key: str) -> bool: ...


@dataclass(frozen=True)
class Finished:
    """How a callback ended: a link and who signed in, or the status and sentence of the refusal."""

    link_token: str = ""
    who: SignedIn | None = None
    status: int = 200
    problem: str = ""


class SignIn:
    def __init__(self, client: OidcClient, *, cookies: SessionCookies, once: FirstTime) -> None:
        self.client = client
        self.cookies = cookies
        self._once = once

    async def begin(self, link_token: str, *, login_hint: str, prompt: str = "") -> web.Response:
        """A 303 to the provider, with the attempt sealed in this browser's cookie.

        Raises :class:`ProviderUnavailable` when the provider's discovery can't be had.
        """
        attempt = Authorization.new()
        url = await self.client.authorize_url(attempt, login_hint=login_hint, prompt=prompt)
        response = web.Response(status=303, headers={"Location": url, "Cache-Control": "no-store"})
        self.cookies.set_pending(response, PendingSignIn(link_token, attempt, prompt))
        return response

    async def finish(self, request: web.Request) -> Finished:
        """Check the callback against this browser's attempt, claim it, redeem the code, validate the ID token."""
        query = request.query
        pending = self.cookies.pending(request)
        if "error" in query:
            log.info("sign-in ended at the provider without an identity")
            return Finished(status=400, problem=messages.AUTH_PAGE_SIGN_IN_CANCELLED)
        state, code = query.get("state", ""), query.get("code", "")
        if (
            pending is None
            or not state
            or len(state) > _MAX_PARAM
            or not hmac.compare_digest(state.encode(), pending.attempt.state.encode())
        ):
            log.info("sign-in callback refused: no matching attempt in this browser")
            return Finished(status=400, problem=messages.AUTH_PAGE_SIGN_IN_STALE)
        if not code or len(code) > _MAX_PARAM:
            log.info("sign-in callback refused: no code")
            return Finished(status=400, problem=messages.AUTH_PAGE_SIGN_IN_FAILED)
        if not await self._once.first_time("oidc-state:" + hashlib.sha256(state.encode()).hexdigest()):
            log.info("sign-in callback refused: that attempt was already used")
            return Finished(status=400, problem=messages.AUTH_PAGE_SIGN_IN_STALE)
        try:
            identity = await self.client.identity(code, pending.attempt)
        except SignInFailed as exc:
            log.warning("sign-in refused: %s", exc)
            return Finished(status=403, problem=messages.AUTH_PAGE_SIGN_IN_FAILED)
        except ProviderUnavailable as exc:
            log.warning("sign-in provider unavailable: %s", exc)
            return Finished(status=503, problem=messages.AUTH_PAGE_PROVIDER_DOWN)
        log.info("sign-in completed for an authentication link")
        return Finished(link_token=pending.link_token, who=SignedIn(identity.email, identity.email_verified))


def build_signin(settings: Settings, *, http: httpx.AsyncClient, clock: Clock, once: FirstTime) -> SignIn | None:
    """The sign-in for ``settings``' provider, or None when no ``ACKGATE_OIDC_ISSUER`` is set."""
    if settings.oidc_issuer is None or settings.oidc_client_id is None or settings.secret_key is None:
        return None
    config = OidcConfig(
        issuer=settings.oidc_issuer,
        client_id=settings.oidc_client_id,
        client_secret=settings.oidc_client_secret,
        redirect_uri=settings.public_url.rstrip("/") + CALLBACK_PATH,
    )
    cookies = SessionCookies(settings.secret_key, clock=clock, secure=settings.public_url.startswith("https://"))
    return SignIn(OidcClient(config, http=http, clock=clock), cookies=cookies, once=once)

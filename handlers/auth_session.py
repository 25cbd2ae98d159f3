"""The browser's side of a sign-in: two sealed cookies, nothing kept in memory, so any replica serves.

- ``ackgate_signin`` lives between the redirect to the provider and the callback: the attempt's
  state, nonce and PKCE verifier, and the link token (so the callback knows where to go back,
  without the token ever travelling to the provider). It is single-use (its state is claimed in
  the shared store at the callback) and lives :data:`SIGNIN_SECONDS`.
- ``ackgate_identity`` says who signed in, for one link only (it carries the link's hash), for
  :data:`IDENTITY_SECONDS`.

Both are Fernet tokens (AES-128-CBC and HMAC-SHA256, with their own time) under a key derived by
HKDF from ``ACKGATE_SECRET_KEY``, so they can be neither read nor forged, and both are HttpOnly,
SameSite=Lax (a form posted from another site carries neither), Path=/auth and Secure when
Ackgate's public URL is https.
"""

from __future__ import annotations

import base64
import json
from dataclasses import dataclass

from aiohttp import web
from cryptography.fernet import Fernet, InvalidToken
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.kdf.hkdf import HKDF
from pydantic import SecretStr

from bot.core.auth import token_hash
from bot.core.clock import Clock
from handlers.oidc import Authorization

SIGNIN_COOKIE = "ackgate_signin"
IDENTITY_COOKIE = "ackgate_identity"
SIGNIN_SECONDS = 600
IDENTITY_SECONDS = 900
_PATH = "/auth"
_MAX_COOKIE = 4096
_SALT = b"ackgate/auth-session"
_INFO = b"ackgate auth-page sign-in cookies v1"


@dataclass(frozen=True)
class PendingSignIn:
    link_token: str
    attempt: Authorization
    prompt: str = ""


@dataclass(frozen=True)
class SignedIn:
    email: str
    email_verified: bool


class SessionCookies:
    def __init__(self, secret: SecretStr, *, clock: Clock, secure: bool) -> None:
        key = HKDF(algorithm=hashes.SHA256(), length=32, salt=_SALT, info=_INFO).derive(
            secret.get_secret_value().encode()
        )
        self._fernet = Fernet(base64.urlsafe_b64encode(key))
        self._clock = clock
        self._secure = secure

    def _now(self) -> int:
        return int(self._clock.now().timestamp())

    def _seal(self, kind: str, data: dict[str, object]) -> str:
        return self._fernet.encrypt_at_time(json.dumps({"kind": kind, **data}).encode(), self._now()).decode("ascii")

    def _open(self, request: web.Request, name: str, *, kind: str, ttl: int) -> dict[str, object] | None:
        value = request.cookies.get(name)
        if not value or len(value) > _MAX_COOKIE:
            return None
        try:
            plain = self._fernet.decrypt_at_time(value.encode("ascii"), ttl, self._now())
            data = json.loads(plain)
        except (InvalidToken, ValueError, UnicodeError):
            return None
        if not isinstance(data, dict) or data.get("kind") != kind:
            return None
        return data

    def _set(self, response: web.StreamResponse, name: str, value: str, max_age: int) -> None:
        response.set_cookie(
            name, value, max_age=max_age, path=_PATH, httponly=True, secure=self._secure, samesite="Lax"
        )

    def forget(self, response: web.StreamResponse, name: str) -> None:
        response.del_cookie(name, path=_PATH, secure=self._secure, httponly=True, samesite="Lax")

    # --- between the redirect and the callback ---------------------------------------------------

    def set_pending(self, response: web.StreamResponse, pending: PendingSignIn) -> None:
        a = pending.attempt
        sealed = self._seal(
            "signin",
            {
                "link": pending.link_token,
                "state": a.state,
                "nonce": a.nonce,
                "verifier": a.code_verifier,
                "prompt": pending.prompt,
            },
        )
        self._set(response, SIGNIN_COOKIE, sealed, SIGNIN_SECONDS)

    def pending(self, request: web.Request) -> PendingSignIn | None:
        data = self._open(request, SIGNIN_COOKIE, kind="signin", ttl=SIGNIN_SECONDS)
        if data is None:
            return None
        fields = [data.get(k) for k in ("link", "state", "nonce", "verifier", "prompt")]
        if not all(isinstance(v, str) for v in fields):
            return None
        link, state, nonce, verifier, prompt = (str(v) for v in fields)
        return PendingSignIn(link, Authorization(state, nonce, verifier), prompt)

    # --- after the callback ---------------------------------------------------------------------

    def set_identity(self, response: web.StreamResponse, link_token: str, who: SignedIn) -> None:
        sealed = self._seal(
            "identity", {"link": token_hash(link_token), "email": who.email, "verified": who.email_verified}
        )
        self._set(response, IDENTITY_COOKIE, sealed, IDENTITY_SECONDS)

    def identity(self, request: web.Request, link_token: str) -> SignedIn | None:
        """Who signed in in this browser for this link, if anyone did lately."""
        data = self._open(request, IDENTITY_COOKIE, kind="identity", ttl=IDENTITY_SECONDS)
        if data is None or data.get("link") != token_hash(link_token):
            return None
        email, verified = data.get("email"), data.get("verified")
        if not isinstance(email, str) or not isinstance(verified, bool):
            return None
        return SignedIn(email, verified)

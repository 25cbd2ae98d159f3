"""An OpenID Connect provider simulator: a real aiohttp server on 127.0.0.1, for tests and the demo.

It serves what a relying party needs from Okta, Entra ID, Google or Keycloak:

- ``GET /.well-known/openid-configuration``: discovery, naming the endpoints below;
- ``GET /jwks``: the public half of a test RSA key (made fresh for each simulator);
- ``GET /authorize``: checks the client, the redirect URI, ``response_type=code`` and the PKCE
  challenge, then signs in :attr:`user` at once (no login form) and redirects back with a code and
  the state;
- ``POST /token``: checks the client's secret (Basic or in the form), the code (single-use, short-
  lived), the redirect URI and the PKCE verifier, and answers with an ID token signed RS256.

Tests steer it: :meth:`sign_in_as` picks who signs in, :meth:`tamper_next` alters the next ID token
(its claims, or signing it with a key the JWKS does not hold), ``refuse_next`` makes the next
authorize end with ``error=access_denied``. ``authorize_requests`` and ``token_requests`` keep what
arrived, so a test can check what Ackgate sent.
"""

from __future__ import annotations

import base64
import hashlib
import secrets
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import unquote, urlencode

from aiohttp import web
from joserfc import jwt
from joserfc.jwk import KeySet, RSAKey

from bot.core.clock import Clock, SystemClock
from bot.runtime.simulators.server import LoopbackServer

__all__ = ["OidcSimulator", "SimUser"]

CODE_SECONDS = 60
ID_TOKEN_SECONDS = 300
KEY_ID = "sim-key-1"


@dataclass(frozen=True)
class SimUser:
    email: str
    email_verified: bool = True
    subject: str = ""

    @property
    def sub(self) -> str:
        return self.subject or "sub-" + hashlib.sha256(self.email.encode()).hexdigest()[:16]


@dataclass
class _Code:
    client_id: str
    redirect_uri: str
    nonce: str
    challenge: str
    user: SimUser
    issued_at: float
    used: bool = False


@dataclass
class _Tamper:
    claims: dict[str, Any] = field(default_factory=dict)
    drop: tuple[str, ...] = ()
    foreign_key: bool = False


def _new_key(kid: str) -> RSAKey:
    return RSAKey.generate_key(2048, parameters={"kid": kid, "use": "sig", "alg": "RS256"}, private=True)


def _s256(verifier: str) -> str:
    return base64.urlsafe_b64encode(hashlib.sha256(verifier.encode()).digest()).rstrip(b"=").decode("ascii")


class OidcSimulator(LoopbackServer):
    label = "OpenID Connect simulator"

    def __init__(
        self,
        *,
        client_id: str = "ackgate",
        client_secret: str = "sim-client-secret",  # noqa: S107 - the simulator's own
        redirect_uris: tuple[str, ...] = (),
        clock: Clock | None = None,
        host: str = "127.0.0.1",
        port: int = 0,
    ) -> None:
        super().__init__(host=host, port=port)
        self.client_id = client_id
        self.client_secret = client_secret
        self.redirect_uris = redirect_uris  # empty: any redirect URI is accepted
        self.clock = clock or SystemClock()
        self.user = SimUser("bob@example.com")
        self.refuse_next = False
        self.authorize_requests: list[dict[str, str]] = []
        self.token_requests: list[dict[str, str]] = []
        self.id_tokens: list[str] = []
        self._key = _new_key(KEY_ID)
        self._codes: dict[str, _Code] = {}
        self._tamper: _Tamper | None = None

    @property
    def issuer(self) -> str:
        return self.root_url

    def sign_in_as(self, email: str, *, verified: bool = True) -> None:
        """Who the next authorize signs in."""
        self.user = SimUser(email, verified)

    def tamper_next(
        self, *, claims: dict[str, Any] | None = None, drop: tuple[str, ...] = (), foreign_key: bool = False
    ) -> None:
        """Alter the next ID token: override or ``drop`` claims, or sign it with a key not in the JWKS."""
        self._tamper = _Tamper(dict(claims or {}), drop, foreign_key)

    def _now(self) -> int:
        return int(self.clock.now().timestamp())

    def build_app(self) -> web.Application:
        app = web.Application()
        app.router.add_get("/.well-known/openid-configuration", self._discovery)
        app.router.add_get("/jwks", self._jwks)
        app.router.add_get("/authorize", self._authorize)
        app.router.add_post("/token", self._token)
        return app

    async def _discovery(self, request: web.Request) -> web.Response:
        root = self.root_url
        return web.json_response(
            {
                "issuer": root,
                "authorization_endpoint": f"{root}/authorize",
                "token_endpoint": f"{root}/token",
                "jwks_uri": f"{root}/jwks",
                "response_types_supported": ["code"],
                "subject_types_supported": ["public"],
                "id_token_signing_alg_values_supported": ["RS256"],
                "scopes_supported": ["openid", "email"],
                "token_endpoint_auth_methods_supported": ["client_secret_basic", "client_secret_post"],
                "code_challenge_methods_supported": ["S256"],
                "claims_supported": ["sub", "email", "email_verified"],
            }
        )

    async def _jwks(self, request: web.Request) -> web.Response:
        return web.json_response(KeySet([self._key]).as_dict(private=False))

    async def _authorize(self, request: web.Request) -> web.Response:
        q = dict(request.query)
        self.authorize_requests.append(q)
        redirect_uri = q.get("redirect_uri", "")
        if q.get("client_id") != self.client_id or not redirect_uri.startswith(("http://", "https://")):
            return web.Response(status=400, text="unknown client or redirect_uri")
        if self.redirect_uris and redirect_uri not in self.redirect_uris:
            return web.Response(status=400, text="redirect_uri is not registered")
        back: dict[str, str] = {"state": q.get("state", "")}
        if self.refuse_next:
            self.refuse_next = False
            back["error"] = "access_denied"
        elif (
            q.get("response_type") != "code"
            or "openid" not in q.get("scope", "").split()
            or q.get("code_challenge_method") != "S256"
            or not q.get("code_challenge")
        ):
            back["error"] = "invalid_request"
        else:
            code = secrets.token_urlsafe(24)
            self._codes[code] = _Code(
                self.client_id, redirect_uri, q.get("nonce", ""), q["code_challenge"], self.user, self._now()
            )
            back["code"] = code
        return web.Response(status=302, headers={"Location": f"{redirect_uri}?{urlencode(back)}"})

    def _client_ok(self, request: web.Request, form: dict[str, str]) -> bool:
        header = request.headers.get("Authorization", "")
        if header.startswith("Basic "):
            try:
                raw = base64.b64decode(header[6:], validate=True).decode()
            except ValueError:
                return False
            client_id, _, secret = raw.partition(":")
            return unquote(client_id) == self.client_id and unquote(secret) == self.client_secret
        return form.get("client_id") == self.client_id and form.get("client_secret") == self.client_secret

    async def _token(self, request: web.Request) -> web.Response:
        form = {k: str(v) for k, v in (await request.post()).items()}
        self.token_requests.append(form)
        if not self._client_ok(request, form):
            return web.json_response({"error": "invalid_client"}, status=401)
        grant = self._codes.get(form.get("code", ""))
        if (
            form.get("grant_type") != "authorization_code"
            or grant is None
            or grant.used
            or self._now() - grant.issued_at > CODE_SECONDS
            or grant.redirect_uri != form.get("redirect_uri")
            or _s256(form.get("code_verifier", "")) != grant.challenge
        ):
            return web.json_response({"error": "invalid_grant"}, status=400)
        grant.used = True
        return web.json_response(
            {
                "access_token": secrets.token_urlsafe(24),
                "token_type": "Bearer",
                "expires_in": ID_TOKEN_SECONDS,
                "id_token": self._id_token(grant),
            },
            headers={"Cache-Control": "no-store"},
        )

    def _id_token(self, grant: _Code) -> str:
        now = self._now()
        claims: dict[str, Any] = {
            "iss": self.issuer,
            "sub": grant.user.sub,
            "aud": grant.client_id,
            "iat": now,
            "exp": now + ID_TOKEN_SECONDS,
            "auth_time": now,
            "nonce": grant.nonce,
            "email": grant.user.email,
            "email_verified": grant.user.email_verified,
        }
        key = self._key
        tamper, self._tamper = self._tamper, None
        if tamper is not None:
            claims.update(tamper.claims)
            for name in tamper.drop:
                claims.pop(name, None)
            if tamper.foreign_key:
                key = _new_key(KEY_ID)  # the same key id, another key: a forgery
        token = jwt.encode({"alg": "RS256", "kid": KEY_ID, "typ": "JWT"}, claims, key)
        self.id_tokens.append(token)
        return token

"""An OpenID Connect relying party for the authentication pages: the authorization code flow with
PKCE, a ``state`` and a ``nonce``, against any provider that publishes discovery (Okta, Entra ID,
Google, Keycloak, …).

Discovery (``<issuer>/.well-known/openid-configuration``) and the JWKS are fetched on first use and
kept; the keys are fetched again once when a token names a key id not among them (the provider
rotated its keys). The ID token's signature is checked by joserfc against those keys, with the
algorithms the provider announces (never ``none``, never a shared-secret HMAC), and its claims by
authlib's ``CodeIDToken``: issuer, audience, expiry, issued-at, nonce, ``azp`` and ``at_hash``.
Ackgate then reads ``email`` and ``email_verified`` from it (or, from Entra ID, which sends no
``email_verified`` for work accounts, the optional ``xms_edov`` claim).

Nothing here logs a token, a code or a verifier; :class:`SignInFailed` carries a short reason
meant for one log line, never for the visitor.
"""

from __future__ import annotations

import base64
import secrets
from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any
from urllib.parse import quote, urlencode

import httpx
from pydantic import SecretStr

from bot.core.clock import Clock
from bot.core.json_limits import MalformedJson, loads_bounded

if TYPE_CHECKING:
    from joserfc.jwk import KeySet

# authlib and joserfc are imported on the first sign-in, not at start-up: most deployments
# configure no provider, and the two are a tenth of the server's import time.

DISCOVERY_PATH = "/.well-known/openid-configuration"
SCOPES = "openid email"
LEEWAY_SECONDS = 60  # clock skew tolerated between Ackgate and the provider
_MAX_BODY = 256 * 1024  # a discovery document, a key set or a token answer; far more than any provider sends
TIMEOUT_SECONDS = 5.0  # each call to the provider; the visitor waits on it
_ASYMMETRIC = ("RS256", "RS384", "RS512", "PS256", "PS384", "PS512", "ES256", "ES384", "ES512", "EdDSA")


class ProviderUnavailable(Exception):
    """The provider could not be reached or answered with an error page (network, 5xx, a bad document)."""


class SignInFailed(Exception):
    """The provider's answer does not prove who signed in: a refused code, a bad or unverifiable ID token."""


@dataclass(frozen=True)
class OidcConfig:
    issuer: str
    client_id: str
    client_secret: SecretStr | None
    redirect_uri: str


@dataclass(frozen=True)
class Identity:
    """Who signed in, as the provider vouches in a valid ID token."""

    subject: str
    email: str
    email_verified: bool


@dataclass(frozen=True)
class Authorization:
    """One sign-in attempt's secrets, kept by the browser (sealed) between the redirect and the callback."""

    state: str
    nonce: str
    code_verifier: str

    @classmethod
    def new(cls) -> Authorization:
        # 32 random bytes each; a verifier of 43 characters is within RFC 7636's 43..128
        return cls(secrets.token_urlsafe(32), secrets.token_urlsafe(32), secrets.token_urlsafe(32))


def _true(value: object) -> bool:
    # A JSON boolean as the spec says; a few providers send the string "true".
    return value is True or (isinstance(value, str) and value.lower() == "true")


def email_verified(claims: Mapping[str, Any]) -> bool:
    """``email_verified``; when a token has none, Entra ID's ``xms_edov`` (the email's domain is
    verified by the tenant), since Entra ID never sends ``email_verified`` for work accounts."""
    if "email_verified" in claims:
        return _true(claims["email_verified"])
    return claims.get("xms_edov") is True


class OidcClient:
    def __init__(self, config: OidcConfig, *, http: httpx.AsyncClient, clock: Clock) -> None:
        self.config = config
        self._http = http
        self._clock = clock
        self._metadata: dict[str, Any] | None = None
        self._jwks: dict[str, Any] | None = None

    async def _get_json(self, url: str) -> dict[str, Any]:
        try:
            response = await self._http.get(url, headers={"Accept": "application/json"}, timeout=TIMEOUT_SECONDS)
        except httpx.HTTPError as exc:
            raise ProviderUnavailable(f"{type(exc).__name__} fetching {url}") from exc
        if response.status_code != 200:
            raise ProviderUnavailable(f"HTTP {response.status_code} from {url}")
        return self._json(response, what=url, failure=ProviderUnavailable)

    @staticmethod
    def _json(response: httpx.Response, *, what: str, failure: type[Exception]) -> dict[str, Any]:
        if len(response.content) > _MAX_BODY:
            raise failure(f"an oversized answer from {what}")
        try:
            data = loads_bounded(response.content.decode("utf-8"))
        except (MalformedJson, UnicodeDecodeError) as exc:
            raise failure(f"no JSON from {what}") from exc
        if not isinstance(data, dict):
            raise failure(f"no JSON object from {what}")
        return data

    async def metadata(self) -> dict[str, Any]:
        """The provider's discovery document, fetched once and checked against the configured issuer."""
        if self._metadata is None:
            issuer = self.config.issuer.rstrip("/")
            data = await self._get_json(issuer + DISCOVERY_PATH)
            if str(data.get("issuer", "")).rstrip("/") != issuer:
                raise ProviderUnavailable("the discovery document names another issuer")
            for name in ("authorization_endpoint", "token_endpoint", "jwks_uri"):
                if not isinstance(data.get(name), str) or not str(data[name]).startswith(("https://", "http://")):
                    raise ProviderUnavailable(f"the discovery document has no {name}")
            self._metadata = data
        return self._metadata

    async def _keys(self, *, refresh: bool = False) -> KeySet:
        from joserfc.errors import JoseError
        from joserfc.jwk import KeySet

        if self._jwks is None or refresh:
            self._jwks = await self._get_json(str((await self.metadata())["jwks_uri"]))
        try:
            return KeySet.import_key_set(self._jwks)  # type: ignore[arg-type]
        except (JoseError, ValueError, KeyError, TypeError) as exc:
            raise ProviderUnavailable("the provider's key set cannot be read") from exc

    async def authorize_url(self, attempt: Authorization, *, login_hint: str = "", prompt: str = "") -> str:
        """Where to send the browser: the provider's sign-in with this attempt's state, nonce and PKCE challenge."""
        from authlib.oauth2.rfc7636 import create_s256_code_challenge

        metadata = await self.metadata()
        params = {
            "response_type": "code",
            "client_id": self.config.client_id,
            "redirect_uri": self.config.redirect_uri,
            "scope": SCOPES,
            "state": attempt.state,
            "nonce": attempt.nonce,
            "code_challenge": create_s256_code_challenge(attempt.code_verifier),  # type: ignore[no-untyped-call]
            "code_challenge_method": "S256",
        }
        if login_hint:
            params["login_hint"] = login_hint
        if prompt:
            params["prompt"] = prompt
        endpoint = str(metadata["authorization_endpoint"])
        return endpoint + ("&" if "?" in endpoint else "?") + urlencode(params)

    async def identity(self, code: str, attempt: Authorization) -> Identity:
        """Redeem ``code`` and return who the valid ID token says signed in.

        Raises :class:`SignInFailed` when the token endpoint refuses or the ID token does not hold
        up, and :class:`ProviderUnavailable` when the provider can't be reached.
        """
        tokens = await self._redeem(code, attempt)
        id_token = tokens.get("id_token")
        if not isinstance(id_token, str) or not id_token:
            raise SignInFailed("the token answer has no id_token")
        claims = await self._validated(id_token, attempt, access_token=tokens.get("access_token"))
        email = claims.get("email")
        subject = claims.get("sub")
        if not isinstance(email, str) or not email or not isinstance(subject, str):
            raise SignInFailed("the ID token carries no email")
        return Identity(subject=subject, email=email, email_verified=email_verified(claims))

    async def _redeem(self, code: str, attempt: Authorization) -> dict[str, Any]:
        metadata = await self.metadata()
        form = {
            "grant_type": "authorization_code",
            "code": code,
            "redirect_uri": self.config.redirect_uri,
            "code_verifier": attempt.code_verifier,
        }
        headers = {"Accept": "application/json"}
        secret = self.config.client_secret
        methods = metadata.get("token_endpoint_auth_methods_supported") or ["client_secret_basic"]
        if secret is None:
            form["client_id"] = self.config.client_id  # a public client: PKCE is its proof
        elif "client_secret_basic" in methods:
            # RFC 6749 §2.3.1: both parts form-encoded before they go into the Basic header
            pair = f"{quote(self.config.client_id, safe='')}:{quote(secret.get_secret_value(), safe='')}"
            headers["Authorization"] = "Basic " + base64.b64encode(pair.encode()).decode("ascii")
        else:
            form["client_id"] = self.config.client_id
            form["client_secret"] = secret.get_secret_value()
        try:
            response = await self._http.post(
                str(metadata["token_endpoint"]), data=form, headers=headers, timeout=TIMEOUT_SECONDS
            )
        except httpx.HTTPError as exc:
            raise ProviderUnavailable(f"{type(exc).__name__} at the token endpoint") from exc
        if response.status_code >= 500:
            raise ProviderUnavailable(f"HTTP {response.status_code} from the token endpoint")
        if response.status_code != 200:
            raise SignInFailed(f"the token endpoint refused the code (HTTP {response.status_code})")
        return self._json(response, what="the token endpoint", failure=SignInFailed)

    async def _validated(self, id_token: str, attempt: Authorization, *, access_token: object) -> Mapping[str, Any]:
        from authlib.oidc.core import CodeIDToken
        from joserfc import jwt
        from joserfc.errors import InvalidKeyIdError, JoseError

        metadata = await self.metadata()
        offered = metadata.get("id_token_signing_alg_values_supported") or ["RS256"]
        algorithms = [alg for alg in offered if alg in _ASYMMETRIC] or ["RS256"]
        try:
            try:
                token = jwt.decode(id_token, await self._keys(), algorithms=algorithms)
            except InvalidKeyIdError:
                token = jwt.decode(id_token, await self._keys(refresh=True), algorithms=algorithms)
            params: dict[str, Any] = {"nonce": attempt.nonce, "client_id": self.config.client_id}
            if isinstance(access_token, str):
                params["access_token"] = access_token
            claims = CodeIDToken(
                token.claims,
                token.header,
                {
                    "iss": {"essential": True, "value": str(metadata["issuer"])},
                    "aud": {"essential": True, "value": self.config.client_id},
                },
                params,
            )
            claims.validate(now=int(self._clock.now().timestamp()), leeway=LEEWAY_SECONDS)
        except (JoseError, ValueError, KeyError, TypeError) as exc:
            raise SignInFailed(f"the ID token is not valid ({type(exc).__name__})") from exc
        return claims

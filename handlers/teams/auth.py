"""Inbound authentication for the Teams messaging endpoint: every Bot Framework channel token verified
before an activity is looked at, with keys fetched asynchronously.

What it checks (issue 8 §2; the same rules as botbuilder's channel validation, SDK-NOTES §2):

* a ``Bearer`` token whose header names an allowed RS algorithm and a ``kid``;
* emulator and skill tokens are refused up front, on the unverified claims (botbuilder's own emulator
  issuer list and :meth:`SkillValidation.is_skill_claim`); any other issuer than
  ``https://api.botframework.com`` is refused too;
* the activity's ``channelId`` is ``msteams`` and the signing key is endorsed for it (botbuilder's
  :class:`EndorsementsValidator`);
* signature, expiry (botbuilder's 5-minute clock tolerance), ``aud`` = the app id, ``iss``;
* the ``serviceurl`` claim equals the activity's ``serviceUrl``, whose host is in the allowlist.

Every failure is a :class:`TeamsAuthError` subclass carrying a short ``reason`` (a metric label, safe to
log: it never contains the token); the endpoint answers all of them 401, never 500.

Why not the SDK's ``JwtTokenExtractor``: its OpenID fetch is a blocking ``requests.get`` with no timeout
on the event loop, an unknown ``kid`` raises ``IndexError`` instead of refreshing, and its failures are
not typed (SDK-NOTES §2, §9). :class:`OpenIdKeys` replaces it: httpx, cached for a day, one refresh on an
unknown ``kid`` (rate-limited, single-flight). :meth:`OpenIdKeys.prime_sdk_cache` also fills the SDK's
cache for the same URL, so no botbuilder code path can ever reach its blocking fetch.

Wiring: the Teams mount (:mod:`handlers.teams.platform`) builds one :class:`OpenIdKeys` from the setting
``TEAMS_OPENID_METADATA_URL`` (default :data:`PUBLIC_OPENID_METADATA_URL`) and one
:class:`ServiceUrlPolicy` from ``TEAMS_SERVICE_URL_HOSTS`` (default :data:`PUBLIC_SERVICE_URL_HOSTS`),
shares the policy with :class:`handlers.teams.connector.TeamsConnector`, and ``POST /api/messages``
calls :meth:`TeamsAuthenticator.authenticate` before anything else; the resulting ``ClaimsIdentity`` goes
to ``CloudAdapter.process_activity`` inside an ``AuthenticateRequestResult``, so the SDK never
re-authenticates.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import Any
from urllib.parse import urlsplit

import httpx
import jwt
from botframework.connector.auth import (
    AuthenticationConstants,
    ClaimsIdentity,
    EmulatorValidation,
    SkillValidation,
)
from botframework.connector.auth.endorsements_validator import EndorsementsValidator
from botframework.connector.auth.jwt_token_extractor import JwtTokenExtractor

log = logging.getLogger(__name__)

PUBLIC_OPENID_METADATA_URL: str = AuthenticationConstants.TO_BOT_FROM_CHANNEL_OPENID_METADATA_URL
CHANNEL_ISSUER: str = AuthenticationConstants.TO_BOT_FROM_CHANNEL_TOKEN_ISSUER
TEAMS_CHANNEL = "msteams"
#: Where Teams' Bot Connector lives (SDK-NOTES §3); a leading "*." matches any subdomain.
PUBLIC_SERVICE_URL_HOSTS = ("smba.trafficmanager.net", "*.trafficmanager.net", "*.botframework.com")
CLOCK_TOLERANCE_SECONDS = 5 * 60  # what botbuilder allows (VerifyOptions.clock_tolerance)
KEYS_MAX_AGE_SECONDS = 24 * 3600  # what botbuilder does: refresh the keys daily
UNKNOWN_KID_REFRESH_INTERVAL_SECONDS = 300.0  # an unknown kid refetches at most this often
FETCH_TIMEOUT_SECONDS = 10.0
_ALGORITHMS: list[str] = list(AuthenticationConstants.ALLOWED_SIGNING_ALGORITHMS)
_LOOPBACK = {"127.0.0.1", "localhost", "::1"}


# --- errors --------------------------------------------------------------------------------------


class TeamsAuthError(Exception):
    """An inbound request is not a genuine Teams activity for this bot. ``reason`` is a short label."""

    reason = "unauthenticated"


class MissingToken(TeamsAuthError):
    reason = "missing_token"


class MalformedToken(TeamsAuthError):
    reason = "malformed_token"


class ForeignIssuer(TeamsAuthError):
    """An emulator or skill token: Ackgate talks to the Teams channel only."""

    reason = "foreign_issuer"


class WrongIssuer(TeamsAuthError):
    reason = "wrong_issuer"


class UnknownKey(TeamsAuthError):
    reason = "unknown_key"


class NotEndorsed(TeamsAuthError):
    """The activity is not from msteams, or the key is not endorsed for it."""

    reason = "not_endorsed"


class BadSignature(TeamsAuthError):
    reason = "bad_signature"


class Expired(TeamsAuthError):
    reason = "expired"


class WrongAudience(TeamsAuthError):
    reason = "wrong_audience"


class ServiceUrlMismatch(TeamsAuthError):
    reason = "serviceurl_mismatch"


class ServiceUrlNotAllowed(TeamsAuthError):
    reason = "serviceurl_not_allowed"


class KeysUnavailable(TeamsAuthError):
    """The OpenID metadata or the JWKS could not be fetched; nothing can be verified."""

    reason = "keys_unavailable"


# --- serviceUrl policy ---------------------------------------------------------------------------


class ServiceUrlPolicy:
    """Which serviceUrls Ackgate accepts in activities, and may send its token to.

    A URL is *allowed* when it is https (or plain http on loopback, for tests) and its host matches the
    allowlist. It is *trusted* once it arrived in an authenticated activity (:meth:`remember`) or was
    stored from one earlier; the connector sends the token only to trusted, allowed URLs.
    """

    def __init__(self, hosts: Iterable[str], *, trusted: Iterable[str] = ()) -> None:
        self._hosts = tuple(h.strip().lower().rstrip(".") for h in hosts if h.strip())
        self._trusted: set[str] = set()
        for url in trusted:
            self.remember(url)

    def allowed(self, url: str) -> bool:
        try:
            parts = urlsplit(url)
        except ValueError:
            return False
        host = (parts.hostname or "").lower().rstrip(".")
        if not host or parts.username or parts.password:
            return False
        if parts.scheme != "https" and not (parts.scheme == "http" and host in _LOOPBACK):
            return False
        return any(host == h or (h.startswith("*.") and host.endswith(h[1:])) for h in self._hosts)

    def remember(self, url: str) -> None:
        """``url`` came in an authenticated activity (or a stored reference made from one)."""
        if self.allowed(url):
            self._trusted.add(_normalise(url))

    def trusted(self, url: str) -> bool:
        return self.allowed(url) and _normalise(url) in self._trusted


def _normalise(url: str) -> str:
    return url if url.endswith("/") else url + "/"


# --- keys ----------------------------------------------------------------------------------------


@dataclass(frozen=True)
class SigningKey:
    kid: str
    key: Any  # a cryptography public key
    endorsements: tuple[str, ...]


class OpenIdKeys:
    """The Bot Framework's signing keys, fetched with httpx from ``metadata_url`` and cached.

    The first :meth:`get` (or :meth:`refresh` at start-up) fetches them; they are refetched after a day,
    and once when a ``kid`` is unknown, at most every ``unknown_kid_interval`` seconds, so forged kids
    cannot turn Ackgate into a request amplifier. Concurrent refreshes share one fetch. A failed
    refresh keeps the keys already known.
    """

    def __init__(
        self,
        metadata_url: str = PUBLIC_OPENID_METADATA_URL,
        *,
        http: httpx.AsyncClient,
        clock: Callable[[], float] = time.monotonic,
        max_age: float = KEYS_MAX_AGE_SECONDS,
        unknown_kid_interval: float = UNKNOWN_KID_REFRESH_INTERVAL_SECONDS,
    ) -> None:
        self.metadata_url = metadata_url
        self._http, self._clock = http, clock
        self._max_age, self._unknown_kid_interval = max_age, unknown_kid_interval
        self._keys: dict[str, SigningKey] = {}
        self._jwks: list[dict[str, Any]] = []
        self._fetched_at: float | None = None  # last successful fetch
        self._attempted_at: float | None = None  # last fetch tried
        self._generation = 0
        self._lock = asyncio.Lock()
        self.refreshes = 0  # fetches tried, for tests and metrics

    async def get(self, kid: str) -> SigningKey | None:
        """The key with that id, refreshing as described above; None when it is still unknown.
        Raises :class:`KeysUnavailable` when no key could ever be fetched."""
        if self._fetched_at is None or (self._clock() - self._fetched_at > self._max_age and self._may_try()):
            await self._refresh(self._generation)
        key = self._keys.get(kid)
        if key is None and self._may_try():
            await self._refresh(self._generation)
            key = self._keys.get(kid)
        if self._fetched_at is None:
            raise KeysUnavailable("The Bot Framework signing keys could not be fetched.")
        return key

    async def refresh(self) -> None:
        """Fetch the metadata and the keys now (start-up, or a daily task). Raises KeysUnavailable
        when nothing could be fetched and no keys are known."""
        await self._refresh(self._generation)
        if self._fetched_at is None:
            raise KeysUnavailable("The Bot Framework signing keys could not be fetched.")

    def _may_try(self) -> bool:
        return self._attempted_at is None or self._clock() - self._attempted_at >= self._unknown_kid_interval

    async def _refresh(self, generation: int) -> None:
        async with self._lock:
            if self._generation != generation:  # another request refreshed while this one waited
                return
            self._attempted_at = self._clock()
            try:
                await self._fetch()
            except KeysUnavailable as exc:
                level = logging.ERROR if self._fetched_at is None else logging.WARNING
                log.log(level, "%s Keeping the %d known keys.", exc, len(self._keys))
            finally:
                self._generation += 1  # counts finished attempts; waiters on an older one skip theirs

    async def _fetch(self) -> None:
        self.refreshes += 1
        try:
            metadata = await self._json(self.metadata_url)
            jwks_uri = metadata.get("jwks_uri")
            if not isinstance(jwks_uri, str):
                raise KeysUnavailable("The OpenID metadata has no jwks_uri.")
            jwks = await self._json(jwks_uri)
        except (httpx.HTTPError, ValueError) as exc:
            raise KeysUnavailable(f"The Bot Framework signing keys could not be fetched: {type(exc).__name__}") from exc
        raw_keys = jwks.get("keys")
        if not isinstance(raw_keys, list):
            raise KeysUnavailable("The JWKS has no keys list.")
        keys: dict[str, SigningKey] = {}
        for raw in raw_keys:
            if not isinstance(raw, dict) or not isinstance(raw.get("kid"), str):
                continue
            try:
                public = jwt.PyJWK(raw).key
            except jwt.PyJWTError:
                log.info("Skipping an unusable key %r in the Bot Framework JWKS", raw.get("kid"))
                continue
            endorsements = raw.get("endorsements") or []
            keys[raw["kid"]] = SigningKey(raw["kid"], public, tuple(str(e) for e in endorsements))
        self._keys, self._jwks = keys, [k for k in raw_keys if isinstance(k, dict)]
        self._fetched_at = self._clock()

    async def _json(self, url: str) -> dict[str, Any]:
        response = await self._http.get(url, timeout=FETCH_TIMEOUT_SECONDS)
        response.raise_for_status()
        document = json.loads(response.content)
        if not isinstance(document, dict):
            raise ValueError("not a JSON object")
        return document

    def prime_sdk_cache(self) -> None:
        """Hand the fetched keys to botbuilder's own cache for the same URL, so any SDK path that
        validates a token finds them and never runs its blocking ``requests.get`` fetch."""
        metadata = JwtTokenExtractor.get_open_id_metadata(self.metadata_url)
        metadata.keys = list(self._jwks)
        metadata.last_updated = datetime.now()  # the SDK compares with a naive datetime.now()


# --- the authenticator ---------------------------------------------------------------------------


class TeamsAuthenticator:
    """Verifies the ``Authorization`` header of a POST to the messaging endpoint against its activity."""

    def __init__(
        self,
        *,
        app_id: str,
        keys: OpenIdKeys,
        service_urls: ServiceUrlPolicy,
        issuer: str = CHANNEL_ISSUER,
        leeway: float = CLOCK_TOLERANCE_SECONDS,
    ) -> None:
        if not app_id:
            # botbuilder reads an empty app id as "authentication disabled"; Ackgate never runs that way.
            raise ValueError("A Teams app id is required")
        self.app_id, self.keys, self.service_urls = app_id, keys, service_urls
        self.issuer, self.leeway = issuer, leeway

    async def authenticate(self, authorization: str | None, activity: Mapping[str, Any]) -> ClaimsIdentity:
        """The verified claims, or a :class:`TeamsAuthError`. On success the activity's serviceUrl is
        remembered as trusted by the shared :class:`ServiceUrlPolicy`."""
        token = _bearer(authorization)
        service_url = activity.get("serviceUrl")
        if not isinstance(service_url, str) or not self.service_urls.allowed(service_url):
            raise ServiceUrlNotAllowed("The activity's serviceUrl is missing or not an allowed host.")
        header, unverified = _unverified(token)
        self._refuse_foreign(unverified)
        channel = activity.get("channelId")
        if channel != TEAMS_CHANNEL:
            raise NotEndorsed("The activity does not come from the msteams channel.")
        key = await self.keys.get(header["kid"])
        if key is None:
            raise UnknownKey("The token is signed with a key the Bot Framework does not publish.")
        if not EndorsementsValidator.validate(TEAMS_CHANNEL, list(key.endorsements)):
            raise NotEndorsed("The signing key is not endorsed for msteams.")
        claims = self._verify(token, key, header["alg"])
        if claims.get(AuthenticationConstants.SERVICE_URL_CLAIM) != service_url:
            raise ServiceUrlMismatch("The token's serviceurl claim does not match the activity.")
        self.service_urls.remember(service_url)
        return ClaimsIdentity(claims, True)

    def _refuse_foreign(self, claims: dict[str, Any]) -> None:
        issuer = claims.get("iss")
        emulator_issuers = EmulatorValidation.TO_BOT_FROM_EMULATOR_TOKEN_VALIDATION_PARAMETERS.issuer or []
        if issuer in emulator_issuers:
            raise ForeignIssuer("Emulator tokens are not accepted.")
        if SkillValidation.is_skill_claim(claims):
            raise ForeignIssuer("Skill tokens are not accepted.")
        if issuer != self.issuer:
            raise WrongIssuer("The token was not issued by the Bot Framework.")

    def _verify(self, token: str, key: SigningKey, algorithm: str) -> dict[str, Any]:
        try:
            claims: dict[str, Any] = jwt.decode(
                token,
                key.key,
                algorithms=[algorithm],
                audience=self.app_id,
                issuer=self.issuer,
                leeway=self.leeway,
                options={"require": ["exp", "iss", "aud"]},
            )
        except (jwt.ExpiredSignatureError, jwt.ImmatureSignatureError) as exc:
            raise Expired("The token is expired or not yet valid.") from exc
        except jwt.InvalidAudienceError as exc:
            raise WrongAudience("The token is not for this app.") from exc
        except jwt.InvalidIssuerError as exc:
            raise WrongIssuer("The token was not issued by the Bot Framework.") from exc
        except jwt.InvalidSignatureError as exc:
            raise BadSignature("The token's signature does not verify.") from exc
        except jwt.PyJWTError as exc:
            raise MalformedToken(f"The token is not valid: {type(exc).__name__}.") from exc
        return claims


def _bearer(authorization: str | None) -> str:
    if not authorization:
        raise MissingToken("No Authorization header.")
    scheme, _, token = authorization.partition(" ")
    if scheme.lower() != "bearer" or not token.strip() or " " in token.strip():
        raise MalformedToken("The Authorization header is not 'Bearer <token>'.")
    return token.strip()


def _unverified(token: str) -> tuple[dict[str, Any], dict[str, Any]]:
    try:
        header = jwt.get_unverified_header(token)
        claims = jwt.decode(token, options={"verify_signature": False})
    except jwt.PyJWTError as exc:
        raise MalformedToken("The token cannot be parsed.") from exc
    if header.get("alg") not in _ALGORITHMS:
        raise MalformedToken("The token's algorithm is not allowed.")
    if not isinstance(header.get("kid"), str) or not header["kid"]:
        raise MalformedToken("The token names no key.")
    return header, claims

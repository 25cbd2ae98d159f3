"""A Microsoft Teams simulator: the Bot Framework's token service, login and Bot Connector on one
real aiohttp server on 127.0.0.1, for the Teams tests and the Teams scene of ``ackgate demo``.

It serves, in the shapes of the Bot Connector API v3 (``ConnectorAPI.swagger.json``):

* ``GET /v1/.well-known/openidconfiguration`` and ``GET /v1/.well-known/keys``: the OpenID metadata and a
  JWKS holding test RSA keys, each with ``kid`` and ``endorsements`` (``["msteams"]`` unless told
  otherwise). :meth:`TeamsSimulator.rotate_key` publishes a new signing key; :meth:`add_key` adds
  unendorsed or unpublished ones for refusal tests. Fetches are counted.
* ``POST /{tenant}/oauth2/v2.0/token``: a client-credentials token endpoint (checks the client id,
  secret, tenant and scope) that counts its requests in ``token_requests``.
* the Bot Connector under :attr:`service_url` (``…/smba/``): create conversation, send to conversation,
  reply, update activity (PUT), get one member (by MRI, UPN, email or AAD object id) and paged members.
  Every call must carry a token this simulator issued; a roster (:meth:`add_member`) and conversations
  (:meth:`add_conversation`) decide what exists; posted activities are kept in ``messages`` with each
  edit's earlier versions in ``history``.

Every call is kept in ``calls`` (the body as received and the bearer token, which is the simulator's own).
Tests plug a schema check in through ``validator(operation, body)``; whatever it raises is kept in
``validation_errors`` (the answer is still sent). Errors are injected with :meth:`fail_next` (403, 404, 429
with ``Retry-After``, 5xx) and :meth:`delay_next` (a timeout), on the connector or the token endpoint.

:mod:`bot.runtime.simulators.teams_client` signs activities with these keys and posts them to Ackgate. This module
reads no reference files and imports nothing from the tests.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import json
import secrets
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from aiohttp import web
from cryptography.hazmat.primitives.asymmetric import rsa
from jwt.algorithms import RSAAlgorithm

from bot.runtime.simulators.faults import Fault, Faults
from bot.runtime.simulators.server import LoopbackServer

Json = dict[str, Any]
Validator = Callable[[str, Json], None]

ISSUER = "https://api.botframework.com"
SCOPE = "https://api.botframework.com/.default"
CHANNEL = "msteams"
SERVICE_PATH = "/smba/"
_WAIT_LIMIT_SECONDS = 10.0


@dataclass
class SigningKey:
    """An RSA key the token service may publish; ``published=False`` keeps it out of the JWKS."""

    kid: str
    private_key: rsa.RSAPrivateKey
    endorsements: list[str]
    published: bool = True

    def jwk(self) -> Json:
        jwk: Json = json.loads(RSAAlgorithm.to_jwk(self.private_key.public_key()))
        return {**jwk, "kid": self.kid, "kty": "RSA", "use": "sig", "endorsements": list(self.endorsements)}


@dataclass
class SimMember:
    """A Teams user as ``GET …/members/{id}`` returns it (a TeamsChannelAccount)."""

    id: str  # the MRI, "29:…"
    name: str
    email: str | None
    upn: str
    aad_object_id: str
    tenant_id: str

    def account(self) -> Json:
        body: Json = {
            "id": self.id,
            "name": self.name,
            "aadObjectId": self.aad_object_id,
            "userPrincipalName": self.upn,
            "tenantId": self.tenant_id,
            "userRole": "user",
            "givenName": self.name.split(" ")[0],
            "surname": self.name.split(" ")[-1],
        }
        if self.email is not None:
            body["email"] = self.email
        return body


@dataclass
class SimConversation:
    id: str
    kind: str  # "personal" | "channel" | "groupChat"
    members: list[str] = field(default_factory=list)  # MRIs
    blocked: bool = False  # the app was blocked or uninstalled here: writes get 403


@dataclass
class SimActivity:
    """A message the bot posted; ``history`` keeps the earlier versions, oldest first."""

    conversation_id: str
    id: str
    activity: Json
    reply_to: str | None = None
    history: list[Json] = field(default_factory=list)

    @property
    def edits(self) -> int:
        return len(self.history)


@dataclass(frozen=True)
class ConnectorCall:
    """One Bot Connector call as received: the operation id from the swagger, the path, the body."""

    operation: str
    method: str
    path: str
    body: Json | None
    token: str


class _ConnectorError(Exception):
    def __init__(self, status: int, code: str, message: str) -> None:
        super().__init__(code)
        self.status, self.code, self.message = status, code, message


class TeamsSimulator(LoopbackServer):
    """Holds Teams state and serves it over HTTP. ``async with TeamsSimulator() as teams: teams.service_url``."""

    label = "Teams simulator"

    def __init__(
        self,
        *,
        app_id: str = "00000000-0000-0000-0000-00000000a11e",
        app_password: str = "simulated-app-password",  # noqa: S107 - the simulator's own, not a secret
        tenant_id: str = "11111111-2222-3333-4444-555555555555",
        token_lifetime: int = 3600,
        validator: Validator | None = None,
        host: str = "127.0.0.1",
        port: int = 0,
    ) -> None:
        super().__init__(host=host, port=port)
        self.app_id, self.app_password, self.tenant_id = app_id, app_password, tenant_id
        self.bot_id = f"28:{app_id}"
        self.token_lifetime = token_lifetime
        self.validator = validator
        self.validation_errors: list[str] = []
        self.keys: list[SigningKey] = []
        self.signing_kid = self.add_key("k1").kid
        self.members: dict[str, SimMember] = {}
        self.conversations: dict[str, SimConversation] = {}
        self.messages: dict[str, list[SimActivity]] = {}
        self.calls: list[ConnectorCall] = []
        self.token_requests = 0
        self.metadata_requests = 0
        self.jwks_requests = 0
        self._tokens: dict[str, float] = {}  # issued access token -> expiry (time.time())
        self._connector_faults = Faults()
        self._token_faults = Faults()
        self._seq = itertools.count(1)
        self._changed = asyncio.Condition()
        self._stopping = asyncio.Event()

    # --- lifecycle --------------------------------------------------------------------------

    def build_app(self) -> web.Application:
        app = web.Application()
        app.router.add_get("/v1/.well-known/openidconfiguration", self._openid)
        app.router.add_get("/v1/.well-known/keys", self._jwks)
        app.router.add_post("/{tenant}/oauth2/v2.0/token", self._token)
        base = SERVICE_PATH + "v3/conversations"
        app.router.add_post(base, self._create_conversation)
        app.router.add_post(base + "/{cid}/activities", self._send)
        app.router.add_post(base + "/{cid}/activities/{aid}", self._reply)
        app.router.add_put(base + "/{cid}/activities/{aid}", self._update)
        app.router.add_get(base + "/{cid}/members/{mid}", self._member)
        app.router.add_get(base + "/{cid}/pagedmembers", self._paged_members)
        return app

    async def start(self) -> str:
        self._stopping.clear()
        return await super().start()

    async def stop(self) -> None:
        self._stopping.set()  # injected delays end now, so shutting down never waits for them
        await super().stop()

    async def _pause(self, seconds: float) -> None:
        if seconds > 0:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._stopping.wait(), seconds)

    @property
    def service_url(self) -> str:
        """The serviceUrl activities carry (with its trailing slash, as Teams sends it)."""
        return self.root_url + SERVICE_PATH

    @property
    def openid_metadata_url(self) -> str:
        return self.root_url + "/v1/.well-known/openidconfiguration"

    @property
    def login_url(self) -> str:
        """The login root; tokens are at ``{login_url}/{tenant}/oauth2/v2.0/token``."""
        return self.root_url

    # --- keys -------------------------------------------------------------------------------

    def add_key(self, kid: str, *, endorsements: tuple[str, ...] = (CHANNEL,), published: bool = True) -> SigningKey:
        key = SigningKey(kid, _private_key(kid), list(endorsements))
        key.published = published
        self.keys.append(key)
        return key

    def key(self, kid: str | None = None) -> SigningKey:
        wanted = kid or self.signing_kid
        return next(k for k in self.keys if k.kid == wanted)

    def rotate_key(self, *, drop_old: bool = False) -> SigningKey:
        """Publish a new signing key (kid ``k2``, ``k3`` …) and sign with it from now on."""
        new = self.add_key(f"k{len(self.keys) + 1}")
        if drop_old:
            for key in self.keys:
                key.published = key is new
        self.signing_kid = new.kid
        return new

    # --- roster and conversations -------------------------------------------------------------

    def add_member(self, mri: str, *, name: str, email: str | None, upn: str | None = None) -> SimMember:
        aad = f"aad-{mri.removeprefix('29:')}"
        member = SimMember(mri, name, email, upn or email or f"{mri}@example.invalid", aad, self.tenant_id)
        self.members[mri] = member
        return member

    def add_conversation(self, conversation_id: str, *, kind: str = "channel", members: tuple[str, ...] = ()) -> str:
        self.conversations[conversation_id] = SimConversation(conversation_id, kind, list(members))
        return conversation_id

    def personal_conversation_id(self, mri: str) -> str:
        """The id of the bot's 1:1 chat with that user (what create conversation returns)."""
        return f"a:1{mri.removeprefix('29:')}"

    def block(self, conversation_id: str) -> None:
        """The app is blocked or uninstalled in that conversation: writes answer 403 MessageWritesBlocked."""
        self.conversations[conversation_id].blocked = True

    # --- faults -----------------------------------------------------------------------------

    def fail_next(
        self, status: int, *, times: int = 1, retry_after: float | None = None, on: str = "connector"
    ) -> None:
        """The next ``times`` calls to the connector (or ``on="token"``) answer ``status``."""
        headers = {"Retry-After": f"{retry_after:g}"} if retry_after is not None else {}
        self._faults(on).add(Fault(status, headers=headers, remaining=times))

    def delay_next(self, seconds: float, *, times: int = 1, on: str = "connector") -> None:
        """The next ``times`` calls wait ``seconds`` before answering (a client timeout test)."""
        self._faults(on).add(Fault(None, delay=seconds, remaining=times))

    def clear_faults(self) -> None:
        self._connector_faults.clear()
        self._token_faults.clear()

    def _faults(self, on: str) -> Faults:
        return {"connector": self._connector_faults, "token": self._token_faults}[on]

    # --- observation ------------------------------------------------------------------------

    def calls_to(self, operation: str) -> list[ConnectorCall]:
        return [call for call in self.calls if call.operation == operation]

    def posted(self, conversation_id: str) -> list[SimActivity]:
        return self.messages.get(conversation_id, [])

    def expire_tokens(self) -> None:
        """Every access token issued so far is now expired (the connector answers 401)."""
        self._tokens = dict.fromkeys(self._tokens, 0.0)

    async def wait_for(self, predicate: Callable[[], object]) -> None:
        """Wait until ``predicate()`` is true, re-checked after every request served (bounded)."""
        async with asyncio.timeout(_WAIT_LIMIT_SECONDS), self._changed:
            await self._changed.wait_for(predicate)

    async def _notify(self) -> None:
        async with self._changed:
            self._changed.notify_all()

    # --- token service and login --------------------------------------------------------------

    async def _openid(self, request: web.Request) -> web.Response:
        self.metadata_requests += 1
        return web.json_response(
            {
                "issuer": ISSUER,
                "authorization_endpoint": f"{self.root_url}/v1/botframework/auth",
                "jwks_uri": f"{self.root_url}/v1/.well-known/keys",
                "id_token_signing_alg_values_supported": ["RS256"],
                "token_endpoint_auth_methods_supported": ["private_key_jwt"],
            }
        )

    async def _jwks(self, request: web.Request) -> web.Response:
        self.jwks_requests += 1
        return web.json_response({"keys": [key.jwk() for key in self.keys if key.published]})

    async def _token(self, request: web.Request) -> web.Response:
        self.token_requests += 1
        fault = self._token_faults.take()
        if fault is not None:
            await self._pause(fault.delay)
            if fault.status is not None:
                return _oauth_error(fault.status, "temporarily_unavailable", headers=fault.headers)
        form = await request.post()
        if request.match_info["tenant"] != self.tenant_id:
            return _oauth_error(400, "invalid_request", "AADSTS90002: Tenant not found.")
        if form.get("grant_type") != "client_credentials":
            return _oauth_error(400, "unsupported_grant_type")
        if form.get("client_id") != self.app_id:
            return _oauth_error(400, "unauthorized_client", "AADSTS700016: Application not found in the directory.")
        if not secrets.compare_digest(str(form.get("client_secret", "")), self.app_password):
            return _oauth_error(401, "invalid_client", "AADSTS7000215: Invalid client secret provided.")
        if form.get("scope") != SCOPE:
            return _oauth_error(400, "invalid_scope")
        token = f"tok-{self.token_requests}-{secrets.token_hex(8)}"
        self._tokens[token] = time.time() + self.token_lifetime
        await self._notify()
        return web.json_response(
            {
                "token_type": "Bearer",
                "expires_in": self.token_lifetime,
                "ext_expires_in": self.token_lifetime,
                "access_token": token,
            }
        )

    # --- Bot Connector ----------------------------------------------------------------------

    async def _connector(
        self, request: web.Request, operation: str, handler: Callable[[Json | None], tuple[int, Json]]
    ) -> web.Response:
        body: Json | None = None
        if request.method in {"POST", "PUT"}:
            try:
                parsed = json.loads(await request.text())
            except ValueError:
                return _error(400, "BadArgument", "The body is not JSON.")
            if not isinstance(parsed, dict):
                return _error(400, "BadArgument", "The body is not a JSON object.")
            body = parsed
        header = request.headers.get("Authorization", "")
        token = header.removeprefix("Bearer ") if header.startswith("Bearer ") else ""
        self.calls.append(ConnectorCall(operation, request.method, request.path, body, token))
        if body is not None and self.validator is not None:
            try:
                self.validator(operation, body)
            except Exception as exc:  # any validator complaint is recorded, not raised here
                self.validation_errors.append(f"{operation}: {exc}")
        await self._notify()
        try:
            fault = self._connector_faults.take()
            if fault is not None:
                await self._pause(fault.delay)
                if fault.status is not None:
                    return _error(
                        fault.status, _FAULT_CODES.get(fault.status, "ServiceError"), "Injected.", fault.headers
                    )
            if self._tokens.get(token, 0.0) <= time.time():
                raise _ConnectorError(401, "Unauthorized", "Authorization has been denied for this request.")
            status, answer = handler(body)
            return web.json_response(answer, status=status)
        except _ConnectorError as exc:
            return _error(exc.status, exc.code, exc.message)
        finally:
            await self._notify()

    def _conversation(self, cid: str) -> SimConversation:
        conversation = self.conversations.get(cid.split(";messageid=")[0])
        if conversation is None:
            raise _ConnectorError(404, "ConversationNotFound", "Conversation not found.")
        return conversation

    def _writable(self, cid: str) -> SimConversation:
        conversation = self._conversation(cid)
        if conversation.blocked:
            raise _ConnectorError(403, "MessageWritesBlocked", "Bot is not installed in user's personal scope")
        return conversation

    def _post(self, cid: str, body: Json | None, reply_to: str | None) -> tuple[int, Json]:
        conversation = self._writable(cid)
        assert body is not None
        if not body.get("type"):
            raise _ConnectorError(400, "BadArgument", "Activity type is required.")
        activity_id = f"17{next(self._seq):011d}"
        self.messages.setdefault(conversation.id, []).append(
            SimActivity(conversation.id, activity_id, {**body, "id": activity_id}, reply_to)
        )
        return 201, {"id": activity_id}

    async def _send(self, request: web.Request) -> web.Response:
        cid = request.match_info["cid"]
        return await self._connector(request, "Conversations_SendToConversation", lambda b: self._post(cid, b, None))

    async def _reply(self, request: web.Request) -> web.Response:
        cid, aid = request.match_info["cid"], request.match_info["aid"]
        return await self._connector(request, "Conversations_ReplyToActivity", lambda b: self._post(cid, b, aid))

    async def _update(self, request: web.Request) -> web.Response:
        cid, aid = request.match_info["cid"], request.match_info["aid"]

        def update(body: Json | None) -> tuple[int, Json]:
            conversation = self._writable(cid)
            assert body is not None
            found = next((m for m in self.messages.get(conversation.id, []) if m.id == aid), None)
            if found is None:
                raise _ConnectorError(404, "ActivityNotFound", "Activity not found.")
            found.history.append(found.activity)
            found.activity = {**body, "id": aid}
            return 200, {"id": aid}

        return await self._connector(request, "Conversations_UpdateActivity", update)

    async def _create_conversation(self, request: web.Request) -> web.Response:
        def create(body: Json | None) -> tuple[int, Json]:
            assert body is not None
            members = body.get("members") or []
            tenant = ((body.get("channelData") or {}).get("tenant") or {}).get("id") or body.get("tenantId")
            if body.get("isGroup") or len(members) != 1 or not isinstance(members[0], dict):
                raise _ConnectorError(400, "BadArgument", "Exactly one member is required for a 1:1 chat.")
            if tenant != self.tenant_id:
                raise _ConnectorError(400, "BadArgument", "Tenant id is required and must be the bot's tenant.")
            member = self.members.get(str(members[0].get("id", "")))
            if member is None:
                raise _ConnectorError(404, "NotFound", "User not found.")
            cid = self.personal_conversation_id(member.id)
            existing = self.conversations.get(cid)
            if existing is None:
                self.add_conversation(cid, kind="personal", members=(member.id,))
            elif existing.blocked:
                raise _ConnectorError(403, "Forbidden", "Bot is not installed in user's personal scope")
            return 201, {"id": cid}

        return await self._connector(request, "Conversations_CreateConversation", create)

    def _find_member(self, conversation: SimConversation, key: str) -> SimMember:
        wanted = key.lower()
        for mri in conversation.members:
            member = self.members.get(mri)
            if member is None:
                continue
            if wanted in {member.id.lower(), member.upn.lower(), (member.email or "").lower(), member.aad_object_id}:
                return member
        raise _ConnectorError(404, "MemberNotFoundInConversation", "The member is not in this conversation.")

    async def _member(self, request: web.Request) -> web.Response:
        cid, mid = request.match_info["cid"], request.match_info["mid"]
        return await self._connector(
            request,
            "Conversations_GetConversationMember",
            lambda _b: (200, self._find_member(self._conversation(cid), mid).account()),
        )

    async def _paged_members(self, request: web.Request) -> web.Response:
        cid = request.match_info["cid"]
        try:
            size = max(1, min(500, int(request.query.get("pageSize", "200"))))
            start = int(request.query.get("continuationToken") or 0)
        except ValueError:
            return _error(400, "BadArgument", "pageSize and continuationToken must be numbers.")

        def page(_body: Json | None) -> tuple[int, Json]:
            mris = self._conversation(cid).members
            chunk = [self.members[m].account() for m in mris[start : start + size] if m in self.members]
            answer: Json = {"members": chunk}
            if start + size < len(mris):
                answer["continuationToken"] = str(start + size)
            return 200, answer

        return await self._connector(request, "Conversations_GetConversationPagedMembers", page)


_KEYS: dict[str, rsa.RSAPrivateKey] = {}


def _private_key(kid: str) -> rsa.RSAPrivateKey:
    """A 2048-bit test key, made once per process for each kid (generating one takes a while), so two
    simulators share the key behind "k1"; a different kid always means a different key."""
    if kid not in _KEYS:
        _KEYS[kid] = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    return _KEYS[kid]


_FAULT_CODES = {403: "MessageWritesBlocked", 404: "NotFound", 412: "PreconditionFailed", 429: "TooManyRequests"}


def _error(status: int, code: str, message: str, headers: dict[str, str] | None = None) -> web.Response:
    return web.json_response({"error": {"code": code, "message": message}}, status=status, headers=headers)


def _oauth_error(
    status: int, error: str, description: str = "", *, headers: dict[str, str] | None = None
) -> web.Response:
    body = {"error": error, "error_description": description or error}
    return web.json_response(body, status=status, headers=headers)

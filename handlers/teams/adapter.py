"""botbuilder's ``CloudAdapter`` assembled around Ackgate's replacements for its broken seams, so that
``TeamsActivityHandler`` routing, ``TurnContext`` replies and ``TeamsInfo`` work offline and never block the
event loop (SDK-NOTES §10).

* :func:`build_adapter` makes ``ConfigurationBotFrameworkAuthentication`` in its *parameterized* mode
  (every endpoint from configuration: the public cloud by default, the simulator in tests) with
  :class:`~handlers.teams.connector.SharedTokenCredentialsFactory`, so every turn's ``ConnectorClient``
  carries the one cached token instead of building an MSAL client and fetching a token per turn.
* :func:`authenticated_turn` turns the ``ClaimsIdentity`` that :class:`~handlers.teams.auth.TeamsAuthenticator`
  verified into the ``AuthenticateRequestResult`` that ``CloudAdapter.process_activity`` accepts instead of
  a header, so the SDK never authenticates again (its path has the blocking OpenID fetch and answers 500
  on bad tokens). It first makes sure the shared token is cached, because msrest asks for it
  synchronously.
* :func:`invoke_body` serialises an ``InvokeResponse`` body only when it is not already a dict: 4.17's
  ``CloudAdapter.process`` serialises it twice and answers every ``Action.Execute`` with 500 (SDK-NOTES §9).

Wiring (:mod:`handlers.teams.platform`): ``POST /api/messages`` authenticates, then
``await adapter.process_activity(await authenticated_turn(adapter, identity, tokens=tokens), turn.activity,
bot.on_turn)``, and for invokes answers ``web.json_response(invoke_body(response), status=response.status)``.
``CloudAdapter.process`` itself is never used.
"""

from __future__ import annotations

from types import SimpleNamespace
from typing import Any

from botbuilder.core import InvokeResponse
from botbuilder.integration.aiohttp import CloudAdapter, ConfigurationBotFrameworkAuthentication
from botbuilder.schema import Activity
from botframework.connector.auth import AuthenticateRequestResult, ClaimsIdentity

from handlers.teams.auth import CHANNEL_ISSUER, PUBLIC_OPENID_METADATA_URL
from handlers.teams.connector import PUBLIC_LOGIN_URL, SharedTokenCredentialsFactory, TokenSource

BOT_FRAMEWORK_AUDIENCE = "https://api.botframework.com"


def build_adapter(
    *,
    app_id: str,
    tenant_id: str,
    tokens: TokenSource,
    openid_metadata_url: str = PUBLIC_OPENID_METADATA_URL,
    login_url: str = PUBLIC_LOGIN_URL,
) -> CloudAdapter:
    """A ``CloudAdapter`` whose outbound calls use ``tokens`` and whose endpoints are all configured."""
    configuration = SimpleNamespace(
        APP_ID=app_id,
        APP_TYPE="SingleTenant",
        APP_TENANTID=tenant_id,
        VALIDATE_AUTHORITY=True,
        TO_BOT_FROM_CHANNEL_OPENID_METADATA_URL=openid_metadata_url,
        TO_BOT_FROM_CHANNEL_TOKEN_ISSUER=CHANNEL_ISSUER,
        TO_CHANNEL_FROM_BOT_OAUTH_SCOPE=BOT_FRAMEWORK_AUDIENCE,
        TO_CHANNEL_FROM_BOT_LOGIN_URL=f"{login_url.rstrip('/')}/{tenant_id}",
        # Emulator tokens are refused before the SDK is reached; this only keeps the SDK off the internet.
        TO_BOT_FROM_EMULATOR_OPENID_METADATA_URL=openid_metadata_url,
        OAUTH_URL=BOT_FRAMEWORK_AUDIENCE,
        CALLER_ID=None,
    )
    authentication = ConfigurationBotFrameworkAuthentication(
        configuration, credentials_factory=SharedTokenCredentialsFactory(tokens, app_id=app_id)
    )
    return CloudAdapter(authentication)


async def authenticated_turn(
    adapter: CloudAdapter, identity: ClaimsIdentity, *, tokens: TokenSource
) -> AuthenticateRequestResult:
    """What ``process_activity`` needs for an activity Ackgate already authenticated."""
    await tokens.token()
    authentication = adapter.bot_framework_authentication
    result = AuthenticateRequestResult()
    result.claims_identity = identity
    result.audience = authentication.get_originating_audience()
    result.caller_id = None
    result.connector_factory = authentication.create_connector_factory(identity)
    return result


def invoke_body(response: InvokeResponse | None) -> Any:
    """The JSON body of an invoke's answer (None when there is none)."""
    if response is None or response.body is None:
        return None
    body = response.body
    if isinstance(body, dict | list | str | int | float | bool):
        return body
    if isinstance(body, Activity) or hasattr(body, "serialize"):
        return body.serialize()
    return body

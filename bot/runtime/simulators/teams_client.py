"""The Teams side of a conversation with Ackgate: activities as Teams sends them, signed with the
:class:`~bot.runtime.simulators.teams.TeamsSimulator`'s test keys and POSTed to a messaging endpoint.

:func:`sign` mints the Bot Framework channel token (RS256, ``iss`` https://api.botframework.com, ``aud`` =
the app id, the ``serviceurl`` claim, ``kid`` in the header); any claim or header can be overridden, so
tests can forge every bad token. :class:`TeamsClient` builds the activities (a personal message, a channel
message that @mentions the bot, an ``Action.Execute`` invoke, an ``Action.Submit`` click, an
``installationUpdate``) in the shapes of the example activities, and posts them.
"""

from __future__ import annotations

import itertools
import json
import time
from dataclasses import dataclass
from typing import Any

import aiohttp
import jwt

from bot.runtime.simulators.teams import CHANNEL, ISSUER, SimMember, TeamsSimulator

Json = dict[str, Any]
_UNSET: Any = object()


def sign(
    sim: TeamsSimulator,
    *,
    service_url: str | None = None,
    kid: str | None = None,
    lifetime: int = 300,
    headers: Json | None = None,
    **claims: Any,
) -> str:
    """A channel token for ``sim``'s app, signed with its current key (or ``kid``'s). ``claims`` override
    or add claims; a claim given as ``None`` is left out."""
    now = int(time.time())
    payload: Json = {
        "iss": ISSUER,
        "aud": sim.app_id,
        "serviceurl": service_url or sim.service_url,
        "nbf": now - 5,
        "iat": now - 5,
        "exp": now + lifetime,
    }
    payload.update(claims)
    payload = {k: v for k, v in payload.items() if v is not None}
    key = sim.key(kid)
    return jwt.encode(payload, key.private_key, algorithm="RS256", headers={"kid": key.kid, **(headers or {})})


@dataclass(frozen=True)
class Posted:
    """What the endpoint answered."""

    status: int
    body: Any
    headers: dict[str, str]


class TeamsClient:
    """Posts activities to ``endpoint`` (e.g. ``http://127.0.0.1:8080/api/messages``) as Teams would."""

    def __init__(self, sim: TeamsSimulator, endpoint: str) -> None:
        self.sim, self.endpoint = sim, endpoint
        self._ids = itertools.count(1)

    async def post(
        self,
        activity: Json | str | bytes,
        *,
        token: str | None = _UNSET,
        content_type: str | None = "application/json",
        extra_headers: dict[str, str] | None = None,
    ) -> Posted:
        """POST ``activity`` (a dict, or raw text for malformed bodies) with a valid token unless told
        otherwise (``token=None``: no Authorization header)."""
        if token is _UNSET:
            service_url = activity.get("serviceUrl") if isinstance(activity, dict) else None
            token = sign(self.sim, service_url=service_url)
        headers = dict(extra_headers or {})
        if token is not None:
            headers["Authorization"] = f"Bearer {token}"
        if content_type is not None:
            headers["Content-Type"] = content_type
        if isinstance(activity, dict):
            data: bytes = json.dumps(activity).encode()
        else:
            data = activity.encode() if isinstance(activity, str) else activity
        async with (
            aiohttp.ClientSession() as session,
            session.post(self.endpoint, data=data, headers=headers, skip_auto_headers=["Content-Type"]) as response,
        ):
            text = await response.text()
            body: Any = text
            if response.content_type.endswith("json") and text:
                body = await response.json(content_type=None)
            return Posted(response.status, body, dict(response.headers))

    # --- activities ---------------------------------------------------------------------------

    def _base(self, kind: str, user: SimMember, conversation_id: str, conversation_type: str) -> Json:
        return {
            "type": kind,
            "id": f"17000{next(self._ids):08d}",
            "timestamp": "2026-01-01T00:00:00.000Z",
            "serviceUrl": self.sim.service_url,
            "channelId": CHANNEL,
            "from": {"id": user.id, "name": user.name, "aadObjectId": user.aad_object_id},
            "conversation": {
                "id": conversation_id,
                "conversationType": conversation_type,
                "tenantId": self.sim.tenant_id,
                "isGroup": conversation_type != "personal",
            },
            "recipient": {"id": self.sim.bot_id, "name": "Ackgate"},
            "locale": "en-US",
            "channelData": {"tenant": {"id": self.sim.tenant_id}},
        }

    def personal_message(self, user: SimMember, text: str) -> Json:
        """``text`` typed in the user's 1:1 chat with the bot."""
        conversation = self.sim.personal_conversation_id(user.id)
        activity = self._base("message", user, conversation, "personal")
        return {**activity, "text": text, "textFormat": "plain"}

    def channel_message(self, user: SimMember, channel_id: str, text: str, *, bot_name: str = "Ackgate") -> Json:
        """``@<bot_name> text`` posted in a channel (the only way a channel message reaches a bot)."""
        activity = self._base("message", user, f"{channel_id};messageid={next(self._ids)}", "channel")
        mention = f"<at>{bot_name}</at>"
        activity["text"] = f"{mention} {text}"
        activity["entities"] = [
            {"type": "mention", "text": mention, "mentioned": {"id": self.sim.bot_id, "name": bot_name}}
        ]
        activity["channelData"] = {
            **activity["channelData"],
            "channel": {"id": channel_id},
            "teamsChannelId": channel_id,
        }
        return activity

    def execute(self, user: SimMember, conversation_id: str, *, verb: str, data: Json, reply_to: str) -> Json:
        """An ``Action.Execute`` click: invoke ``adaptiveCard/action`` on the card message ``reply_to``."""
        activity = self._base("invoke", user, conversation_id, "channel")
        activity["name"] = "adaptiveCard/action"
        activity["replyToId"] = reply_to
        activity["value"] = {"action": {"type": "Action.Execute", "verb": verb, "data": data}, "trigger": "manual"}
        return activity

    def submit(self, user: SimMember, conversation_id: str, *, value: Json, reply_to: str) -> Json:
        """An ``Action.Submit`` click (the fallback): a message with no text and ``value`` = the data."""
        activity = self._base("message", user, conversation_id, "channel")
        return {**activity, "replyToId": reply_to, "value": value}

    def installation_update(self, user: SimMember, *, action: str = "add") -> Json:
        """The app installed (``add``) or removed (``remove``) in the user's personal scope."""
        activity = self._base("installationUpdate", user, self.sim.personal_conversation_id(user.id), "personal")
        return {**activity, "action": action}

"""Build and sign the bodies Slack sends to Ackgate (slash commands, block_actions, view_submission),
as Slack would, in the on-the-wire encodings of ``reference/slack/payloads``. Used by the tests
and by ``ackgate demo``.

The signature is computed here from Slack's documented algorithm (HMAC-SHA256 of
``v0:{timestamp}:{raw body}``), independently of slack_sdk, so a test comparing the two checks both.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import secrets
import time
from typing import Any
from urllib.parse import urlencode

import aiohttp

TEAM_ID = "T0ACKGATE"
CHANNEL_ID = "C0APPROVALS"


def signature(body: str, *, secret: str, timestamp: int | str) -> str:
    base = f"v0:{timestamp}:{body}".encode()
    return "v0=" + hmac.new(secret.encode(), base, hashlib.sha256).hexdigest()


def signed_headers(body: str, *, secret: str, timestamp: int | None = None) -> dict[str, str]:
    """Headers for ``body``; ``timestamp`` defaults to now (Slack allows five minutes of skew)."""
    ts = int(time.time()) if timestamp is None else timestamp
    return {
        "Content-Type": "application/x-www-form-urlencoded",
        "X-Slack-Request-Timestamp": str(ts),
        "X-Slack-Signature": signature(body, secret=secret, timestamp=ts),
    }


def new_trigger_id() -> str:
    """A trigger id of Slack's shape; Slack issues a new one for every command and interaction."""
    return f"{secrets.randbelow(10**11)}.{secrets.randbelow(10**9)}.{secrets.token_hex(16)}"


def slash_command_body(
    *,
    text: str,
    user_id: str,
    response_url: str,
    trigger_id: str | None = None,
    command: str = "/access",
    channel_id: str = CHANNEL_ID,
) -> str:
    return urlencode(
        {
            "token": "deprecated-verification-token",
            "team_id": TEAM_ID,
            "team_domain": "ackgate",
            "channel_id": channel_id,
            "channel_name": "approvals",
            "user_id": user_id,
            "user_name": user_id.lower(),
            "command": command,
            "text": text,
            "response_url": response_url,
            "trigger_id": trigger_id or new_trigger_id(),
            "api_app_id": "A0ACKGATE",
            "is_enterprise_install": "false",
        }
    )


def _payload_body(payload: dict[str, Any]) -> str:
    return urlencode({"payload": json.dumps(payload)})


def block_actions_payload(
    *,
    user_id: str,
    action_id: str,
    value: str | None,
    response_url: str,
    channel_id: str = CHANNEL_ID,
    message_ts: str = "1700000000.000100",
) -> dict[str, Any]:
    action: dict[str, Any] = {
        "action_id": action_id,
        "block_id": "b1",
        "type": "button",
        "text": {"type": "plain_text", "text": "Approve", "emoji": True},
        "action_ts": "1700000123.456789",
    }
    if value is not None:
        action["value"] = value
    return {
        "type": "block_actions",
        "user": {"id": user_id, "username": user_id.lower(), "name": user_id.lower(), "team_id": TEAM_ID},
        "api_app_id": "A0ACKGATE",
        "token": "deprecated-verification-token",
        "container": {"type": "message", "message_ts": message_ts, "channel_id": channel_id, "is_ephemeral": False},
        "trigger_id": new_trigger_id(),
        "team": {"id": TEAM_ID, "domain": "ackgate"},
        "enterprise": None,
        "is_enterprise_install": False,
        "channel": {"id": channel_id, "name": "approvals"},
        "message": {"type": "message", "ts": message_ts, "text": "Access request", "blocks": []},
        "state": {"values": {}},
        "response_url": response_url,
        "actions": [action],
    }


def block_actions_body(**kwargs: Any) -> str:
    return _payload_body(block_actions_payload(**kwargs))


def form_state(*, resource: str | None, duration: str, reason: str = "") -> dict[str, Any]:
    """``view.state.values`` of Ackgate's request form as Slack sends it on submit."""
    selected = (
        {"text": {"type": "plain_text", "text": resource, "emoji": True}, "value": resource} if resource else None
    )
    return {
        "resource": {"value": {"type": "static_select", "selected_option": selected}},
        "duration": {"value": {"type": "plain_text_input", "value": duration}},
        "reason": {"value": {"type": "plain_text_input", "value": reason or None}},
    }


def view_submission_body(
    *,
    user_id: str,
    values: dict[str, Any],
    callback_id: str = "ackgate.request",
    view_id: str = "V0000001",
    trigger_id: str | None = None,
) -> str:
    return _payload_body(
        {
            "type": "view_submission",
            "team": {"id": TEAM_ID, "domain": "ackgate"},
            "user": {"id": user_id, "username": user_id.lower(), "name": user_id.lower(), "team_id": TEAM_ID},
            "api_app_id": "A0ACKGATE",
            "token": "deprecated-verification-token",
            "trigger_id": trigger_id or new_trigger_id(),
            "view": {
                "id": view_id,
                "team_id": TEAM_ID,
                "type": "modal",
                "callback_id": callback_id,
                "private_metadata": "",
                "blocks": [],
                "state": {"values": values},
                "hash": "156772938.1827394",
                "root_view_id": view_id,
                "app_id": "A0ACKGATE",
            },
            "response_urls": [],
            "is_enterprise_install": False,
            "enterprise": None,
        }
    )


async def post_signed(
    session: aiohttp.ClientSession,
    url: str,
    body: str,
    *,
    secret: str,
    timestamp: int | None = None,
) -> tuple[int, str]:
    """POST ``body`` signed with ``secret``; returns the status and the response text."""
    async with session.post(
        url, data=body.encode(), headers=signed_headers(body, secret=secret, timestamp=timestamp)
    ) as r:
        return r.status, await r.text()

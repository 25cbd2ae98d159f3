"""botbuilder's TeamsActivityHandler routing, TurnContext replies and TeamsInfo, run through CloudAdapter
with Ackgate's seams: our authentication result (no SDK re-authentication), one shared token, offline."""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

import httpx
import pytest
import requests
from botbuilder.core import TurnContext
from botbuilder.core.teams import TeamsActivityHandler, TeamsInfo
from botbuilder.integration.aiohttp import CloudAdapter
from botbuilder.schema import AdaptiveCardInvokeResponse, AdaptiveCardInvokeValue

from bot.core.views import Card
from bot.runtime.simulators.teams import TeamsSimulator
from bot.runtime.simulators.teams_client import TeamsClient, sign
from handlers.teams import adapter as teams_adapter
from handlers.teams.activity import parse_activity
from handlers.teams.auth import OpenIdKeys, ServiceUrlPolicy, TeamsAuthenticator
from handlers.teams.cards import CARD_CONTENT_TYPE, render_card
from handlers.teams.connector import TokenSource
from tests.fakes.teams_schemas import check_card, check_connector_body

CHANNEL = "19:ops@thread.tacv2"


class EchoBot(TeamsActivityHandler):  # type: ignore[misc]
    """Replies with the sender's email (from TeamsInfo.get_member); answers card clicks with a card."""

    async def on_message_activity(self, turn_context: TurnContext) -> None:
        member = await TeamsInfo.get_member(turn_context, turn_context.activity.from_property.id)
        await turn_context.send_activity(f"hello {member.email}")

    async def on_adaptive_card_invoke(
        self, turn_context: TurnContext, invoke_value: AdaptiveCardInvokeValue
    ) -> AdaptiveCardInvokeResponse:
        action = invoke_value.action  # botbuilder 4.17 leaves it a plain dict
        card = render_card(Card(title=f"{action['verb']} {action['data']['target']}"))
        return AdaptiveCardInvokeResponse(status_code=200, type=CARD_CONTENT_TYPE, value=card)


@dataclass
class Rig:
    sim: TeamsSimulator
    client: TeamsClient
    auth: TeamsAuthenticator
    tokens: TokenSource
    adapter: CloudAdapter

    async def turn(self, body: dict[str, Any]) -> Any:
        turn = parse_activity(body)
        identity = await self.auth.authenticate(f"Bearer {sign(self.sim, service_url=turn.service_url)}", body)
        result = await teams_adapter.authenticated_turn(self.adapter, identity, tokens=self.tokens)
        return await self.adapter.process_activity(result, turn.activity, EchoBot().on_turn)


@pytest.fixture(autouse=True)
def no_blocking_openid_fetch(monkeypatch: pytest.MonkeyPatch) -> None:
    def refuse(*args: object, **kwargs: object) -> None:
        raise AssertionError("requests.get ran: botbuilder's blocking OpenID fetch")

    monkeypatch.setattr(requests, "get", refuse)


@pytest.fixture
async def rig() -> AsyncIterator[Rig]:
    async with TeamsSimulator(validator=check_connector_body) as sim, httpx.AsyncClient() as http:
        alice = sim.add_member("29:alice", name="Alice A", email="alice@example.com")
        sim.add_conversation(sim.personal_conversation_id(alice.id), kind="personal", members=(alice.id,))
        sim.add_conversation(CHANNEL, members=(alice.id,))
        policy = ServiceUrlPolicy(["127.0.0.1"])
        keys = OpenIdKeys(sim.openid_metadata_url, http=http)
        tokens = TokenSource(
            app_id=sim.app_id,
            app_password=sim.app_password,
            tenant_id=sim.tenant_id,
            login_url=sim.login_url,
            http=http,
        )
        adapter = teams_adapter.build_adapter(
            app_id=sim.app_id,
            tenant_id=sim.tenant_id,
            tokens=tokens,
            openid_metadata_url=sim.openid_metadata_url,
            login_url=sim.login_url,
        )
        auth = TeamsAuthenticator(app_id=sim.app_id, keys=keys, service_urls=policy)
        yield Rig(sim, TeamsClient(sim, "http://unused"), auth, tokens, adapter)
        assert sim.validation_errors == []


async def test_messages_route_through_the_handler_and_reply_with_the_shared_token(rig: Rig) -> None:
    alice = rig.sim.members["29:alice"]
    for _ in range(5):
        assert await rig.turn(rig.client.personal_message(alice, "access list")) is None
    replies = rig.sim.posted(rig.sim.personal_conversation_id(alice.id))
    assert [r.activity["text"] for r in replies] == ["hello alice@example.com"] * 5
    assert all(r.reply_to for r in replies)  # a reply to the user's message
    assert rig.sim.token_requests == 1  # botbuilder alone fetches one per turn
    assert {call.token for call in rig.sim.calls} == {rig.tokens.current}
    assert [c.operation for c in rig.sim.calls[:2]] == [
        "Conversations_GetConversationMember",
        "Conversations_ReplyToActivity",
    ]


async def test_an_action_execute_invoke_is_answered_with_a_card_body_not_a_500(rig: Rig) -> None:
    alice = rig.sim.members["29:alice"]
    body = rig.client.execute(alice, CHANNEL, verb="approve", data={"verb": "approve", "target": "r-1"}, reply_to="17")
    response = await rig.turn(body)
    assert response.status == 200
    answer = teams_adapter.invoke_body(response)
    assert isinstance(answer, dict) and answer["type"] == CARD_CONTENT_TYPE and answer["statusCode"] == 200
    check_card(answer["value"])
    assert answer["value"]["body"][0]["inlines"][0]["text"] == "approve r-1"


def test_invoke_body_passes_dicts_through_and_handles_no_body() -> None:
    from botbuilder.core import InvokeResponse

    assert teams_adapter.invoke_body(InvokeResponse(status=200, body={"a": 1})) == {"a": 1}
    assert teams_adapter.invoke_body(InvokeResponse(status=501)) is None
    assert teams_adapter.invoke_body(None) is None

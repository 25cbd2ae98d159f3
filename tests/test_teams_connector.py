"""Outbound Teams against the simulator: one token for all sends, bodies that match the Bot Connector
swagger, the token only for trusted serviceUrls, bounded retries then a typed ChatError."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from dataclasses import dataclass

import httpx
import pytest
import requests
from botbuilder.schema import Activity

from bot.core import messages
from bot.core.errors import ChatError
from bot.runtime.simulators.teams import TeamsSimulator
from handlers.teams import connector as tc
from handlers.teams.auth import ServiceUrlPolicy
from tests.fakes.teams_schemas import check_connector_body

CHANNEL = "19:ops@thread.tacv2"


class FakeClock:
    def __init__(self) -> None:
        self.now = 5000.0

    def __call__(self) -> float:
        return self.now


@dataclass
class Rig:
    sim: TeamsSimulator
    tokens: tc.TokenSource
    connector: tc.TeamsConnector
    policy: ServiceUrlPolicy
    clock: FakeClock
    sleeps: list[float]
    http: httpx.AsyncClient

    def make_connector(self, **kwargs: object) -> tc.TeamsConnector:
        async def sleep(seconds: float) -> None:
            self.sleeps.append(seconds)

        options: dict[str, object] = {"sleep": sleep, **kwargs}
        return tc.TeamsConnector(tokens=self.tokens, service_urls=self.policy, http=self.http, **options)  # type: ignore[arg-type]


@pytest.fixture(autouse=True)
def no_blocking_requests(monkeypatch: pytest.MonkeyPatch) -> None:
    def refuse(*args: object, **kwargs: object) -> None:
        raise AssertionError("requests was called: botbuilder's blocking client ran")

    monkeypatch.setattr(requests.Session, "request", refuse)


@pytest.fixture
async def rig() -> AsyncIterator[Rig]:
    async with TeamsSimulator(validator=check_connector_body) as sim, httpx.AsyncClient() as http:
        sim.add_member("29:alice", name="Alice A", email="alice@example.com")
        sim.add_member("29:bob", name="Bob B", email="bob@example.com")
        sim.add_conversation(CHANNEL, members=("29:alice", "29:bob"))
        clock = FakeClock()
        tokens = tc.TokenSource(
            app_id=sim.app_id,
            app_password=sim.app_password,
            tenant_id=sim.tenant_id,
            login_url=sim.login_url,
            http=http,
            clock=clock,
        )
        policy = ServiceUrlPolicy(["127.0.0.1"], trusted=[sim.service_url])
        rig = Rig(sim, tokens, None, policy, clock, [], http)  # type: ignore[arg-type]
        rig.connector = rig.make_connector()
        yield rig
        assert sim.validation_errors == []


def _message(text: str) -> Activity:
    return Activity(type="message", text=text)


async def test_a_hundred_sends_share_one_token_request(rig: Rig) -> None:
    for i in range(50):
        await rig.connector.send(rig.sim.service_url, CHANNEL, _message(f"n{i}"))
    await asyncio.gather(*(rig.connector.send(rig.sim.service_url, CHANNEL, _message(f"c{i}")) for i in range(50)))
    assert len(rig.sim.posted(CHANNEL)) == 100
    assert rig.sim.token_requests == 1 == rig.tokens.requests
    assert {call.token for call in rig.sim.calls} == {rig.tokens.current}


async def test_concurrent_first_sends_fetch_the_token_once(rig: Rig) -> None:
    await asyncio.gather(*(rig.connector.send(rig.sim.service_url, CHANNEL, _message("x")) for _ in range(20)))
    assert rig.sim.token_requests == 1


async def test_the_token_is_refreshed_five_minutes_before_it_expires(rig: Rig) -> None:
    await rig.connector.send(rig.sim.service_url, CHANNEL, _message("first"))
    rig.clock.now += 3600 - 301
    await rig.connector.send(rig.sim.service_url, CHANNEL, _message("still cached"))
    assert rig.sim.token_requests == 1
    rig.clock.now += 2
    await rig.connector.send(rig.sim.service_url, CHANNEL, _message("refreshed"))
    assert rig.sim.token_requests == 2
    assert len({call.token for call in rig.sim.calls}) == 2


async def test_a_401_drops_the_token_and_retries_once_with_a_new_one(rig: Rig) -> None:
    await rig.connector.send(rig.sim.service_url, CHANNEL, _message("first"))
    rig.sim.expire_tokens()
    await rig.connector.send(rig.sim.service_url, CHANNEL, _message("after revocation"))
    assert rig.sim.token_requests == 2 and len(rig.sim.posted(CHANNEL)) == 2


@pytest.mark.parametrize("where", ["never seen", "outside the allowlist"])
async def test_the_token_never_goes_to_an_untrusted_service_url(rig: Rig, where: str) -> None:
    url = "http://127.0.0.1:9/smba/" if where == "never seen" else "https://evil.example/"
    rig.policy.remember(url)  # an allowlisted URL becomes trusted; a foreign one never does
    if where == "never seen":
        url = "http://127.0.0.1:10/other/"
    with pytest.raises(tc.UntrustedServiceUrl) as refused:
        await rig.connector.send(url, CHANNEL, _message("x"))
    assert refused.value.message == messages.TEAMS_UNTRUSTED_SERVICE_URL
    assert rig.sim.calls == [] and rig.sim.token_requests == 0


async def test_reply_update_and_history(rig: Rig) -> None:
    first = await rig.connector.send(rig.sim.service_url, CHANNEL, _message("v1"))
    reply = await rig.connector.reply(rig.sim.service_url, CHANNEL, first, _message("a reply"))
    await rig.connector.update(rig.sim.service_url, CHANNEL, first, _message("v2"))
    original, answer = rig.sim.posted(CHANNEL)
    assert original.activity["text"] == "v2" and [h["text"] for h in original.history] == ["v1"]
    assert answer.id == reply and answer.reply_to == first
    put = rig.sim.calls_to("Conversations_UpdateActivity")[0]
    assert put.method == "PUT" and put.body is not None and put.body["id"] == first


async def test_a_personal_conversation_is_created_and_a_member_read(rig: Rig) -> None:
    cid = await rig.connector.create_personal_conversation(
        rig.sim.service_url, user_id="29:alice", tenant_id=rig.sim.tenant_id, bot_id=rig.sim.bot_id
    )
    assert cid == rig.sim.personal_conversation_id("29:alice")
    body = rig.sim.calls_to("Conversations_CreateConversation")[0].body
    assert body == {
        "isGroup": False,
        "bot": {"id": rig.sim.bot_id},
        "members": [{"id": "29:alice"}],
        "tenantId": rig.sim.tenant_id,
        "channelData": {"tenant": {"id": rig.sim.tenant_id}},
    }
    member = await rig.connector.get_member(rig.sim.service_url, CHANNEL, "bob@example.com")
    assert (member.id, member.email, member.user_principal_name) == ("29:bob", "bob@example.com", "bob@example.com")
    page = await rig.connector.paged_members(rig.sim.service_url, CHANNEL, page_size=1)
    rest = await rig.connector.paged_members(
        rig.sim.service_url, CHANNEL, page_size=1, continuation_token=page.continuation_token
    )
    assert [m.id for m in page.members + rest.members] == ["29:alice", "29:bob"]


async def test_403_blocked_is_a_chat_error_without_retries(rig: Rig) -> None:
    cid = await rig.connector.create_personal_conversation(
        rig.sim.service_url, user_id="29:alice", tenant_id=rig.sim.tenant_id, bot_id=rig.sim.bot_id
    )
    rig.sim.block(cid)
    with pytest.raises(tc.TeamsBlocked) as blocked:
        await rig.connector.send(rig.sim.service_url, cid, _message("hello"))
    assert isinstance(blocked.value, ChatError)
    assert blocked.value.code == "MessageWritesBlocked" and blocked.value.message == messages.teams_blocked("send")
    assert len(rig.sim.calls_to("Conversations_SendToConversation")) == 1 and rig.sleeps == []


async def test_404_is_not_found_without_retries(rig: Rig) -> None:
    with pytest.raises(tc.TeamsNotFound):
        await rig.connector.update(rig.sim.service_url, CHANNEL, "no-such-activity", _message("x"))
    with pytest.raises(tc.TeamsNotFound):
        await rig.connector.get_member(rig.sim.service_url, "19:gone@thread.tacv2", "29:alice")
    assert len(rig.sim.calls) == 2 and rig.sleeps == []


async def test_429_waits_for_retry_after_then_succeeds(rig: Rig) -> None:
    rig.sim.fail_next(429, retry_after=2)
    await rig.connector.send(rig.sim.service_url, CHANNEL, _message("x"))
    assert rig.sleeps == [2.0] and len(rig.sim.posted(CHANNEL)) == 1


async def test_persistent_429_gives_up_after_bounded_attempts(rig: Rig) -> None:
    rig.sim.fail_next(429, retry_after=1, times=10)
    with pytest.raises(tc.TeamsRateLimited) as limited:
        await rig.connector.send(rig.sim.service_url, CHANNEL, _message("x"))
    assert len(rig.sim.calls) == tc.MAX_ATTEMPTS and rig.sleeps == [1.0] * (tc.MAX_ATTEMPTS - 1)
    assert limited.value.message == messages.teams_unreachable("send") and limited.value.status == 429


async def test_a_retry_after_longer_than_ackgate_waits_fails_at_once(rig: Rig) -> None:
    rig.sim.fail_next(429, retry_after=120)
    with pytest.raises(tc.TeamsRateLimited):
        await rig.connector.send(rig.sim.service_url, CHANNEL, _message("x"))
    assert len(rig.sim.calls) == 1 and rig.sleeps == []


async def test_5xx_is_retried_with_backoff_then_succeeds_or_gives_up(rig: Rig) -> None:
    rig.sim.fail_next(503, times=2)
    await rig.connector.send(rig.sim.service_url, CHANNEL, _message("x"))
    assert len(rig.sim.calls) == 3 and len(rig.sleeps) == 2 and rig.sleeps[1] > rig.sleeps[0] * 0.5
    rig.sim.fail_next(500, times=10)
    with pytest.raises(tc.TeamsUnavailable) as down:
        await rig.connector.send(rig.sim.service_url, CHANNEL, _message("y"))
    assert down.value.status == 500 and len(rig.sim.posted(CHANNEL)) == 1


async def test_a_timed_out_put_is_retried_but_a_timed_out_post_is_not(rig: Rig) -> None:
    connector = rig.make_connector(timeout=0.2)
    first = await connector.send(rig.sim.service_url, CHANNEL, _message("v1"))
    rig.sim.delay_next(1.0)
    await connector.update(rig.sim.service_url, CHANNEL, first, _message("v2"))
    assert len(rig.sim.calls_to("Conversations_UpdateActivity")) == 2
    rig.sim.delay_next(1.0)
    with pytest.raises(tc.TeamsUnavailable) as slow:
        await connector.send(rig.sim.service_url, CHANNEL, _message("maybe posted"))
    assert slow.value.message == messages.teams_unreachable("send")
    assert len(rig.sim.calls_to("Conversations_SendToConversation")) == 2  # no second POST: no duplicate message


async def test_a_failing_token_endpoint_is_a_clear_token_error(rig: Rig) -> None:
    rig.sim.fail_next(500, on="token")
    with pytest.raises(tc.TeamsTokenError) as failed:
        await rig.connector.send(rig.sim.service_url, CHANNEL, _message("x"))
    assert "MICROSOFT_APP_ID" in failed.value.message and rig.sim.calls == []
    await rig.connector.send(rig.sim.service_url, CHANNEL, _message("x"))  # recovers on the next call


async def test_wrong_credentials_name_the_login_error_but_not_the_secret(rig: Rig) -> None:
    tokens = tc.TokenSource(
        app_id=rig.sim.app_id,
        app_password="wrong-secret-value",
        tenant_id=rig.sim.tenant_id,
        login_url=rig.sim.login_url,
        http=rig.http,
    )
    with pytest.raises(tc.TeamsTokenError) as refused:
        await tokens.token()
    assert refused.value.code == "invalid_client" and "AADSTS7000215" in refused.value.message
    assert "wrong-secret-value" not in refused.value.message
    unreachable = tc.TokenSource(
        app_id="a", app_password="b", tenant_id="t", login_url="http://127.0.0.1:9", http=rig.http
    )
    with pytest.raises(tc.TeamsTokenError, match="unreachable"):
        await unreachable.token()


async def test_botbuilder_credentials_use_the_shared_cached_token(rig: Rig) -> None:
    factory = tc.SharedTokenCredentialsFactory(rig.tokens, app_id=rig.sim.app_id)
    first = await factory.create_credentials(rig.sim.app_id, "https://api.botframework.com", "", True)
    second = await factory.create_credentials(rig.sim.app_id, "https://api.botframework.com", "", True)
    assert first is second and not await factory.is_authentication_disabled()
    assert await factory.is_valid_app_id(rig.sim.app_id) and not await factory.is_valid_app_id("")
    with pytest.raises(tc.TeamsTokenError):
        first.get_access_token()  # nothing cached yet: it never fetches synchronously
    token = await rig.tokens.token()
    assert first.get_access_token() == token
    with pytest.raises(ValueError, match="app id"):
        tc.SharedTokenCredentialsFactory(rig.tokens, app_id="")

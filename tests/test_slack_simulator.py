"""The Slack Web API simulator behaves like the parts of Slack Ackgate relies on."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import pytest
from slack_sdk.errors import SlackApiError
from slack_sdk.web.async_client import AsyncWebClient

from bot.runtime.simulators.slack import SlackSimulator
from tests.fakes.block_kit import SLACK_REFERENCE

VIEW: dict[str, Any] = {"type": "modal", "callback_id": "x", "title": {"type": "plain_text", "text": "T"}, "blocks": []}


@pytest.fixture
async def slack() -> AsyncIterator[SlackSimulator]:
    async with SlackSimulator() as sim:
        sim.add_user("U1", "one@example.com", "One")
        sim.add_user("U2", None, "Two")
        sim.add_channel("C1")
        yield sim


@pytest.fixture
def client(slack: SlackSimulator) -> AsyncWebClient:
    return AsyncWebClient(token=slack.token, base_url=slack.base_url)


async def _error(call: Any) -> str:
    with pytest.raises(SlackApiError) as caught:
        await call
    return str(caught.value.response["error"])


async def test_base_url_ends_with_api_and_a_wrong_token_is_invalid_auth(slack: SlackSimulator) -> None:
    assert slack.base_url.endswith("/api/")
    wrong = AsyncWebClient(token="xoxb-nope", base_url=slack.base_url)
    assert await _error(wrong.auth_test()) == "invalid_auth"


async def test_the_token_is_never_recorded(slack: SlackSimulator, client: AsyncWebClient) -> None:
    await client.auth_test()
    await client.users_info(user="U1")
    assert slack.token not in json.dumps([c.args for c in slack.calls])


async def test_users_info_has_the_shape_of_slacks_sample_and_hides_a_missing_email(client: AsyncWebClient) -> None:
    sample = json.loads((SLACK_REFERENCE / "web-api-samples/users.info.json").read_text())
    one = (await client.users_info(user="U1"))["user"]
    assert set(one) <= set(sample["user"])
    assert set(one["profile"]) <= set(sample["user"]["profile"])
    assert one["profile"]["email"] == "one@example.com"
    assert "email" not in (await client.users_info(user="U2"))["user"]["profile"]


async def test_lookup_by_email_finds_members_and_says_users_not_found_otherwise(client: AsyncWebClient) -> None:
    assert (await client.users_lookupByEmail(email="ONE@example.com"))["user"]["id"] == "U1"
    assert await _error(client.users_lookupByEmail(email="nobody@example.com")) == "users_not_found"


async def test_chat_update_with_text_only_removes_the_blocks_as_slack_does(
    slack: SlackSimulator, client: AsyncWebClient
) -> None:
    posted = await client.chat_postMessage(channel="C1", text="hi", blocks=[{"type": "divider"}])
    await client.chat_update(channel="C1", ts=posted["ts"], text="edited")
    (message,) = slack.messages["C1"]
    assert (message.text, message.blocks, message.edits) == ("edited", [], 1)


async def test_posting_needs_a_known_channel_and_some_text(client: AsyncWebClient) -> None:
    assert await _error(client.chat_postMessage(channel="C404", text="hi")) == "channel_not_found"
    # through api_call: chat_postMessage itself warns before sending a message without text
    assert await _error(client.api_call("chat.postMessage", json={"channel": "C1"})) == "no_text"


async def test_post_ephemeral_is_kept_apart_from_channel_messages(
    slack: SlackSimulator, client: AsyncWebClient
) -> None:
    answer = await client.chat_postEphemeral(channel="C1", user="U1", text="only you")
    assert answer["message_ts"]
    assert slack.ephemerals[0]["text"] == "only you"
    assert "C1" not in slack.messages


async def test_a_trigger_id_works_once_and_not_after_it_expires(slack: SlackSimulator, client: AsyncWebClient) -> None:
    trigger = slack.trigger_id()
    await client.views_open(trigger_id=trigger, view=VIEW)
    assert await _error(client.views_open(trigger_id=trigger, view=VIEW)) == "exchanged_trigger_id"
    late = slack.trigger_id()
    slack.expire_triggers()
    assert await _error(client.views_open(trigger_id=late, view=VIEW)) == "expired_trigger_id"
    assert await _error(client.views_open(trigger_id="made-up", view=VIEW)) == "invalid_trigger_id"


async def test_views_update_with_a_stale_hash_is_a_hash_conflict(slack: SlackSimulator, client: AsyncWebClient) -> None:
    opened = (await client.views_open(trigger_id=slack.trigger_id(), view=VIEW))["view"]
    updated = (await client.views_update(view_id=opened["id"], hash=opened["hash"], view=VIEW))["view"]
    assert updated["hash"] != opened["hash"]
    assert await _error(client.views_update(view_id=opened["id"], hash=opened["hash"], view=VIEW)) == "hash_conflict"


async def test_fail_next_refuses_once_with_the_given_status(slack: SlackSimulator, client: AsyncWebClient) -> None:
    slack.fail_next("auth.test", "ratelimited", status=429)
    assert await _error(client.auth_test()) == "ratelimited"
    assert (await client.auth_test())["user_id"] == slack.bot_user_id


async def test_response_urls_capture_what_is_posted(slack: SlackSimulator) -> None:
    async with aiohttp.ClientSession() as session, session.post(slack.response_url("abc"), json={"text": "hi"}) as r:
        assert (r.status, await r.text()) == (200, "ok")
    await slack.wait_for(lambda: slack.responses.get("abc"))
    assert slack.responses["abc"] == [{"text": "hi"}]

"""SlackNotifier and SlackIdentity against the Slack Web API simulator over loopback HTTP."""

from __future__ import annotations

import asyncio
import socket
from collections.abc import AsyncIterator

import pytest
from slack_sdk.errors import SlackApiError
from slack_sdk.web.async_client import AsyncWebClient

from bot.core import messages
from bot.core.domain import MessageRef, Principal
from bot.core.errors import ChatError, IdentityError
from bot.core.views import Action, Card
from bot.runtime.simulators.slack import SlackSimulator
from handlers.slack.notifier import SlackIdentity, SlackNotifier
from tests.fakes.block_kit import assert_within_limits

ALICE = Principal(platform="slack", user_id="U0ALICE", email="alice@example.com", name="Alice")
CARD = Card(title="Access request", text="prod-db for 2h", actions=(Action("approve", "Approve", "r-1", "primary"),))


class Ticks:
    """A monotonic clock that only moves when told to."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
async def slack() -> AsyncIterator[SlackSimulator]:
    async with SlackSimulator() as sim:
        sim.add_user("U0ALICE", "alice@example.com", "Alice")
        sim.add_user("U0GUEST", None, "Guest")
        sim.add_channel("C0APPROVALS")
        yield sim


@pytest.fixture
def client(slack: SlackSimulator) -> AsyncWebClient:
    return AsyncWebClient(token=slack.token, base_url=slack.base_url)


async def test_send_to_user_opens_the_dm_and_returns_its_channel_and_ts(
    slack: SlackSimulator, client: AsyncWebClient
) -> None:
    ref = await SlackNotifier(client).send_to_user(ALICE, CARD)
    assert slack.methods_called() == ["conversations.open", "chat.postMessage"]
    assert slack.calls_to("conversations.open") == [{"users": "U0ALICE"}]
    (message,) = slack.messages[slack.dm_channel("U0ALICE")]
    assert ref == MessageRef(platform="slack", channel=slack.dm_channel("U0ALICE"), message_id=message.ts)
    assert ref.channel.startswith("D")
    assert message.blocks[-1]["elements"][0]["action_id"] == "ackgate.approve"
    assert_within_limits({"blocks": message.blocks})


async def test_update_replaces_the_blocks_of_the_posted_message(slack: SlackSimulator, client: AsyncWebClient) -> None:
    notifier = SlackNotifier(client)
    ref = await notifier.send_to_channel("C0APPROVALS", CARD)
    await notifier.update(ref, Card(title="Approved by Bob"))
    (message,) = slack.messages["C0APPROVALS"]
    assert message.edits == 1
    assert message.text == "Approved by Bob"
    assert [b["type"] for b in message.blocks] == ["header"]
    (update,) = slack.calls_to("chat.update")
    assert (update["channel"], update["ts"]) == ("C0APPROVALS", ref.message_id)


async def test_a_refused_post_is_a_chat_error_saying_what_slack_said(client: AsyncWebClient) -> None:
    with pytest.raises(ChatError) as caught:
        await SlackNotifier(client).send_to_channel("C0MISSING", CARD)
    assert caught.value.message == messages.slack_refused("chat.postMessage", "channel_not_found")
    assert isinstance(caught.value.__cause__, SlackApiError)


async def test_an_update_of_an_unknown_message_is_a_chat_error(client: AsyncWebClient) -> None:
    with pytest.raises(ChatError, match="message_not_found"):
        await SlackNotifier(client).update(MessageRef("slack", "C0APPROVALS", "1.000001"), CARD)


async def test_rate_limiting_is_a_chat_error(slack: SlackSimulator, client: AsyncWebClient) -> None:
    slack.fail_next("chat.postMessage", "ratelimited", status=429)
    with pytest.raises(ChatError, match="ratelimited"):
        await SlackNotifier(client).send_to_channel("C0APPROVALS", CARD)


async def test_a_wrong_bot_token_is_a_chat_error(slack: SlackSimulator) -> None:
    wrong = AsyncWebClient(token="xoxb-wrong", base_url=slack.base_url)
    with pytest.raises(ChatError, match="invalid_auth"):
        await SlackNotifier(wrong).send_to_channel("C0APPROVALS", CARD)


async def test_slack_out_of_reach_is_a_chat_error() -> None:
    with socket.socket() as sock:  # a port nothing listens on once closed
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    unreachable = AsyncWebClient(token="xoxb-x", base_url=f"http://127.0.0.1:{port}/api/")
    with pytest.raises(ChatError) as caught:
        await SlackNotifier(unreachable).send_to_channel("C0APPROVALS", CARD)
    assert caught.value.message == messages.slack_unreachable("chat.postMessage")


async def test_user_by_email_finds_the_member_and_ignores_case(client: AsyncWebClient) -> None:
    assert await SlackNotifier(client).user_by_email("Alice@Example.com") == ALICE


async def test_user_by_email_is_none_for_an_unknown_email(client: AsyncWebClient) -> None:
    assert await SlackNotifier(client).user_by_email("nobody@example.com") is None


async def test_user_by_email_turns_other_refusals_into_chat_errors(
    slack: SlackSimulator, client: AsyncWebClient
) -> None:
    slack.fail_next("users.lookupByEmail", "missing_scope")
    with pytest.raises(ChatError, match="missing_scope"):
        await SlackNotifier(client).user_by_email("alice@example.com")


# --- identity ---------------------------------------------------------------------------------


async def test_identity_reads_email_and_name_from_users_info(client: AsyncWebClient) -> None:
    assert await SlackIdentity(client).principal("U0ALICE") == ALICE


async def test_identity_is_cached_until_the_ttl_passes(slack: SlackSimulator, client: AsyncWebClient) -> None:
    ticks = Ticks()
    identity = SlackIdentity(client, ttl_seconds=60, monotonic=ticks)
    await identity.principal("U0ALICE")
    ticks.now += 59
    await identity.principal("U0ALICE")
    assert len(slack.calls_to("users.info")) == 1
    ticks.now += 2
    await identity.principal("U0ALICE")
    assert len(slack.calls_to("users.info")) == 2


async def test_concurrent_lookups_of_one_user_share_one_users_info_call(
    slack: SlackSimulator, client: AsyncWebClient
) -> None:
    identity = SlackIdentity(client)
    stalled = slack.hold("users.info")
    lookups = [asyncio.ensure_future(identity.principal("U0ALICE")) for _ in range(5)]
    await slack.wait_for(lambda: slack.calls_to("users.info"))
    stalled.set()
    assert await asyncio.gather(*lookups) == [ALICE] * 5
    assert len(slack.calls_to("users.info")) == 1


async def test_one_cancelled_lookup_does_not_cancel_the_others(slack: SlackSimulator, client: AsyncWebClient) -> None:
    identity = SlackIdentity(client)
    stalled = slack.hold("users.info")
    impatient = asyncio.ensure_future(identity.principal("U0ALICE"))
    patient = asyncio.ensure_future(identity.principal("U0ALICE"))
    await slack.wait_for(lambda: slack.calls_to("users.info"))
    impatient.cancel()
    stalled.set()
    assert await patient == ALICE
    assert impatient.cancelled()


async def test_a_user_without_visible_email_is_an_identity_error_and_not_cached(
    slack: SlackSimulator, client: AsyncWebClient
) -> None:
    identity = SlackIdentity(client)
    with pytest.raises(IdentityError) as caught:
        await identity.principal("U0GUEST")
    assert caught.value.message == messages.SLACK_NO_EMAIL
    slack.add_user("U0GUEST", "guest@example.com", "Guest")
    assert (await identity.principal("U0GUEST")).email == "guest@example.com"


async def test_an_unknown_user_is_a_chat_error(client: AsyncWebClient) -> None:
    with pytest.raises(ChatError, match="user_not_found"):
        await SlackIdentity(client).principal("U0NOBODY")

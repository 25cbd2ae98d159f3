"""The bounded retries of every Slack call (``handlers.slack.retry``), against the Slack simulator
and a loopback server that answers what a test tells it to."""

from __future__ import annotations

import time
from collections.abc import AsyncIterator

import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer
from slack_sdk.errors import SlackApiError

from bot.runtime.simulators.slack import SlackSimulator
from handlers.slack.notifier import post_response, web_client


@pytest.fixture
async def slack() -> AsyncIterator[SlackSimulator]:
    async with SlackSimulator() as sim:
        sim.add_channel("C0APPROVALS")
        yield sim


async def test_a_429_with_retry_after_is_waited_out_and_retried(slack: SlackSimulator) -> None:
    client = web_client(token=slack.token, base_url=slack.base_url)
    slack.fail_next("chat.postMessage", "ratelimited", status=429)  # answers Retry-After: 1
    started = time.monotonic()
    posted = await client.chat_postMessage(channel="C0APPROVALS", text="approve?")
    assert posted["ok"] is True
    assert time.monotonic() - started >= 1.0  # Retry-After was honoured
    assert len(slack.calls_to("chat.postMessage")) == 2
    assert [m.text for m in slack.messages["C0APPROVALS"]] == ["approve?"]


@pytest.mark.parametrize("status", [500, 502, 503, 504])
async def test_a_server_error_is_retried(slack: SlackSimulator, status: int) -> None:
    client = web_client(token=slack.token, base_url=slack.base_url)
    slack.fail_next("chat.postMessage", "internal_error", status=status)
    posted = await client.chat_postMessage(channel="C0APPROVALS", text="approve?")
    assert posted["ok"] is True
    assert len(slack.messages["C0APPROVALS"]) == 1


async def test_retries_stop_after_two_and_the_error_surfaces(slack: SlackSimulator) -> None:
    client = web_client(token=slack.token, base_url=slack.base_url)
    for _ in range(3):
        slack.fail_next("chat.postMessage", "internal_error", status=500)
    with pytest.raises(SlackApiError):
        await client.chat_postMessage(channel="C0APPROVALS", text="approve?")
    assert len(slack.calls_to("chat.postMessage")) == 3


async def test_a_refusal_in_the_body_is_not_retried(slack: SlackSimulator) -> None:
    client = web_client(token=slack.token, base_url=slack.base_url)
    slack.fail_next("chat.postMessage", "channel_not_found")
    with pytest.raises(SlackApiError):
        await client.chat_postMessage(channel="C0APPROVALS", text="approve?")
    assert len(slack.calls_to("chat.postMessage")) == 1


class Scripted:
    """A loopback server answering each request with the next (status, headers) of its script."""

    def __init__(self, *answers: tuple[int, dict[str, str]]) -> None:
        self.answers = list(answers)
        self.hits = 0

    async def handle(self, request: web.Request) -> web.Response:
        self.hits += 1
        status, headers = self.answers.pop(0) if self.answers else (200, {})
        body = '{"ok": true}' if status == 200 else '{"ok": false, "error": "ratelimited"}'
        return web.Response(status=status, headers=headers, text=body, content_type="application/json")


@pytest.fixture
async def scripted() -> AsyncIterator[tuple[Scripted, str]]:
    script = Scripted()
    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", script.handle)
    async with TestServer(app, host="127.0.0.1") as server:
        yield script, str(server.make_url("/"))


async def test_a_retry_after_longer_than_the_bound_is_not_waited_for(scripted: tuple[Scripted, str]) -> None:
    script, url = scripted
    script.answers = [(429, {"Retry-After": "3600"})]
    client = web_client(token="xoxb-test", base_url=url + "api/")
    started = time.monotonic()
    with pytest.raises(SlackApiError):
        await client.chat_postMessage(channel="C1", text="x")
    assert time.monotonic() - started < 1.0
    assert script.hits == 1


async def test_a_response_url_post_is_retried_on_a_server_error(scripted: tuple[Scripted, str]) -> None:
    script, url = scripted
    script.answers = [(503, {}), (502, {})]
    assert await post_response(url + "response/abc", {"text": "done"}) is True
    assert script.hits == 3


async def test_a_response_url_that_keeps_failing_gives_up_and_says_so(scripted: tuple[Scripted, str]) -> None:
    script, url = scripted
    script.answers = [(500, {})] * 5
    assert await post_response(url + "response/abc", {"text": "done"}) is False
    assert script.hits == 3


async def test_a_refused_connection_is_retried_then_given_up(unused_tcp_port: int) -> None:
    started = time.monotonic()
    assert await post_response(f"http://127.0.0.1:{unused_tcp_port}/response/x", {"text": "done"}) is False
    assert time.monotonic() - started < 5.0

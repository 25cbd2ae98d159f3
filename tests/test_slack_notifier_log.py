"""A post to a response_url never puts the URL (a capability) or the body into a log line, nor a
Web API call its arguments or answer, even with every logger at DEBUG: slack_sdk's clients are
given loggers at WARNING of their own, so they never format their debug lines at all."""

from __future__ import annotations

import logging

import pytest

from bot.runtime.simulators.slack import SlackSimulator
from handlers.slack.notifier import post_response, web_client


async def test_a_response_url_post_logs_neither_the_url_nor_the_body_at_debug(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.DEBUG)  # the root and every logger without a level of its own
    async with SlackSimulator() as slack:
        url = slack.response_url("tok-secret-1")
        assert await post_response(url, {"text": "body-marker-42"})
        assert slack.responses["tok-secret-1"][0]["text"] == "body-marker-42"
    logged = "\n".join(r.getMessage() for r in caplog.records)
    assert "tok-secret-1" not in logged
    assert "body-marker-42" not in logged


async def test_a_web_api_call_logs_neither_its_arguments_nor_the_answer_at_debug(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.DEBUG)
    async with SlackSimulator() as slack:
        slack.add_user("U0ARGS1", "args-marker@example.com", "Marker")
        client = web_client(token=slack.token, base_url=slack.base_url)
        found = await client.users_info(user="U0ARGS1")
        assert found["user"]["profile"]["email"] == "args-marker@example.com"
    logged = "\n".join(r.getMessage() for r in caplog.records)
    assert "U0ARGS1" not in logged and "args-marker" not in logged

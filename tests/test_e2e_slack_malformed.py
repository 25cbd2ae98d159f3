"""Hostile and malformed requests at ``/slack/events`` of the real app: each is refused with a 4xx
and a short sentence within a second, no traceback in the answer or the logs, no body in the logs,
and nothing runs. The causes are the 5xx and slow answers of issue 6, item 9."""

from __future__ import annotations

import asyncio
import json
import logging
import time
from typing import Any
from urllib.parse import parse_qs, quote, urlencode

import pytest

from bot.core import messages
from bot.runtime.simulators.slack_requests import (
    block_actions_payload,
    form_state,
    signed_headers,
    slash_command_body,
    view_submission_body,
)
from bot.runtime.simulators.stage import SIGNING_SECRET, Stage
from tests.fakes.stage_fixtures import requests_of

ALICE = "U0ALICE"


def clicked(**changes: Any) -> dict[str, Any]:
    payload = block_actions_payload(
        user_id=ALICE, action_id="ackgate.approve", value="r-1", response_url="http://127.0.0.1:9/x"
    )
    payload.update(changes)
    return payload


def submitted(**view_changes: Any) -> dict[str, Any]:
    body = view_submission_body(user_id=ALICE, values=form_state(resource="prod-k8s", duration="1h"))
    made: dict[str, Any] = json.loads(parse_qs(body)["payload"][0])
    made["view"].update(view_changes)
    return made


def as_body(payload: object) -> str:
    return urlencode({"payload": json.dumps(payload)})


DEEP = "[" * 40_000 + "]" * 40_000  # 240 KB encoded; 100,000 deep is past the size limit (413)

SIGNED_BUT_MALFORMED: dict[str, str] = {
    "view without type": as_body(
        {**submitted(), "view": {k: v for k, v in submitted()["view"].items() if k != "type"}}
    ),
    "workflow_step_edit without workflow_step": as_body({"type": "workflow_step_edit", "user": {"id": ALICE}}),
    "two response_urls": as_body({**submitted(), "response_urls": [{"response_url": "https://hooks.slack.com/a"}] * 2}),
    "response_urls an object": as_body({**submitted(), "response_urls": {"a": 1}}),
    "payload nested 40,000 deep": "payload=" + quote(DEEP),
    "user a string": as_body(clicked(user="U0ALICE")),
    "actions empty": as_body(clicked(actions=[])),
    "action without action_id": as_body(clicked(actions=[{"value": "r-1"}])),
    "a 5,000-digit number": as_body(clicked()).replace("false", "1" * 5000, 1),
    "payload not json": "payload=%7Bnot+json",
    "payload a list": "payload=%5B1%2C2%5D",
    "payload of an unknown type": as_body({"type": "shortcut", "user": {"id": ALICE}}),
    "repeated form fields": "command=%2Faccess&command=%2Faccess&text=list",
    "not a form at all": "%%%%",
    "slash command without user": "command=%2Faccess&text=list&response_url=http%3A%2F%2Fx&trigger_id=1.2.3",
    "response_url not a URL": slash_command_body(text="list", user_id=ALICE, response_url="javascript:alert(1)"),
    "user id with markup": slash_command_body(text="list", user_id="<@U1>", response_url="https://hooks.slack.com/x"),
    "not UTF-8": "command=%2Faccess&text=%FF%FE",
}


def assert_no_traceback(caplog: pytest.LogCaptureFixture) -> None:
    assert not [r for r in caplog.records if r.exc_info], [r.getMessage() for r in caplog.records if r.exc_info]
    assert not [r for r in caplog.records if r.levelno >= logging.ERROR]
    assert "Traceback" not in caplog.text


async def post(stage: Stage, body: str, headers: dict[str, str]) -> tuple[int, str, float]:
    assert stage._session is not None
    started = time.monotonic()
    async with stage._session.post(f"{stage.url}/slack/events", data=body.encode("latin-1"), headers=headers) as r:
        return r.status, await r.text(), time.monotonic() - started


@pytest.mark.parametrize("case", list(SIGNED_BUT_MALFORMED))
async def test_a_signed_malformed_payload_is_a_quick_400_without_traceback(
    stage: Stage, caplog: pytest.LogCaptureFixture, case: str
) -> None:
    caplog.set_level(logging.DEBUG)
    body = SIGNED_BUT_MALFORMED[case]
    status, text, elapsed = await post(stage, body, signed_headers(body, secret=SIGNING_SECRET))

    assert status == 400
    assert text == messages.SLACK_BAD_REQUEST
    assert elapsed < 1.0
    assert_no_traceback(caplog)
    assert stage.slack.calls == []  # nothing ran: not even bolt's auth.test
    assert await requests_of(stage, "alice@example.com") == []


async def test_an_extra_event_key_in_a_click_is_ignored_not_a_crash(
    stage: Stage, caplog: pytest.LogCaptureFixture
) -> None:
    """bolt would read ``event`` as an Events API envelope; the model drops what it does not know."""
    stage.person("alice")
    body = as_body(clicked(event="not an object", actions=[{"action_id": "ackgate.teleport", "value": "r-1"}]))
    status, _, elapsed = await post(stage, body, signed_headers(body, secret=SIGNING_SECRET))
    assert status == 200
    assert elapsed < 1.0
    assert_no_traceback(caplog)


@pytest.mark.parametrize(
    "body",
    [
        as_body(clicked(actions=[{"action_id": "someone-elses.button", "value": "r-1"}])),
        as_body(submitted(callback_id="someone-elses.form")),
        slash_command_body(text="list", user_id=ALICE, response_url="https://hooks.slack.com/x", command="/other"),
    ],
)
async def test_a_valid_request_no_listener_handles_is_a_404_and_its_body_is_not_logged(
    stage: Stage, caplog: pytest.LogCaptureFixture, body: str
) -> None:
    caplog.set_level(logging.DEBUG)
    status, text, elapsed = await post(stage, body, signed_headers(body, secret=SIGNING_SECRET))
    assert (status, text) == (404, messages.SLACK_NOT_HANDLED)
    assert elapsed < 1.0
    assert "hooks.slack.com" not in caplog.text and "r-1" not in caplog.text


async def raw_request(stage: Stage, headers: list[tuple[bytes, bytes]], body: bytes) -> tuple[int, bytes]:
    """An HTTP request written byte by byte, for headers no client library would send."""
    host, port = stage.url.removeprefix("http://").split(":")
    reader, writer = await asyncio.open_connection(host, int(port))
    head = b"POST /slack/events HTTP/1.1\r\nHost: ackgate\r\nConnection: close\r\n"
    head += b"".join(name + b": " + value + b"\r\n" for name, value in headers)
    head += b"Content-Length: " + str(len(body)).encode() + b"\r\n\r\n"
    writer.write(head + body)
    await writer.drain()
    answer = await reader.read()
    writer.close()
    await writer.wait_closed()
    status = int(answer.split(b" ", 2)[1])
    return status, answer


@pytest.mark.parametrize(
    ("signature", "timestamp"),
    [
        (b"v0=" + "é".encode("latin-1") * 64, str(int(time.time())).encode()),
        (b"v0=" + "é".encode() * 64, str(int(time.time())).encode()),
        (b"v0=" + b"0" * 64, b"12abc"),
        (b"v0=" + b"0" * 64, b"-1"),
        (b"v0=" + b"0" * 64, b"9" * 400),
        (b"v1=" + b"0" * 64, str(int(time.time())).encode()),
        (b"", b""),
    ],
)
async def test_a_broken_signature_header_is_a_401_without_traceback(
    stage: Stage, caplog: pytest.LogCaptureFixture, signature: bytes, timestamp: bytes
) -> None:
    caplog.set_level(logging.DEBUG)
    body = slash_command_body(text="list", user_id=ALICE, response_url="https://hooks.slack.com/x").encode()
    headers = [
        (b"Content-Type", b"application/x-www-form-urlencoded"),
        (b"X-Slack-Signature", signature),
        (b"X-Slack-Request-Timestamp", timestamp),
    ]
    status, answer = await raw_request(stage, headers, body)
    assert status == 401
    assert messages.SLACK_UNSIGNED.encode() in answer
    assert b"Traceback" not in answer
    assert_no_traceback(caplog)
    assert stage.slack.calls == []


async def test_a_300_kb_unsigned_body_leaves_nothing_of_itself_in_the_logs(
    stage: Stage, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    marker = "ZQXJ-attacker-bytes-"
    body = "payload=" + quote(json.dumps({"type": "block_actions", "x": marker * 15_000}))
    assert len(body) > 300_000
    status, _, elapsed = await post(stage, body, {"Content-Type": "application/x-www-form-urlencoded"})
    assert status == 401
    assert elapsed < 1.0
    assert "ZQXJ" not in caplog.text
    assert max(len(r.getMessage()) for r in caplog.records) < 2_000
    [refusal] = [r for r in caplog.records if r.name == "handlers.slack.app"]
    assert refusal.getMessage() == "Refused an unsigned Slack request: no integer X-Slack-Request-Timestamp"


async def test_a_body_larger_than_slack_ever_sends_is_a_413(stage: Stage) -> None:
    body = "payload=" + "A" * 600_000
    status, text, _ = await post(stage, body, signed_headers(body, secret=SIGNING_SECRET))
    assert (status, text) == (413, messages.SLACK_TOO_LARGE)


async def test_a_replay_older_than_five_minutes_is_a_401(stage: Stage) -> None:
    body = slash_command_body(text="list", user_id=ALICE, response_url="https://hooks.slack.com/x")
    headers = signed_headers(body, secret=SIGNING_SECRET, timestamp=int(time.time()) - 301)
    status, text, _ = await post(stage, body, headers)
    assert (status, text) == (401, messages.SLACK_UNSIGNED)


async def test_slacks_certificate_check_is_answered_200(stage: Stage) -> None:
    body = "ssl_check=1&token=deprecated-verification-token"
    status, text, _ = await post(stage, body, signed_headers(body, secret=SIGNING_SECRET))
    assert (status, text) == (200, "")

"""Signed Slack requests into Ackgate's aiohttp app, with the Slack Web API simulator behind the
bolt client and a hand-written fake of the use cases. Everything goes over loopback HTTP."""

from __future__ import annotations

import asyncio
import itertools
import json
import logging
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field, replace
from typing import Any
from urllib.parse import urlencode

import aiohttp
import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer
from pydantic import SecretStr
from slack_sdk.web.async_client import AsyncWebClient

from bot.core import messages
from bot.core.commands import Command, ListMine, RequestAccess, Revoke
from bot.core.domain import Principal
from bot.core.errors import NotAuthorized, PagerDutyUnavailable, StorageError
from bot.core.ports import Store
from bot.core.views import Action, Card, Choice, Fact, RequestForm
from bot.runtime.simulators.slack import SlackSimulator
from bot.runtime.simulators.slack_requests import (
    block_actions_body,
    block_actions_payload,
    form_state,
    post_signed,
    slash_command_body,
    view_submission_body,
)
from handlers.slack.app import AccessUseCases, build_slack_app, mount_slack
from handlers.slack.notifier import WEB_API_SCOPES, SlackIdentity, SlackNotifier
from tests.fakes import storage_fixtures
from tests.fakes.block_kit import assert_within_limits

memory_store = storage_fixtures.memory_store

SECRET = "test-signing-secret-for-ackgate"
ALICE, BOB, NOEMAIL = "U0ALICE", "U0BOB", "U0NOEMAIL"
ALICE_P = Principal(platform="slack", user_id=ALICE, email="alice@example.com", name="Alice Liddell")
BOB_P = Principal(platform="slack", user_id=BOB, email="bob@example.com", name="Bob")


class FakeAccess:
    """The use cases, faked: records what it was asked, answers with simple cards, and can be
    told to wait on an event or to raise."""

    def __init__(self, slack: SlackSimulator) -> None:
        self.slack = slack
        self.executed: list[tuple[Principal, Command]] = []
        self.finished: list[Command] = []
        self.decided: list[tuple[str, Principal, bool]] = []
        self.gate: asyncio.Event | None = None
        self.error: Exception | None = None
        self.prefilled_for: list[Principal] = []
        self.slack_calls_before_prefill: list[str] | None = None
        self.form = RequestForm(resources=(Choice("prod-db", "Production database"), Choice("kafka", "Kafka")))

    async def execute(self, actor: Principal, command: Command) -> Card:
        self.executed.append((actor, command))
        if self.gate is not None:
            await self.gate.wait()
        if self.error is not None:
            raise self.error
        self.finished.append(command)
        return Card(
            title=f"Done: {type(command).__name__}",
            text="Access to prod-db <granted> & logged",
            facts=(Fact("For", actor.email),),
            actions=(Action("revoke", "I'm done", "g-7k2m9q4x", style="danger"),),
        )

    async def decide(self, request_id: str, *, actor: Principal, approve: bool) -> Card:
        self.decided.append((request_id, actor, approve))
        if self.error is not None:
            raise self.error
        return Card(title=f"You {'approved' if approve else 'denied'} {request_id}")

    def request_form(self) -> RequestForm:
        return self.form

    async def prefilled_form(self, actor: Principal) -> RequestForm:
        self.slack_calls_before_prefill = self.slack.methods_called()
        self.prefilled_for.append(actor)
        if self.error is not None:
            raise self.error
        return replace(
            self.form,
            hint="You acknowledged #42 Checkout down",
            reason="PagerDuty incident #42 Checkout down",
            selected_resource="prod-db",
        )


def _typed(service: FakeAccess) -> AccessUseCases:
    return service  # mypy checks here that the fake really implements the protocol


@dataclass
class Rig:
    slack: SlackSimulator
    service: FakeAccess
    url: str
    session: aiohttp.ClientSession
    counter: itertools.count[int] = field(default_factory=itertools.count)
    acks: list[dict[str, Any]] = field(default_factory=list)

    async def post(self, body: str, *, secret: str = SECRET, timestamp: int | None = None) -> tuple[int, str]:
        status, answer = await post_signed(self.session, self.url, body, secret=secret, timestamp=timestamp)
        if answer.startswith("{"):
            self.acks.append(json.loads(answer))
        return status, answer

    def assert_everything_shown_was_within_block_kit_limits(self) -> None:
        for ack in self.acks:
            assert_within_limits(ack)
        for answer in itertools.chain.from_iterable(self.slack.responses.values()):
            assert_within_limits(answer)
        for message in itertools.chain.from_iterable(self.slack.messages.values()):
            assert_within_limits({"blocks": message.blocks})
        for view in self.slack.views.values():
            for version in [*view.history, view.view]:
                assert_within_limits(version, surface="modal")

    async def command(self, text: str, *, user: str = ALICE, trigger_id: str = "") -> tuple[int, str, str]:
        """Type ``/access <text>``; returns the HTTP status, the ack body and the response_url token."""
        token = f"cmd{next(self.counter)}"
        body = slash_command_body(
            text=text, user_id=user, response_url=self.slack.response_url(token), trigger_id=trigger_id or None
        )
        status, answer = await self.post(body)
        return status, answer, token

    async def click(self, action_id: str, value: str | None, *, user: str = BOB) -> tuple[int, str]:
        token = f"act{next(self.counter)}"
        body = block_actions_body(
            user_id=user, action_id=action_id, value=value, response_url=self.slack.response_url(token)
        )
        status, _ = await self.post(body)
        return status, token

    async def answers(self, token: str, count: int = 1) -> list[dict[str, Any]]:
        """What Ackgate posted to that response_url, once ``count`` posts have arrived."""
        await self.slack.wait_for(lambda: len(self.slack.responses.get(token, [])) >= count)
        return self.slack.responses[token]


@pytest.fixture
async def rig(memory_store: Store) -> AsyncIterator[Rig]:
    async with SlackSimulator() as slack:
        slack.add_user(ALICE, "Alice@Example.com", "Alice Liddell")
        slack.add_user(BOB, "bob@example.com", "Bob")
        slack.add_user(NOEMAIL, None, "Guest")
        client = AsyncWebClient(token=slack.token, base_url=slack.base_url)
        service = FakeAccess(slack)
        slack_app = build_slack_app(
            client=client,
            service=_typed(service),
            identity=SlackIdentity(client),
            inbox=memory_store.commands,
            notifier=SlackNotifier(client),
        )
        web_app = web.Application()
        mount_slack(web_app, slack_app=slack_app, signing_secret=SecretStr(SECRET))
        async with TestServer(web_app, host="127.0.0.1") as server, aiohttp.ClientSession() as session:
            rig = Rig(slack, service, str(server.make_url("/slack/events")), session)
            yield rig
            # Every test doubles as a Block Kit conformance check of whatever Ackgate showed.
            rig.assert_everything_shown_was_within_block_kit_limits()


def _text(answer: dict[str, Any]) -> str:
    return json.dumps(answer)


# --- signatures -------------------------------------------------------------------------------


async def test_a_bad_signature_is_refused_with_401_and_nothing_runs(rig: Rig) -> None:
    body = slash_command_body(text="prod-db 1h", user_id=ALICE, response_url=rig.slack.response_url("x"))
    status, _ = await rig.post(body, secret="not-the-secret")
    assert status == 401
    assert rig.service.executed == []
    assert rig.slack.calls == []


async def test_a_timestamp_older_than_five_minutes_is_refused_with_401(rig: Rig) -> None:
    body = slash_command_body(text="list", user_id=ALICE, response_url=rig.slack.response_url("x"))
    status, _ = await rig.post(body, timestamp=int(time.time()) - 301)
    assert status == 401
    assert rig.service.executed == []
    assert rig.slack.calls == []


# --- /access ----------------------------------------------------------------------------------


async def test_a_request_is_acked_with_checking_pagerduty_before_the_use_case_finishes(rig: Rig) -> None:
    rig.service.gate = asyncio.Event()
    status, ack, token = await rig.command("prod-db 2h fixing replication lag")
    assert status == 200
    assert json.loads(ack) == {"text": messages.WORKING, "response_type": "ephemeral"}
    assert rig.service.finished == []
    rig.service.gate.set()
    (answer,) = await rig.answers(token)
    assert answer["replace_original"] is True
    assert answer["response_type"] == "ephemeral"
    assert answer["blocks"][0]["text"]["text"] == "Done: RequestAccess"
    assert_within_limits(answer)
    assert rig.service.executed == [(ALICE_P, RequestAccess("prod-db", "2h", "fixing replication lag"))]


async def test_the_ack_does_not_wait_for_the_slack_web_api(rig: Rig) -> None:
    """Even the users.info lookup comes after the ack: with users.info stalled, the ack still returns."""
    _, _, first = await rig.command("help")
    await rig.answers(first)
    stalled = rig.slack.hold("users.info")
    status, ack, token = await rig.command("list", user=BOB)
    assert (status, ack) == (200, "")
    assert rig.service.executed[-1:] != [(BOB_P, ListMine())]
    stalled.set()
    (answer,) = await rig.answers(token)
    assert answer["replace_original"] is False
    assert rig.service.executed[-1] == (BOB_P, ListMine())


async def test_a_command_whose_text_contains_the_word_payload_is_still_read(rig: Rig) -> None:
    """bolt mistakes any form body containing "payload" for an interaction; the mount corrects it."""
    _, _, token = await rig.command("prod-db 1h payload errors in checkout")
    await rig.answers(token)
    assert rig.service.executed == [(ALICE_P, RequestAccess("prod-db", "1h", "payload errors in checkout"))]


async def test_a_usage_error_is_the_ack_itself_and_calls_nothing(rig: Rig) -> None:
    status, ack, _ = await rig.command("revoke")
    assert status == 200
    assert json.loads(ack)["blocks"][0]["text"]["text"] == messages.usage_for("revoke").replace("<", "&lt;").replace(
        ">", "&gt;"
    )
    assert rig.service.executed == []


async def test_a_user_error_from_the_core_reaches_the_response_url_as_its_message(rig: Rig) -> None:
    rig.service.error = NotAuthorized("Only the grant's holder or an Ackgate admin can end it.")
    _, _, token = await rig.command("revoke g-7k2m9q4x")
    (answer,) = await rig.answers(token)
    assert answer["text"] == "Only the grant's holder or an Ackgate admin can end it."
    assert answer["response_type"] == "ephemeral"
    assert rig.service.executed == [(ALICE_P, Revoke("g-7k2m9q4x"))]


async def test_an_upstream_error_reaches_the_user_as_its_message(rig: Rig) -> None:
    rig.service.error = PagerDutyUnavailable(messages.pagerduty_down("timed out after 4s"))
    _, _, token = await rig.command("prod-db")
    (answer,) = await rig.answers(token)
    assert answer["text"] == messages.pagerduty_down("timed out after 4s")
    assert answer["replace_original"] is True


async def test_an_unexpected_exception_shows_the_generic_sentence_and_logs_the_traceback(
    rig: Rig, caplog: pytest.LogCaptureFixture
) -> None:
    rig.service.error = RuntimeError("connection string postgres://admin:hunter2@db")
    _, _, token = await rig.command("list")
    (answer,) = await rig.answers(token)
    assert answer["text"] == messages.GENERIC_FAILURE
    assert "hunter2" not in _text(answer)
    assert "Traceback" not in _text(answer)
    logged = [r for r in caplog.records if r.levelno == logging.ERROR and r.exc_info]
    assert logged
    assert isinstance(logged[0].exc_info[1], RuntimeError)  # type: ignore[index]


async def test_a_storage_failure_says_the_database_is_down(rig: Rig) -> None:
    rig.service.error = StorageError("connection refused")
    _, _, token = await rig.command("list")
    (answer,) = await rig.answers(token)
    assert answer["text"] == messages.STORAGE_DOWN


async def test_a_user_without_a_visible_email_is_told_how_to_fix_it(rig: Rig) -> None:
    _, _, token = await rig.command("list", user=NOEMAIL)
    (answer,) = await rig.answers(token)
    assert answer["text"] == messages.SLACK_NO_EMAIL
    assert rig.service.executed == []


# --- the request form -------------------------------------------------------------------------


async def test_access_alone_opens_the_plain_form_before_asking_pagerduty_then_fills_it_in(rig: Rig) -> None:
    status, ack, _ = await rig.command("", trigger_id=rig.slack.trigger_id())
    assert (status, ack) == (200, "")
    await rig.slack.wait_for(lambda: rig.slack.calls_to("views.update"))
    assert rig.service.slack_calls_before_prefill is not None
    assert "views.open" in rig.service.slack_calls_before_prefill
    assert rig.service.prefilled_for == [ALICE_P]
    (opened,) = rig.slack.calls_to("views.open")
    assert opened["view"]["callback_id"] == "ackgate.request"
    assert opened["view"]["blocks"][0]["type"] == "input"  # no hint yet
    (view,) = rig.slack.views.values()
    (updated,) = rig.slack.calls_to("views.update")
    assert updated["view_id"] == view.id
    assert updated["hash"] == view.previous_hashes[0]  # the hash views.open returned
    assert view.view["blocks"][0]["elements"][0]["text"] == "You acknowledged #42 Checkout down"
    assert_within_limits(opened["view"], surface="modal")
    assert_within_limits(view.view, surface="modal")


async def test_a_form_that_slack_will_not_open_is_explained_in_a_dm(rig: Rig) -> None:
    trigger = rig.slack.trigger_id()
    rig.slack.expire_triggers()
    await rig.command("", trigger_id=trigger)
    dm = rig.slack.dm_channel(ALICE)
    await rig.slack.wait_for(lambda: rig.slack.messages.get(dm))
    assert rig.slack.messages[dm][0].text == messages.SLACK_FORM_NOT_OPENED.replace("<", "&lt;").replace(">", "&gt;")
    assert rig.service.prefilled_for == []


async def test_a_failed_prefill_leaves_its_reason_as_the_form_hint(rig: Rig) -> None:
    rig.service.error = PagerDutyUnavailable(messages.pagerduty_down("HTTP 503"))
    await rig.command("", trigger_id=rig.slack.trigger_id())
    await rig.slack.wait_for(lambda: rig.slack.calls_to("views.update"))
    (view,) = rig.slack.views.values()
    assert view.view["blocks"][0]["elements"][0]["text"] == messages.pagerduty_down("HTTP 503")


async def test_a_bad_duration_in_the_form_is_shown_under_the_duration_input(rig: Rig) -> None:
    status, answer = await rig.post(
        view_submission_body(user_id=ALICE, values=form_state(resource="prod-db", duration="soonish"))
    )
    assert status == 200
    body = json.loads(answer)
    assert body["response_action"] == "errors"
    assert list(body["errors"]) == ["duration"]
    assert "soonish" in body["errors"]["duration"]
    assert rig.service.executed == []


async def test_a_submitted_form_runs_the_request_and_dms_the_outcome(rig: Rig) -> None:
    status, answer = await rig.post(
        view_submission_body(user_id=ALICE, values=form_state(resource="kafka", duration="30m", reason="consumer lag"))
    )
    assert (status, answer) == (200, "")
    dm = rig.slack.dm_channel(ALICE)
    await rig.slack.wait_for(lambda: rig.slack.messages.get(dm))
    assert rig.service.executed == [(ALICE_P, RequestAccess("kafka", "30m", "consumer lag"))]
    (message,) = rig.slack.messages[dm]
    assert message.blocks[0]["text"]["text"] == "Done: RequestAccess"
    assert_within_limits({"blocks": message.blocks})


async def test_a_submitted_form_that_fails_dms_the_reason(rig: Rig) -> None:
    rig.service.error = NotAuthorized("No access flow lets you request kafka.")
    await rig.post(view_submission_body(user_id=ALICE, values=form_state(resource="kafka", duration="30m")))
    dm = rig.slack.dm_channel(ALICE)
    await rig.slack.wait_for(lambda: rig.slack.messages.get(dm))
    assert rig.slack.messages[dm][0].text == "No access flow lets you request kafka."


# --- buttons ----------------------------------------------------------------------------------


@pytest.mark.parametrize(("action_id", "approve"), [("ackgate.approve", True), ("ackgate.deny", False)])
async def test_a_button_click_decides_as_the_clicker_and_answers_only_them(
    rig: Rig, action_id: str, approve: bool
) -> None:
    status, token = await rig.click(action_id, "r-7k2m9q4x", user=BOB)
    assert status == 200
    (answer,) = await rig.answers(token)
    assert rig.service.decided == [("r-7k2m9q4x", BOB_P, approve)]
    assert answer["response_type"] == "ephemeral"
    assert answer["replace_original"] is False
    assert "r-7k2m9q4x" in answer["blocks"][0]["text"]["text"]
    assert_within_limits(answer)


async def test_a_revoke_button_ends_the_grant_as_the_clicker(rig: Rig) -> None:
    _, token = await rig.click("ackgate.revoke", "g-7k2m9q4x", user=ALICE)
    await rig.answers(token)
    assert rig.service.executed == [(ALICE_P, Revoke("g-7k2m9q4x"))]


async def test_a_decision_refused_by_the_core_is_told_to_the_clicker(rig: Rig) -> None:
    rig.service.error = NotAuthorized("You are not one of the approvers of this request.")
    _, token = await rig.click("ackgate.approve", "r-1", user=BOB)
    (answer,) = await rig.answers(token)
    assert answer["text"] == "You are not one of the approvers of this request."


async def test_a_button_without_a_value_gets_a_clear_answer_and_decides_nothing(rig: Rig) -> None:
    status, token = await rig.click("ackgate.approve", None)
    assert status == 200
    (answer,) = await rig.answers(token)
    assert answer["text"] == messages.SLACK_BUTTON_WITHOUT_TARGET
    assert rig.service.decided == []


async def test_an_unknown_ackgate_button_is_acknowledged_and_explained(rig: Rig) -> None:
    status, token = await rig.click("ackgate.teleport", "r-1")
    assert status == 200
    (answer,) = await rig.answers(token)
    assert answer["text"] == messages.SLACK_BUTTON_UNKNOWN


# --- malformed requests -----------------------------------------------------------------------


@pytest.mark.parametrize("body", ["payload=%7Bnot+json", "payload=%5B1%2C2%5D", "payload=42"])
async def test_a_signed_but_unparseable_payload_is_a_400_without_traceback(rig: Rig, body: str) -> None:
    status, answer = await rig.post(body)
    assert status == 400
    assert answer == messages.SLACK_BAD_REQUEST
    assert rig.service.executed == []
    assert rig.service.decided == []


@pytest.mark.parametrize(
    ("kind", "broken"),
    [
        ("block_actions", {"actions": []}),
        ("block_actions", {"actions": ["approve"]}),
        ("block_actions", {"actions": [{"value": "r-1"}]}),
        ("view_submission", {"view": {"id": "V1"}}),
        ("view_submission", {"view": "V1"}),
    ],
)
async def test_an_interaction_missing_the_parts_bolt_indexes_is_a_400(
    rig: Rig, kind: str, broken: dict[str, Any]
) -> None:
    """bolt would crash on these while building listener arguments; the mount answers 400 first."""
    payload = block_actions_payload(
        user_id=BOB, action_id="ackgate.approve", value="r-1", response_url=rig.slack.response_url("x")
    )
    payload.update(type=kind, **broken)
    status, answer = await rig.post(urlencode({"payload": json.dumps(payload)}))
    assert (status, answer) == (400, messages.SLACK_BAD_REQUEST)
    assert rig.service.decided == []
    assert rig.service.executed == []


async def test_a_malformed_payload_with_a_bad_signature_runs_nothing(rig: Rig) -> None:
    status, _ = await rig.post("payload=%7Bnot+json", secret="wrong")
    assert status in (400, 401)
    assert rig.slack.calls == []


# --- what Slack is asked ----------------------------------------------------------------------


async def test_every_web_api_method_the_adapter_calls_is_in_the_scope_table(rig: Rig) -> None:
    _, _, token = await rig.command("prod-db 1h")
    await rig.answers(token)
    await rig.command("", trigger_id=rig.slack.trigger_id())
    await rig.slack.wait_for(lambda: rig.slack.calls_to("views.update"))
    await rig.post(view_submission_body(user_id=ALICE, values=form_state(resource="kafka", duration="1h")))
    await rig.slack.wait_for(lambda: rig.slack.calls_to("chat.postMessage"))
    _, token = await rig.click("ackgate.deny", "r-1")
    await rig.answers(token)
    called = set(rig.slack.methods_called())
    assert {"users.info", "views.open", "views.update", "conversations.open"} <= called
    assert called <= set(WEB_API_SCOPES)

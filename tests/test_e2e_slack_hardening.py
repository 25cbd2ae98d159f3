"""Slack's entry point under what production does to it, through the real app: Slack's retries and
captured replays of one signed command, two replicas on one PostgreSQL database, rate limits and
server errors from the Web API, a crash between the ack and the answer, and PagerDuty hanging
while someone waits for ``/access auth``."""

from __future__ import annotations

import asyncio
import json
import sqlite3
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path

import aiohttp
import pytest

from bot.adapters.provisioners import NoopProvisioner
from bot.core import messages
from bot.core.clock import FakeClock
from bot.core.domain import ReceivedCommand, RequestStatus
from bot.runtime.simulators.slack_requests import (
    new_trigger_id,
    signed_headers,
    slash_command_body,
    view_submission_body,
)
from bot.runtime.simulators.stage import SIGNING_SECRET, Person, Stage
from handlers.slack.blocks import KEY_BLOCK_ID, KEY_FORM_CALLBACK_ID
from tests.fakes.issue3_stage import ADMIN_EMAIL, transaction_ids
from tests.fakes.stage_fixtures import STAGE_POLICY, acknowledged_incident, grants_of, requests_of
from tests.fakes.storage_fixtures import postgres_schema_url

VALID_KEY = "Zq7Xw2Lm9Pa4Rt6Yb1Nc8Vd3Fg5Hj0KQ"


@dataclass(frozen=True)
class Sent:
    status: int
    text: str

    @property
    def ack_text(self) -> str:
        return str(json.loads(self.text).get("text", "")) if self.text.startswith("{") else self.text


async def send(stage: Stage, body: str, headers: dict[str, str]) -> Sent:
    """POST exactly these bytes and headers, as Slack (or someone who captured Slack's request) would."""
    async with (
        aiohttp.ClientSession() as session,
        session.post(f"{stage.url}/slack/events", data=body.encode(), headers=headers) as r,
    ):
        return Sent(r.status, await r.text())


async def eventually(check: Callable[[], Awaitable[bool]], *, seconds: float = 10.0) -> None:
    """Poll ``check`` until true: for what happens in the background, off any request's path."""
    for _ in range(int(seconds / 0.02)):
        if await check():
            return
        await asyncio.sleep(0.02)
    raise AssertionError("the condition never became true")


def retries_and_replay(headers: dict[str, str]) -> list[dict[str, str]]:
    """The original delivery, Slack's retries 1 and 2, and a replay of the captured original."""
    retry = {"X-Slack-Retry-Reason": "http_timeout"}
    return [
        headers,
        {**headers, **retry, "X-Slack-Retry-Num": "1"},
        {**headers, **retry, "X-Slack-Retry-Num": "2"},
        headers,
    ]


def command(stage: Stage, who: Person, text: str, token: str) -> tuple[str, dict[str, str]]:
    body = slash_command_body(text=text, user_id=who.user_id, response_url=stage.slack.response_url(token))
    return body, signed_headers(body, secret=SIGNING_SECRET)


# --- retries and replays count once --------------------------------------------------------------


async def test_a_command_retried_twice_and_replayed_grants_once(
    stage: Stage, noop_provisioner: NoopProvisioner
) -> None:
    alice = stage.person("alice")
    acknowledged_incident(stage, alice)
    body, headers = command(stage, alice, "prod-db 1h replication lag", "dup")

    sent = [await send(stage, body, h) for h in retries_and_replay(headers)]

    assert [s.status for s in sent] == [200, 200, 200, 200]
    assert sent[0].ack_text == messages.WORKING
    assert [s.text for s in sent[1:]] == ["", "", ""]  # acknowledged, not run
    await stage.slack.wait_for(lambda: stage.slack.responses.get("dup"))
    assert len(await grants_of(stage, alice.email)) == 1
    assert len(await requests_of(stage, alice.email)) == 1
    assert [call.action for call in noop_provisioner.calls] == ["grant"]
    assert len(stage.slack.responses["dup"]) == 1


async def test_concurrent_copies_of_one_command_run_it_once(stage: Stage, noop_provisioner: NoopProvisioner) -> None:
    alice = stage.person("alice")
    acknowledged_incident(stage, alice)
    body, headers = command(stage, alice, "prod-db 30m replication lag", "race")

    sent = await asyncio.gather(*(send(stage, body, h) for h in retries_and_replay(headers) * 2))

    assert {s.status for s in sent} == {200}
    assert sum(s.ack_text == messages.WORKING for s in sent) == 1
    await stage.slack.wait_for(lambda: stage.slack.responses.get("race"))
    assert len(await grants_of(stage, alice.email)) == 1
    assert [call.action for call in noop_provisioner.calls] == ["grant"]


async def test_an_auth_request_retried_and_replayed_opens_one_transaction_and_one_incident(
    issue3_stage: Stage,
) -> None:
    stage = issue3_stage
    alice, bob = stage.person("alice"), stage.person("bob")
    body, headers = command(stage, alice, f"auth <@{bob.user_id}|bob> resetting your password", "auth")

    sent = [await send(stage, body, h) for h in retries_and_replay(headers)]

    assert sent[0].ack_text == messages.AUTH_SENDING  # the requester sees this at once
    assert [s.text for s in sent[1:]] == ["", "", ""]
    await stage.slack.wait_for(lambda: stage.slack.responses.get("auth"))
    assert len(transaction_ids(stage)) == 1
    assert len(stage.events.events) == 1
    assert len(stage.slack.responses["auth"]) == 1


async def test_a_form_submission_retried_runs_once(stage: Stage) -> None:
    alice = stage.person("alice")
    values = {
        "resource": {"value": {"type": "static_select", "selected_option": {"value": "prod-k8s"}}},
        "duration": {"value": {"type": "plain_text_input", "value": "1h"}},
        "reason": {"value": {"type": "plain_text_input", "value": "stuck pod"}},
    }
    body = view_submission_body(user_id=alice.user_id, values=values)
    headers = signed_headers(body, secret=SIGNING_SECRET)

    sent = [await send(stage, body, h) for h in retries_and_replay(headers)]

    assert {s.status for s in sent} == {200}
    await stage.wait_for_dm(alice, "Waiting for approval: prod-k8s")
    [request] = await requests_of(stage, alice.email)
    assert request.status is RequestStatus.PENDING


async def test_a_retried_access_alone_opens_one_form_and_sends_no_failure_dm(stage: Stage) -> None:
    alice = stage.person("alice")
    body = slash_command_body(
        text="",
        user_id=alice.user_id,
        response_url=stage.slack.response_url("form"),
        trigger_id=stage.slack.trigger_id(),
    )
    headers = signed_headers(body, secret=SIGNING_SECRET)

    sent = [await send(stage, body, h) for h in retries_and_replay(headers)]

    assert {s.status for s in sent} == {200}
    await stage.slack.wait_for(lambda: stage.slack.calls_to("views.update"))
    assert len(stage.slack.calls_to("views.open")) == 1
    assert stage.dms(alice) == []


async def test_a_new_invocation_with_the_same_text_is_not_a_duplicate(stage: Stage) -> None:
    alice = stage.person("alice")
    first = await stage.command(alice, "prod-k8s 1h stuck pod")
    second = await stage.command(alice, "prod-k8s 1h stuck pod")
    assert "Waiting for approval" in first.text
    assert second.follow_up is not None
    assert len(await requests_of(stage, alice.email)) == 2


# --- replicas on one PostgreSQL database -----------------------------------------------------------


@pytest.fixture
async def replicas(tmp_path: Path) -> AsyncIterator[tuple[Stage, Stage, NoopProvisioner]]:
    provisioner = NoopProvisioner()
    async with postgres_schema_url() as url:
        stages = []
        for name in ("one", "two"):
            workdir = tmp_path / name
            workdir.mkdir()
            policy = workdir / "policy.yaml"
            policy.write_text(STAGE_POLICY, encoding="utf-8")
            stages.append(
                Stage(
                    policy_file=policy,
                    workdir=workdir,
                    clock=FakeClock(),
                    provisioners={"noop": provisioner},
                    settings={"database_url": url},
                )
            )
        async with stages[0], stages[1]:
            yield stages[0], stages[1], provisioner


async def test_copies_of_one_command_spread_over_two_replicas_run_once(
    replicas: tuple[Stage, Stage, NoopProvisioner],
) -> None:
    one, two, provisioner = replicas
    for stage in (one, two):
        alice = stage.person("alice")
        acknowledged_incident(stage, alice)
    body, headers = command(one, alice, "prod-db 1h replication lag", "replicas")

    sent = await asyncio.gather(*(send(stage, body, h) for h in retries_and_replay(headers) for stage in (one, two)))

    assert {s.status for s in sent} == {200}
    assert sum(s.ack_text == messages.WORKING for s in sent) == 1
    await one.slack.wait_for(lambda: one.slack.responses.get("replicas"))
    assert len(await grants_of(one, alice.email)) == 1
    assert [call.action for call in provisioner.calls] == ["grant"]
    assert len(one.slack.responses["replicas"]) == 1


async def test_an_auth_request_sent_to_two_replicas_opens_one_incident(
    replicas: tuple[Stage, Stage, NoopProvisioner],
) -> None:
    one, two, _ = replicas
    for stage in (one, two):
        alice, bob = stage.person("alice"), stage.person("bob")
    body, headers = command(one, alice, f"auth <@{bob.user_id}|bob> new laptop", "auth")

    await asyncio.gather(*(send(stage, body, h) for h in retries_and_replay(headers) for stage in (one, two)))

    await one.slack.wait_for(lambda: one.slack.responses.get("auth"))
    assert len(one.events.events) + len(two.events.events) == 1


async def test_two_replicas_recovering_at_once_answer_a_lost_command_once(
    replicas: tuple[Stage, Stage, NoopProvisioner],
) -> None:
    one, two, _ = replicas
    for stage in (one, two):
        alice, _bob = stage.person("alice"), stage.person("bob")
    lost = lost_command(one, alice, "prod-k8s 1h debugging a stuck pod", "lost", age=timedelta(minutes=2))
    assert await one.parts.store.commands.record(lost)

    await asyncio.gather(recovery_pass(one), recovery_pass(two))
    await one.slack.wait_for(lambda: one.slack.responses.get("lost"))
    await asyncio.gather(one.parts.scheduler.run_once(), two.parts.scheduler.run_once())

    assert len(one.slack.responses["lost"]) == 1
    assert len(await requests_of(one, alice.email)) == 1


# --- Slack's rate limits and server errors ---------------------------------------------------------


@pytest.mark.parametrize(
    ("error", "status"), [("ratelimited", 429), ("internal_error", 500), ("service_unavailable", 503)]
)
async def test_an_approval_card_refused_once_by_slack_is_retried_and_posted(
    stage: Stage, error: str, status: int
) -> None:
    alice, bob = stage.person("alice"), stage.person("bob")
    stage.slack.fail_next("chat.postMessage", error, status=status)

    reply = await stage.command(alice, "prod-k8s 1h debugging a stuck pod")

    assert "Waiting for approval: prod-k8s" in reply.text
    card = await stage.wait_for_dm(bob, "alice@example.com requests prod-k8s")
    assert "[Approve]" in card


async def test_an_answer_refused_once_by_the_response_url_is_retried(stage: Stage) -> None:
    alice = stage.person("alice")
    stage.slack.fail_next_responses(503)

    reply = await stage.command(alice, "list")  # waits for the answer on the response_url

    assert reply.follow_up is not None  # the 503 was retried: the second post was taken
    assert stage.dms(alice) == []  # so no DM fallback was needed


# --- the answer after a crash ----------------------------------------------------------------------


def lost_command(stage: Stage, who: Person, text: str, token: str, *, age: timedelta) -> ReceivedCommand:
    """A command acknowledged ``age`` ago whose handler died before answering."""
    received = stage.clock.now() - age
    return ReceivedCommand(
        key=f"command:{new_trigger_id()}",
        kind="command",
        user_id=who.user_id,
        text=text,
        response_url=stage.slack.response_url(token),
        received_at=received,
        lease_until=received + timedelta(seconds=60),
    )


async def recovery_pass(stage: Stage) -> None:
    """Let the recovery pass come round (it runs every 15 s of the clock)."""
    await stage.pass_time(16)


async def test_a_command_left_unanswered_is_answered_once_by_the_recovery_pass(stage: Stage) -> None:
    alice, bob = stage.person("alice"), stage.person("bob")
    lost = lost_command(stage, alice, "prod-k8s 1h debugging a stuck pod", "lost", age=timedelta(seconds=90))
    assert await stage.parts.store.commands.record(lost)

    await recovery_pass(stage)
    await stage.slack.wait_for(lambda: stage.slack.responses.get("lost"))

    assert "Waiting for approval: prod-k8s" in str(stage.slack.responses["lost"][0])
    await stage.wait_for_dm(bob, "alice@example.com requests prod-k8s")
    for _ in range(3):
        await recovery_pass(stage)
    await stage.parts.scheduler.run_once()
    assert len(stage.slack.responses["lost"]) == 1
    assert len(await requests_of(stage, alice.email)) == 1


async def test_a_command_still_within_its_lease_is_left_to_its_handler(stage: Stage) -> None:
    alice = stage.person("alice")
    busy = lost_command(stage, alice, "list", "busy", age=timedelta(seconds=0))
    assert await stage.parts.store.commands.record(busy)
    await recovery_pass(stage)  # 16 s on: the 60 s lease still holds
    await stage.parts.scheduler.run_once()
    assert stage.slack.responses.get("busy") is None


async def test_a_crash_after_the_request_was_made_tells_its_state_and_makes_no_second(stage: Stage) -> None:
    alice, bob = stage.person("alice"), stage.person("bob")
    reply = await stage.command(alice, "prod-k8s 1h debugging a stuck pod")
    assert "Waiting for approval" in reply.text
    await stage.wait_for_dm(bob, "alice@example.com requests prod-k8s")
    path = stage.parts.settings.database_url.removeprefix("sqlite:///")

    async def marked() -> bool:  # the row is marked just after the answer was posted
        return _answered(path)

    await eventually(marked)
    # The crash: as if the process died right after making the request, before marking the answer.
    with sqlite3.connect(path) as db:
        db.execute("UPDATE slack_commands SET answered_at = NULL")
    [token] = [t for t in stage.slack.responses if t.startswith("cmd")]

    await stage.pass_time(61)
    await stage.slack.wait_for(lambda: len(stage.slack.responses[token]) == 2)

    [request] = await requests_of(stage, alice.email)
    told = str(stage.slack.responses[token][-1])
    assert messages.request_found_after_restart("prod-k8s", request.id, "pending") in told
    assert len(stage.dms(bob)) == 1  # the approvers were not asked twice


async def test_a_crash_after_the_grant_was_made_grants_nothing_more(
    stage: Stage, noop_provisioner: NoopProvisioner
) -> None:
    alice = stage.person("alice")
    acknowledged_incident(stage, alice)
    reply = await stage.command(alice, "prod-db 1h replication lag")
    assert "Access granted: prod-db" in reply.text
    path = stage.parts.settings.database_url.removeprefix("sqlite:///")

    async def marked() -> bool:
        return _answered(path)

    await eventually(marked)
    with sqlite3.connect(path) as db:
        db.execute("UPDATE slack_commands SET answered_at = NULL")
    [token] = [t for t in stage.slack.responses if t.startswith("cmd")]

    await stage.pass_time(61)
    await stage.slack.wait_for(lambda: len(stage.slack.responses[token]) == 2)

    [request] = await requests_of(stage, alice.email)
    assert messages.request_found_after_restart("prod-db", request.id, "approved") in str(
        stage.slack.responses[token][-1]
    )
    assert len(await grants_of(stage, alice.email)) == 1
    assert [call.action for call in noop_provisioner.calls] == ["grant"]


def _answered(path: str) -> bool:
    with sqlite3.connect(path) as db:
        return all(row[0] is not None for row in db.execute("SELECT answered_at FROM slack_commands"))


async def test_after_a_restart_an_old_unanswered_command_is_answered_by_dm(tmp_path: Path) -> None:
    policy = tmp_path / "policy.yaml"
    policy.write_text(STAGE_POLICY, encoding="utf-8")
    # The server that crashed never got to answer: it runs no scheduler, so no pass of its own answers.
    before = Stage(
        policy_file=policy,
        workdir=tmp_path,
        clock=FakeClock(),
        provisioners={"noop": NoopProvisioner()},
        run_scheduler=False,
    )
    async with before:
        alice = before.person("alice")
        # acknowledged 40 minutes ago, so its response_url is dead: the answer must go by DM
        lost = lost_command(before, alice, "prod-k8s 1h debugging a stuck pod", "gone", age=timedelta(minutes=40))
        assert await before.parts.store.commands.record(lost)

    after = Stage(policy_file=policy, workdir=tmp_path, clock=FakeClock(), provisioners={"noop": NoopProvisioner()})
    alice, bob = after.person("alice"), after.person("bob")  # known to Slack before the first pass
    async with after:  # the first scheduler pass, at start-up, is the recovery
        dm = await after.wait_for_dm(alice, "Waiting for approval: prod-k8s")
        assert "debugging a stuck pod" in dm
        await after.wait_for_dm(bob, "alice@example.com requests prod-k8s")
        await recovery_pass(after)
        assert len(await requests_of(after, alice.email)) == 1
        assert len(after.dms(alice)) == 1


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("extend g-7k2m9q4x 1h", messages.command_interrupted("extend g-7k2m9q4x 1h")),
        ("help", "/access list"),
    ],
)
async def test_a_recovered_command_is_rerun_only_when_that_is_safe(stage: Stage, text: str, expected: str) -> None:
    alice = stage.person("alice")
    assert await stage.parts.store.commands.record(lost_command(stage, alice, text, "r", age=timedelta(minutes=2)))
    await recovery_pass(stage)
    await stage.slack.wait_for(lambda: stage.slack.responses.get("r"))
    assert expected in str(stage.slack.responses["r"][0])


# --- /access auth while PagerDuty misbehaves -------------------------------------------------------


@pytest.mark.parametrize("outage", ["hangs", "500", "429"])
async def test_auth_is_answered_within_five_seconds_by_chat_whatever_pagerduty_does(
    issue3_stage: Stage, outage: str
) -> None:
    stage = issue3_stage
    alice, bob = stage.person("alice"), stage.person("bob")
    if outage == "hangs":
        stage.events.slow_next(None, seconds=60)
    else:
        stage.events.fail_next(None, status=int(outage))

    started = time.monotonic()
    reply = await stage.command(alice, f"auth <@{bob.user_id}|bob> resetting your password")
    elapsed = time.monotonic() - started

    assert elapsed < 5.0, elapsed
    assert reply.ack["text"] == messages.AUTH_SENDING
    assert "Authentication request sent to bob@example.com" in reply.text
    await stage.wait_for_dm(bob, "asks you to confirm your identity")


async def test_a_late_pagerduty_success_is_recorded_on_the_transaction(issue3_stage: Stage) -> None:
    stage = issue3_stage
    alice, bob = stage.person("alice"), stage.person("bob")
    stage.parts.auth.page_wait = 0.5
    stage.events.slow_next(1, seconds=1.5)

    reply = await stage.command(alice, f"auth <@{bob.user_id}|bob> resetting your password")

    assert messages.auth_pagerduty_slow(0.5) in reply.text
    [transaction_id] = transaction_ids(stage)

    async def paged() -> bool:
        tx = await stage.parts.store.transactions.get(transaction_id)
        return tx is not None and tx.dedup_key is not None

    await eventually(paged)
    tx = await stage.parts.store.transactions.get(transaction_id)
    assert tx is not None
    assert "pagerduty" in tx.channels and "chat" in tx.channels
    assert len(stage.events.events) == 1
    audited = await stage.parts.store.audit.since(tx.created_at - timedelta(days=1))
    assert [e.kind for e in audited if e.subject == transaction_id] == ["auth.requested", "auth.paged_late"]


# --- the admin key form ----------------------------------------------------------------------------


async def test_the_key_form_is_acknowledged_before_any_slack_call(issue3_stage: Stage) -> None:
    stage = issue3_stage
    carol = stage.person("carol", email=ADMIN_EMAIL)
    await stage.command(carol, "help")  # bolt's one-off auth.test at the first request
    stalled = stage.slack.hold("users.info")
    values = {KEY_BLOCK_ID: {"value": {"type": "plain_text_input", "value": VALID_KEY}}}
    body = view_submission_body(user_id=carol.user_id, values=values, callback_id=KEY_FORM_CALLBACK_ID)

    started = time.monotonic()
    sent = await send(stage, body, signed_headers(body, secret=SIGNING_SECRET))

    assert (sent.status, sent.text) == (200, "")
    assert time.monotonic() - started < 1.0
    stalled.set()
    await stage.wait_for_dm(carol, messages.KEY_SAVED_TITLE)

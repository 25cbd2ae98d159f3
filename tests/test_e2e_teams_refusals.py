"""Teams' bad input through the real ``/api/messages``, with signed (and mis-signed) tokens: every
authentication failure is a 401 that stores nothing and is counted; malformed activities are 400/415;
card clicks Ackgate did not render decide nothing; the Bot Connector failing, the token endpoint
failing and a provisioner slower than the invoke budget each get a clear answer, and the grant and the
audit stay correct."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import aiohttp
import jwt
import pytest
from pydantic import SecretStr

from bot.adapters.provisioners import NoopProvisioner
from bot.core import messages
from bot.core.domain import Grant, GrantStatus, RequestStatus
from bot.core.errors import ChatError
from bot.core.outbox import OutboxNotifier
from bot.core.views import Card
from bot.runtime.simulators.stage import Stage
from bot.runtime.simulators.teams import TeamsSimulator
from bot.runtime.simulators.teams_client import sign
from tests.fakes.issue3_stage import incident_data, webhook
from tests.fakes.stage_fixtures import DATABASE_SERVICE, audit_kinds, grants_of, request_id_in, requests_of
from tests.fakes.teams_schemas import check_card
from tests.fakes.teams_stage_fixtures import (
    acknowledged,
    installed,
    make_stage,
    teams_and_pagerduty_person,
)

EMULATOR_ISSUER = "https://sts.windows.net/d6d49420-f39b-4df7-a1dc-d59a935871db/"


async def metrics(stage: Stage) -> str:
    async with aiohttp.ClientSession() as session, session.get(f"{stage.url}/metrics") as response:
        return await response.text()


# --- authentication ------------------------------------------------------------------------------

Forge = Callable[[TeamsSimulator, dict[str, Any]], str | None]


def _other_service_url(sim: TeamsSimulator, activity: dict[str, Any]) -> str:
    return sign(sim, service_url=sim.root_url + "/elsewhere/")


def _outside_allowlist(sim: TeamsSimulator, activity: dict[str, Any]) -> str:
    activity["serviceUrl"] = "https://smba.evil.example/teams/"
    return sign(sim, service_url=activity["serviceUrl"])


def _forged(sim: TeamsSimulator, activity: dict[str, Any]) -> str:
    sim.add_key("forger", published=False)
    return sign(sim, kid="forger", headers={"kid": sim.signing_kid})  # a published kid, the wrong key


def _unendorsed(sim: TeamsSimulator, activity: dict[str, Any]) -> str:
    sim.add_key("skype-only", endorsements=("skype",))
    return sign(sim, kid="skype-only")


def _unsigned(sim: TeamsSimulator, activity: dict[str, Any]) -> str:
    payload = {"iss": "https://api.botframework.com", "aud": sim.app_id, "serviceurl": sim.service_url}
    return jwt.encode({**payload, "exp": int(time.time()) + 300}, key=None, algorithm="none", headers={"kid": "k1"})


FORGERIES: dict[str, tuple[Forge, str]] = {
    "no header": (lambda sim, a: None, "missing_token"),
    "unsigned": (_unsigned, "malformed_token"),
    "forged": (_forged, "bad_signature"),
    "expired": (lambda sim, a: sign(sim, lifetime=-600), "expired"),
    "wrong audience": (lambda sim, a: sign(sim, aud="8f9c2a9e-0000-0000-0000-000000000000"), "wrong_audience"),
    "wrong issuer": (lambda sim, a: sign(sim, iss="https://login.evil.example"), "wrong_issuer"),
    "emulator": (lambda sim, a: sign(sim, iss=EMULATOR_ISSUER), "foreign_issuer"),
    "unendorsed key": (_unendorsed, "not_endorsed"),
    "serviceurl mismatch": (_other_service_url, "serviceurl_mismatch"),
    "serviceUrl outside the allowlist": (_outside_allowlist, "serviceurl_not_allowed"),
}


@pytest.mark.parametrize("case", list(FORGERIES))
async def test_a_request_that_is_not_a_genuine_teams_activity_is_401_stores_nothing_and_is_counted(
    teams_stage: Stage, case: str, caplog: pytest.LogCaptureFixture
) -> None:
    stage = teams_stage
    alice = teams_and_pagerduty_person(stage, "alice")
    acknowledged(stage, alice)
    activity = stage.teams.client.personal_message(alice.member, "access prod-db 1h replication lag")
    forge, reason = FORGERIES[case]
    token = forge(stage.teams.sim, activity)
    calls_before = len(stage.teams.sim.calls)
    caplog.set_level(logging.DEBUG)

    posted = await stage.teams.client.post(activity, token=token)

    assert posted.status == 401
    assert posted.body == messages.TEAMS_UNAUTHENTICATED
    await asyncio.sleep(0.05)
    assert len(stage.teams.sim.calls) == calls_before  # not a single Bot Connector call
    assert await requests_of(stage, alice.email) == [] and await grants_of(stage, alice.email) == []
    assert await stage.parts.store.address_book.by_user("teams", alice.user_id) is None
    assert stage.pd.requests == []
    assert f'ackgate_teams_auth_failures_total{{reason="{reason}"}} 1.0' in await metrics(stage)
    if token is not None:
        leaked = [r.name + ": " + r.getMessage()[:300] for r in caplog.records if token in r.getMessage()]
        assert leaked == []
    # Nothing was recorded under its activity id either: the genuine activity is processed.
    activity["serviceUrl"] = stage.teams.sim.service_url
    genuine = await stage.teams.client.post(activity)
    assert genuine.status == 202
    await stage.teams.wait_for_message(stage.teams.chat_of(alice), "Access granted: prod-db")


@pytest.mark.parametrize(
    ("body", "content_type", "status"),
    [
        ("not json", "application/json", 400),
        ("[1, 2]", "application/json", 400),
        ('{"type": "message"}', "application/json", 400),
        ('{"type": "message", "serviceUrl": "x", "channelId": "msteams", "conversation": {}}', "application/json", 400),
        ('{"type": "message"}', None, 415),
        ('{"type": "message"}', "text/plain", 415),
    ],
)
async def test_a_malformed_activity_is_400_and_one_without_json_is_415_and_nothing_is_stored(
    teams_stage: Stage, body: str, content_type: str | None, status: int
) -> None:
    stage = teams_stage
    posted = await stage.teams.client.post(body, content_type=content_type, token=sign(stage.teams.sim))
    assert posted.status == status
    assert "Traceback" not in str(posted.body)
    assert stage.teams.sim.calls == []


# --- card clicks Ackgate did not render ----------------------------------------------------------


async def test_an_unknown_verb_or_tampered_data_gets_an_error_card_and_decides_nothing(teams_stage: Stage) -> None:
    stage = teams_stage
    alice = stage.person("alice")
    bob = stage.teams.person("bob")
    await installed(stage, bob)
    await stage.command(alice, "prod-k8s 1h stuck pod")
    other = request_id_in((await stage.command(alice, "billing-console 30m invoices")).text)
    card = await stage.teams.wait_for_message(stage.teams.chat_of(bob), "requests prod-k8s")
    good = stage.teams.button_data(card, "Approve")

    tampered = [
        {**good, "verb": "launch"},  # a verb Ackgate never renders
        {**good, "target": other},  # the signature is for another request
        {k: v for k, v in good.items() if k != "sig"},  # no signature
        {**good, "target": "r-x; DROP TABLE"},  # not an id at all
    ]
    for data in tampered:
        posted, seen = await stage.teams.click(bob, card, "Approve", data=data)
        assert posted.status == 200
        check_card(posted.body["value"])
        assert messages.TEAMS_CARD_ACTION_INVALID in seen

    assert all(r.status is RequestStatus.PENDING for r in await requests_of(stage, alice.email))
    assert "access.approved" not in await audit_kinds(stage)


# --- the Bot Connector and the token endpoint failing --------------------------------------------


def _direct(stage: Stage) -> Any:
    notifier = stage.parts.notifiers["teams"]
    assert isinstance(notifier, OutboxNotifier)
    return notifier.inner


@pytest.mark.parametrize(
    ("status", "retry_after", "sentence", "attempts"),
    [
        (403, None, messages.teams_blocked("send"), 1),
        (404, None, messages.teams_not_found("send"), 1),
        (429, 0.01, messages.teams_unreachable("send"), 4),
        (500, None, messages.teams_unreachable("send"), 4),
        (503, None, messages.teams_unreachable("send"), 4),
    ],
)
async def test_the_bot_connector_refusing_is_retried_a_bounded_number_of_times_then_a_chat_error(
    teams_stage: Stage, status: int, retry_after: float | None, sentence: str, attempts: int
) -> None:
    stage = teams_stage
    stage.teams.channel("19:ops@thread.tacv2")
    stage.teams.sim.fail_next(status, times=10, retry_after=retry_after)

    with pytest.raises(ChatError) as refused:
        await _direct(stage).send_to_channel("19:ops@thread.tacv2", Card(title="hello"))

    assert refused.value.message == sentence
    assert len(stage.teams.sim.calls_to("Conversations_SendToConversation")) == attempts
    body = await metrics(stage)
    assert f'ackgate_teams_connector_errors_total{{operation="send",status="{status}"}} 1.0' in body


async def test_a_429_with_retry_after_is_waited_out_and_the_message_lands(teams_stage: Stage) -> None:
    stage = teams_stage
    stage.teams.channel("19:ops@thread.tacv2")
    stage.teams.sim.fail_next(429, times=1, retry_after=0.2)
    started = time.monotonic()

    ref = await _direct(stage).send_to_channel("19:ops@thread.tacv2", Card(title="hello"))

    assert time.monotonic() - started >= 0.2
    assert [m.id for m in stage.teams.posted("19:ops@thread.tacv2")] == [ref.message_id]


async def test_a_blocked_approver_leaves_the_request_pending_and_audited_and_the_card_queued(
    teams_stage: Stage,
) -> None:
    stage = teams_stage
    alice = stage.person("alice")
    bob = stage.teams.person("bob")
    await installed(stage, bob)
    stage.teams.sim.block(stage.teams.chat_of(bob))  # bob removed the app

    reply = await stage.command(alice, "prod-k8s 1h stuck pod")

    assert "Waiting for approval: prod-k8s" in reply.text
    [pending] = await requests_of(stage, alice.email)
    assert pending.status is RequestStatus.PENDING
    assert "approval.requested" in await audit_kinds(stage)
    assert await stage.parts.store.outbox.count_pending() == 1  # sent when Teams takes it again
    assert stage.teams.posted(stage.teams.chat_of(bob)) == []


async def test_when_a_reply_cannot_be_sent_the_grant_and_the_audit_are_still_right(
    teams_stage: Stage, noop_provisioner: NoopProvisioner
) -> None:
    stage = teams_stage
    alice = teams_and_pagerduty_person(stage, "alice")
    acknowledged(stage, alice)
    await stage.teams.install(alice)
    await asyncio.sleep(0.2)
    stage.teams.sim.fail_next(502, times=10)

    posted = await stage.teams.client.post(stage.teams.client.personal_message(alice.member, "access prod-db 1h lag"))

    assert posted.status == 202
    await stage.teams.sim.wait_for(lambda: len(stage.teams.sim.calls_to("Conversations_ReplyToActivity")) >= 4)
    await asyncio.sleep(0.1)
    [grant] = await grants_of(stage, alice.email)
    assert grant.status is GrantStatus.ACTIVE
    assert {"access.approved", "grant.provisioned"} <= set(await audit_kinds(stage))
    assert 'ackgate_teams_connector_errors_total{operation="reply",status="502"} 1.0' in await metrics(stage)


@pytest.mark.parametrize(
    ("settings", "detail"),
    [
        ({"microsoft_app_password": SecretStr("not-the-password")}, "AADSTS7000215"),
        ({"teams_login_url": "http://127.0.0.1:9"}, "login unreachable"),
    ],
)
async def test_the_token_endpoint_failing_is_a_clear_error_in_admin_status_and_on_a_click_not_a_crash(
    tmp_path: Path, noop_provisioner: NoopProvisioner, settings: dict[str, object], detail: str
) -> None:
    stage = await make_stage(tmp_path, noop_provisioner, admins=["alice@example.com"], **settings)
    async with stage:  # it starts: the failure is logged, not fatal
        alice = stage.person("alice")
        status = await stage.command(alice, "admin status")
        [row] = [line for line in status.text.splitlines() if line.startswith("Teams")]
        assert "Error" in row and "could not sign in to the Bot Framework" in row and detail in row

        bob = stage.teams.person("bob")
        activity = stage.teams.client.execute(
            bob.member,
            stage.teams.chat_of(bob),
            verb="approve",
            data={"verb": "approve", "target": "r-00000000"},
            reply_to="1",
        )
        posted = await stage.teams.client.post(activity)
        assert posted.status == 200
        check_card(posted.body["value"])
        assert "could not sign in to the Bot Framework" in str(posted.body)
        assert await requests_of(stage, alice.email) == []


# --- a provisioner slower than the invoke budget -------------------------------------------------


class SlowProvisioner(NoopProvisioner):
    async def grant(self, grant: Grant) -> None:
        await asyncio.sleep(1.0)
        await super().grant(grant)


async def test_a_provisioner_slower_than_the_budget_gets_the_interim_card_then_the_put(tmp_path: Path) -> None:
    stage = await make_stage(tmp_path, SlowProvisioner(), teams_invoke_budget_seconds=0.3)
    async with stage:
        alice = stage.person("alice")
        bob = stage.teams.person("bob")
        await installed(stage, bob)
        await stage.command(alice, "prod-k8s 1h stuck pod")
        card = await stage.teams.wait_for_message(stage.teams.chat_of(bob), "requests prod-k8s")

        started = time.monotonic()
        posted, seen = await stage.teams.click(bob, card, "Approve")
        answered_in = time.monotonic() - started

        assert posted.status == 200
        assert messages.TEAMS_DECISION_RECORDING in seen
        assert 0.3 <= answered_in < 1.0, answered_in
        await stage.teams.sim.wait_for(
            lambda: "Approved by bob@example.com" in stage.teams.texts(card.conversation_id)[0]
        )
        assert "[Approve]" not in stage.teams.texts(card.conversation_id)[0]
        await stage.wait_for_dm(alice, "Access granted: prod-k8s")
        [grant] = await grants_of(stage, alice.email)
        assert grant.status is GrantStatus.ACTIVE
        print(f"\ninvoke answered in {answered_in:.3f} s with a 1.0 s provisioner and a 0.3 s budget")


# --- one token for every send --------------------------------------------------------------------


async def test_one_token_request_serves_a_hundred_sends(teams_stage: Stage) -> None:
    stage = teams_stage
    stage.teams.channel("19:ops@thread.tacv2")

    for n in range(100):
        await stage.parts.notifiers["teams"].send_to_channel("19:ops@thread.tacv2", Card(title=f"{n}"))

    assert stage.teams.sim.token_requests == 1  # the start-up warm-up fetched it; all 100 shared it
    assert len(stage.teams.posted("19:ops@thread.tacv2")) == 100
    assert len({c.token for c in stage.teams.sim.calls}) == 1


# --- mirroring into a Teams channel --------------------------------------------------------------


async def test_an_incident_is_mirrored_into_a_teams_channel_as_one_card_updated_in_place(
    tmp_path: Path, noop_provisioner: NoopProvisioner
) -> None:
    channel = "19:incidents@thread.tacv2"
    stage = await make_stage(
        tmp_path, noop_provisioner, mirror_channel=f"teams:{channel}", mirror_services=[DATABASE_SERVICE]
    )
    async with stage:
        stage.teams.channel(channel)
        incident = {"incident_id": "Q1TEAMSINC0001", "number": 78, "service": DATABASE_SERVICE}
        triggered = incident_data(status="triggered", **incident)
        assert (
            await stage.webhook(webhook("incident.triggered", triggered, at="2026-11-23T12:00:01Z", event_id="T1"))
            == 202
        )
        first = await stage.teams.wait_for_message(channel, "Triggered")
        acked = incident_data(status="acknowledged", **incident)
        ack = webhook("incident.acknowledged", acked, at="2026-11-23T12:00:05Z", agent="Bob", event_id="T2")
        assert await stage.webhook(ack) == 202
        await stage.teams.sim.wait_for(lambda: "Acknowledged by Bob" in stage.teams.texts(channel)[0])

        assert [m.id for m in stage.teams.posted(channel)] == [first.id]
        assert first.edits >= 1
        assert stage.teams.sim.validation_errors == []

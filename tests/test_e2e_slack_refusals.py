"""End to end through Slack's real entry point, when things are refused or go wrong: bad input,
people Ackgate can't identify, PagerDuty in trouble, clicks that must not count, forged or
malformed requests and unexpected failures.

Each test checks what the user was told and that nothing was half-written: no request left
PENDING, no grant, no audit line beyond the refusal itself, no Slack message changed.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlencode

import pytest

from bot.core import messages
from bot.core.domain import RequestStatus
from bot.runtime.simulators import slack_requests
from bot.runtime.simulators.pagerduty import PagerDutySimulator
from bot.runtime.simulators.stage import Person, Reply, Stage
from tests.fakes.stage_fixtures import acknowledged_incident, audit_kinds, grants_of, request_id_in, requests_of

FAILURE_BOUND_SECONDS = 5.0


@dataclass(frozen=True)
class Snapshot:
    """Everything a refused action must leave as it was."""

    requests: list[Any]
    grants: list[Any]
    audit: list[str]
    slack_messages: dict[str, list[tuple[str, str, str, int]]]


async def snapshot(stage: Stage, *people: Person) -> Snapshot:
    requests, grants = [], []
    for who in people:
        requests += await requests_of(stage, who.email)
        grants += await grants_of(stage, who.email)
    posted = {
        channel: [(m.ts, m.text, json.dumps(m.blocks), m.edits) for m in sent]
        for channel, sent in stage.slack.messages.items()
    }
    return Snapshot(requests, grants, await audit_kinds(stage), posted)


def assert_ephemeral(reply: Reply) -> None:
    assert reply.status == 200
    assert reply.follow_up is not None
    assert reply.follow_up["response_type"] == "ephemeral"
    assert reply.follow_up.get("replace_original") is False


async def assert_nothing_stored(stage: Stage, who: Person) -> None:
    assert await requests_of(stage, who.email) == []
    assert await grants_of(stage, who.email) == []
    assert await audit_kinds(stage) == []


# --- what the requester typed -----------------------------------------------------------------


async def test_an_unknown_resource_suggests_the_close_names(stage: Stage) -> None:
    alice = stage.person("alice")

    reply = await stage.command(alice, "prod-bd 1h replication lag")

    assert "There is no resource called “prod-bd”. Did you mean prod-db" in reply.text
    await assert_nothing_stored(stage, alice)
    assert stage.pd.requests == []


@pytest.mark.parametrize("duration", ["0m", "30s"], ids=["zero", "under-a-minute"])
async def test_a_duration_too_short_says_the_allowed_range(stage: Stage, duration: str) -> None:
    alice = stage.person("alice")
    acknowledged_incident(stage, alice)

    reply = await stage.command(alice, f"prod-db {duration} replication lag")

    assert "Ask for between 1m and 2h." in reply.text
    assert "is longer than this access allows" not in reply.text
    await assert_nothing_stored(stage, alice)
    assert stage.pd.requests == []


async def test_a_duration_over_the_maximum_says_the_allowed_range(stage: Stage) -> None:
    alice = stage.person("alice")
    acknowledged_incident(stage, alice)

    reply = await stage.command(alice, "prod-db 5h replication lag")

    assert "5h is longer than this access allows. Ask for between 1m and 2h." in reply.text
    await assert_nothing_stored(stage, alice)
    assert stage.pd.requests == []


async def test_an_over_long_reason_is_refused_with_the_limit(stage: Stage) -> None:
    alice = stage.person("alice")
    acknowledged_incident(stage, alice)

    reply = await stage.command(alice, "prod-db 1h " + "x" * 501)

    assert reply.status == 200
    assert "Your reason is 501 characters long; keep it under 500." in reply.text
    assert reply.ack["response_type"] == "ephemeral"
    await assert_nothing_stored(stage, alice)
    assert stage.pd.requests == []


# --- who is asking ----------------------------------------------------------------------------


async def test_someone_with_no_pagerduty_user_for_their_email_is_told_so(stage: Stage) -> None:
    zed = stage.person("zed", in_pagerduty=False)

    reply = await stage.command(zed, "prod-db 1h replication lag")

    assert "No PagerDuty user has the email zed@example.com." in reply.text
    await assert_nothing_stored(stage, zed)


async def test_a_slack_user_whose_email_is_hidden_is_told_about_users_read_email(stage: Stage) -> None:
    ghost = stage.person("ghost", email="")

    reply = await stage.command(ghost, "prod-db 1h replication lag")

    assert reply.text == messages.SLACK_NO_EMAIL
    assert "users:read.email" in reply.text
    assert await audit_kinds(stage) == []
    assert stage.pd.requests == []


# --- PagerDuty in trouble ---------------------------------------------------------------------


def _down(pd: PagerDutySimulator) -> None:
    pd.fail_next(None, status=500)


def _slow(pd: PagerDutySimulator) -> None:
    pd.slow_next(None, seconds=3)  # twice the stage's 1.5 s PagerDuty timeout


def _rate_limiting(pd: PagerDutySimulator) -> None:
    pd.rate_limit_next(None, reset=30)


def _rejecting_the_token(pd: PagerDutySimulator) -> None:
    pd.reject_auth_next(None)


@pytest.mark.parametrize(
    ("trouble", "told"),
    [
        (_down, "PagerDuty did not answer GET /users in time (HTTP 500). Try again in a minute."),
        (_slow, "PagerDuty did not answer GET /users in time (it timed out). Try again in a minute."),
        (_rate_limiting, "PagerDuty is rate limiting Ackgate (GET /users: HTTP 429). Try again in a minute."),
        (_rejecting_the_token, "PagerDuty rejected Ackgate's API token (HTTP 401)."),
    ],
    ids=["down", "slow", "rate-limiting", "rejecting-the-token"],
)
async def test_pagerduty_trouble_fails_closed_with_a_clear_message_within_five_seconds(
    stage: Stage, trouble: Callable[[PagerDutySimulator], None], told: str
) -> None:
    alice = stage.person("alice")
    acknowledged_incident(stage, alice)  # PagerDuty would let her in, if it answered
    trouble(stage.pd)

    started = time.monotonic()
    reply = await stage.command(alice, "prod-db 1h replication lag")
    took = time.monotonic() - started

    assert took < FAILURE_BOUND_SECONDS, f"the failure took {took:.1f}s to reach the user"
    assert told in reply.text
    assert "Access granted" not in reply.text
    assert not [r for r in await requests_of(stage, alice.email) if r.status is RequestStatus.PENDING]
    assert await grants_of(stage, alice.email) == []
    assert stage.pd.requests, "PagerDuty was asked"


# --- clicks that must not count ---------------------------------------------------------------


@dataclass(frozen=True)
class Pending:
    alice: Person
    bob: Person
    carol: Person
    dana: Person
    mallory: Person
    k8s_request: str  # alice's prod-k8s request: bob or carol approves
    billing_request: str  # alice's billing-console request: only dana approves


async def pending_requests(stage: Stage) -> Pending:
    alice, bob, carol, dana, mallory = (stage.person(n) for n in ("alice", "bob", "carol", "dana", "mallory"))
    k8s = request_id_in((await stage.command(alice, "prod-k8s 1h stuck pod")).text)
    billing = request_id_in((await stage.command(alice, "billing-console 30m refund")).text)
    await stage.wait_for_dm(bob, k8s)
    await stage.wait_for_dm(dana, billing)
    return Pending(alice, bob, carol, dana, mallory, k8s, billing)


async def test_a_click_on_an_already_decided_request_says_so_and_changes_nothing(stage: Stage) -> None:
    world = await pending_requests(stage)
    assert "You approved" in (await stage.click(world.bob, "approve", world.k8s_request)).text
    await stage.wait_for_dm(world.alice, "Access granted: prod-k8s")
    before = await snapshot(stage, world.alice)

    reply = await stage.click(world.carol, "deny", world.k8s_request)

    assert_ephemeral(reply)
    assert reply.text == "This request was already approved by bob@example.com."
    assert await snapshot(stage, world.alice) == before


async def test_a_click_on_an_unknown_request_says_so_and_changes_nothing(stage: Stage) -> None:
    world = await pending_requests(stage)
    before = await snapshot(stage, world.alice)

    reply = await stage.click(world.bob, "approve", "r-zzzzzzzz")

    assert_ephemeral(reply)
    assert reply.text == messages.unknown_request("r-zzzzzzzz")
    assert await snapshot(stage, world.alice) == before


async def test_a_click_by_someone_who_is_not_an_approver_is_not_counted(stage: Stage) -> None:
    world = await pending_requests(stage)
    before = await snapshot(stage, world.alice)

    reply = await stage.click(world.mallory, "approve", world.k8s_request)

    assert_ephemeral(reply)
    assert "You are not an eligible approver for this request" in reply.text
    after = await snapshot(stage, world.alice)
    assert after.audit == [*before.audit, "action.refused"]  # the attempt is audited, nothing else
    assert (after.requests, after.grants, after.slack_messages) == (
        before.requests,
        before.grants,
        before.slack_messages,
    )
    request = await stage.parts.store.requests.get(world.k8s_request)
    assert request is not None and request.status is RequestStatus.PENDING and request.approvals == ()


async def test_the_requester_cannot_approve_her_own_request(stage: Stage) -> None:
    world = await pending_requests(stage)
    before = await snapshot(stage, world.alice)

    reply = await stage.click(world.alice, "approve", world.k8s_request)

    assert_ephemeral(reply)
    assert reply.text == messages.OWN_REQUEST
    after = await snapshot(stage, world.alice)
    assert after.audit == [*before.audit, "action.refused"]
    assert (after.requests, after.grants, after.slack_messages) == (
        before.requests,
        before.grants,
        before.slack_messages,
    )


async def test_a_button_value_changed_to_a_request_the_clicker_may_not_approve_is_not_counted(
    stage: Stage,
) -> None:
    """bob may approve alice's prod-k8s request; he edits his button to point at her billing request."""
    world = await pending_requests(stage)
    before = await snapshot(stage, world.alice)

    reply = await stage.click(world.bob, "approve", world.billing_request)

    assert_ephemeral(reply)
    assert "You are not an eligible approver for this request" in reply.text
    after = await snapshot(stage, world.alice)
    assert after.audit == [*before.audit, "action.refused"]
    assert (after.requests, after.grants, after.slack_messages) == (
        before.requests,
        before.grants,
        before.slack_messages,
    )
    billing = await stage.parts.store.requests.get(world.billing_request)
    assert billing is not None and billing.status is RequestStatus.PENDING


async def test_a_garbage_button_value_is_answered_as_unknown_and_never_echoed_as_markup(stage: Stage) -> None:
    world = await pending_requests(stage)
    before = await snapshot(stage, world.alice)

    reply = await stage.click(world.bob, "approve", "r-<script>")

    assert_ephemeral(reply)
    assert reply.text == messages.unknown_request("r-<script>")
    assert "<script>" not in json.dumps(reply.follow_up)  # Slack gets it escaped, as text
    assert await snapshot(stage, world.alice) == before


# --- requests that are not Slack's ------------------------------------------------------------


def _alice_asks_for_prod_db(stage: Stage, alice: Person) -> str:
    return slack_requests.slash_command_body(
        text="prod-db 1h replication lag", user_id=alice.user_id, response_url=stage.slack.response_url("forged")
    )


@pytest.mark.parametrize(
    ("secret", "age_seconds"),
    [("not-the-signing-secret", 0), (None, 5 * 60 + 1)],
    ids=["invalid-signature", "signature-older-than-five-minutes"],
)
async def test_a_request_without_a_valid_fresh_signature_is_401_and_nothing_happens(
    stage: Stage, secret: str | None, age_seconds: int
) -> None:
    alice = stage.person("alice")
    acknowledged_incident(stage, alice)
    body = _alice_asks_for_prod_db(stage, alice)
    signed = {"secret": secret} if secret is not None else {}

    status, _ = await stage.post(body, timestamp=int(time.time()) - age_seconds, **signed)

    assert status == 401
    await assert_nothing_stored(stage, alice)
    assert stage.slack.calls == []
    assert stage.slack.responses == {}
    assert stage.pd.requests == []


def _payload_not_json(stage: Stage, clicker: Person) -> str:
    return urlencode({"payload": "not-json"})


def _block_actions_without_actions(stage: Stage, clicker: Person) -> str:
    payload = slack_requests.block_actions_payload(
        user_id=clicker.user_id,
        action_id="ackgate.approve",
        value="r-zzzzzzzz",
        response_url=stage.slack.response_url("x"),
    )
    payload["actions"] = []
    return urlencode({"payload": json.dumps(payload)})


@pytest.mark.parametrize(
    "malformed", [_payload_not_json, _block_actions_without_actions], ids=["not-json", "no-actions"]
)
async def test_a_malformed_payload_is_400_and_nothing_happens(
    stage: Stage, malformed: Callable[[Stage, Person], str]
) -> None:
    bob = stage.person("bob")

    status, text = await stage.post(malformed(stage, bob))

    assert status == 400
    assert text == messages.SLACK_BAD_REQUEST
    assert await audit_kinds(stage) == []
    assert stage.slack.calls == []
    assert stage.pd.requests == []


# --- the unexpected ---------------------------------------------------------------------------


async def test_an_unexpected_failure_shows_the_generic_sentence_and_never_a_stack_trace(
    stage: Stage, monkeypatch: pytest.MonkeyPatch
) -> None:
    alice = stage.person("alice")
    acknowledged_incident(stage, alice)

    async def broken(*args: object, **kwargs: object) -> None:
        raise RuntimeError("database handle /var/lib/secret exploded")

    monkeypatch.setattr(stage.parts.service, "request_access", broken)

    reply = await stage.command(alice, "prod-db 1h replication lag")

    assert reply.text == messages.GENERIC_FAILURE
    shown = json.dumps([reply.ack, stage.slack.responses, [call.args for call in stage.slack.calls]])
    assert "Traceback" not in shown
    assert "RuntimeError" not in shown and "exploded" not in shown
    await assert_nothing_stored(stage, alice)


async def test_without_an_acknowledged_incident_mallory_is_refused_and_the_refusal_is_recorded(stage: Stage) -> None:
    """A refused request is stored as REFUSED with its reasons, never as a grant."""
    mallory = stage.person("mallory")

    reply = await stage.command(mallory, "prod-db 1h replication lag")

    assert "Access to prod-db was not granted" in reply.text
    [request] = await requests_of(stage, mallory.email)
    assert request.status is RequestStatus.REFUSED
    assert await grants_of(stage, mallory.email) == []
    assert "access.refused" in await audit_kinds(stage)

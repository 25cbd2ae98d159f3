"""Teams messages acknowledged and then left unanswered (a crash between the 202 and the reply) are answered
by the Teams recovery pass, through the real ``/api/messages`` with simulator-signed activities, on the real
app and SQLite store: each message was recorded in the command inbox before its 202.

The crash is simulated in process: the endpoint's processing task is dropped (as a SIGKILL would drop
it) and the clock moved past the command's lease. ``tests/reliability/test_teams_crash.py`` does the same
with a real ``ackgate serve`` SIGKILLed and restarted.
"""

from __future__ import annotations

import asyncio
import sqlite3
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import pytest

from bot.adapters.provisioners import NoopProvisioner
from bot.core import messages
from bot.core.domain import RequestStatus
from bot.runtime.simulators.stage import Stage
from bot.runtime.simulators.teams_stage import TeamsPerson, activity_text
from handlers.teams.platform import MessagesEndpoint
from tests.fakes.stage_fixtures import grants_of, requests_of
from tests.fakes.teams_stage_fixtures import acknowledged, installed, teams_and_pagerduty_person, until


async def _dropped(self: MessagesEndpoint, turn: Any, identity: Any) -> None:
    return None


@contextmanager
def crashing_endpoint() -> Iterator[None]:
    """While active, every acknowledged activity's processing is dropped, as a SIGKILL after the 202 would."""
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(MessagesEndpoint, "_run", _dropped)
        yield


def answered_rows(stage: Stage) -> list[tuple[str, str | None]]:
    path = stage.parts.settings.database_url.removeprefix("sqlite:///")
    with sqlite3.connect(path) as db:
        return list(db.execute("SELECT kind, answered_at FROM slack_commands ORDER BY received_at"))


async def lost(stage: Stage, who: TeamsPerson, text: str) -> dict[str, Any]:
    """``who`` types ``text``; Ackgate acknowledges it and dies before answering."""
    activity = stage.teams.client.personal_message(who.member, text)
    posted = await stage.teams.client.post(activity)
    assert posted.status == 202
    return activity


async def restart_passes(stage: Stage) -> None:
    """Past the 60 s lease: the recovery pass (every 15 s) takes the message over."""
    await stage.pass_time(61)


def replies_to(stage: Stage, who: TeamsPerson, activity: dict[str, Any]) -> list[str]:
    chat = stage.teams.chat_of(who)
    return [activity_text(m.activity) for m in stage.teams.posted(chat) if m.reply_to == activity["id"]]


async def test_a_message_whose_processing_was_lost_is_answered_once_in_its_chat(
    teams_stage: Stage, noop_provisioner: NoopProvisioner
) -> None:
    stage = teams_stage
    alice = teams_and_pagerduty_person(stage, "alice")
    acknowledged(stage, alice)
    with crashing_endpoint():
        activity = await lost(stage, alice, "access prod-db 1h checking replication lag")
    assert stage.teams.posted(stage.teams.chat_of(alice)) == []
    assert answered_rows(stage) == [("teams_command", None)]  # recorded before the 202

    await restart_passes(stage)
    await until(lambda: _true(replies_to(stage, alice, activity)))

    [answer] = replies_to(stage, alice, activity)
    assert "Access granted: prod-db" in answer
    for _ in range(3):
        await restart_passes(stage)
    await stage.parts.scheduler.run_once()
    assert len(replies_to(stage, alice, activity)) == 1
    assert len(await grants_of(stage, alice.email)) == 1
    assert [c.action for c in noop_provisioner.calls] == ["grant"]
    [(_, answered_at)] = answered_rows(stage)
    assert answered_at is not None


async def test_a_crash_after_the_request_was_made_tells_its_state_and_asks_the_approvers_once(
    teams_stage: Stage,
) -> None:
    stage = teams_stage
    alice = teams_and_pagerduty_person(stage, "alice")
    bob = stage.person("bob")  # an approver, in Slack
    activity = stage.teams.client.personal_message(alice.member, "access prod-k8s 1h debugging a stuck pod")
    posted = await stage.teams.client.post(activity)
    assert posted.status == 202
    await until(lambda: _true(replies_to(stage, alice, activity)))
    assert "Waiting for approval" in replies_to(stage, alice, activity)[0]
    await stage.wait_for_dm(bob, "alice@example.com requests prod-k8s")
    await until(lambda: _true(all(at is not None for _, at in answered_rows(stage))))
    # The crash: as if the process died right after making the request, before marking the answer.
    path = stage.parts.settings.database_url.removeprefix("sqlite:///")
    with sqlite3.connect(path) as db:
        db.execute("UPDATE slack_commands SET answered_at = NULL")

    await restart_passes(stage)
    await until(lambda: _true(len(replies_to(stage, alice, activity)) == 2))

    [request] = await requests_of(stage, alice.email)
    assert messages.request_found_after_restart("prod-k8s", request.id, "pending") in replies_to(
        stage, alice, activity
    )[-1].replace("\n", " ")
    assert len(stage.dms(bob)) == 1  # the approvers were not asked twice


async def test_a_lost_command_that_is_unsafe_to_repeat_is_answered_may_or_may_not(teams_stage: Stage) -> None:
    stage = teams_stage
    alice = teams_and_pagerduty_person(stage, "alice")
    with crashing_endpoint():
        activity = await lost(stage, alice, "access extend g-7k2m9q4x 1h")

    await restart_passes(stage)
    await until(lambda: _true(replies_to(stage, alice, activity)))

    [answer] = replies_to(stage, alice, activity)
    assert " ".join(answer.split()) == messages.command_interrupted("extend g-7k2m9q4x 1h")


async def test_copies_of_one_activity_racing_and_redelivered_after_its_answer_run_once(
    teams_stage: Stage, noop_provisioner: NoopProvisioner
) -> None:
    stage = teams_stage
    alice = teams_and_pagerduty_person(stage, "alice")
    acknowledged(stage, alice)
    activity = stage.teams.client.personal_message(alice.member, "access prod-db 1h replication lag")

    posted = await asyncio.gather(*(stage.teams.client.post(activity) for _ in range(4)))
    assert [p.status for p in posted] == [202] * 4
    await until(lambda: _true(replies_to(stage, alice, activity)))
    await until(lambda: _true(all(at is not None for _, at in answered_rows(stage))))
    assert (await stage.teams.client.post(activity)).status == 202  # long after: still a duplicate
    await restart_passes(stage)
    await stage.parts.scheduler.run_once()
    await asyncio.sleep(0.2)

    assert len(replies_to(stage, alice, activity)) == 1
    assert len(await grants_of(stage, alice.email)) == 1
    assert [c.action for c in noop_provisioner.calls] == ["grant"]
    assert len(answered_rows(stage)) == 1


async def _true(value: object) -> bool:
    return bool(value)


async def test_a_lost_action_submit_approve_is_decided_once_by_the_recovery_pass(
    teams_stage: Stage, noop_provisioner: NoopProvisioner
) -> None:
    stage = teams_stage
    alice = stage.person("alice")
    bob = stage.teams.person("bob")
    await installed(stage, bob)
    await stage.command(alice, "prod-k8s 1h stuck pod")
    card = await stage.teams.wait_for_message(stage.teams.chat_of(bob), "requests prod-k8s")
    # An older Teams client sends the Approve click as a message (Action.Submit), which is then lost.
    click = stage.teams.client.submit(
        bob.member, card.conversation_id, value=stage.teams.button_data(card, "Approve"), reply_to=card.id
    )
    with crashing_endpoint():
        assert (await stage.teams.client.post(click)).status == 202
    assert [kind for kind, _ in answered_rows(stage) if kind.startswith("teams")] == ["teams_click"]
    [request] = await requests_of(stage, alice.email)
    assert request.status is RequestStatus.PENDING

    await restart_passes(stage)
    await until(lambda: _true([m for m in stage.teams.posted(card.conversation_id) if m.reply_to == click["id"]]))

    [request] = await requests_of(stage, alice.email)
    assert request.status is RequestStatus.APPROVED and request.decided_by == bob.email
    assert len(await grants_of(stage, alice.email)) == 1
    assert [c.action for c in noop_provisioner.calls] == ["grant"]
    await stage.wait_for_dm(alice, "Access granted: prod-k8s")

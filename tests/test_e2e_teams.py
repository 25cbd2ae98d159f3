"""End to end through Teams' real entry point: activities signed by the Teams simulator's key, POSTed to
``/api/messages`` of the real aiohttp app, with the real core and SQLite store behind it, Slack and
PagerDuty simulated beside it in the same deployment. The Teams counterparts of ``test_e2e_slack.py``.

Every Bot Connector body Ackgate sends is checked against ``ConnectorAPI.swagger.json`` and every card
against the Adaptive Card 1.5 schema (the ``teams_stage`` fixture fails the test otherwise), and
``requests.get`` raises throughout, so botbuilder's blocking key fetch never ran.
"""

from __future__ import annotations

import asyncio

from bot.adapters.provisioners import NoopProvisioner
from bot.core.domain import GrantStatus, RequestStatus
from bot.runtime.simulators.stage import Stage
from tests.fakes.stage_fixtures import (
    audit_kinds,
    audit_lines,
    grant_id_in,
    grants_of,
    request_id_in,
    requests_of,
)
from tests.fakes.teams_schemas import check_card
from tests.fakes.teams_stage_fixtures import acknowledged, installed, teams_and_pagerduty_person

# --- requesting in Teams -----------------------------------------------------------------------


async def test_alice_types_access_in_her_1_1_chat_and_gets_prod_db_at_once(
    teams_stage: Stage, noop_provisioner: NoopProvisioner
) -> None:
    stage = teams_stage
    alice = teams_and_pagerduty_person(stage, "alice")
    acknowledged(stage, alice)

    posted, reply = await stage.teams.say(alice, "access prod-db 2h checking replication lag")

    assert posted.status == 202  # acknowledged before PagerDuty was asked
    assert "Access granted: prod-db" in reply
    assert "Justification: checking replication lag" in reply
    [grant] = await grants_of(stage, alice.email)
    assert grant.status is GrantStatus.ACTIVE and grant.holder.platform == "teams"
    assert grant.holder.user_id == alice.user_id and grant.holder.email == "alice@example.com"
    assert (grant.expires_at - stage.clock.now()).total_seconds() == 2 * 3600
    assert grant.id in reply
    assert [c.action for c in noop_provisioner.calls] == ["grant"]
    # The email came from the Bot Connector's roster (get_member), and the reply went to her message.
    member_calls = stage.teams.sim.calls_to("Conversations_GetConversationMember")
    assert member_calls and member_calls[0].path.endswith("/members/29:alice")
    [answer] = stage.teams.posted(stage.teams.chat_of(alice))
    assert answer.reply_to is not None
    assert {"access.requested", "gate.evaluated", "access.approved", "grant.provisioned"} <= set(
        await audit_kinds(stage)
    )
    # She is in the address book now, with her 1:1 chat, for proactive messages later.
    address = await stage.parts.store.address_book.by_user("teams", alice.user_id)
    assert address is not None and address.email == "alice@example.com"
    assert stage.teams.chat_of(alice) in address.conversation


async def test_a_channel_mention_and_a_leading_slash_access_both_work(teams_stage: Stage) -> None:
    stage = teams_stage
    alice = teams_and_pagerduty_person(stage, "alice")
    acknowledged(stage, alice)
    channel = stage.teams.channel("19:ops@thread.tacv2", alice)

    _, in_channel = await stage.teams.say_in_channel(alice, channel, "access prod-db 1h replication lag")
    _, slash = await stage.teams.say(alice, "/access prod-db 30m still lagging")
    _, bare = await stage.teams.say(alice, "list")

    assert "Access granted: prod-db" in in_channel
    assert "Access granted: prod-db" in slash
    assert len(await grants_of(stage, alice.email)) == 2
    assert grant_id_in(in_channel) in bare and grant_id_in(slash) in bare
    # The reply in the channel is in the thread of her message.
    [reply] = stage.teams.posted(channel)
    assert reply.reply_to is not None


async def test_help_extend_and_revoke_from_teams(teams_stage: Stage, noop_provisioner: NoopProvisioner) -> None:
    stage = teams_stage
    alice = teams_and_pagerduty_person(stage, "alice")
    acknowledged(stage, alice)
    _, helped = await stage.teams.say(alice, "access help")
    assert "/access revoke <grant-id>" in helped
    assert "Resources: prod-db, prod-k8s, billing-console" in helped
    grant_id = grant_id_in((await stage.teams.say(alice, "access prod-db 1h replication lag"))[1])
    [before] = await grants_of(stage, alice.email)

    _, extended = await stage.teams.say(alice, f"access extend {grant_id} 30m")
    _, revoked = await stage.teams.say(alice, f"access revoke {grant_id}")

    assert "Access granted: prod-db" in extended
    assert "Access to prod-db revoked" in revoked
    [ended] = await grants_of(stage, alice.email)
    assert ended.status is GrantStatus.ENDED and ended.ended_by == "alice@example.com"
    assert (ended.expires_at - before.expires_at).total_seconds() == 30 * 60
    assert [c.action for c in noop_provisioner.calls] == ["grant", "revoke"]


async def test_a_bad_command_gets_the_usage_line_and_nothing_is_asked(teams_stage: Stage) -> None:
    stage = teams_stage
    alice = teams_and_pagerduty_person(stage, "alice")
    _, reply = await stage.teams.say(alice, "access extend")
    assert "/access extend <grant-id> <duration>" in reply
    assert stage.pd.requests == []


async def test_the_request_form_is_an_adaptive_card_and_its_submit_requests_access(teams_stage: Stage) -> None:
    stage = teams_stage
    alice = teams_and_pagerduty_person(stage, "alice")
    acknowledged(stage, alice)
    _, form_text = await stage.teams.say(alice, "access")
    assert "[Request]" in form_text or "Request" in form_text
    [form] = stage.teams.posted(stage.teams.chat_of(alice))
    data = stage.teams.button_data(form, next(t for t in ("Request", "Request access") if t in form_text))
    data.update({"resource": "prod-db", "duration": "1h", "reason": "from the form"})

    posted, answer = await stage.teams.click(alice, form, "", data=data)

    assert posted.status == 200
    check_card(posted.body["value"])
    assert "Access granted: prod-db" in answer
    [grant] = await grants_of(stage, alice.email)
    assert grant.justification == "from the form"


# --- approvals across platforms ------------------------------------------------------------------


async def test_a_slack_request_is_approved_by_bobs_click_in_teams_and_alice_is_told_in_slack(
    teams_stage: Stage,
) -> None:
    stage = teams_stage
    alice = stage.person("alice")  # Slack
    bob = stage.teams.person("bob")  # Teams only (his PagerDuty user is not needed to approve)
    await installed(stage, bob)

    reply = await stage.command(alice, "prod-k8s 1h debugging a stuck pod")

    assert "Waiting for approval: prod-k8s" in reply.text
    assert "Not reachable in chat: carol@example.com" in reply.text  # carol has no chat account
    card = await stage.teams.wait_for_message(stage.teams.chat_of(bob), "alice@example.com requests prod-k8s")
    text = stage.teams.texts(stage.teams.chat_of(bob))[0]
    assert "[Approve]" in text and "[Deny]" in text
    request_id = request_id_in(text)

    posted, clicker_sees = await stage.teams.click(bob, card, "Approve")

    assert posted.status == 200
    check_card(posted.body["value"])
    assert "You approved alice@example.com's access to prod-k8s" in clicker_sees
    granted = await stage.wait_for_dm(alice, "Access granted: prod-k8s")
    assert "Approved by: bob@example.com" in granted
    # The card was updated in place for everyone: a PUT on the same activity, no buttons left.
    await stage.teams.sim.wait_for(lambda: card.edits >= 1)
    [now] = stage.teams.texts(stage.teams.chat_of(bob))
    assert "Approved by bob@example.com" in now and "[Approve]" not in now
    assert stage.teams.sim.calls_to("Conversations_UpdateActivity")
    [approved] = await requests_of(stage, alice.email)
    assert approved.id == request_id
    assert approved.status is RequestStatus.APPROVED and approved.decided_by == "bob@example.com"
    [grant] = await grants_of(stage, alice.email)
    assert grant.status is GrantStatus.ACTIVE and grant.approved_by == ("bob@example.com",)


async def test_a_teams_request_is_approved_in_slack_and_alice_is_told_in_teams(teams_stage: Stage) -> None:
    stage = teams_stage
    alice = teams_and_pagerduty_person(stage, "alice")
    bob = stage.person("bob")  # Slack

    _, reply = await stage.teams.say(alice, "access prod-k8s 1h debugging a stuck pod")

    assert "Waiting for approval: prod-k8s" in reply
    card = await stage.wait_for_dm(bob, "alice@example.com requests prod-k8s")
    click = await stage.click(bob, "approve", request_id_in(card))

    assert "You approved alice@example.com's access to prod-k8s" in click.text
    told = await stage.teams.wait_for_message(stage.teams.chat_of(alice), "Access granted: prod-k8s")
    assert told.reply_to is None  # a proactive message in her 1:1 chat, not a reply
    [grant] = await grants_of(stage, alice.email)
    assert grant.holder.platform == "teams" and grant.approved_by == ("bob@example.com",)


async def test_two_approvers_clicking_at_once_decide_once_and_the_second_is_told_who_won(
    teams_stage: Stage, noop_provisioner: NoopProvisioner
) -> None:
    stage = teams_stage
    alice = stage.person("alice")
    bob, carol = stage.teams.person("bob"), stage.teams.person("carol")
    await installed(stage, bob)
    await installed(stage, carol)
    await stage.command(alice, "prod-k8s 1h stuck pod")
    bobs = await stage.teams.wait_for_message(stage.teams.chat_of(bob), "requests prod-k8s")
    carols = await stage.teams.wait_for_message(stage.teams.chat_of(carol), "requests prod-k8s")

    (b_posted, b_sees), (c_posted, c_sees) = await asyncio.gather(
        stage.teams.click(bob, bobs, "Approve"), stage.teams.click(carol, carols, "Approve")
    )

    assert b_posted.status == c_posted.status == 200
    seen = [b_sees, c_sees]
    winners = [s for s in seen if "You approved" in s]
    losers = [s for s in seen if "already approved by" in s]
    assert len(winners) == 1 and len(losers) == 1, seen
    [request] = await requests_of(stage, alice.email)
    assert losers[0].endswith(f"already approved by {request.decided_by}.")
    assert len(await grants_of(stage, alice.email)) == 1
    assert [c.action for c in noop_provisioner.calls] == ["grant"]
    assert (await audit_kinds(stage)).count("access.approved") == 1


async def test_clicks_by_the_requester_a_non_approver_and_after_the_decision_change_nothing(
    teams_stage: Stage,
) -> None:
    stage = teams_stage
    alice, bob, dave = (teams_and_pagerduty_person(stage, n) for n in ("alice", "bob", "dave"))
    await installed(stage, bob)
    await installed(stage, dave)
    carol = stage.teams.person("carol")
    await installed(stage, carol)
    await stage.teams.say(alice, "access prod-k8s 1h stuck pod")
    card = await stage.teams.wait_for_message(stage.teams.chat_of(bob), "requests prod-k8s")
    carols = await stage.teams.wait_for_message(stage.teams.chat_of(carol), "requests prod-k8s")
    carols_approve = stage.teams.button_data(carols, "Approve")

    _, own = await stage.teams.click(alice, card, "Approve")
    _, stranger = await stage.teams.click(dave, card, "Approve")

    assert "You can't approve or deny your own request" in own
    assert "You are not an eligible approver" in stranger
    [pending] = await requests_of(stage, alice.email)
    assert pending.status is RequestStatus.PENDING and pending.approvals == ()

    _, denied = await stage.teams.click(bob, card, "Deny")
    _, late = await stage.teams.click(carol, carols, "Approve", data=carols_approve)

    assert "denied" in denied.lower()
    assert "This request was already denied by bob@example.com." in late
    [decided] = await requests_of(stage, alice.email)
    assert decided.status is RequestStatus.DENIED and await grants_of(stage, alice.email) == []
    told = await stage.teams.wait_for_message(stage.teams.chat_of(alice), "denied")
    assert "bob@example.com" in activity_text_of(told)


def activity_text_of(message: object) -> str:
    from bot.runtime.simulators.teams_stage import activity_text

    return activity_text(message.activity)  # type: ignore[attr-defined]


# --- administration, authentication requests, mirroring ----------------------------------------


async def test_an_admin_sets_the_severity_from_teams_and_a_non_admin_is_refused_and_audited(
    teams_stage: Stage,
) -> None:
    stage = teams_stage
    alice, mallory = teams_and_pagerduty_person(stage, "alice"), teams_and_pagerduty_person(stage, "mallory")

    _, refused = await stage.teams.say(mallory, "access admin severity info")
    _, done = await stage.teams.say(alice, "access admin severity warning")

    assert "admin" in refused.lower()
    assert "warning" in done.lower()
    assert (await stage.parts.org.severity()) == "warning"
    lines = await audit_lines(stage)
    [attempt] = [line for line in lines if line.kind == "action.refused"]
    assert attempt.actor == "mallory@example.com"
    [change] = [line for line in lines if line.kind == "setting.changed"]
    assert change.actor == "alice@example.com"


async def test_admin_status_has_a_teams_row(teams_stage: Stage) -> None:
    stage = teams_stage
    alice = teams_and_pagerduty_person(stage, "alice")
    _, status = await stage.teams.say(alice, "access admin status")
    assert "Teams: " in status and "Slack: " in status
    assert "Teams: Error" not in status


async def test_an_authentication_request_reaches_bob_by_a_teams_1_1_message_when_pagerduty_is_off(
    teams_stage: Stage,
) -> None:
    stage = teams_stage
    alice = teams_and_pagerduty_person(stage, "alice")
    bob = teams_and_pagerduty_person(stage, "bob")
    await installed(stage, bob)
    await stage.teams.say(alice, "access admin pagerduty off")

    text = "access auth <at>Bob</at> resetting your password"
    activity = stage.teams.client.personal_message(alice.member, text)
    activity["entities"] = [
        {"type": "mention", "text": "<at>Bob</at>", "mentioned": {"id": bob.user_id, "name": "Bob"}}
    ]
    posted = await stage.teams.client.post(activity)
    assert posted.status == 202
    answer = await stage.teams.wait_for_message(stage.teams.chat_of(alice), "bob@example.com")
    assert "Authentication request sent to bob@example.com" in activity_text_of(answer)

    asked = await stage.teams.wait_for_message(stage.teams.chat_of(bob), "alice@example.com")
    assert "http" in str(asked.activity)  # the verification link
    assert stage.events.events == []  # PagerDuty off: no page
    [tx] = [line for line in await audit_lines(stage) if line.kind == "auth.requested"]
    assert tx.actor == "alice@example.com"


async def test_a_redelivered_message_is_processed_once(teams_stage: Stage) -> None:
    stage = teams_stage
    alice = teams_and_pagerduty_person(stage, "alice")
    acknowledged(stage, alice)
    activity = stage.teams.client.personal_message(alice.member, "access prod-db 1h replication lag")

    first = await stage.teams.client.post(activity)
    await stage.teams.wait_for_message(stage.teams.chat_of(alice), "Access granted")
    again = await stage.teams.client.post(activity)  # Teams thought the first was lost
    await stage.teams.client.post(activity)

    assert first.status == again.status == 202
    await asyncio.sleep(0.2)
    assert len(stage.teams.posted(stage.teams.chat_of(alice))) == 1
    assert len(await grants_of(stage, alice.email)) == 1

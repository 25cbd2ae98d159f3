"""The Teams mount's seams, through the real app: botbuilder's blocking key fetch can never run (its
cache is filled by our asynchronous fetch), the Action.Submit fallback, invokes Ackgate does not
handle, and addresses learnt from conversationUpdate (the bot added to a team)."""

from __future__ import annotations

from typing import Any

import pytest
import requests
from botframework.connector.auth.jwt_token_extractor import JwtTokenExtractor

from bot.core.domain import RequestStatus
from bot.runtime.simulators.stage import Stage
from tests.fakes.stage_fixtures import requests_of
from tests.fakes.teams_stage_fixtures import installed, until


async def test_the_sdks_own_key_lookup_finds_our_keys_and_never_fetches_with_requests(teams_stage: Stage) -> None:
    """requests.get raises for the whole suite of Teams tests (the fixture); here it is shown to be the
    SDK's fetch that would run, and that the cache our warm-up filled keeps it from running."""
    stage = teams_stage
    with pytest.raises(AssertionError, match="blocking OpenID fetch"):
        requests.get("http://127.0.0.1:9/", timeout=1)  # noqa: ASYNC210 - the guard is in place
    sim = stage.teams.sim
    metadata = JwtTokenExtractor.get_open_id_metadata(sim.openid_metadata_url)
    await until(lambda: _async(bool(metadata.keys)))  # the start-up warm-up filled botbuilder's cache

    key = await metadata.get(sim.signing_kid)  # botbuilder's path: fetches only when its cache is stale

    assert key is not None and key.endorsements == ["msteams"]
    expected = sim.key().private_key.public_key().public_numbers()
    assert key.public_key.public_numbers() == expected


async def _async(value: bool) -> bool:
    return value


async def test_the_action_submit_fallback_decides_and_answers_in_the_conversation(teams_stage: Stage) -> None:
    stage = teams_stage
    alice = stage.person("alice")
    bob = stage.teams.person("bob")
    await installed(stage, bob)
    await stage.command(alice, "prod-k8s 1h stuck pod")
    card = await stage.teams.wait_for_message(stage.teams.chat_of(bob), "requests prod-k8s")
    data = stage.teams.button_data(card, "Approve")
    activity = stage.teams.client.submit(bob.member, card.conversation_id, value=data, reply_to=card.id)

    posted = await stage.teams.client.post(activity)

    assert posted.status == 202
    await stage.teams.wait_for_message(stage.teams.chat_of(bob), "You approved alice@example.com's access")
    [request] = await requests_of(stage, alice.email)
    assert request.status is RequestStatus.APPROVED and request.decided_by == "bob@example.com"
    await stage.wait_for_dm(alice, "Access granted: prod-k8s")


async def test_an_invoke_ackgate_does_not_handle_is_answered_200_with_an_error_body(teams_stage: Stage) -> None:
    stage = teams_stage
    bob = stage.teams.person("bob")
    activity = stage.teams.client.execute(bob.member, stage.teams.chat_of(bob), verb="x", data={}, reply_to="1")
    activity["name"] = "composeExtension/query"

    posted = await stage.teams.client.post(activity)

    assert posted.status == 200
    assert posted.body["statusCode"] == 501 and posted.body["type"] == "application/vnd.microsoft.error"


async def test_the_bot_added_to_a_team_lets_ackgate_find_an_approver_by_email_in_its_roster(teams_stage: Stage) -> None:
    """bob never messaged Ackgate, but shares a team with it: his email is found in the team's roster
    (GET …/members/{email}), and the approval card reaches him by a new 1:1 chat."""
    stage = teams_stage
    sim = stage.teams.sim
    bob = stage.teams.person("bob")
    del sim.conversations[stage.teams.chat_of(bob)]  # no 1:1 chat yet: Ackgate must create it
    team = "19:team-general@thread.tacv2"
    stage.teams.channel(team, bob)
    added: dict[str, Any] = {
        **stage.teams.client._base("conversationUpdate", bob.member, team, "channel"),
        "membersAdded": [{"id": sim.bot_id}],
        "channelData": {
            "tenant": {"id": sim.tenant_id},
            "team": {"id": team, "name": "Ops"},
            "eventType": "teamMemberAdded",
        },
    }
    assert (await stage.teams.client.post(added)).status == 202
    await until(lambda: stage.parts.store.address_book.by_user("teams", team))

    alice = stage.person("alice")
    await stage.command(alice, "prod-k8s 1h stuck pod")

    card = await stage.teams.wait_for_message(stage.teams.chat_of(bob), "alice@example.com requests prod-k8s")
    assert card.reply_to is None
    assert sim.calls_to("Conversations_CreateConversation")
    lookups = [c.path for c in sim.calls_to("Conversations_GetConversationMember")]
    assert any(path.endswith(f"/conversations/{team}/members/bob@example.com") for path in lookups), lookups

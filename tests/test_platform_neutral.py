"""The core assumes no chat platform (issue 7 §2): a second platform joins by one mount function;
approval cards go to, and are updated on, the platform their channel (or the approver's address)
names, whoever asked; ``/access admin status`` shows one row per configured platform.

The second platform here is a recording fake registered as "teams" (no botbuilder): the real
Slack simulator and Ackgate's real aiohttp app carry everything else.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web

from bot.adapters.provisioners import NoopProvisioner
from bot.core.clock import FakeClock
from bot.core.errors import ChatError
from bot.core.platforms import ChatPlatform, PlatformParts
from bot.core.ports import ChatAddress
from bot.runtime import app as composition
from bot.runtime.config import Settings
from bot.runtime.simulators.stage import Stage
from tests.fakes.chat import RecordingNotifier
from tests.fakes.stage_fixtures import STAGE_POLICY, requests_of

TEAMS_CHANNEL = "19:ops@thread.tacv2"
POLICY = STAGE_POLICY.replace(
    "      approvers: [bob@example.com, carol@example.com]\n      required: 1\n",
    f"      approvers: [bob@example.com, carol@example.com]\n      required: 1\n      channel: teams:{TEAMS_CHANNEL}\n",
)


class FakeTeams:
    """A second chat platform: records what Ackgate sends and updates, with a switchable health."""

    def __init__(self) -> None:
        self.chat = RecordingNotifier(platform="teams")
        self.healthy = True
        self.mounted: list[PlatformParts] = []
        self.closed = False

    async def health(self) -> None:
        if not self.healthy:
            raise ChatError("Ackgate could not get a token from the Bot Framework.")

    async def close(self) -> None:
        self.closed = True

    def mount(self, app: web.Application, settings: Settings, parts: PlatformParts) -> ChatPlatform:
        self.mounted.append(parts)
        parts.deliver("teams", self.chat)
        return ChatPlatform(name="teams", title="Teams", notifier=self.chat, health=self, close=self.close)


@pytest.fixture
def teams(monkeypatch: pytest.MonkeyPatch) -> FakeTeams:
    fake = FakeTeams()
    monkeypatch.setitem(composition.PLATFORM_MOUNTS, "teams", fake.mount)
    monkeypatch.setattr(Settings, "chat_platforms", property(lambda self: ("slack", "teams")))
    return fake


@pytest.fixture
async def two_platforms(tmp_path: Path, teams: FakeTeams) -> AsyncIterator[Stage]:
    policy_file = tmp_path / "policy.yaml"
    policy_file.write_text(POLICY, encoding="utf-8")
    settings: dict[str, Any] = {"admins": ["carol@example.com"]}
    stage = Stage(
        policy_file=policy_file,
        workdir=tmp_path,
        clock=FakeClock(),
        provisioners={"noop": NoopProvisioner()},
        settings=settings,
    )
    async with stage:
        yield stage
    assert teams.closed, "the composition root closes every mounted platform at stop"


async def test_a_slack_request_posts_its_card_on_the_teams_channel_and_the_update_lands_there(
    two_platforms: Stage, teams: FakeTeams
) -> None:
    stage = two_platforms
    alice, bob, carol = stage.person("alice"), stage.person("bob"), stage.person("carol")

    reply = await stage.command(alice, "prod-k8s 30m deploy the fix")

    assert "Waiting for approval" in reply.text
    [posted] = teams.chat.sent
    assert (posted.to, posted.ref.platform) == (TEAMS_CHANNEL, "teams")
    assert [a.kind for a in posted.card.actions] == ["approve", "deny"]
    assert stage.dms(bob) == [] and stage.dms(carol) == [] and stage.channel_messages(TEAMS_CHANNEL) == []

    request = (await requests_of(stage, "alice@example.com"))[0]
    await stage.click(bob, "approve", request.id)

    # Updated in place on Teams (the ref's platform), though alice asked in Slack; alice is told in Slack.
    assert len(teams.chat.sent) == 1 and posted.history, "the Teams card was updated, not posted again"
    assert "Approved by bob@example.com" in posted.card.title and posted.card.actions == ()
    assert "Access granted: prod-k8s" in await stage.wait_for_dm(alice, "Access granted")
    assert [s.to for s in teams.chat.sent] == [TEAMS_CHANNEL]


async def test_a_named_approver_is_messaged_where_the_address_book_last_saw_them_else_on_the_requesters_platform(
    two_platforms: Stage, teams: FakeTeams
) -> None:
    stage = two_platforms
    alice, bob, dana = stage.person("alice"), stage.person("bob"), stage.person("dana")

    await stage.command(alice, "billing-console 30m refund a customer")

    assert len(stage.dms(dana)) == 1 and teams.chat.sent == []  # unknown to the book: Slack, alice's platform
    stage.clock.advance(timedelta(minutes=1))
    book = stage.parts.store.address_book
    await book.upsert(ChatAddress("teams", "29:1dana", "Dana@Example.com", "Dana"), at=stage.clock.now())

    await stage.command(bob, "billing-console 30m refund another customer")

    assert [(s.to, s.ref.platform) for s in teams.chat.sent] == [("dana@example.com", "teams")]
    assert len(stage.dms(dana)) == 1
    assert [a.platform for a in await book.by_email("dana@example.com")] == ["teams", "slack"]


async def test_admin_status_shows_one_row_per_configured_platform_from_its_own_health(
    two_platforms: Stage, teams: FakeTeams
) -> None:
    stage = two_platforms
    carol = stage.person("carol")
    teams.healthy = False

    reply = await stage.command(carol, "admin status")

    lines = reply.text.splitlines()
    assert any("Slack" in line and "Success (checked just now)" in line for line in lines), reply.text
    assert any(
        "Teams" in line and "Error: Ackgate could not get a token from the Bot Framework." in line for line in lines
    ), reply.text
    assert [p.store for p in teams.mounted] == [stage.parts.store]

"""The ``teams_stage`` fixture: the end-to-end stage with Slack *and* Teams configured in one Ackgate,
every Bot Connector body checked against ``ConnectorAPI.swagger.json`` (and each card against the
Adaptive Card 1.5 schema), and botbuilder's blocking key fetch made impossible (``requests.get`` raises)."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path

import pytest
import requests

from bot.adapters.provisioners import NoopProvisioner
from bot.core.clock import FakeClock
from bot.runtime.simulators.stage import Person, Stage
from bot.runtime.simulators.teams_stage import TeamsPerson
from tests.fakes.pagerduty_openapi import Conformance, warm_up
from tests.fakes.stage_fixtures import STAGE_POLICY, acknowledged_incident
from tests.fakes.teams_schemas import check_card, check_connector_body, check_definition


@pytest.fixture
def no_blocking_openid_fetch(monkeypatch: pytest.MonkeyPatch) -> None:
    def refuse(*args: object, **kwargs: object) -> None:
        raise AssertionError("requests.get ran: botbuilder's blocking OpenID fetch")

    monkeypatch.setattr(requests, "get", refuse)


ADMIN = "alice@example.com"  # the teams_stage's ACKGATE_ADMINS


def teams_policy(extra: str = "") -> str:
    return STAGE_POLICY + extra


async def make_stage(
    tmp_path: Path, provisioner: NoopProvisioner, *, policy: str = STAGE_POLICY, **settings: object
) -> Stage:
    policy_file = tmp_path / "policy.yaml"
    policy_file.write_text(policy, encoding="utf-8")
    # The schemas take a while to compile, on the loop the app shares: compile them before the test.
    warm_up()
    check_card({"type": "AdaptiveCard", "version": "1.5", "body": []})
    check_definition("Activity", {"type": "message"})
    check_definition("ConversationParameters", {})
    return Stage(
        policy_file=policy_file,
        workdir=tmp_path,
        clock=FakeClock(),
        provisioners={"noop": provisioner},
        pagerduty_validator=Conformance(),
        teams=True,
        teams_validator=check_connector_body,
        settings=settings,
    )


@pytest.fixture
async def teams_stage(
    tmp_path: Path, noop_provisioner: NoopProvisioner, no_blocking_openid_fetch: None
) -> AsyncIterator[Stage]:
    stage = await make_stage(tmp_path, noop_provisioner, admins=[ADMIN])
    async with stage:
        yield stage
    assert stage.teams.sim.validation_errors == [], "a Bot Connector body did not match ConnectorAPI.swagger.json"
    assert stage.pd.validation_errors == []


async def installed(stage: Stage, who: TeamsPerson) -> None:
    """``who`` adds the Ackgate app in Teams; returns once Ackgate has their address."""
    posted = await stage.teams.install(who)
    assert posted.status == 202
    await until(lambda: stage.parts.store.address_book.by_user("teams", who.user_id))


async def until(probe: Callable[[], Awaitable[object]], *, seconds: float = 5.0) -> None:
    """Poll ``probe`` (a store read: nothing to wait on) until it is true, failing after ``seconds``."""
    for _ in range(int(seconds / 0.01)):
        if await probe():
            return
        await asyncio.sleep(0.01)
    raise AssertionError(f"still false after {seconds} s")


def teams_and_pagerduty_person(stage: Stage, name: str) -> TeamsPerson:
    """Someone in Teams (the app installed) with a PagerDuty user of the same email."""
    who = stage.teams.person(name)
    stage.pd.add_user(who.email, name.title())
    return who


def acknowledged(stage: Stage, who: TeamsPerson) -> None:
    """``who`` has acknowledged a high-urgency Database incident (as ``acknowledged_incident``)."""
    acknowledged_incident(stage, Person(who.name, who.user_id, who.email))

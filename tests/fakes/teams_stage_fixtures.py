"""The ``teams_stage`` fixture: the end-to-end stage with Slack *and* Teams configured in one Ackgate,
every Bot Connector body checked against ``ConnectorAPI.swagger.json`` (and each card against the
Adaptive Card 1.5 schema), and botbuilder's blocking key fetch made impossible (``requests.get`` raises)."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest
import requests

from bot.clock import FakeClock
from bot.provisioners import NoopProvisioner
from bot.simulators.stage import Stage
from tests.fakes.pagerduty_openapi import Conformance
from tests.fakes.stage_fixtures import STAGE_POLICY
from tests.fakes.teams_schemas import check_connector_body


@pytest.fixture(autouse=True)
def no_blocking_openid_fetch(monkeypatch: pytest.MonkeyPatch) -> None:
    def refuse(*args: object, **kwargs: object) -> None:
        raise AssertionError("requests.get ran: botbuilder's blocking OpenID fetch")

    monkeypatch.setattr(requests, "get", refuse)


def teams_policy(extra: str = "") -> str:
    return STAGE_POLICY + extra


async def make_stage(
    tmp_path: Path, provisioner: NoopProvisioner, *, policy: str = STAGE_POLICY, **settings: object
) -> Stage:
    policy_file = tmp_path / "policy.yaml"
    policy_file.write_text(policy, encoding="utf-8")
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
async def teams_stage(tmp_path: Path, noop_provisioner: NoopProvisioner) -> AsyncIterator[Stage]:
    stage = await make_stage(tmp_path, noop_provisioner)
    async with stage:
        yield stage
    assert stage.teams.sim.validation_errors == [], "a Bot Connector body did not match ConnectorAPI.swagger.json"
    assert stage.pd.validation_errors == []

"""Fixtures for PagerDuty tests: a simulator checked against PagerDuty's OpenAPI document, and clients.

Register them in the root ``tests/conftest.py`` with ``pytest_plugins = ["tests.fakes.pagerduty_fixtures"]``,
or bind them in a test module: ``pd_sim = pagerduty_fixtures.pd_sim``.

Every answer of ``pd_sim`` is validated (request as received, response as sent); the fixture fails
the test at teardown if anything did not conform.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
from typing import Any

import pytest
from pydantic import SecretStr

from bot.adapters.pagerduty import PagerDutyClient
from bot.runtime.simulators.pagerduty import PagerDutySimulator
from tests.fakes.pagerduty_openapi import Conformance, warm_up

TOKEN = "u+pd-test-token-0123456789"
FROM_EMAIL = "ackgate-bot@example.com"


class FakeTime:
    """A monotonic clock and a sleep that only moves it: backoff and budgets without waiting."""

    def __init__(self, start: float = 1000.0) -> None:
        self.now = start
        self.sleeps: list[float] = []

    def __call__(self) -> float:
        return self.now

    async def sleep(self, seconds: float) -> None:
        self.sleeps.append(seconds)
        self.now += seconds
        await asyncio.sleep(0)

    def advance(self, seconds: float) -> None:
        self.now += seconds


@pytest.fixture
async def pd_sim() -> AsyncIterator[PagerDutySimulator]:
    # The OpenAPI document takes seconds to compile, on the event loop the client shares: compile it
    # before the test starts, so no test's deadline pays for the fake's first validation.
    warm_up()
    sim = PagerDutySimulator(token=TOKEN, validator=Conformance())
    sim.add_user(FROM_EMAIL, "Ackgate Bot")
    async with sim:
        yield sim
    assert sim.validation_errors == [], "the simulator saw traffic that does not match PagerDuty's OpenAPI document"


@pytest.fixture
def fake_time() -> FakeTime:
    return FakeTime()


ClientFactory = Callable[..., PagerDutyClient]


@pytest.fixture
async def make_pd_client(pd_sim: PagerDutySimulator) -> AsyncIterator[ClientFactory]:
    """``make_pd_client(**overrides)``: a client for ``pd_sim``; closed after the test."""
    clients: list[PagerDutyClient] = []

    def make(**overrides: Any) -> PagerDutyClient:
        token = overrides.pop("token", TOKEN)
        options: dict[str, Any] = {"base_url": pd_sim.base_url, "from_email": FROM_EMAIL, "deadline": 3.0}
        fake = overrides.pop("time", None)
        if fake is not None:
            options.update(monotonic=fake, sleep=fake.sleep)
        options.update(overrides)
        client = PagerDutyClient(SecretStr(token), **options)
        clients.append(client)
        return client

    yield make
    for client in clients:
        await client.aclose()

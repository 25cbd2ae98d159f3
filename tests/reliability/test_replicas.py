"""Three ``ackgate serve`` processes on one PostgreSQL database (a database of its own, dropped
afterwards): commands, clicks and webhooks spread across them, every webhook delivery sent to two
replicas at the same instant, one replica SIGKILLed mid-run and started again. Each expiry is
revoked once and each incident has exactly one mirror message.
"""

from __future__ import annotations

import os

import pytest

from tests.reliability.workload import Sizes, run

REPLICAS = Sizes(
    operations=100, concurrency=8, replicas=3, backend="postgres", stops=1, incidents=20, retime_live=3, retime_down=2
)


@pytest.fixture(autouse=True)
def _postgres() -> None:
    if os.environ.get("ACKGATE_TEST_POSTGRES_URL", "").strip().lower() == "skip":
        pytest.skip("ACKGATE_TEST_POSTGRES_URL=skip: the PostgreSQL replica suite is skipped")


async def test_three_replicas_with_one_killed_grant_revoke_and_mirror_exactly_once() -> None:
    figures = await run(REPLICAS)
    assert not figures.failed(), figures.report("3 replicas on PostgreSQL, one SIGKILLed")

"""Shared fixtures: the core scenario world, storage backends and the PagerDuty simulator."""

from collections.abc import Callable, Mapping

import pytest

from bot.core.lanes import LaneLoop
from tests.fakes import storage_fixtures

pytest_plugins = [
    "tests.fakes.world",
    "tests.fakes.stage_fixtures",
    "tests.fakes.issue3_stage",
    "tests.fakes.teams_stage_fixtures",
]


def pytest_asyncio_loop_factories(config: pytest.Config, item: pytest.Item) -> Mapping[str, Callable[[], object]]:
    """Every async test runs on a loop with the background lane, as ``ackgate serve`` does."""
    return {"lanes": LaneLoop}


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    """One loud line when the PostgreSQL half was skipped (no server here), saying how to run it."""
    notice = storage_fixtures.postgres_notice()
    if notice is not None:
        terminalreporter.write_line(notice, yellow=True, bold=True)

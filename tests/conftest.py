"""Shared fixtures: the core scenario world, storage backends and the PagerDuty simulator."""

pytest_plugins = ["tests.fakes.world", "tests.fakes.stage_fixtures", "tests.fakes.issue3_stage"]

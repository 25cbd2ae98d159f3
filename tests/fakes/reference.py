"""Where the platforms' reference documents live: ``tests/reference/``, inside the repository, so a lone
clone runs every test. Its README says which file came from where, at which commit, under which licence."""

from __future__ import annotations

from pathlib import Path

REFERENCE = Path(__file__).resolve().parents[1] / "reference"
PAGERDUTY = REFERENCE / "pagerduty"
SLACK = REFERENCE / "slack"

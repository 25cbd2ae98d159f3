"""The ``issue3_stage`` fixture: the real app on loopback (Slack, PagerDuty REST and Events simulators)
with carol@example.com as the only admin and a policy with one incident-bound flow, for the
transcripts of authentication requests, incident mirroring and administration.

Registered in ``tests/conftest.py``. It is named apart from ``tests.fakes.stage_fixtures``' ``stage``
so the two plugins never shadow each other; a test module aliases it as ``stage``.

Helpers build signed-webhook bodies (``webhook``, ``incident_data``), ask for an authentication
(``ask_bob``) and read the SQLite file for what a refusal must leave untouched (``settings_rows``,
``transaction_ids``).
"""

from __future__ import annotations

import json
import re
import sqlite3
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from bot.adapters.provisioners import NoopProvisioner
from bot.core.clock import FakeClock
from bot.runtime.simulators.stage import Person, Stage
from tests.fakes.pagerduty_openapi import Conformance
from tests.fakes.stage_fixtures import DATABASE_SERVICE

ADMIN_EMAIL = "carol@example.com"

POLICY = f"""\
version: 1
resources:
  - name: prod-db
    max_duration: 4h
flows:
  - name: incident-db
    resources: [prod-db]
    gate:
      type: acknowledged_incident
      services: [{DATABASE_SERVICE}]
    approval:
      type: auto
    max_duration: 2h
    revoke_on_resolve: true
    incident_notes: true
"""

AUTH_LINK = re.compile(r"\((http://127\.0\.0\.1:\d+/auth/[A-Za-z0-9_-]+)\)")


@pytest.fixture
async def issue3_stage(tmp_path: Path) -> AsyncIterator[Stage]:
    policy_file = tmp_path / "policy.yaml"
    policy_file.write_text(POLICY, encoding="utf-8")
    stage = Stage(
        policy_file=policy_file,
        workdir=tmp_path,
        clock=FakeClock(),
        provisioners={"noop": NoopProvisioner()},
        pagerduty_validator=Conformance(),
        settings={"admins": [ADMIN_EMAIL]},
    )
    async with stage:
        yield stage
    assert stage.pd.validation_errors == []


def webhook(event_type: str, incident: dict[str, Any], *, at: str, agent: str | None = None, event_id: str) -> bytes:
    body = {
        "event": {
            "id": event_id,
            "event_type": event_type,
            "resource_type": "incident",
            "occurred_at": at,
            "agent": {"id": "PAGENT1", "type": "user_reference", "summary": agent} if agent else None,
            "client": None,
            "data": {"type": "incident", **incident},
        }
    }
    return json.dumps(body).encode()


def incident_data(
    *, incident_id: str, number: int, status: str, key: str = "", service: str = "PSVC999"
) -> dict[str, Any]:
    return {
        "id": incident_id,
        "self": f"https://api.pagerduty.com/incidents/{incident_id}",
        "html_url": f"https://acme.pagerduty.com/incidents/{incident_id}",
        "number": number,
        "status": status,
        "incident_key": key,
        "title": "Authentication request from alice@example.com",
        "service": {"id": service, "type": "service_reference", "summary": "Ackgate"},
        "urgency": "high",
    }


async def ask_bob(stage: Stage, alice: Person, bob: Person) -> str:
    """alice asks Ackgate to verify bob; returns the link bob received."""
    reply = await stage.command(alice, f"auth <@{bob.user_id}|bob> resetting your password")
    assert "Authentication request sent to bob@example.com" in reply.text
    dm = await stage.wait_for_dm(bob, "asks you to confirm your identity")
    found = AUTH_LINK.search(dm)
    assert found is not None, dm
    return found.group(1)


# --- what a refusal must leave as it was -----------------------------------------------------


def database_file(stage: Stage) -> Path:
    url = stage.parts.settings.database_url
    assert url.startswith("sqlite:///"), url
    return Path(url.removeprefix("sqlite:///"))


def _rows(stage: Stage, sql: str) -> list[tuple[Any, ...]]:
    # Read-only, beside the app's own connection: what is committed is what the app stored.
    with sqlite3.connect(f"file:{database_file(stage)}?mode=ro", uri=True) as conn:
        return list(conn.execute(sql).fetchall())


def settings_rows(stage: Stage) -> dict[str, str]:
    """Every row of the settings store: organisation settings, the key, statuses and preferences."""
    return {str(key): str(value) for key, value in _rows(stage, "SELECT key, value FROM settings")}


def transaction_ids(stage: Stage) -> list[str]:
    """The ids of every authentication transaction ever stored."""
    return [str(row[0]) for row in _rows(stage, "SELECT id FROM auth_transactions ORDER BY id")]

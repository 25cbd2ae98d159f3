"""The ``stage`` fixture: Ackgate's real aiohttp app on loopback with the Slack and PagerDuty
simulators around it, for end-to-end tests through the real HTTP entry point.

Registered in ``tests/conftest.py``. The stage runs on a test policy written to ``tmp_path``, a
:class:`FakeClock`, noop provisioners and a SQLite file in ``tmp_path``. Every PagerDuty request and
answer is checked against PagerDuty's OpenAPI document; the fixture fails the test at teardown if
anything did not conform.

Helpers read the store (``requests_of``, ``grants_of``, ``audit_kinds``), set the PagerDuty scene
(``acknowledged_incident``) and pick ids out of what people were shown (``grant_id_in``).
"""

from __future__ import annotations

import re
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from pathlib import Path

import pytest

from bot.adapters.provisioners import NoopProvisioner
from bot.core.clock import FakeClock
from bot.core.domain import AccessRequest, AuditEvent, Grant
from bot.runtime.simulators.stage import Person, Stage
from tests.fakes.pagerduty_openapi import Conformance, warm_up

DATABASE_SERVICE = "PDBSVC1"
BEGINNING = datetime(2000, 1, 1, tzinfo=UTC)
_GRANT_ID = re.compile(r"\bg-[a-z0-9]{8}\b")
_REQUEST_ID = re.compile(r"\br-[a-z0-9]{8}\b")

# prod-db: automatic for whoever acknowledged a high-urgency Database incident (else the catch-all).
# prod-k8s: bob or carol approves. billing-console: only dana approves.
STAGE_POLICY = f"""\
version: 1
resources:
  - name: prod-db
    description: Production PostgreSQL
    max_duration: 4h
  - name: prod-k8s
    description: Production Kubernetes
    max_duration: 8h
  - name: billing-console
    description: Billing console
    max_duration: 1h
flows:
  - name: incident-db
    resources: [prod-db]
    requesters:
      anyone: true
    gate:
      type: acknowledged_incident
      services:
        - id: {DATABASE_SERVICE}
          name: Database
      urgencies: [high]
    approval:
      type: auto
    default_duration: 1h
    max_duration: 2h
  - name: k8s-approved
    resources: [prod-k8s]
    requesters:
      anyone: true
    approval:
      type: approvers
      approvers: [bob@example.com, carol@example.com]
      required: 1
    default_duration: 30m
    max_duration: 2h
  - name: billing-approved
    resources: [billing-console]
    requesters:
      anyone: true
    approval:
      type: approvers
      approvers: [dana@example.com]
      required: 1
    default_duration: 30m
    max_duration: 1h
"""


@pytest.fixture
def noop_provisioner() -> NoopProvisioner:
    """The provisioner every stage resource uses; its ``calls`` show what was granted and revoked."""
    return NoopProvisioner()


@pytest.fixture
async def stage(tmp_path: Path, noop_provisioner: NoopProvisioner) -> AsyncIterator[Stage]:
    policy_file = tmp_path / "policy.yaml"
    policy_file.write_text(STAGE_POLICY, encoding="utf-8")
    warm_up()  # the OpenAPI document compiles on the loop the app shares: before the test, not in its deadline
    conformance = Conformance()
    stage = Stage(
        policy_file=policy_file,
        workdir=tmp_path,
        clock=FakeClock(),
        provisioners={"noop": noop_provisioner},
        pagerduty_validator=conformance,
    )
    async with stage:
        yield stage
    assert stage.pd.validation_errors == [], (
        "Ackgate sent PagerDuty traffic (or the simulator answered) outside PagerDuty's OpenAPI document"
    )


# --- what was stored ---------------------------------------------------------------------


async def requests_of(stage: Stage, email: str) -> list[AccessRequest]:
    return await stage.parts.store.requests.list_for(email)


async def grants_of(stage: Stage, email: str) -> list[Grant]:
    return await stage.parts.store.grants.list_for(email, include_ended=True)


async def audit_lines(stage: Stage) -> list[AuditEvent]:
    return await stage.parts.store.audit.since(BEGINNING)


async def audit_kinds(stage: Stage) -> list[str]:
    return [line.kind for line in await audit_lines(stage)]


# --- setting the scene and reading the answers ---------------------------------------------


def pagerduty_id(stage: Stage, who: Person) -> str:
    return next(user.id for user in stage.pd.users.values() if user.email == who.email)


def acknowledged_incident(stage: Stage, who: Person, title: str = "Replication lag on pg-main") -> None:
    """``who`` has acknowledged a high-urgency incident on the Database service."""
    stage.pd.add_service("Database", service_id=DATABASE_SERVICE)
    me = pagerduty_id(stage, who)
    stage.pd.add_incident(title, service=DATABASE_SERVICE, urgency="high", assigned_to=[me], acknowledged_by=[me])


def grant_id_in(text: str) -> str:
    found = _GRANT_ID.search(text)
    assert found is not None, f"no grant id in {text!r}"
    return found.group(0)


def request_id_in(text: str) -> str:
    found = _REQUEST_ID.search(text)
    assert found is not None, f"no request id in {text!r}"
    return found.group(0)

"""Stores for tests, and domain values to fill them with.

Use the fixtures by listing this module in the root ``tests/conftest.py``::

    pytest_plugins = ["tests.fakes.storage_fixtures"]

or by binding them in a test module: ``store = storage_fixtures.store`` (with ``database_url``
and ``backend``, which it depends on).

``store`` runs a test once per backend (SQLite in a temporary file, PostgreSQL in a throw-away
schema); ``memory_store`` is a fast SQLite store for tests that are not about storage.

PostgreSQL comes from ``ACKGATE_TEST_POSTGRES_URL`` (default
``postgresql://postgres@127.0.0.1:5432/test``). When it cannot be reached, the PostgreSQL half is
skipped and the run ends with one loud line saying how to run it, so a fresh machine passes
``make test``; with ``CI=true`` an unreachable server is a failure instead, because CI has one.
``ACKGATE_TEST_POSTGRES_URL=skip`` skips the half on purpose.
"""

from __future__ import annotations

import os
import secrets
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from pathlib import Path

import asyncpg
import pytest

from bot.core.domain import (
    AccessRequest,
    AuthStatus,
    AuthTransaction,
    Grant,
    GrantStatus,
    Incident,
    IncidentMirror,
    Principal,
    RequestStatus,
)
from bot.core.ports import Store
from storage import open_store
from storage.postgres import describe

POSTGRES_URL_ENV = "ACKGATE_TEST_POSTGRES_URL"
DEFAULT_POSTGRES_URL = "postgresql://postgres@127.0.0.1:5432/test"
BACKENDS = ("sqlite", "postgres")

T0 = datetime(2026, 11, 23, 12, 0, tzinfo=UTC)
ALICE = Principal(platform="slack", user_id="U0ALICE", email="alice@example.com", name="Alice")
BOB = Principal(platform="slack", user_id="U0BOB", email="bob@example.com", name="Bob")
CAROL = Principal(platform="teams", user_id="29:carol", email="carol@example.com", name="Carol")


# --- domain values ----------------------------------------------------------------------------


def make_incident(**changes: object) -> Incident:
    incident = Incident(
        id="PINC001",
        number=4242,
        title="Checkout latency above SLO",
        status="acknowledged",
        html_url="https://example.pagerduty.com/incidents/PINC001",
        service_id="PSVC001",
        service_name="checkout",
        urgency="high",
        acknowledger_ids=("PUSER01", "PUSER02"),
    )
    return replace(incident, **changes)  # type: ignore[arg-type]


def make_request(id: str = "r-aaaa2222", **changes: object) -> AccessRequest:
    request = AccessRequest(
        id=id,
        requester=ALICE,
        resource="prod-db",
        duration_seconds=3600,
        reason="debugging checkout",
        flow="oncall-approval",
        status=RequestStatus.PENDING,
        created_at=T0,
        approvers=(BOB.email, CAROL.email),
        required_approvals=1,
    )
    return replace(request, **changes)  # type: ignore[arg-type]


def make_grant(id: str = "g-aaaa2222", **changes: object) -> Grant:
    grant = Grant(
        id=id,
        request_id="r-aaaa2222",
        resource="prod-db",
        holder=ALICE,
        flow="oncall-approval",
        status=GrantStatus.ACTIVE,
        created_at=T0,
        expires_at=T0 + timedelta(hours=1),
        justification="debugging checkout",
    )
    return replace(grant, **changes)  # type: ignore[arg-type]


def make_transaction(id: str = "t-aaaa2222", **changes: object) -> AuthTransaction:
    """A PENDING authentication request from Alice to Bob, expiring ten minutes after T0."""
    transaction = AuthTransaction(
        id=id,
        requester=ALICE,
        target=BOB,
        message="resetting your password",
        status=AuthStatus.PENDING,
        created_at=T0,
        expires_at=T0 + timedelta(minutes=10),
        token_hash=f"sha256-of-the-token-of-{id}",
    )
    return replace(transaction, **changes)  # type: ignore[arg-type]


def make_mirror(incident_id: str = "PINC001", **changes: object) -> IncidentMirror:
    """A triggered incident as Ackgate mirrors it, as of T0."""
    mirror = IncidentMirror(
        incident_id=incident_id,
        number=4242,
        title="Authentication request from Alice",
        html_url=f"https://example.pagerduty.com/incidents/{incident_id}",
        status="triggered",
        status_at=T0,
    )
    return replace(mirror, **changes)  # type: ignore[arg-type]


# --- databases --------------------------------------------------------------------------------


def postgres_base_url() -> str | None:
    """The server the PostgreSQL half runs against, or None when told to skip it."""
    url = os.environ.get(POSTGRES_URL_ENV, DEFAULT_POSTGRES_URL)
    return None if url.strip().lower() == "skip" else url


def in_ci() -> bool:
    """CI sets ``CI=true``; there a PostgreSQL half that cannot run is a failure, never a skip."""
    return os.environ.get("CI", "").strip().lower() in {"true", "1", "yes"}


class _Unreachable:
    """The first failed connection, remembered so the rest of the half skips at once."""

    reason: str | None = None
    skipped = 0


_unreachable = _Unreachable()


def postgres_notice() -> str | None:
    """The one loud line for the end of the run when the PostgreSQL half was skipped, else None."""
    if _unreachable.reason is None:
        return None
    return (
        f"POSTGRESQL HALF SKIPPED ({_unreachable.skipped} tests): {_unreachable.reason}. To run it, start "
        f"PostgreSQL and set {POSTGRES_URL_ENV}=postgresql://USER@HOST:PORT/DATABASE (default "
        f"{DEFAULT_POSTGRES_URL}); with CI=true this is a failure."
    )


def with_search_path(url: str, schema: str) -> str:
    # asyncpg sends unknown URL query parameters as server settings.
    return f"{url}{'&' if '?' in url else '?'}search_path={schema}"


@asynccontextmanager
async def postgres_schema_url() -> AsyncIterator[str]:
    """A URL whose tables live in a fresh schema, dropped afterwards, so tests never collide."""
    base = postgres_base_url()
    if base is None:
        pytest.skip(f"{POSTGRES_URL_ENV}=skip: the PostgreSQL half is skipped")
    if _unreachable.reason is not None and not in_ci():
        _unreachable.skipped += 1
        pytest.skip(_unreachable.reason)
    try:
        admin = await asyncpg.connect(base, timeout=5)
    except (OSError, TimeoutError, asyncpg.PostgresError, asyncpg.InterfaceError) as exc:
        reason = f"PostgreSQL is unreachable at {describe(base)} ({exc})"
        if in_ci():
            pytest.fail(
                f"{reason}. CI=true, so the PostgreSQL half must run: start PostgreSQL or point "
                f"{POSTGRES_URL_ENV} at a reachable server.",
                pytrace=False,
            )
        _unreachable.reason = reason
        _unreachable.skipped += 1
        pytest.skip(reason)
    schema = f"ackgate_test_{secrets.token_hex(6)}"
    try:
        await admin.execute(f"CREATE SCHEMA {schema}")
        yield with_search_path(base, schema)
    finally:
        await admin.execute(f"DROP SCHEMA IF EXISTS {schema} CASCADE")
        await admin.close()


@asynccontextmanager
async def url_for(backend: str, directory: Path) -> AsyncIterator[str]:
    """A fresh, empty database of that backend."""
    if backend == "sqlite":
        yield f"sqlite:///{directory / f'ackgate-{secrets.token_hex(4)}.db'}"
    else:
        async with postgres_schema_url() as url:
            yield url


@asynccontextmanager
async def opened(url: str, *, migrate_up_to: int | None = None) -> AsyncIterator[Store]:
    """A store on ``url``, opened (migrated, up to a version when asked) and closed afterwards."""
    store = open_store(url)
    if migrate_up_to is None:
        await store.open()
    else:
        await store.open(migrate_up_to=migrate_up_to)  # type: ignore[call-arg]
    try:
        yield store
    finally:
        await store.close()


@pytest.fixture(params=BACKENDS)
def backend(request: pytest.FixtureRequest) -> str:
    return str(request.param)


@pytest.fixture
async def database_url(backend: str, tmp_path: Path) -> AsyncIterator[str]:
    """A fresh database URL, once per backend."""
    async with url_for(backend, tmp_path) as url:
        yield url


@pytest.fixture
async def store(database_url: str) -> AsyncIterator[Store]:
    """An opened store, once per backend."""
    async with opened(database_url) as s:
        yield s


@pytest.fixture
async def memory_store() -> AsyncIterator[Store]:
    """An opened in-memory SQLite store, for tests that need storage but are not about it."""
    async with opened("sqlite:///:memory:") as s:
        yield s

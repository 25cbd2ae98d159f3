"""What is particular to each storage backend: URLs, pragmas, query plans, database-level guards."""

from __future__ import annotations

import json
import sqlite3
from pathlib import Path
from typing import Any

import asyncpg
import pytest

from bot.core.domain import AuditEvent
from bot.core.errors import ConfigError, StorageError
from storage import SqliteStore, migrations, open_store, roles
from storage import sqlite as sq
from storage.codec import (
    GRANT_COLUMNS,
    MIRROR_COLUMNS,
    TRANSACTION_COLUMNS,
    Codec,
    dump_json,
    from_iso,
    iso,
    status_rank,
)
from storage.postgres import PostgresStore
from storage.sql import POSTGRES, SQLITE, Sql
from tests.fakes.storage_fixtures import (
    T0,
    make_grant,
    make_incident,
    make_mirror,
    make_transaction,
    opened,
    postgres_schema_url,
)

# --- open_store -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("url", "path"),
    [
        ("sqlite:///ackgate.db", "ackgate.db"),
        ("sqlite:////var/lib/ackgate/ackgate.db", "/var/lib/ackgate/ackgate.db"),
        ("sqlite:///:memory:", ":memory:"),
    ],
)
def test_sqlite_urls_open_a_sqlite_store_on_that_path(url: str, path: str) -> None:
    store = open_store(url)
    assert isinstance(store, SqliteStore)
    assert store.path == path


@pytest.mark.parametrize("url", ["postgresql://ackgate@db:5432/ackgate", "postgres://ackgate:pw@db/ackgate"])
def test_postgres_urls_open_a_postgres_store(url: str) -> None:
    assert isinstance(open_store(url), PostgresStore)


@pytest.mark.parametrize("url", ["mysql://root:hunter2@db/ackgate", "sqlite://ackgate.db", "sqlite:///", "ackgate.db"])
def test_unknown_database_urls_are_a_config_error_naming_the_setting_and_the_forms(url: str) -> None:
    with pytest.raises(ConfigError) as caught:
        open_store(url)
    message = caught.value.message
    assert "ACKGATE_DATABASE_URL" in message
    assert "sqlite:///" in message
    assert "postgresql://" in message
    assert "hunter2" not in message


# --- SQLite -----------------------------------------------------------------------------------


async def test_sqlite_in_memory_store_works_and_is_private_to_its_store() -> None:
    async with opened("sqlite:///:memory:") as one, opened("sqlite:///:memory:") as two:
        await one.grants.add(make_grant())
        assert await one.grants.count_active() == 1
        assert await two.grants.count_active() == 0


async def test_sqlite_file_is_put_in_wal_mode(tmp_path: Path) -> None:
    path = tmp_path / "ackgate.db"
    async with opened(f"sqlite:///{path}"):
        pass
    with sqlite3.connect(path) as raw:
        assert raw.execute("PRAGMA journal_mode").fetchone()[0] == "wal"


async def test_sqlite_in_a_missing_directory_raises_storage_error_naming_the_setting(tmp_path: Path) -> None:
    store = open_store(f"sqlite:///{tmp_path / 'missing' / 'ackgate.db'}")
    with pytest.raises(StorageError, match="ACKGATE_DATABASE_URL") as caught:
        await store.open()
    assert isinstance(caught.value.__cause__, sqlite3.Error)


@pytest.mark.parametrize(
    ("statement", "index"),
    [
        (roles.DUE_TO_EXPIRE, "grants_by_status_expiry"),
        (roles.REVOKES_DUE, "grants_by_status_next_attempt"),
        (roles.ACTIVE_FOR_INCIDENT, "grants_by_incident"),
    ],
)
async def test_sqlite_sweeper_queries_are_index_range_scans_without_a_sort(
    tmp_path: Path, statement: Sql, index: str
) -> None:
    sql = statement.text(SQLITE)
    path = tmp_path / "ackgate.db"
    async with opened(f"sqlite:///{path}"):
        pass
    with sqlite3.connect(path) as raw:
        plan = " | ".join(row[3] for row in raw.execute("EXPLAIN QUERY PLAN " + sql, ("x",) * sql.count("?")))
    assert f"SEARCH grants USING INDEX {index}" in plan
    assert "TEMP B-TREE" not in plan


async def test_sqlite_refuses_to_rewrite_the_audit_log(tmp_path: Path) -> None:
    path = tmp_path / "ackgate.db"
    async with opened(f"sqlite:///{path}") as store:
        await store.audit.append(AuditEvent(at=T0, kind="k", actor="ackgate", subject="s"))
    with sqlite3.connect(path) as raw:
        with pytest.raises(sqlite3.DatabaseError, match="append-only"):
            raw.execute("UPDATE audit SET actor = 'mallory'")
        with pytest.raises(sqlite3.DatabaseError, match="append-only"):
            raw.execute("DELETE FROM audit")


def test_sqlite_statement_splitter_keeps_trigger_bodies_whole() -> None:
    script = "CREATE TABLE t (a);\n-- a comment; with a semicolon\nCREATE TRIGGER x BEFORE DELETE ON t\nBEGIN\n  SELECT 1;\nEND;\n"
    statements = sq.split_statements(script)
    assert len(statements) == 2
    assert statements[1].startswith("-- a comment")
    assert statements[1].endswith("END;")


# --- migrations -------------------------------------------------------------------------------


@pytest.mark.parametrize("dialect", ["sqlite", "postgres"])
def test_each_dialect_has_the_same_migration_versions_from_one(dialect: str) -> None:
    versions = [m.version for m in migrations.load(dialect)]
    assert versions[0] == 1
    assert versions == [m.version for m in migrations.load("sqlite")]


# --- PostgreSQL -------------------------------------------------------------------------------


async def test_unreachable_postgres_raises_storage_error_saying_where_and_what_to_check() -> None:
    store = open_store("postgresql://ackgate:hunter2@127.0.0.1:1/ackgate")
    with pytest.raises(StorageError) as caught:
        await store.open()
    message = caught.value.message
    assert "Could not connect to PostgreSQL at 127.0.0.1:1/ackgate" in message
    assert "ACKGATE_DATABASE_URL" in message
    assert "hunter2" not in message


@pytest.mark.parametrize(
    "url", ["postgresql://ackgate@127.0.0.1:notaport/ackgate", "postgresql://ackgate@127.0.0.1/ackgate?sslmode=bogus"]
)
async def test_malformed_postgres_url_is_a_config_error_naming_the_setting(url: str) -> None:
    store = open_store(url)
    with pytest.raises(ConfigError, match="ACKGATE_DATABASE_URL"):
        await store.open()


@pytest.mark.parametrize(
    ("statement", "index", "params"),
    [
        (roles.DUE_TO_EXPIRE, "grants_by_status_expiry", ("active", T0, 100)),
        (roles.REVOKES_DUE, "grants_by_status_next_attempt", ("revoking", T0, 100)),
        (roles.ACTIVE_FOR_INCIDENT, "grants_by_incident", ("PINC001", "active")),
    ],
)
async def test_postgres_sweeper_queries_can_use_their_index_without_a_sort(
    statement: Sql, index: str, params: tuple[object, ...]
) -> None:
    sql = statement.text(POSTGRES)
    async with postgres_schema_url() as url, opened(url):
        conn = await asyncpg.connect(url)
        try:
            async with conn.transaction():
                # An empty table is cheapest to scan; forbidding that shows the index can serve the query.
                await conn.execute("SET LOCAL enable_seqscan = off")
                rows = await conn.fetch("EXPLAIN " + sql, *params)
        finally:
            await conn.close()
    plan = "\n".join(r[0] for r in rows)
    assert f"Index Scan using {index}" in plan
    assert "Sort" not in plan


async def test_postgres_refuses_to_rewrite_the_audit_log() -> None:
    async with postgres_schema_url() as url, opened(url) as store:
        await store.audit.append(AuditEvent(at=T0, kind="k", actor="ackgate", subject="s"))
        conn = await asyncpg.connect(url)
        try:
            with pytest.raises(asyncpg.RaiseError, match="append-only"):
                await conn.execute("UPDATE audit SET actor = 'mallory'")
            with pytest.raises(asyncpg.RaiseError, match="append-only"):
                await conn.execute("DELETE FROM audit")
        finally:
            await conn.close()


def test_an_incident_stored_by_a_newer_version_with_extra_fields_still_loads() -> None:
    codec = Codec(dump_time=iso, load_time=from_iso)
    row: dict[str, Any] = dict(
        zip(GRANT_COLUMNS, codec.grant_values(make_grant(incident=make_incident())), strict=True)
    )
    row["incident"] = dump_json({**json.loads(row["incident"]), "priority": "P1"})
    assert codec.grant(row) == make_grant(incident=make_incident())


# --- issue 3: transactions, mirrors, seen keys -------------------------------------------------


@pytest.mark.parametrize(
    ("statement", "table", "index", "sorts"),
    [
        (roles.PENDING_EXPIRED, "auth_transactions", "auth_transactions_by_status_expiry", False),
        (roles.BY_DEDUP_KEY, "auth_transactions", "auth_transactions_by_dedup_key", True),
        (roles.BY_TRANSACTION, "incident_mirrors", "incident_mirrors_by_transaction", True),
    ],
)
async def test_sqlite_issue3_look_ups_search_their_index(
    tmp_path: Path, statement: Sql, table: str, index: str, sorts: bool
) -> None:
    sql = statement.text(SQLITE)
    path = tmp_path / "ackgate.db"
    async with opened(f"sqlite:///{path}"):
        pass
    with sqlite3.connect(path) as raw:
        plan = " | ".join(row[3] for row in raw.execute("EXPLAIN QUERY PLAN " + sql, ("x",) * sql.count("?")))
    assert f"SEARCH {table} USING INDEX {index}" in plan
    # The expiry sweeper reads its range in index order; the others sort the few rows of one key.
    assert ("TEMP B-TREE" in plan) is sorts


@pytest.mark.parametrize(
    ("statement", "index", "params"),
    [
        (roles.PENDING_EXPIRED, "auth_transactions_by_status_expiry", ("pending", T0, 100)),
        (roles.BY_DEDUP_KEY, "auth_transactions_by_dedup_key", ("dk",)),
        (roles.BY_TRANSACTION, "incident_mirrors_by_transaction", ("t-1",)),
    ],
)
async def test_postgres_issue3_look_ups_can_use_their_index(
    statement: Sql, index: str, params: tuple[object, ...]
) -> None:
    sql = statement.text(POSTGRES)
    async with postgres_schema_url() as url, opened(url):
        conn = await asyncpg.connect(url)
        try:
            async with conn.transaction():
                await conn.execute("SET LOCAL enable_seqscan = off")
                rows = await conn.fetch("EXPLAIN " + sql, *params)
        finally:
            await conn.close()
    plan = "\n".join(r[0] for r in rows)
    assert f"using {index}" in plan
    if statement is roles.PENDING_EXPIRED:
        assert "Sort" not in plan


def test_incident_statuses_rank_triggered_then_acknowledged_then_resolved_and_unknown_lowest() -> None:
    ranks = [status_rank(s) for s in ("mystery", "triggered", "acknowledged", "resolved")]
    assert ranks == sorted(ranks)
    assert len(set(ranks)) == 4


def test_codec_maps_transactions_and_mirrors_back_from_their_columns() -> None:
    codec = Codec(dump_time=iso, load_time=from_iso)
    transaction = make_transaction(channels=("pagerduty",), dedup_key="dk", decided_at=T0, note="n", context="c")
    row = dict(zip(TRANSACTION_COLUMNS, codec.transaction_values(transaction), strict=True))
    assert codec.transaction(row) == transaction
    mirror = make_mirror(transaction_id="t-1", incident_key="dk", acknowledged_by="Bob", service_id="PSVC")
    assert codec.mirror(dict(zip(MIRROR_COLUMNS, codec.mirror_values(mirror), strict=True))) == mirror

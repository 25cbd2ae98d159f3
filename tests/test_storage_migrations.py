"""The migrations make, version by version and on both backends, the schema that the per-dialect
migration files made before each migration was written once (``tests/snapshots/storage_schema.json``),
and a database those files migrated is taken as up to date, or upgraded from where it stands."""

from __future__ import annotations

import json
import sqlite3
from pathlib import Path
from typing import Any

import pytest

from bot.core.domain import RequestStatus
from storage import migrations
from tests.fakes.schema import SNAPSHOT, postgres_schema, sqlite_comparable, sqlite_schema
from tests.fakes.storage_fixtures import make_grant, make_request, opened, postgres_schema_url

BEFORE: dict[str, Any] = json.loads(SNAPSHOT.read_text(encoding="utf-8"))
LATEST = len(migrations.load("sqlite"))
VERSIONS = list(range(1, LATEST + 1))


def test_the_snapshot_covers_every_version_and_names_what_made_it() -> None:
    assert [int(v) for v in BEFORE["sqlite"]] == VERSIONS
    assert [int(v) for v in BEFORE["postgres"]] == VERSIONS
    assert "547e4bb" in BEFORE["made_by"]


@pytest.mark.parametrize("version", VERSIONS)
async def test_sqlite_migrations_make_the_same_schema_as_before_at_each_version(tmp_path: Path, version: int) -> None:
    path = str(tmp_path / "ackgate.db")
    async with opened(f"sqlite:///{path}", migrate_up_to=version):
        pass
    assert sqlite_comparable(sqlite_schema(path)) == sqlite_comparable(BEFORE["sqlite"][str(version)])


@pytest.mark.parametrize("version", VERSIONS)
async def test_postgres_migrations_make_the_same_schema_as_before_at_each_version(version: int) -> None:
    async with postgres_schema_url() as url:
        async with opened(url, migrate_up_to=version):
            pass
        now = await postgres_schema(url)
    assert now == BEFORE["postgres"][str(version)]


def _sqlite_as_the_old_files_left_it(path: Path, version: int) -> None:
    """A SQLite file holding exactly the objects (same SQL) and versions the old files left at ``version``."""
    objects = BEFORE["sqlite"][str(version)]["objects"]
    order = {"table": 0, "index": 1, "trigger": 2}
    with sqlite3.connect(path) as raw:
        for _kind, name, _, sql in sorted(objects, key=lambda o: order[o[0]]):
            if sql is not None and name != "sqlite_sequence":  # the ones SQLite makes itself
                raw.executescript(sql + ";")
        raw.executemany(
            "INSERT INTO schema_version (version, name, applied_at) VALUES (?, ?, 'before')",
            BEFORE["sqlite"][str(version)]["versions"],
        )


async def test_a_sqlite_database_the_old_files_migrated_is_up_to_date_and_works(tmp_path: Path) -> None:
    path = tmp_path / "old.db"
    _sqlite_as_the_old_files_left_it(path, LATEST)
    async with opened(f"sqlite:///{path}") as store:
        await store.requests.add_with_grant(make_request(status=RequestStatus.APPROVED), make_grant())
        assert await store.grants.count_active() == 1
    with sqlite3.connect(path) as raw:
        applied = raw.execute("SELECT version, applied_at FROM schema_version ORDER BY version").fetchall()
    assert applied == [(v, "before") for v in VERSIONS]  # nothing was applied again
    assert sqlite_comparable(sqlite_schema(str(path))) == sqlite_comparable(BEFORE["sqlite"][str(LATEST)])


@pytest.mark.parametrize("version", VERSIONS[:-1])
async def test_a_sqlite_database_the_old_files_left_at_an_older_version_upgrades_to_the_same_schema(
    tmp_path: Path, version: int
) -> None:
    path = tmp_path / "old.db"
    _sqlite_as_the_old_files_left_it(path, version)
    async with opened(f"sqlite:///{path}"):
        pass
    assert sqlite_comparable(sqlite_schema(str(path))) == sqlite_comparable(BEFORE["sqlite"][str(LATEST)])


def test_a_migration_keeps_only_its_dialects_lines_and_fills_in_its_types() -> None:
    text = "CREATE TABLE t (at {timestamp});\n-- only sqlite\nSELECT 1;\n-- only postgres\nSELECT 2;\n-- end only\n"
    assert migrations.render(text, "sqlite") == "CREATE TABLE t (at TEXT);\nSELECT 1;\n"
    assert migrations.render(text, "postgres") == "CREATE TABLE t (at timestamptz);\nSELECT 2;\n"


@pytest.mark.parametrize(
    ("text", "complaint"),
    [
        ("CREATE TABLE t (a {uuid});\n", "uses {uuid}"),
        ("-- only mysql\nSELECT 1;\n-- end only\n", "unknown dialect 'mysql'"),
        ("-- only sqlite\nSELECT 1;\n", "has no '-- end only'"),
    ],
)
def test_a_malformed_migration_is_refused_saying_what_is_wrong(text: str, complaint: str) -> None:
    with pytest.raises(ValueError, match=complaint.replace("{", r"\{").replace("}", r"\}")):
        migrations.render(text, "sqlite")

"""What a migrated database's schema is, read from the database itself, to compare two of them.

SQLite's is ``sqlite_master`` (each object's type, name, table and the SQL it was created with);
PostgreSQL's is its catalogue: columns, constraints, indexes, triggers, functions and sequences of
the schema in use, with that schema's name taken out of the definitions. Both carry the rows of
``schema_version`` (version and name: what tells a backend that a database is up to date).

``tests/snapshots/storage_schema.json`` holds these for every version as the per-dialect migration
files ``storage/migrations/000N_name.{sqlite,postgres}.sql`` made them (see its ``made_by``).
Regenerate it only when a migration is added, never to make a changed old one pass (the versions
already in it must come out unchanged, and ``made_by`` keeps saying where they came from):

    .venv/bin/python -m tests.fakes.schema "versions 1-7: <as before>; 8: <commit>" > tests/snapshots/storage_schema.json
"""

from __future__ import annotations

import asyncio
import json
import re
import sqlite3
import sys
import tempfile
from pathlib import Path
from typing import Any

import asyncpg

SNAPSHOT = Path(__file__).resolve().parent.parent / "snapshots" / "storage_schema.json"

_COMMENT = re.compile(r"--[^\n]*")
_SPACE = re.compile(r"\s+")


def normalised(sql: str | None) -> str | None:
    """``sql`` without comments and with white space folded: what the database does with it."""
    if sql is None:
        return None
    return _SPACE.sub(" ", _COMMENT.sub("", sql)).strip()


def sqlite_schema(path: str) -> dict[str, Any]:
    with sqlite3.connect(path) as raw:
        objects = raw.execute("SELECT type, name, tbl_name, sql FROM sqlite_master ORDER BY type, name").fetchall()
        versions = raw.execute("SELECT version, name FROM schema_version ORDER BY version").fetchall()
    return {"objects": [list(o) for o in objects], "versions": [list(v) for v in versions]}


def sqlite_comparable(schema: dict[str, Any]) -> dict[str, Any]:
    """The schema with each object's SQL :func:`normalised`."""
    return {
        "objects": [[kind, name, table, normalised(sql)] for kind, name, table, sql in schema["objects"]],
        "versions": schema["versions"],
    }


_PG_QUERIES = {
    "columns": """
        SELECT table_name, column_name, ordinal_position, data_type, is_nullable, column_default
        FROM information_schema.columns WHERE table_schema = current_schema()
        ORDER BY table_name, ordinal_position""",
    "constraints": """
        SELECT rel.relname, con.conname, con.contype::text, pg_get_constraintdef(con.oid)
        FROM pg_constraint con JOIN pg_class rel ON rel.oid = con.conrelid
        WHERE rel.relnamespace = current_schema()::regnamespace ORDER BY rel.relname, con.conname""",
    "indexes": """
        SELECT tablename, indexname, indexdef FROM pg_indexes WHERE schemaname = current_schema()
        ORDER BY tablename, indexname""",
    "triggers": """
        SELECT rel.relname, t.tgname, pg_get_triggerdef(t.oid)
        FROM pg_trigger t JOIN pg_class rel ON rel.oid = t.tgrelid
        WHERE rel.relnamespace = current_schema()::regnamespace AND NOT t.tgisinternal ORDER BY rel.relname, t.tgname""",
    "functions": """
        SELECT proname, pg_get_function_result(oid), prosrc FROM pg_proc
        WHERE pronamespace = current_schema()::regnamespace ORDER BY proname""",
    "sequences": """
        SELECT sequence_name, data_type, start_value, increment FROM information_schema.sequences
        WHERE sequence_schema = current_schema() ORDER BY sequence_name""",
    "versions": "SELECT version, name FROM schema_version ORDER BY version",
}


async def postgres_schema(url: str) -> dict[str, Any]:
    conn = await asyncpg.connect(url)
    try:
        schema = await conn.fetchval("SELECT current_schema()")
        found: dict[str, Any] = {}
        for part, query in _PG_QUERIES.items():
            rows = await conn.fetch(query)
            found[part] = [[_unqualified(v, schema) for v in row.values()] for row in rows]
    finally:
        await conn.close()
    return found


def _unqualified(value: object, schema: str) -> object:
    return value.replace(f"{schema}.", "") if isinstance(value, str) else value


async def _capture() -> dict[str, Any]:
    """Every version of both dialects, each migrated from empty by the current code."""
    from storage import migrations
    from tests.fakes.storage_fixtures import opened, postgres_schema_url

    latest = len(migrations.load("sqlite"))
    snapshot: dict[str, Any] = {"sqlite": {}, "postgres": {}}
    with tempfile.TemporaryDirectory() as directory:
        for version in range(1, latest + 1):
            path = str(Path(directory) / f"v{version}.db")
            async with opened(f"sqlite:///{path}", migrate_up_to=version):
                pass
            snapshot["sqlite"][str(version)] = sqlite_schema(path)
            async with postgres_schema_url() as url:
                async with opened(url, migrate_up_to=version):
                    pass
                snapshot["postgres"][str(version)] = await postgres_schema(url)
    return snapshot


if __name__ == "__main__":
    made_by = sys.argv[1] if len(sys.argv) > 1 else "the migrations of this checkout"
    captured = asyncio.run(_capture())
    # One object a line, so a diff of two snapshots reads as a diff of schemas.
    lines = ["{", f' "made_by": {json.dumps(made_by)},']
    for d, (dialect, versions) in enumerate(captured.items()):
        lines.append(f" {json.dumps(dialect)}: {{")
        for v, (version, parts) in enumerate(versions.items()):
            lines.append(f"  {json.dumps(version)}: {{")
            for p, (part, rows) in enumerate(parts.items()):
                body = ",\n".join(f"    {json.dumps(row)}" for row in rows)
                lines.append(f"   {json.dumps(part)}: [\n{body}\n   ]" + ("," if p < len(parts) - 1 else ""))
            lines.append("  }" + ("," if v < len(versions) - 1 else ""))
        lines.append(" }" + ("," if d < len(captured) - 1 else ""))
    lines.append("}")
    sys.stdout.write("\n".join(lines) + "\n")

"""Versioned schema migrations, one ``NNNN_name.sql`` file per version, written once for both dialects.

A file is plain SQL but for two things, both resolved by :func:`load`:

- ``{timestamp}``, ``{json}``, ``{serial_key}``, ``{boolean}``, ``{false}`` and ``{now}`` stand for the types that
  differ (see :data:`TYPES`): datetimes are fixed-width UTC ISO text in SQLite, so text order is time
  order, and ``timestamptz`` in PostgreSQL; nested values are JSON text or ``jsonb``.
- Lines between ``-- only sqlite`` (or ``-- only postgres``) and the next ``-- only …`` or
  ``-- end only`` are for that dialect alone: trigger bodies are written in each one's language.

Each backend records applied versions in a ``schema_version`` table and applies the missing
ones in order, inside one transaction, so applying is idempotent.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from importlib.resources import files

DIALECTS = ("sqlite", "postgres")

TYPES = {
    "sqlite": {
        "timestamp": "TEXT",
        "json": "TEXT",
        "serial_key": "INTEGER PRIMARY KEY AUTOINCREMENT",
        "boolean": "INTEGER",
        "false": "0",
        "now": "CURRENT_TIMESTAMP",
    },
    "postgres": {
        "timestamp": "timestamptz",
        "json": "jsonb",
        "serial_key": "bigserial PRIMARY KEY",
        "boolean": "boolean",
        "false": "false",
        "now": "now()",
    },
}

_NAME = re.compile(r"^(\d{4})_(\w+)\.sql$")
_TOKEN = re.compile(r"\{([a-z_]+)\}")
_ONLY = re.compile(r"^-- only (\w+)$")
_END_ONLY = "-- end only"


@dataclass(frozen=True)
class Migration:
    version: int
    name: str
    sql: str


def render(text: str, dialect: str) -> str:
    """``text`` (a migration file) as ``dialect`` runs it: its own lines only, its types filled in."""
    if dialect not in DIALECTS:
        raise ValueError(f"No migrations are written for the dialect {dialect!r}; there are {DIALECTS}.")
    kept: list[str] = []
    only: str | None = None
    for line in text.splitlines(keepends=True):
        marker = _ONLY.match(line.strip())
        if marker:
            only = marker.group(1)
            if only not in DIALECTS:
                raise ValueError(f"A migration names the unknown dialect {only!r} in {line.strip()!r}.")
        elif line.strip() == _END_ONLY:
            only = None
        elif only in (None, dialect):
            kept.append(_TOKEN.sub(lambda m: _type(m.group(1), dialect), line))
    if only is not None:
        raise ValueError(f"A migration's '-- only {only}' block has no '{_END_ONLY}'.")
    return "".join(kept)


def _type(token: str, dialect: str) -> str:
    try:
        return TYPES[dialect][token]
    except KeyError:
        raise ValueError(f"A migration uses {{{token}}}, which is none of {sorted(TYPES[dialect])}.") from None


_SCHEMA_VERSION_TABLE = (
    "CREATE TABLE IF NOT EXISTS schema_version (version INTEGER PRIMARY KEY,"
    " name TEXT NOT NULL, applied_at {timestamp} NOT NULL DEFAULT {now});\n"
)


def schema_version_table(dialect: str) -> str:
    """The table that records which versions were applied (created before any of them)."""
    return render(_SCHEMA_VERSION_TABLE, dialect)


def load(dialect: str) -> list[Migration]:
    """The migrations in version order, as ``dialect`` runs them; versions must run 1, 2, 3… without gaps."""
    found: list[Migration] = []
    for entry in files(__name__).iterdir():
        match = _NAME.match(entry.name)
        if match:
            sql = render(entry.read_text(encoding="utf-8"), dialect)
            found.append(Migration(int(match.group(1)), match.group(2), sql))
    found.sort(key=lambda m: m.version)
    if [m.version for m in found] != list(range(1, len(found) + 1)):
        raise RuntimeError("The migrations are not numbered 0001, 0002, … without gaps.")
    return found

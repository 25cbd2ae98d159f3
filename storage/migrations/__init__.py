"""Versioned schema migrations, one ``NNNN_name.<dialect>.sql`` file per version and dialect.

Each backend records applied versions in a ``schema_version`` table and applies the missing
ones in order, inside one transaction, so applying is idempotent.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from importlib.resources import files

_NAME = re.compile(r"^(\d{4})_(\w+)\.(sqlite|postgres)\.sql$")


@dataclass(frozen=True)
class Migration:
    version: int
    name: str
    sql: str


def load(dialect: str) -> list[Migration]:
    """The dialect's migrations in version order; versions must run 1, 2, 3… without gaps."""
    found: list[Migration] = []
    for entry in files(__name__).iterdir():
        match = _NAME.match(entry.name)
        if match and match.group(3) == dialect:
            found.append(Migration(int(match.group(1)), match.group(2), entry.read_text(encoding="utf-8")))
    found.sort(key=lambda m: m.version)
    if [m.version for m in found] != list(range(1, len(found) + 1)):
        raise RuntimeError(f"The {dialect} migrations are not numbered 0001, 0002, … without gaps.")
    return found

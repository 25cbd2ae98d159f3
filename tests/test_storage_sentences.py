"""The storage backends word no sentence of their own: what an operator reads when the database
cannot be opened or fails (``StorageError``, ``ConfigError``) comes from :mod:`bot.core.messages`,
like every other sentence Ackgate says."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

from bot.core import errors
from bot.core.errors import ConfigError, StorageError
from storage import open_store
from storage.sqlite import SqliteStore

STORAGE = Path(__file__).resolve().parents[1] / "storage"
# Ackgate's own errors, whose message someone reads; a TypeError for a wrong call stays where it is raised
_OURS = {
    name for name, value in vars(errors).items() if isinstance(value, type) and issubclass(value, errors.AckgateError)
}


def _worded_errors(path: Path) -> list[str]:
    """``SomeError("text")`` or ``SomeError(f"text {x}")`` calls: an error worded in place."""
    found = []
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if (
            isinstance(node, ast.Call)
            and isinstance(node.func, ast.Name)
            and node.func.id in _OURS
            and node.args
            and isinstance(node.args[0], ast.Constant | ast.JoinedStr)
        ):
            found.append(f"{path.name}:{node.lineno}")
    return found


def test_no_storage_module_words_an_error_in_place() -> None:
    worded = [where for path in sorted(STORAGE.glob("*.py")) for where in _worded_errors(path)]
    assert worded == []


async def test_a_backend_that_cannot_open_says_what_to_check(tmp_path: Path) -> None:
    missing = tmp_path / "no-such-dir" / "ackgate.db"
    with pytest.raises(StorageError) as caught:
        await SqliteStore(str(missing)).open()
    assert caught.value.message.startswith(f"Could not open the SQLite database {missing}: ")
    assert caught.value.message.endswith("Check ACKGATE_DATABASE_URL and that the directory exists and is writable.")
    with pytest.raises(ConfigError, match="not a database URL Ackgate knows"):
        open_store("mysql://root@localhost/ackgate")

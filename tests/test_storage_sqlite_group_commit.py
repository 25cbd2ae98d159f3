"""SQLite group commit (storage.sqlite ``_Db.writing``): write transactions waiting for the connection
together share one commit, each as a savepoint of it. A writer goes on only once its write is
committed (another connection sees it), a writer that fails undoes only its own part, and a
commit that fails fails every writer in it with none of their rows stored."""

from __future__ import annotations

import asyncio
import sqlite3
from collections.abc import AsyncIterator, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest

from bot.core.errors import StorageError
from storage.sqlite import SqliteStore

WRITERS = 10


@pytest.fixture
async def store(tmp_path: Path) -> AsyncIterator[SqliteStore]:
    opened = SqliteStore(str(tmp_path / "ackgate.db"))
    await opened.open()
    conn = opened._db._connection()
    conn.execute("CREATE TABLE t (id INTEGER PRIMARY KEY, who TEXT NOT NULL)")
    try:
        yield opened
    finally:
        await opened.close()


def outside(store: SqliteStore) -> list[str]:
    """What another process reading the file sees: committed rows only."""
    other = sqlite3.connect(store._db.path)
    try:
        return sorted(row[0] for row in other.execute("SELECT who FROM t"))
    finally:
        other.close()


async def insert(store: SqliteStore, who: str) -> None:
    """One write transaction of one row."""
    async with store._db.transaction(f"insert {who}") as s:
        await s.execute("INSERT INTO t (who) VALUES (?)", who)


@contextmanager
def connection_swapped(store: SqliteStore, stand_in: Any) -> Iterator[None]:
    """The store's connection replaced by ``stand_in`` (which wraps it) for the block."""
    real = store._db._connection()
    store._db._conn = stand_in
    try:
        yield
    finally:
        store._db._conn = real


def count_begins(store: SqliteStore, statement: str = "BEGIN") -> list[str]:
    """The statements starting ``statement`` the store's connection runs from now on (tried ones too)."""
    begun: list[str] = []
    store._db._connection().set_trace_callback(lambda sql: begun.append(sql) if sql.startswith(statement) else None)
    return begun


async def test_writers_waiting_together_share_one_commit_and_each_goes_on_only_once_it_is_committed(
    store: SqliteStore,
) -> None:
    begun = count_begins(store)
    seen_after: dict[str, list[str]] = {}

    async def writer(n: int) -> None:
        await insert(store, f"w{n}")
        seen_after[f"w{n}"] = outside(store)

    await asyncio.gather(*(writer(n) for n in range(WRITERS)))

    assert len(begun) < WRITERS / 2, begun  # one transaction a statement would be 10
    for who, seen in seen_after.items():
        assert who in seen, f"{who} went on before its row was committed"
    assert outside(store) == sorted(f"w{n}" for n in range(WRITERS))


async def test_a_writer_that_fails_undoes_only_its_own_part(store: SqliteStore) -> None:
    async def failing() -> None:
        async with store._db.transaction("insert then fail") as s:
            await s.execute("INSERT INTO t (who) VALUES (?)", "failed")
            raise ValueError("the caller changed its mind")

    results = await asyncio.gather(insert(store, "before"), failing(), insert(store, "after"), return_exceptions=True)

    assert [type(r) for r in results] == [type(None), ValueError, type(None)]
    assert outside(store) == ["after", "before"]


class _FailingCommit:
    """The store's connection, whose next commit fails as a full disk would make it."""

    def __init__(self, conn: sqlite3.Connection) -> None:
        self._conn = conn
        self.fail = True

    def commit(self) -> None:
        if self.fail:
            self.fail = False
            raise sqlite3.OperationalError("database or disk is full")
        self._conn.commit()

    def __getattr__(self, name: str) -> Any:
        return getattr(self._conn, name)


async def test_a_commit_that_fails_fails_every_writer_in_it_and_stores_none_of_their_rows(
    store: SqliteStore,
) -> None:
    with connection_swapped(store, _FailingCommit(store._db._connection())):
        results = await asyncio.gather(*(insert(store, f"w{n}") for n in range(3)), return_exceptions=True)

        assert all(isinstance(r, StorageError) for r in results), results
        assert all("disk is full" in str(r) for r in results)
        assert outside(store) == []
        await insert(store, "later")  # the next transaction starts afresh
        assert outside(store) == ["later"]


async def test_writers_queued_behind_another_process_lock_all_land_in_one_or_two_commits(store: SqliteStore) -> None:
    """``serve --workers N`` on one file: while another process holds the write lock the first
    writer waits for it (awaited pauses), the others queue behind it, and all of them then commit."""
    rival = sqlite3.connect(store._db.path, isolation_level=None)
    rival.execute("BEGIN IMMEDIATE")
    asyncio.get_running_loop().call_later(0.1, rival.commit)
    committed = count_begins(store, "COMMIT")  # a BEGIN refused as busy is traced too

    try:
        await asyncio.gather(*(insert(store, f"w{n}") for n in range(WRITERS)))
    finally:
        rival.close()

    assert outside(store) == sorted(f"w{n}" for n in range(WRITERS))
    assert 1 <= len(committed) <= 2, committed


class _LockedCommit(_FailingCommit):
    """A commit that keeps answering "database is locked", as while another process holds the file."""

    def commit(self) -> None:
        raise sqlite3.OperationalError("database is locked")


async def test_a_commit_stopped_while_it_waits_fails_its_writers_instead_of_leaving_them_waiting(
    store: SqliteStore,
) -> None:
    with connection_swapped(store, _LockedCommit(store._db._connection())):
        writers = [asyncio.create_task(insert(store, f"w{n}")) for n in range(3)]
        for _ in range(20):  # until the commit is waiting out the "locked" answers
            await asyncio.sleep(0.005)
        [committer] = store._db._committers
        committer.cancel()  # a shutdown, say

        results = await asyncio.wait_for(asyncio.gather(*writers, return_exceptions=True), timeout=2)
    assert all(isinstance(r, StorageError) for r in results), results
    assert outside(store) == []

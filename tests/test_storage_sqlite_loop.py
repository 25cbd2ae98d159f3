"""The SQLite backend runs its statements on the event loop's thread, so it must never block that
loop: another process's write lock is waited for with awaited pauses (the loop goes on serving),
and the WAL is copied back into the database file by a checkpoint off the loop."""

from __future__ import annotations

import asyncio
import sqlite3
import threading
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from datetime import UTC, datetime
from pathlib import Path

import pytest

from bot.core.domain import AuditEvent, MessageRef
from bot.core.errors import StorageError
from storage import sqlite as sq
from storage.sqlite import SqliteStore


def _rival(path: Path) -> sqlite3.Connection:
    """Another process's connection holding the write lock."""
    rival = sqlite3.connect(path, isolation_level=None)
    rival.execute("BEGIN IMMEDIATE")
    return rival


@asynccontextmanager
async def _opened(path: str) -> AsyncIterator[SqliteStore]:
    store = SqliteStore(path)
    await store.open()
    try:
        yield store
    finally:
        await store.close()


async def _ticks_while(awaitable: object, *, every: float = 0.01) -> tuple[object, int]:
    """Run ``awaitable`` and count how often another coroutine got the loop meanwhile."""
    ticks = 0
    done = asyncio.Event()

    async def ticker() -> None:
        nonlocal ticks
        while not done.is_set():
            await asyncio.sleep(every)
            ticks += 1

    ticking = asyncio.ensure_future(ticker())
    try:
        result = await awaitable  # type: ignore[misc]
    finally:
        done.set()
        await ticking
    return result, ticks


async def test_a_write_waits_for_another_writer_without_blocking_the_loop(tmp_path: Path) -> None:
    path = tmp_path / "a.db"
    async with _opened(str(path)) as store:
        rival = _rival(path)
        loop = asyncio.get_running_loop()
        loop.call_later(0.3, rival.commit)  # the rival lets go after 300 ms
        previous, ticks = await _ticks_while(store.settings.set("severity", "critical"))
        rival.close()
        assert previous is None
        assert await store.settings.get("severity") == "critical"
        # the loop ran other work during the wait: a blocking busy_timeout would give 0 ticks
        assert ticks >= 10


async def test_a_write_that_cannot_get_the_lock_in_time_fails_cleanly_and_changes_nothing(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(sq, "BUSY_TIMEOUT_SECONDS", 0.2)
    path = tmp_path / "a.db"
    store = SqliteStore(str(path))
    await store.open()
    rival = _rival(path)
    try:
        with pytest.raises(StorageError, match=r"Could not save setting severity in the SQLite database .*locked"):
            await store.settings.set("severity", "critical")
    finally:
        rival.rollback()
        rival.close()
    try:
        assert await store.settings.get("severity") is None
        await store.settings.set("severity", "low")  # the connection is usable again, no transaction left open
        assert await store.settings.get("severity") == "low"
    finally:
        await store.close()


async def test_lone_statements_wait_for_the_lock_too(tmp_path: Path) -> None:
    path = tmp_path / "a.db"
    async with _opened(str(path)) as store:
        rival = _rival(path)
        asyncio.get_running_loop().call_later(0.2, rival.commit)
        # Messages.add is one statement outside a transaction (autocommit)
        ref = MessageRef("slack", "C1", "1.0")
        _, ticks = await _ticks_while(store.messages.add("r-1", ref))
        rival.close()
        assert await store.messages.refs("r-1") == [ref]
        assert ticks >= 5


async def test_writes_reach_the_database_file_by_a_checkpoint_off_the_loop(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(sq, "CHECKPOINT_EVERY_SECONDS", 0.05)
    path = tmp_path / "a.db"
    async with _opened(str(path)) as store:
        await store.settings.set("severity", "critical")
        # No automatic checkpoint on the loop's connection: until the checkpointer runs, only the WAL has it.
        for _ in range(100):
            await asyncio.sleep(0.02)
            copy = tmp_path / "copy.db"
            copy.write_bytes(path.read_bytes())  # the database file alone, without its -wal
            conn = sqlite3.connect(copy)
            try:
                rows = conn.execute("SELECT value FROM settings WHERE key = 'severity'").fetchall()
            except sqlite3.OperationalError:  # not even the schema has been copied back yet
                rows = []
            finally:
                conn.close()
            copy.unlink()
            if rows:
                break
        assert rows == [("critical",)]


async def _wal_after_writes_that_never_pause(path: Path, writes: int) -> int:
    """The -wal file's size after ``writes`` commits with nothing but a loop turn between them."""
    async with _opened(str(path)) as store:
        start = datetime.now(UTC)
        for i in range(writes):  # each a new row of a few pages: a passive pass always finds more
            await store.audit.append(AuditEvent(start, "test.write", "me", f"s{i}", {"pad": "x" * 3000}))
            await asyncio.sleep(0)  # the checkpointer's task gets its turns; the writes never pause
        size = path.with_name(path.name + "-wal").stat().st_size
        assert len(await store.audit.since(start)) == writes
    return size


async def test_a_wal_under_writes_that_never_pause_is_started_over(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(sq, "CHECKPOINT_EVERY_SECONDS", 0.02)
    # the control, in the same test: passive checkpoints alone, the WAL only grows
    monkeypatch.setattr(sq, "RESTART_AFTER_FRAMES", 10**9)
    grown = await _wal_after_writes_that_never_pause(tmp_path / "control.db", 2500)
    monkeypatch.setattr(sq, "RESTART_AFTER_FRAMES", 64)
    bounded = await _wal_after_writes_that_never_pause(tmp_path / "a.db", 2500)
    assert grown > 30 * 1024 * 1024  # ~54 MB: every frame ever written
    assert bounded < grown / 2  # ~16 MB: what a few rounds write between restarts


async def test_the_loops_connection_never_checkpoints_by_itself(tmp_path: Path) -> None:
    async with _opened(str(tmp_path / "a.db")) as store:
        conn = store._db._connection()
        assert conn.execute("PRAGMA wal_autocheckpoint").fetchone()[0] == 0
        assert conn.execute("PRAGMA busy_timeout").fetchone()[0] == 0


async def test_several_rows_outside_a_transaction_are_refused(tmp_path: Path) -> None:
    async with _opened(str(tmp_path / "a.db")) as store:
        async with store._db.write("insert two rows") as s:
            with pytest.raises(StorageError, match="several rows are written in one transaction"):
                await s.execute_many("INSERT INTO settings (key, value) VALUES (?1, ?2)", [("a", "1"), ("b", "2")])
        assert await store.settings.get("a") is None


async def test_closing_waits_for_a_running_checkpoint_and_then_closes_its_connection(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(sq, "CHECKPOINT_EVERY_SECONDS", 0.01)
    started = threading.Event()
    checkpoint = sq._Checkpointer._checkpoint

    def slow_checkpoint(self: sq._Checkpointer) -> None:
        started.set()
        time.sleep(0.3)  # still running when the store closes
        checkpoint(self)

    monkeypatch.setattr(sq._Checkpointer, "_checkpoint", slow_checkpoint)
    store = SqliteStore(str(tmp_path / "a.db"))
    await store.open()
    checkpointer = store._db._checkpointer
    assert checkpointer is not None
    await store.settings.set("severity", "critical")
    await asyncio.to_thread(started.wait, 5)
    await store.close()
    await asyncio.sleep(0.5)  # past the slow checkpoint: nothing of it may still be running by now
    # the checkpoint finished before its connection was closed, and nothing was left open after
    assert checkpointer._conn is None


async def _late_after_rival(store: SqliteStore, path: Path, *, urgent: bool, hold: float) -> float:
    """How long after another connection releases its write lock (held ``hold`` s) a lone write lands."""
    rival = _rival(path)
    released: list[float] = []

    def release() -> None:
        rival.commit()
        released.append(time.monotonic())

    asyncio.get_running_loop().call_later(hold, release)
    async with store._db.write("write a setting", urgent=urgent) as s:
        await s.execute("INSERT OR REPLACE INTO settings (key, value) VALUES (?1, ?2)", f"k{urgent}", "v")
    landed = time.monotonic()
    rival.close()
    return landed - released[0]


async def test_an_urgent_write_behind_another_connections_lock_tries_every_millisecond(tmp_path: Path) -> None:
    path = tmp_path / "a.db"
    async with _opened(str(path)) as store:
        # released at 70 ms: doubling pauses (1, 2, 4 … ms, the control) try next at 113 ms
        normal = await _late_after_rival(store, path, urgent=False, hold=0.07)
        urgent = await _late_after_rival(store, path, urgent=True, hold=0.07)
        assert await store.settings.get("kTrue") == "v" and await store.settings.get("kFalse") == "v"
    assert normal > 0.03
    assert urgent < 0.02

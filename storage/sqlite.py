"""The SQLite backend: one stdlib ``sqlite3`` connection in WAL mode, under the statements of
:mod:`storage.roles` (written once for both backends).

Statements run on the event loop's own thread. A statement on a local WAL file takes
microseconds, while handing each one to a worker thread (what aiosqlite does) cost a thread
wake-up and a GIL hand-off per statement: that hop was the largest cost of a whole flow. So
nothing here may block for long:

- **No busy waits on the loop.** The connection's ``busy_timeout`` is 0. When another process
  holds the write lock (``ackgate serve --workers N`` on one file), SQLite answers "busy" at once
  and :func:`_retrying` awaits a short, growing pause before trying again, for up to
  ``BUSY_TIMEOUT_SECONDS``, so the loop keeps answering while it waits.
- **No checkpoints on the loop.** Automatic checkpoints would copy the WAL into the database and
  fsync both inside whichever commit crossed the threshold. They are off; :class:`_Checkpointer`
  runs a passive checkpoint on a connection of its own, in a worker thread, once a second after
  writes.

- **Group commit.** A commit is the dearest statement of a flow. Write transactions that find
  others waiting for the connection with them become savepoints of one ``BEGIN IMMEDIATE``
  transaction, committed once they have all had their turn (or before the next lone statement);
  each writer goes on only when that commit is done (:meth:`_Db.writing`).

One connection is shared by every coroutine, so a lock keeps their statements from interleaving,
and each write runs in ``BEGIN IMMEDIATE`` so a second process on the same file waits instead of
racing: compare-and-set stays atomic. The lock serves urgent writes first
(:class:`storage.priority_lock.PriorityLock`): recording a chat command, which Slack's
acknowledgement waits for, never queues behind the background's writes.
"""

from __future__ import annotations

import asyncio
import logging
import sqlite3
import time
from collections.abc import AsyncIterator, Callable
from concurrent.futures import ThreadPoolExecutor
from contextlib import AbstractAsyncContextManager, asynccontextmanager, suppress
from contextvars import ContextVar
from functools import partial
from typing import TypeVar

from bot.core import messages
from bot.core.errors import StorageError
from storage.codec import Row
from storage.common import RoleStore
from storage.priority_lock import PriorityLock
from storage.sql import SQLITE, DriverSession

BUSY_TIMEOUT_SECONDS = 5.0
BUSY_FIRST_PAUSE_SECONDS = 0.001
BUSY_LONGEST_PAUSE_SECONDS = 0.05
WAL_RETRY_SECONDS = 0.05  # between tries to switch to WAL, in the opening thread
CHECKPOINT_EVERY_SECONDS = 1.0
# A WAL still longer than this after a passive checkpoint is started over (see _Checkpointer).
RESTART_AFTER_FRAMES = 16_384  # 64 MB of 4 KB pages
RESTART_WAIT_MS = 50  # how long that restart may wait for a write or a read to end before giving up

T = TypeVar("T")
log = logging.getLogger(__name__)


def _busy(exc: sqlite3.OperationalError) -> bool:
    """SQLITE_BUSY (or one of its extended codes): another connection holds the lock."""
    code = getattr(exc, "sqlite_errorcode", None)
    if isinstance(code, int):
        return code & 0xFF == sqlite3.SQLITE_BUSY
    return "locked" in str(exc)


_URGENT: ContextVar[bool] = ContextVar("ackgate_sqlite_urgent", default=False)


async def _retrying(call: Callable[[], T]) -> T:
    """``call()``, again after a pause each time SQLite says busy, for up to ``BUSY_TIMEOUT_SECONDS``.

    A busy answer means the statement changed nothing, so running it again is safe. The first try
    is made without awaiting anything: uncontended, a statement costs no trip through the loop."""
    try:
        return call()
    except sqlite3.OperationalError as exc:
        if not _busy(exc):
            raise
    deadline = time.monotonic() + BUSY_TIMEOUT_SECONDS
    pause = BUSY_FIRST_PAUSE_SECONDS
    while True:
        await asyncio.sleep(pause)
        try:
            return call()
        except sqlite3.OperationalError as exc:
            if not _busy(exc) or time.monotonic() >= deadline:
                raise
        if not _URGENT.get():
            # An urgent statement (a command record an ack waits for) keeps trying at the first
            # pause: another process's write or a RESTART checkpoint holds the lock a few ms, and
            # doubling pauses overshot its release.
            pause = min(pause * 2, BUSY_LONGEST_PAUSE_SECONDS)


def _enable_wal(conn: sqlite3.Connection) -> None:
    """Switch to WAL. Switching takes an exclusive lock and SQLite does not wait on busy_timeout
    for it, so two processes opening a new file at once would see "database is locked": retry
    within the same busy budget. Runs in a worker thread, where sleeping blocks nobody."""
    deadline = time.monotonic() + BUSY_TIMEOUT_SECONDS
    while True:
        try:
            conn.execute("PRAGMA journal_mode = WAL")
            return
        except sqlite3.OperationalError as exc:
            if not _busy(exc) or time.monotonic() >= deadline:
                raise
            time.sleep(WAL_RETRY_SECONDS)


def _connect(path: str) -> sqlite3.Connection:
    """The loop's connection, set up in a worker thread: opening may have to recover a WAL."""
    # isolation_level=None: we issue BEGIN ourselves, so sqlite3 never opens one behind our back.
    # check_same_thread=False: opened here, used on the loop's thread, one holder at a time.
    conn = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
    try:
        conn.row_factory = sqlite3.Row
        conn.execute(f"PRAGMA busy_timeout = {int(BUSY_TIMEOUT_SECONDS * 1000)}")  # set-up may wait here
        _enable_wal(conn)
        conn.execute("PRAGMA synchronous = NORMAL")  # durable enough with WAL, much faster
        conn.execute("PRAGMA foreign_keys = ON")
        conn.execute("PRAGMA wal_autocheckpoint = 0")  # see _Checkpointer
        conn.execute("PRAGMA busy_timeout = 0")  # on the loop, busy is waited for by _retrying
    except BaseException:
        conn.close()
        raise
    return conn


def split_statements(script: str) -> list[str]:
    """Split a migration into statements; SQLite itself says where one ends (trigger bodies hold ``;``)."""
    statements: list[str] = []
    buffer = ""
    for line in script.splitlines(keepends=True):
        buffer += line
        if sqlite3.complete_statement(buffer):
            statements.append(buffer.strip())
            buffer = ""
    return statements


class _Checkpointer:
    """Copies the WAL back into the database file off the loop: a passive checkpoint (it never
    waits for, nor blocks, a reader or writer) on its own connection, in a thread of its own,
    once a second after the loop's connection has written. The one thread also closes that
    connection, so a checkpoint still running when the store closes finishes first.

    A passive checkpoint never lets the WAL start over while writes never pause (SQLite restarts it
    only when a writer finds every frame copied back, and under load a new one always arrives
    first): 800 MB in 10 s of saturated flows. So when the WAL holds more than
    ``RESTART_AFTER_FRAMES`` frames after the passive pass, a RESTART checkpoint follows. It has
    little left to copy; it holds writers off only while it copies that and syncs (2–14 ms
    measured), during which the loop's writers are told "busy" and retry (``_retrying``), the loop
    itself never blocked; and the next write starts the WAL from its beginning, so the file stays
    near that size. If a write or a read does not end within ``RESTART_WAIT_MS`` it gives up until
    the next round."""

    def __init__(self, path: str, writes: Callable[[], int]) -> None:
        self._path = path
        self._writes = writes
        self._conn: sqlite3.Connection | None = None
        self._thread = ThreadPoolExecutor(max_workers=1, thread_name_prefix="ackgate-sqlite-checkpoint")
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        self._task = asyncio.get_running_loop().create_task(self._run(), name="sqlite-checkpoint")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with suppress(asyncio.CancelledError):
                await self._task
            self._task = None
        await asyncio.wrap_future(self._thread.submit(self._close))
        self._thread.shutdown(wait=False)

    def _close(self) -> None:
        if self._conn is not None:
            conn, self._conn = self._conn, None
            conn.close()

    def _checkpoint(self) -> None:
        if self._conn is None:
            self._conn = sqlite3.connect(self._path, isolation_level=None, check_same_thread=False)
            self._conn.execute(f"PRAGMA busy_timeout = {RESTART_WAIT_MS}")  # only RESTART waits
        _, frames, _ = self._conn.execute("PRAGMA wal_checkpoint(PASSIVE)").fetchone()
        if frames > RESTART_AFTER_FRAMES:
            self._conn.execute("PRAGMA wal_checkpoint(RESTART)").fetchall()

    async def _run(self) -> None:
        seen = -1  # a store just opened may have migrated: look at the first round whatever it holds
        while True:
            await asyncio.sleep(CHECKPOINT_EVERY_SECONDS)
            now = self._writes()
            if now == seen:
                continue
            seen = now
            try:
                await asyncio.wrap_future(self._thread.submit(self._checkpoint))
            except sqlite3.Error as exc:  # the next round tries again; the WAL only grows meanwhile
                log.warning("SQLite checkpoint of %s failed: %s", self._path, exc)


class _Db:
    """The connection, its lock, and the translation of driver errors into ``StorageError``."""

    dialect = SQLITE

    def __init__(self, path: str) -> None:
        self.path = path
        self._conn: sqlite3.Connection | None = None
        self._lock = PriorityLock()
        self._checkpointer: _Checkpointer | None = None
        self._open: asyncio.Future[None] | None = None  # the shared transaction's commit, if one is open
        self._committers: set[asyncio.Task[None]] = set()

    async def open(self) -> None:
        if self._conn is not None:
            return
        try:
            conn = await asyncio.to_thread(_connect, self.path)
        except sqlite3.Error as exc:
            raise StorageError(messages.sqlite_cannot_open(self.path, exc)) from exc
        self._conn = conn
        if self.path != ":memory:":
            self._checkpointer = _Checkpointer(self.path, lambda: conn.total_changes)
            self._checkpointer.start()

    async def close(self) -> None:
        async with self._lock:
            await self._commit_open()
            if self._checkpointer is not None:
                checkpointer, self._checkpointer = self._checkpointer, None
                await checkpointer.stop()
            if self._conn is not None:
                conn, self._conn = self._conn, None
                conn.close()

    def _connection(self) -> sqlite3.Connection:
        if self._conn is None:
            raise StorageError(messages.store_not_open("SQLite"))
        return self._conn

    def _failed(self, doing: str, exc: sqlite3.Error) -> StorageError:
        return StorageError(messages.sqlite_failed(doing, self.path, exc))

    @asynccontextmanager
    async def statement(self, doing: str, *, urgent: bool = False) -> AsyncIterator[sqlite3.Connection]:
        """The connection for one statement, outside any transaction: a write commits as the
        statement ends, atomically."""
        async with self._lock.held(urgent=urgent):
            conn = self._connection()
            await self._commit_open()  # a lone statement sees (and writes) only what is committed
            marked = _URGENT.set(urgent)
            try:
                yield conn
            except sqlite3.Error as exc:
                raise self._failed(doing, exc) from exc
            finally:
                _URGENT.reset(marked)

    async def _commit_open(self) -> None:
        """Commit the shared transaction, if one is open, and tell its writers. The lock is held.
        Whatever stops the commit (cancelled while another process holds the lock, say) rolls it
        back and is what its writers are told: none of them is left waiting."""
        if self._open is None:
            return
        conn = self._connection()
        committed, self._open = self._open, None
        try:
            await _retrying(conn.commit)
        except BaseException as exc:
            if conn.in_transaction:
                conn.rollback()
            error = exc if isinstance(exc, sqlite3.Error) else sqlite3.OperationalError(f"interrupted ({exc!r})")
            committed.set_exception(self._failed("commit the writes of a transaction", error))
            if not isinstance(exc, sqlite3.Error):
                raise
            return
        committed.set_result(None)

    async def _commit_later(self, committed: asyncio.Future[None]) -> None:
        """Commit ``committed``'s transaction once the writers already waiting for the lock joined it."""
        async with self._lock:
            if self._open is committed:
                await self._commit_open()

    @asynccontextmanager
    async def writing(self, doing: str) -> AsyncIterator[sqlite3.Connection]:
        """One write transaction; any exception rolls it back, so a failure changes nothing.

        Group commit: the transaction is a savepoint of a shared one, committed once every writer
        already waiting for the connection has had its turn (:meth:`_commit_later`), or before the
        next lone statement. The block's caller goes on only once that commit is done, so nobody
        acts on a write a crash could still lose; a commit that fails fails every writer in it.
        """
        async with self._lock:
            conn = self._connection()
            try:
                if self._open is None:
                    await _retrying(lambda: conn.execute("BEGIN IMMEDIATE"))
                    self._open = self._shared()
                committed = self._open
                conn.execute("SAVEPOINT w")
            except sqlite3.Error as exc:
                raise self._failed(doing, exc) from exc
            try:
                yield conn
                conn.execute("RELEASE w")
            except BaseException as exc:
                self._undo(committed, exc)
                if isinstance(exc, sqlite3.Error):
                    raise self._failed(doing, exc) from exc
                raise
        await asyncio.shield(committed)

    def _shared(self) -> asyncio.Future[None]:
        """A new shared transaction's commit, and the task that will make it."""
        loop = asyncio.get_running_loop()
        committed: asyncio.Future[None] = loop.create_future()
        # read by every writer in it; this only keeps asyncio quiet when none is left to read it
        committed.add_done_callback(lambda f: f.cancelled() or f.exception())
        committer = loop.create_task(self._commit_later(committed))
        self._committers.add(committer)
        committer.add_done_callback(self._committers.discard)
        return committed

    def _undo(self, committed: asyncio.Future[None], exc: BaseException) -> None:
        """Roll back one writer's savepoint; if SQLite rolled back the whole shared transaction
        (a full disk, say), its other writers are told their writes are lost."""
        conn = self._connection()
        try:
            if conn.in_transaction:
                conn.execute("ROLLBACK TO w")
                conn.execute("RELEASE w")
                return
        except sqlite3.Error:
            if conn.in_transaction:
                conn.rollback()
        if self._open is committed:
            self._open = None
        if not committed.done():
            error = exc if isinstance(exc, sqlite3.Error) else sqlite3.OperationalError(str(exc))
            committed.set_exception(self._failed("commit the writes of a transaction", error))

    def read(self, doing: str) -> AbstractAsyncContextManager[_Session]:
        return _Session.over(self.statement(doing), doing)

    def write(self, doing: str, *, urgent: bool = False) -> AbstractAsyncContextManager[_Session]:
        return _Session.over(self.statement(doing, urgent=urgent), doing)

    def transaction(self, doing: str) -> AbstractAsyncContextManager[_Session]:
        return _Session.over(self.writing(doing), doing)

    def migrating(self) -> AbstractAsyncContextManager[_Session]:
        return self.transaction("apply database migrations")


def _all_rows(conn: sqlite3.Connection, text: str, values: tuple[object, ...]) -> list[Row]:
    # Fetched to the end, so the statement is finished (and, outside a transaction, committed)
    # within the same call even when it has a RETURNING clause.
    return conn.execute(text, values).fetchall()


class _Session(DriverSession[sqlite3.Connection]):
    """The statements' session on the shared connection; a UNIQUE failure's message names the column."""

    dialect = SQLITE

    async def _fetch(self, text: str, values: tuple[object, ...]) -> list[Row]:
        return await _retrying(partial(_all_rows, self._conn, text, values))

    async def _run(self, text: str, values: tuple[object, ...]) -> None:
        await _retrying(partial(_all_rows, self._conn, text, values))

    async def _run_many(self, text: str, values: list[tuple[object, ...]]) -> None:
        if not self._conn.in_transaction:
            # Outside a transaction each row would commit on its own, and a retry after "busy"
            # could repeat the rows already written: several rows are written in a transaction.
            raise StorageError(messages.several_rows_outside_transaction(self._doing))
        await _retrying(partial(self._conn.executemany, text, values))

    def _unique_key(self, exc: Exception) -> str | None:
        return str(exc) if isinstance(exc, sqlite3.IntegrityError) and "UNIQUE" in str(exc) else None

    async def execute_script(self, script: str, /) -> None:
        for statement in split_statements(script):
            await _retrying(partial(self._conn.execute, statement))


class SqliteStore(RoleStore[_Db]):
    """Every role port over one SQLite file (or ``:memory:``)."""

    def __init__(self, path: str) -> None:
        super().__init__(_Db(path))

    @property
    def path(self) -> str:
        return self._db.path

"""Group commit: many callers' small writes of one kind, committed together as one statement.

Recording a chat command is what an acknowledgement waits for, and at hundreds of commands a
second one statement (and one commit) each would queue behind one another on SQLite's one writer
and cost a round trip each on PostgreSQL. :class:`GroupCommit` lets each caller await its own
answer while at most one batch is being written: whatever arrives while a batch is written (or
waits for the connection) goes in the next one, so a burst costs a handful of statements, and a
lone caller is written at once, with no timer to wait for.

A caller that finds nothing pending and no batch being written writes its own item itself, in its
own task, rather than handing it to a writer task and waiting to be woken. On SQLite, whose
statements run on the loop without suspending, that makes an uncontended record cost no trip
through the event loop at all: an acknowledgement under load waits for as few loop iterations as
possible, and each of those iterations may hold many background steps.

A batch that fails fails for every caller in it, with the same exception: each caller's write is
either committed with the others or not at all, and nobody is told "done" for a write that was not.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Sequence
from contextlib import AbstractAsyncContextManager
from typing import Generic, TypeVar

S = TypeVar("S")
T = TypeVar("T")
R = TypeVar("R")

MAX_BATCH = 200  # rows in one statement: well under either database's parameter limit


class GroupCommit(Generic[S, T, R]):
    """``await group.submit(item)`` → ``write(session, batch)[i]`` for the item's place ``i`` in its batch.

    ``hold()`` opens the connection (and transaction) a batch is written in; the batch is taken
    only once it is held, so everything that arrived while waiting for it is in. ``write`` takes
    the items in arrival order and returns one result for each, in the same order; it is never
    called with more than ``max_batch`` items, nor twice at once."""

    def __init__(
        self,
        hold: Callable[[], AbstractAsyncContextManager[S]],
        write: Callable[[S, Sequence[T]], Awaitable[Sequence[R]]],
        *,
        max_batch: int = MAX_BATCH,
    ) -> None:
        self._hold = hold
        self._write = write
        self._max = max_batch
        self._pending: list[tuple[T, asyncio.Future[R]]] = []
        self._writer: asyncio.Task[None] | None = None
        self._leading = False  # a caller is writing its own item itself

    def _busy(self) -> bool:
        return self._leading or bool(self._pending) or (self._writer is not None and not self._writer.done())

    async def submit(self, item: T) -> R:
        if not self._busy():
            return await self._lead(item)
        future: asyncio.Future[R] = asyncio.get_running_loop().create_future()
        self._pending.append((item, future))
        if not self._leading and (self._writer is None or self._writer.done()):
            self._writer = asyncio.get_running_loop().create_task(self._drain())
        # shield: a caller that gives up (its request was cancelled) must not cancel the batch
        # the other callers are waiting for.
        return await asyncio.shield(future)

    async def _lead(self, item: T) -> R:
        """Write a batch of this one item in the caller's own task; whoever arrives meanwhile
        waits for the next batch, which a writer task takes once this one is done. Giving up here
        cancels only this caller's own write."""
        self._leading = True
        try:
            async with self._hold() as session:
                results = await self._write(session, [item])
            if len(results) != 1:
                raise RuntimeError(f"a group write returned {len(results)} results for 1 item")
            return results[0]
        finally:
            self._leading = False
            if self._pending:
                self._writer = asyncio.get_running_loop().create_task(self._drain())

    async def _drain(self) -> None:
        while self._pending:
            batch: list[tuple[T, asyncio.Future[R]]] = []
            try:
                async with self._hold() as session:
                    batch, self._pending = self._pending[: self._max], self._pending[self._max :]
                    results = await self._write(session, [item for item, _ in batch])
                    if len(results) != len(batch):
                        raise RuntimeError(f"a group write returned {len(results)} results for {len(batch)} items")
            except BaseException as exc:
                # Every caller in the batch learns it failed; when the connection could not be had
                # at all, the first waiters do (the next batch tries again).
                if not batch:
                    batch, self._pending = self._pending[: self._max], self._pending[self._max :]
                for _, future in batch:
                    if not future.done():
                        future.set_exception(exc)
                        future.exception()  # retrieved here too: a caller that gave up leaves no warning
                if isinstance(exc, asyncio.CancelledError):
                    for _, future in self._pending:
                        future.cancel()
                    self._pending = []
                    raise
                continue
            for (_, future), result in zip(batch, results, strict=True):
                if not future.done():
                    future.set_result(result)

"""The expiry scheduler: revokes each grant at its expiry without scanning every grant each tick.

It sleeps until the earliest expiry (one indexed query after each pass), or the idle interval,
then ends what is due. A grant made or extended only moves that wake-up earlier (:meth:`expires`,
no query and no pass: nothing is due before it expires), so hundreds of grants a second cost no
pass each; :meth:`wake` asks for a pass at once. Revokes the provisioner did not confirm are
retried on the same loop, pending approvals time out, and the reconciler finishes what a crash left behind.
On start it first catches up on everything that expired while Ackgate was down. Safe on several
replicas: each transition is compare-and-set and each provisioner call is claimed first. One step's
failure (the database briefly away) never stops the others, nor the next pass.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Awaitable, Callable, Sequence
from datetime import UTC, datetime, timedelta

from bot.core.access import AccessService
from bot.core.clock import Clock
from bot.core.errors import AckgateError
from bot.core.grants import isolated
from bot.core.ports import GrantStore
from bot.core.reconciler import Reconciler

log = logging.getLogger("ackgate.expiry")


class ExpiryScheduler:
    def __init__(
        self,
        service: AccessService,
        *,
        grants: GrantStore,
        clock: Clock,
        idle_seconds: float = 5.0,
        jobs: Sequence[Callable[[], Awaitable[int]]] = (),
        reconciler: Reconciler | None = None,
    ) -> None:
        self.service = service
        self.grants = grants
        self.clock = clock
        self.idle_seconds = idle_seconds  # how often revoke retries and approval time-outs are looked at
        self.jobs = list(jobs)  # other timed work on the same loop, e.g. expiring authentication links
        self.reconciler = reconciler
        self._wake = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._stopping = False
        self._pass_wanted = True  # the first pass catches up on what expired while Ackgate was down
        self._next: datetime | None = None  # the earliest expiry known: the store's, or a grant's since
        self._idle_at = datetime.min.replace(tzinfo=UTC)  # when the idle interval after the last pass ends

    def wake(self) -> None:
        """Something may be due now (the clock moved, a replica's work): a pass at once."""
        self._pass_wanted = True
        self._wake.set()

    def expires(self, at: datetime) -> None:
        """A grant was made or extended to end at ``at``: wake up by then, if that is sooner."""
        if self._next is None or at < self._next:
            self._next = at
            self._wake.set()

    async def run_once(self) -> None:
        """Do everything that is due now, including telling holders their grants expired. Tests call
        this after moving the fake clock."""
        await self._pass()
        await self.service.grants.told()

    async def _pass(self) -> None:
        """One pass of the loop: the messages about expired grants may still be under way after it."""
        expired = await isolated("expiry pass", "due grants", self.service.grants.expire_due()) or 0
        retried = await isolated("revoke retry pass", "due revokes", self.service.grants.retry_revokes()) or 0
        timed_out = await isolated("approval time-out pass", "pending requests", self.service.time_out_pending()) or 0
        if expired or retried or timed_out:
            log.info("expired %d grants, confirmed %d revokes, timed out %d requests", expired, retried, timed_out)
        if self.reconciler is not None:
            await isolated("reconciler pass", "the store", self.reconciler.run_once())
        for job in self.jobs:
            await isolated("timed job", getattr(job, "__qualname__", repr(job)), job())

    async def _after_pass(self) -> None:
        """The idle interval starts again, and the next wake-up is the store's earliest expiry, or
        a grant's made while it was read (``expires`` during the query), whichever is sooner."""
        self._idle_at = self.clock.now() + timedelta(seconds=self.idle_seconds)
        self._next = None
        stored = await self.grants.next_expiry()
        if stored is not None and (self._next is None or stored < self._next):
            self._next = stored

    def _due(self) -> bool:
        now = self.clock.now()
        return self._pass_wanted or now >= self._idle_at or (self._next is not None and self._next <= now)

    def _seconds_to_wait(self) -> float:
        wake_at = self._idle_at if self._next is None else min(self._next, self._idle_at)
        return max((wake_at - self.clock.now()).total_seconds(), 0.0)

    async def run(self) -> None:
        while not self._stopping:
            self._wake.clear()  # before the pass, so a wake during it is not lost
            try:
                if self._due():
                    self._pass_wanted = False
                    await self._pass()
                    await self._after_pass()
                delay = self._seconds_to_wait()
            except asyncio.CancelledError:
                raise
            except AckgateError as exc:  # the database briefly away: expected, no traceback
                log.warning("expiry pass failed; retrying shortly: %s", exc.message)
                self._pass_wanted, delay = True, 1.0
            except Exception:
                log.exception("expiry pass failed; retrying shortly")
                self._pass_wanted, delay = True, 1.0
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), timeout=delay)

    def start(self) -> None:
        if self._task is None:
            self._task = asyncio.create_task(self.run(), name="ackgate-expiry")

    async def stop(self, *, grace: float = 0.0) -> None:
        """Stop the loop: a pass under way may finish within ``grace`` seconds, then it is cancelled."""
        if self._task is not None:
            self._stopping = True
            self._wake.set()
            began = time.monotonic()
            with contextlib.suppress(TimeoutError, asyncio.CancelledError):
                await asyncio.wait_for(asyncio.shield(self._task), timeout=grace)
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None
            self._stopping = False
            # the messages about grants that expired: within what is left of the grace, then cancelled
            await self.service.grants.told(within=max(grace - (time.monotonic() - began), 0.0))


def every(seconds: float, clock: Clock, job: Callable[[], Awaitable[int]]) -> Callable[[], Awaitable[int]]:
    """``job`` at most once per ``seconds`` of ``clock`` time, for the scheduler's ``jobs``."""
    last: list[float] = []

    async def throttled() -> int:
        now = clock.now().timestamp()
        if last and now - last[0] < seconds:
            return 0
        last[:] = [now]
        return await job()

    throttled.__qualname__ = f"every({seconds}, {getattr(job, '__qualname__', job)})"
    return throttled
